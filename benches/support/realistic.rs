//! The realistic car-wash traffic of the throughput benchmark: the shipped templates.toml and, for
//! each booking, `booking.created`, `booking.confirmed` (a confirmation and a reminder falling
//! due at once: the slot starts in an hour), then `booking.cancelled` for one booking in five
//! (a notice; it cancels the reminder if that has not gone yet) or `booking.completed`.
//! Four deliveries a booking; the clock runs until every one is final.

use std::time::{Duration, Instant};

use chrono::{FixedOffset, TimeDelta, Utc};
use sqlx::PgPool;

/// Postgres's own counters, read before and after a run: what it did per delivery.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PgWork {
    pub commits: i64,
    pub rows_written: i64,
    pub wal_bytes: i64,
}

impl PgWork {
    /// This database's commits and rows written; the cluster's WAL (this run is the only load
    /// a benchmark should have).
    pub(crate) async fn read(pool: &PgPool) -> Self {
        let (commits, rows_written): (i64, i64) = sqlx::query_as(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted
               FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        let wal_bytes: i64 = sqlx::query_scalar("SELECT wal_bytes::bigint FROM pg_stat_wal")
            .fetch_one(pool)
            .await
            .unwrap_or_default();
        Self {
            commits,
            rows_written,
            wal_bytes,
        }
    }

    pub(crate) fn per(self, before: Self, deliveries: usize) -> String {
        let n = deliveries.max(1) as f64;
        format!(
            "Postgres per delivery: {:.1} commits, {:.1} rows written, {:.0} WAL bytes",
            (self.commits - before.commits) as f64 / n,
            (self.rows_written - before.rows_written) as f64 / n,
            (self.wal_bytes - before.wal_bytes) as f64 / n,
        )
    }
}

/// The events of `bookings` bookings, as (routing key, body), each booking's in order.
pub(crate) fn bodies(bookings: usize) -> Vec<(String, Vec<u8>)> {
    let bj = FixedOffset::east_opt(8 * 3600).expect("offset");
    let now = Utc::now();
    let slot = (now + TimeDelta::minutes(60)).with_timezone(&bj).to_rfc3339();
    let mut out = Vec::with_capacity(bookings * 3);
    for i in 0..bookings {
        let last = if i % 5 == 0 {
            "booking.cancelled"
        } else {
            "booking.completed"
        };
        for (k, event_type) in ["booking.created", "booking.confirmed", last].into_iter().enumerate() {
            let occurred = (now + TimeDelta::milliseconds(k as i64))
                .with_timezone(&bj)
                .to_rfc3339();
            let body = serde_json::json!({
                "event_id": format!("real-{i:07}-{k}"), "event_type": event_type,
                "occurred_at": occurred, "openid": format!("o-real-{i:07}"),
                "data": {"booking_id": format!("B-{i:07}"), "service": "精洗套餐", "store": "徐汇店",
                         "slot_start": slot, "plate": "沪A12345", "price_cents": 3980,
                         "points": 40, "reason": "门店通知"}
            });
            out.push((event_type.to_string(), body.to_string().into_bytes()));
        }
    }
    out
}

/// Deliveries a run of `bookings` bookings makes.
pub(crate) fn deliveries(bookings: usize) -> usize {
    bookings * 4
}

/// Waits until the run's deliveries are all there and final; the seconds it took from `started`.
pub(crate) async fn wait_final(pool: &PgPool, bookings: usize, started: Instant) -> f64 {
    let deadline = started + Duration::from_secs(900);
    loop {
        let (all, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'retrying', 'scheduled'))
               FROM deliveries",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        if all >= deliveries(bookings) as i64 && open == 0 {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "not final within 15 minutes ({all} rows, {open} open)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
