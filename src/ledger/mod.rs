//! The idempotency ledger in Postgres: one row per delivery key (`deliveries`), one per HTTP
//! attempt (`delivery_attempts`), and the live workers whose claims are respected (`workers`).
//!
//! A delivery's life: [`Ledger::claim`] (one atomic `INSERT … ON CONFLICT`), then exactly one
//! [`Ledger::record`] (attempt and outcome in one statement) by the claim's holder. Both are
//! batched: the claims (or outcomes) of the deliveries in flight share one statement and one
//! commit, each with its own answer ([`batch`]); a caller is answered only after the commit.

pub(crate) mod batch;
mod claim;
pub(crate) mod consent;
pub(crate) mod followers;
mod heartbeat;
mod record;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;

use batch::Batcher;
use claim::ClaimSettings;

/// Most requests one batched statement carries: the default `WXNOTIFY_CONCURRENCY`, so that
/// with a slow database every delivery waiting goes in the next statement. Measured with Postgres
/// 200 ms a round trip away (tests/chaos/faults.rs, three runs each): 256 kept 29–41% of the
/// throughput, 512 37–46%, 1,024 44–63%; with Postgres at hand the same within noise.
const BATCH_MAX: usize = 1024;
/// Batched statements of one kind (claims, records) in flight at once per worker. One measured
/// best (`cargo bench`): fewer, fuller batches cost Postgres less than several half-full ones.
const BATCH_PARALLEL: usize = 1;

pub(crate) use claim::{Claim, ClaimRequest, Claimed};
pub(crate) use record::AttemptRecord;

/// A batched statement's duration and size, by kind.
pub(crate) fn statement_done(kind: &'static str, size: usize, started: std::time::Instant) {
    metrics::histogram!("wxnotify_ledger_statement_seconds", "kind" => kind).record(started.elapsed().as_secs_f64());
    metrics::histogram!("wxnotify_ledger_batch_size", "kind" => kind).record(size as f64);
}

#[derive(Clone)]
pub(crate) struct Ledger {
    pool: PgPool,
    worker_id: String,
    claims: Batcher<claim::ClaimJob, Claim>,
    records: Batcher<record::RecordJob, bool>,
    /// The owner, lease and liveness every claim statement binds.
    claim_settings: ClaimSettings,
    /// A holder that has not beaten this long is presumed dead; its claims are taken over.
    liveness: Duration,
    /// Claimed deliveries whose send started and whose outcome is not recorded yet (see
    /// [`Ledger::retire`]).
    sending: Arc<Mutex<HashSet<i64>>>,
}

impl Ledger {
    /// Spawns the batchers of claims and records: call within a tokio runtime.
    pub(crate) fn new(pool: PgPool, worker_id: String) -> Self {
        // How long a claim protects a delivery from other workers, whatever happens to its holder.
        let lease = Duration::from_secs(120);
        let liveness = Duration::from_secs(10);
        let claim_settings = ClaimSettings {
            worker_id: worker_id.clone(),
            lease_secs: lease.as_secs_f64(),
            liveness_secs: liveness.as_secs_f64(),
        };
        let (p, settings) = (pool.clone(), claim_settings.clone());
        let claims = Batcher::spawn(BATCH_MAX, BATCH_PARALLEL, move |jobs| {
            let (p, s) = (p.clone(), settings.clone());
            async move {
                let started = std::time::Instant::now();
                let r = crate::db::bounded(claim::claim_batch(&p, &s, &jobs, crate::fate::Reopen::No)).await;
                statement_done("claim", jobs.len(), started);
                r
            }
        });
        let (p, w) = (pool.clone(), worker_id.clone());
        let records = Batcher::spawn(BATCH_MAX, BATCH_PARALLEL, move |jobs| {
            let (p, w) = (p.clone(), w.clone());
            async move {
                let started = std::time::Instant::now();
                let r = crate::db::bounded(record::record_batch(&p, &w, &jobs)).await;
                statement_done("record", jobs.len(), started);
                r
            }
        });
        Self {
            pool,
            worker_id,
            claims,
            records,
            claim_settings,
            liveness,
            sending: Arc::default(),
        }
    }

    /// The pool, for read-only views of the ledger (`status`, the worker's sampled gauges).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How often [`Ledger::heartbeat`] should run so the worker stays "alive" to others.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.liveness / 4
    }
}
