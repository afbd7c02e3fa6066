//! The admin endpoint (`WXNOTIFY_ADMIN_ADDR`): `/healthz` (the process runs), `/readyz` (broker
//! and database reachable right now; the database alone for `wxnotify receiver`), `/metrics`
//! (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports; set by the worker as connections come and go.
#[derive(Debug, Default)]
pub(crate) struct Health {
    broker: AtomicBool,
    db: AtomicBool,
    /// A process with no broker (`wxnotify receiver`): ready when the database is.
    no_broker: bool,
}

impl Health {
    /// For a process that uses no broker.
    pub(crate) fn db_only() -> Self {
        Self {
            no_broker: true,
            ..Self::default()
        }
    }

    pub(crate) fn set_broker(&self, up: bool) {
        self.broker.store(up, Ordering::Relaxed);
        metrics::gauge!("wxnotify_broker_up").set(f64::from(u8::from(up)));
    }

    pub(crate) fn set_db(&self, up: bool) {
        self.db.store(up, Ordering::Relaxed);
        metrics::gauge!("wxnotify_db_up").set(f64::from(u8::from(up)));
    }

    pub(crate) fn broker(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
    }

    pub(crate) fn ready(&self) -> bool {
        (self.no_broker || self.broker()) && self.db.load(Ordering::Relaxed)
    }
}

/// The process-wide Prometheus recorder, installed once.
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets")
                .set_buckets_for_metric(
                    Matcher::Full("wxnotify_ledger_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder (a test harness) may already be installed; ours then just renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds the admin endpoint; returns the bound address (port 0 picks one) and the server future.
pub(crate) async fn bind(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let state = AdminState {
        health,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                metrics::counter!("wxnotify_allocations_total").absolute(crate::allocations::count());
                s.metrics.render()
            }),
        )
        .with_state(state);
    let server = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    };
    Ok((local, server))
}

/// Binds the admin endpoint and serves it in the background until `shutdown`; the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let (local, server) = bind(addr, health, shutdown).await?;
    tokio::spawn(server);
    tracing::info!(addr = %local, "admin endpoint: /healthz /readyz /metrics");
    Ok(local)
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: broker or database unreachable\n",
        )
    }
}
