//! One start-up path for a worker, used by the CLI (`wxnotify worker`) and by the in-process
//! workers of the tests alike: admin endpoint, database (waited for), migrations, worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::config::{WorkerSettings, redact_url};
use crate::db;
use crate::worker::{Worker, WorkerError};

/// Why a worker could not start or run: a configuration error (exit 2) or a runtime one (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

impl From<WorkerError> for AppError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Config(m) => AppError::Config(m),
        }
    }
}

/// A worker ready to run, with its admin endpoint listening.
pub struct Application {
    worker: Worker,
    admin_addr: SocketAddr,
}

impl Application {
    /// Binds the admin endpoint, waits for the database (it may come up after us: compose,
    /// restarts; `/readyz` says not ready meanwhile), applies migrations if `migrate`, and builds
    /// the worker. `None`: `shutdown` fired while waiting.
    pub async fn build(
        settings: WorkerSettings,
        migrate: bool,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, AppError> {
        let health = Arc::new(Health::default());
        let (admin_addr, server) = admin::bind(settings.admin_addr, health.clone(), shutdown.clone())
            .await
            .map_err(|e| {
                AppError::Config(format!(
                    "WXNOTIFY_ADMIN_ADDR: cannot listen on {}: {e}",
                    settings.admin_addr
                ))
            })?;
        tokio::spawn(server);
        tracing::info!(addr = %admin_addr, "admin endpoint: /healthz /readyz /metrics");

        let mut delay = Duration::from_millis(200);
        let pool = loop {
            match db::connect(&settings.database_url, settings.db_pool).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, database = %redact_url(&settings.database_url), "database unreachable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        health.set_db(true);
        if migrate {
            db::migrate(&pool)
                .await
                .map_err(|e| AppError::Runtime(format!("migrations: {e}")))?;
        }
        let worker = Worker::new(settings, pool, health)?;
        Ok(Some(Self { worker, admin_addr }))
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Runs until `shutdown` fires (then drains) or a start-up check fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        Ok(self.worker.run(shutdown).await?)
    }
}
