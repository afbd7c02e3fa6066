//! A TCP proxy between a process and one service, with a network's faults, switched at run time:
//! - [`FaultProxy::blackhole`]: bytes stop both ways and every socket stays open (a half-open
//!   partition: nobody is told); [`FaultProxy::heal`] lets the held bytes through, as TCP's
//!   retransmissions would;
//! - [`FaultProxy::latency`]: every chunk arrives this long after it was sent, in order;
//! - [`FaultProxy::drip`]: bytes go one at a time, this far apart;
//! - [`FaultProxy::reset`]: every open connection is cut with a TCP reset (new ones work).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the network does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Blackhole,
    Latency(Duration),
    Drip(Duration),
}

pub(crate) struct FaultProxy {
    pub(crate) addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// One token per open connection: cancelled, its sockets close with a reset.
    conns: Arc<Mutex<Vec<CancellationToken>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    pub(crate) async fn to(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault proxy");
        let addr = listener.local_addr().expect("addr");
        let (mode, _) = watch::channel(Mode::Pass);
        let conns: Arc<Mutex<Vec<CancellationToken>>> = Arc::default();
        let (modes, held) = (mode.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let stop = CancellationToken::new();
                held.lock().unwrap().push(stop.clone());
                tokio::spawn(connect(inbound, upstream, modes.subscribe(), stop));
            }
        });
        Self {
            addr,
            mode,
            conns,
            accept,
        }
    }

    /// `scheme://user:pass@host:port/rest` with host:port replaced by this proxy's.
    pub(crate) fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
        let path = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
        let at = if auth.is_empty() {
            String::new()
        } else {
            format!("{auth}@")
        };
        format!("{scheme}://{at}{}{path}", self.addr)
    }

    pub(crate) fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    pub(crate) fn latency(&self, each_way: Duration) {
        self.mode.send_replace(Mode::Latency(each_way));
    }

    pub(crate) fn drip(&self, per_byte: Duration) {
        self.mode.send_replace(Mode::Drip(per_byte));
    }

    pub(crate) fn heal(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Cuts every open connection with a reset (SO_LINGER 0); the proxy goes on accepting.
    pub(crate) fn reset(&self) {
        for stop in self.conns.lock().unwrap().drain(..) {
            stop.cancel();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

async fn connect(inbound: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>, stop: CancellationToken) {
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    for s in [&inbound, &outbound] {
        // Closing a socket sends a reset, not a FIN: what `reset` wants. A peer that closes first
        // has sent its FIN already (relayed by `shutdown`). A zero linger never blocks on drop
        // (the reason tokio deprecates `set_linger`): the kernel discards and resets at once.
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        let _ = s.set_nodelay(true);
    }
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut up = tokio::spawn(direction(in_read, out_write, mode.clone()));
    let mut down = tokio::spawn(direction(out_read, in_write, mode));
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = async { let _ = (&mut up).await; let _ = (&mut down).await; } => {}
    }
    // Aborted, each task drops its half: the sockets close with a reset.
    up.abort();
    down.abort();
}

/// One direction: a reader that stops reading while blackholed, and a writer that delivers each
/// chunk as the mode says.
async fn direction(mut from: OwnedReadHalf, to: OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut reading = mode.clone();
    // One task for both halves: aborted, it drops both sockets at once (a reset).
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let _ = reading.wait_for(|m| *m != Mode::Blackhole).await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    tokio::join!(read, deliver(rx, to, mode));
}

async fn deliver(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    while let Some((read_at, chunk)) = rx.recv().await {
        let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
        let current = *mode.borrow();
        let written = match current {
            Mode::Latency(d) => {
                tokio::time::sleep_until(read_at + d).await;
                to.write_all(&chunk).await
            }
            Mode::Drip(gap) => drip(&mut to, &chunk, gap).await,
            Mode::Pass | Mode::Blackhole => to.write_all(&chunk).await,
        };
        if written.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

async fn drip(to: &mut OwnedWriteHalf, chunk: &[u8], gap: Duration) -> std::io::Result<()> {
    for b in chunk {
        to.write_all(std::slice::from_ref(b)).await?;
        tokio::time::sleep(gap).await;
    }
    Ok(())
}
