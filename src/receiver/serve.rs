//! The receiver's HTTP/1.1 server, bounding what a client can hold (docs/interface.md §9):
//! - a request's headers and body must be complete within [`REQUEST_TIMEOUT`] of its connection
//!   becoming ready to read it (accepted, or its previous response sent): hyper's
//!   `header_read_timeout` closes a connection whose headers are not complete by then, and the
//!   push handler reads the body by the [`ReadBy`] instant put in the request, or answers 408 and
//!   closes the connection;
//! - at most `max_connections` connections are open: the next one is accepted when one closes
//!   (until then it waits in the listen backlog);
//! - on shutdown no connection is accepted, idle ones close, the requests in flight get
//!   [`SHUTDOWN_GRACE`] to finish, and whatever is still open then is closed.
//!
//! `axum::serve` has none of these bounds (no timer, so no header timeout, and its graceful
//! shutdown waits for every connection): this is its accept loop with them.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A request's headers and body must arrive within this, or it is cut off (408).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, the requests in flight get this long: a push being stored is answered within
/// 4.5 s (`STORE_TIMEOUT_BEFORE_SPILL` + `SPILL_TIMEOUT`, or `STORE_TIMEOUT`).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// When the request's body must have arrived whole (in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadBy(pub Instant);

/// Serves `router` on `listener` until `shutdown`, then closes within [`SHUTDOWN_GRACE`].
pub(crate) async fn serve(listener: TcpListener, router: Router, max_connections: usize, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(connection(stream, router.clone(), permit, shutdown.clone()));
    }
    drop(listener);
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_secs = SHUTDOWN_GRACE.as_secs_f64(),
            "receiver: connections still open after the grace period; closing them"
        );
        connections.shutdown().await;
    }
}

/// A failed accept: the peer's own trouble is skipped; anything else (too many open files) is
/// logged and waited out a little, as `axum::serve` does.
async fn accept_failed(e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "receiver: accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves one connection (holding its `permit`) until it closes or, after `shutdown`, its
/// request in flight is answered.
async fn connection(stream: TcpStream, router: Router, permit: OwnedSemaphorePermit, shutdown: CancellationToken) {
    // When the connection became ready to read its next request: HTTP/1.1 serves one at a time.
    let ready_since = Arc::new(Mutex::new(Instant::now()));
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let ready = ready_since.clone();
        let since = *ready.lock().unwrap_or_else(PoisonError::into_inner);
        request.extensions_mut().insert(ReadBy(since + REQUEST_TIMEOUT));
        let answer = router.call(request.map(Body::new));
        async move {
            let response = answer.await;
            *ready.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(REQUEST_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        // A header timeout, a peer gone mid-request: the peer's business, not ours.
        tracing::debug!(error = %e, "receiver: connection ended");
    }
    drop(permit);
}
