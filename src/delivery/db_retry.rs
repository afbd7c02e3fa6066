//! Waiting out the database: a call on the delivery path is retried until it works or the worker
//! must stop. A database outage stalls deliveries (unacked, bounded by the prefetch) instead of
//! losing or dead-lettering them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Abandoned;
use crate::admin::Health;

/// The worker's database health and its hard stop, for every call that waits out an outage.
#[derive(Clone)]
pub(crate) struct DbRetry {
    /// What `/health` reports of the database (and of the broker, set by the worker).
    pub health: Arc<Health>,
    /// Fires when the grace period is over: stop waiting for the database.
    pub hard_stop: CancellationToken,
}

impl DbRetry {
    /// Retries `op` until it works or the hard stop fires ([`Abandoned`]: the message stays
    /// unacked); an attempt that takes longer than `db::CALL_TIMEOUT` counts as failed. Per-row data errors never come here as errors: the caller turns them into a
    /// verdict.
    pub(crate) async fn retry<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Abandoned>
    where
        E: std::fmt::Display + From<sqlx::Error>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            // Each call bounded (a silent database is an error after `db::CALL_TIMEOUT`), and the
            // hard stop heard while it runs.
            let result = tokio::select! {
                r = crate::db::bounded(op()) => r,
                _ = self.hard_stop.cancelled() => return Err(Abandoned),
            };
            match result {
                Ok(v) => {
                    self.health.set_db(true);
                    return Ok(v);
                }
                Err(e) => {
                    self.health.set_db(false);
                    metrics::counter!("wxnotify_db_errors_total").increment(1);
                    tracing::warn!(error = %e, what, retry_in_ms = delay.as_millis() as u64, "database call failed; retrying");
                    tokio::select! {
                        _ = self.hard_stop.cancelled() => return Err(Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
