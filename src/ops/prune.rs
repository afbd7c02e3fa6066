//! `wxnotify prune --older-than DURATION [--dry-run]` (docs/interface.md §5): deletes final deliveries
//! (`sent`, `dead`, `cancelled`, `expired`, `suppressed`) created before the cutoff, with their
//! attempts, in small batches, each its own short transaction that skips rows someone holds, so
//! workers are neither blocked nor slowed. Never a waiting (`scheduled`), open (`pending`,
//! `retrying`) or in-doubt delivery: those rows are what stops a second message. Also the
//! receipts and replay records older than the cutoff, and workers gone for a day, in batches too.
//! `followers` is state, not history: it stays.
//!
//! The cutoff is at least a day back ([`check_cutoff`]). A cancellation older than it is kept
//! while a delivery it could still cancel may come: one of its key that is waiting, open, or dead
//! (a dead letter can be replayed, and the replay is checked against the cancellations again).
//!
//! The reporting views count what is left: days after the cutoff stay exact.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Rows deleted per statement: small enough that each statement is short.
const BATCH: i64 = 2_000;
/// The statuses nothing more will happen to.
const FINAL: [&str; 5] = ["sent", "dead", "cancelled", "expired", "suppressed"];
/// The youngest cutoff `prune` takes (docs/interface.md §5: at least 1 day).
pub const MIN_AGE: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// A cutoff less than [`MIN_AGE`] back from now is refused: rows that young are still in use
/// (cancellations waiting for the bookings they cancel, receipts for sends in flight).
pub fn check_cutoff(cutoff: DateTime<Utc>) -> Result<(), String> {
    if cutoff > Utc::now() - MIN_AGE {
        return Err(format!(
            "--older-than: {} is less than 1 day ago; prune keeps at least a day (e.g. --older-than 90d)",
            cutoff.to_rfc3339()
        ));
    }
    Ok(())
}

/// Old receipts, oldest first by the `delivery_receipts_received_at` index (in order: a scan from
/// the table's start would step over the rows earlier batches left dead, more each batch), then
/// deleted by their row addresses (`ctid`, locked: they cannot move), a TID scan whatever the
/// planner thinks of the table's size.
pub const RECEIPTS: &str = "DELETE FROM delivery_receipts WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM delivery_receipts WHERE received_at < $1
      ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))";
/// Old cancellations (oldest first, by the `delivery_cancellations_created_at` index) that no
/// delivery can still need: none of their key is waiting, open, or dead (replayable); probed by
/// `deliveries_cancel_key`.
pub const CANCELLATIONS: &str = "DELETE FROM delivery_cancellations WHERE ctid = ANY(ARRAY(
     SELECT c.ctid FROM delivery_cancellations c
      WHERE c.created_at < $1 AND c.occurred_at < $1
        AND NOT EXISTS (SELECT 1 FROM deliveries d
                         WHERE d.cancel_key IS NOT NULL
                           AND (d.app_id, d.template_id, d.cancel_key) = (c.app_id, c.template_id, c.cancel_key)
                           AND d.status IN ('scheduled', 'pending', 'retrying', 'dead'))
      ORDER BY c.created_at LIMIT $2 FOR UPDATE OF c SKIP LOCKED))";
/// Old replay records, oldest first by the `dlq_replays_replayed_at` index.
pub const REPLAYS: &str = "DELETE FROM dlq_replays WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM dlq_replays WHERE replayed_at < $1
      ORDER BY replayed_at LIMIT $2 FOR UPDATE SKIP LOCKED))";

#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    pub cutoff: DateTime<Utc>,
    pub deliveries: u64,
    pub cancellations: u64,
    /// Receipts WeChat pushed before the cutoff (their deliveries are gone or final).
    pub receipts: u64,
    pub replays: u64,
    pub workers: u64,
    pub seconds: f64,
    pub dry_run: bool,
}

/// Prunes (or with `dry_run` counts) what is older than `cutoff`; `pause` between batches leaves
/// room for the workers.
pub async fn prune(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    dry_run: bool,
    pause: Duration,
) -> Result<Pruned, sqlx::Error> {
    let started = Instant::now();
    let mut out = Pruned {
        cutoff,
        dry_run,
        ..Pruned::default()
    };
    if dry_run {
        out.deliveries = count_final_deliveries(pool, cutoff).await?;
        out.seconds = started.elapsed().as_secs_f64();
        return Ok(out);
    }
    out.deliveries = delete_final_deliveries(pool, cutoff, pause).await?;
    out.receipts = delete_in_batches(pool, RECEIPTS, cutoff, pause).await?;
    out.cancellations = delete_in_batches(pool, CANCELLATIONS, cutoff, pause).await?;
    out.replays = delete_in_batches(pool, REPLAYS, cutoff, pause).await?;
    out.workers = sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected();
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// The final deliveries created before `cutoff` and not in doubt: what a prune would delete.
async fn count_final_deliveries(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM deliveries
          WHERE created_at < $1 AND status = ANY($2) AND in_doubt_since IS NULL",
    )
    .bind(cutoff)
    .bind(&FINAL[..])
    .fetch_one(pool)
    .await? as u64)
}

/// Deletes those final deliveries (their attempts go with them) in batches, skipping rows someone
/// holds, `pause` between batches; returns how many.
async fn delete_final_deliveries(pool: &PgPool, cutoff: DateTime<Utc>, pause: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT id FROM deliveries
                  WHERE created_at < $1 AND status = ANY($2) AND in_doubt_since IS NULL
                  LIMIT $3
                    FOR UPDATE SKIP LOCKED)",
        )
        .bind(cutoff)
        .bind(&FINAL[..])
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        if n < BATCH as u64 {
            return Ok(deleted);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Runs `delete` (`$1` the cutoff, `$2` the batch size) until a batch deletes fewer than a
/// batch, `pause` between batches; returns how many rows went.
async fn delete_in_batches(
    pool: &PgPool,
    delete: &'static str,
    cutoff: DateTime<Utc>,
    pause: Duration,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(delete)
            .bind(cutoff)
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += n;
        if n < BATCH as u64 {
            return Ok(deleted);
        }
        tokio::time::sleep(pause).await;
    }
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "would delete {} final deliveries (with their attempts) created before {}",
                self.deliveries,
                self.cutoff.to_rfc3339()
            );
        }
        write!(
            f,
            "deleted {} final deliveries (with their attempts), {} receipts, {} cancellations, {} replay records created before {}, and {} workers gone for a day, in {:.1} s",
            self.deliveries,
            self.receipts,
            self.cancellations,
            self.replays,
            self.cutoff.to_rfc3339(),
            self.workers,
            self.seconds
        )
    }
}
