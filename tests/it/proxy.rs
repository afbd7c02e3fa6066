//! A TCP proxy the test can cut: every connection through it is dropped and new ones are
//! refused, as when a database host goes away, without touching the shared Postgres.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        Self::serve(listener, upstream)
    }

    /// A proxy listening on `addr` again (the address of one that was cut: the database host
    /// comes back), once the port is free.
    pub(crate) async fn at(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Self::serve(listener, upstream),
                Err(e) if tokio::time::Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    fn serve(listener: TcpListener, upstream: SocketAddr) -> Self {
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(pipe);
            }
        });
        Self { addr, tasks, accept }
    }

    /// Drops every connection and stops listening: the port refuses from now on.
    pub(crate) fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}
