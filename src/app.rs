//! One start-up path for a worker, used by the CLI (`wxnotify worker`) and by the in-process
//! workers of the tests alike: admin endpoint, database (waited for), migrations, worker.

use secrecy::SecretString;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
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
            WorkerError::Tls(m) => AppError::Runtime(m),
        }
    }
}

/// Serves the admin endpoint in the background; an address it cannot bind is a configuration
/// error naming `WXNOTIFY_ADMIN_ADDR`.
pub(crate) async fn start_admin(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, AppError> {
    admin::start(addr, health, shutdown.clone())
        .await
        .map_err(|e| AppError::Config(format!("WXNOTIFY_ADMIN_ADDR: cannot listen on {addr}: {e}")))
}

/// The pool, once the database answers (waited for: it may come up after us; `/readyz` says not
/// ready meanwhile), with migrations applied if `migrate`. `None`: `shutdown` fired while waiting.
/// A TLS failure is not waited out: it is an error naming `DATABASE_URL` (exit 1).
pub(crate) async fn open_database(
    url: &SecretString,
    size: u32,
    migrate: bool,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, AppError> {
    let pool = db::connect_patiently(url, size, shutdown)
        .await
        .map_err(|e| AppError::Runtime(format!("DATABASE_URL: TLS with {} failed: {e}", redact_url(url))))?;
    let Some(pool) = pool else {
        return Ok(None);
    };
    health.set_db(true);
    if migrate {
        let applied = db::migrate_unless(&pool, shutdown).await.map_err(|e| {
            AppError::Runtime(format!(
                "migrations: {e} (after a run that stopped half way: docs/operations.md, Upgrading)"
            ))
        })?;
        if !applied {
            return Ok(None);
        }
    }
    Ok(Some(pool))
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
        let admin_addr = start_admin(settings.admin_addr, health.clone(), shutdown).await?;
        let Some(pool) = open_database(&settings.database_url, settings.db_pool, migrate, &health, shutdown).await?
        else {
            return Ok(None);
        };
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
