//! SIGTERM / SIGINT → one `CancellationToken` every part of the process watches.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub(crate) fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping intake and draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping intake and draining"),
        }
        t.cancel();
    });
    token
}
