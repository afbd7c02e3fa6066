//! `wxnotify receiver` (docs/interface.md §9): where WeChat pushes what became of each message
//! (`TEMPLATESENDJOBFINISH`, `subscribe_msg_sent_event`) and who follows the account
//! (`subscribe`, `unsubscribe`).
//!
//! ```text
//! POST /wechat/{app_id} (an app, or a platform's merchant: merchants), POST /wechat/platform/{component_appid}
//!   → envelope (signature, timestamp, mode; crypto: AES in safe mode)
//!   → document (XML without entities, or JSON) → push (what it says)
//!   → store (Postgres, committed) → "success"      | 401 / 400 / 413 / 503 (WeChat retries)
//!       └ Postgres down or slow, a broker configured: spill (`<queue>.pushes`, confirmed)
//!         → "success"; the drain stores it in Postgres later
//! ```
//!
//! Every step before `store` is pure and unit-tested; `http` is the axum layer, `serve` the
//! server under it (slow clients cut off after 10 s, a cap on connections, a bounded shutdown).

mod crypto;
mod document;
mod envelope;
mod exchange;
mod http;
mod merchants;
mod platform_push;
mod push;
mod serve;
mod settings;
mod signature;
mod spill;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::app::{AppError, open_database, start_admin};

pub use settings::{ReceiverArgs, ReceiverSettings};

/// A receiver bound to its address, ready to run.
pub struct Receiver {
    listener: TcpListener,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    state: http::ReceiverState,
    max_connections: usize,
}

impl Receiver {
    /// Binds the admin endpoint and the receiver's address, waits for the database and applies
    /// migrations if `migrate`. `None`: `shutdown` fired while waiting.
    pub async fn build(
        settings: ReceiverSettings,
        migrate: bool,
        shutdown: &CancellationToken,
    ) -> Result<Option<Self>, AppError> {
        let health = Arc::new(Health::db_only());
        let admin_addr = start_admin(settings.admin_addr, health.clone(), shutdown).await?;
        let listener = TcpListener::bind(settings.receiver_addr).await.map_err(|e| {
            AppError::Config(format!(
                "WXNOTIFY_RECEIVER_ADDR: cannot listen on {}: {e}",
                settings.receiver_addr
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| AppError::Runtime(format!("receiver address: {e}")))?;
        let Some(pool) = open_database(&settings.database_url, settings.db_pool, migrate, &health, shutdown).await?
        else {
            return Ok(None);
        };
        let state = http::ReceiverState {
            apps: settings.apps.clone(),
            platforms: settings.platforms.clone(),
            exchange: exchange::Exchange::new(pool.clone(), &settings.wechat_api_base, &settings.platform_secrets),
            merchants: merchants::Merchants::new(pool.clone(), settings.platforms.keys()),
            store: store::Store::new(pool),
            spill: settings
                .spill
                .as_ref()
                .map(|(url, queue)| spill::Spill::new(url.clone(), queue)),
            health,
        };
        Ok(Some(Self {
            listener,
            addr,
            admin_addr,
            state,
            max_connections: settings.max_connections,
        }))
    }

    /// Where pushes arrive.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/healthz`, `/readyz` and `/metrics` answer.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown`, then finishes the requests in flight (within a grace period).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        tracing::info!(
            addr = %self.addr,
            apps = self.state.apps.len(),
            platforms = self.state.platforms.len(),
            "receiver: POST /wechat/{{app_id}}, POST /wechat/platform/{{component_appid}}"
        );
        tokio::spawn(watch_database(
            self.state.store.pool().clone(),
            self.state.health.clone(),
            shutdown.clone(),
        ));
        if let Some(exchange) = &self.state.exchange {
            exchange.spawn_all();
        }
        let drain = self
            .state
            .spill
            .clone()
            .map(|s| tokio::spawn(spill::drain(s, self.state.store.clone(), shutdown.clone())));
        serve::serve(self.listener, http::router(self.state), self.max_connections, shutdown).await;
        if let Some(drain) = drain {
            let _ = drain.await;
        }
        Ok(())
    }
}

/// Keeps `/readyz` true to the database: a probe every 2 s.
async fn watch_database(pool: PgPool, health: Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&pool)).await;
        health.set_db(matches!(probe, Ok(Ok(_))));
    }
}
