//! The realistic car-wash traffic of the throughput benchmark: the shipped templates.toml and, for
//! each booking, `booking.created`, `booking.confirmed` (a confirmation and a reminder falling
//! due at once: the slot starts in an hour), then `booking.cancelled` for one booking in five
//! (a notice; it cancels the reminder if that has not gone yet) or `booking.completed`.
//! Four deliveries a booking; the clock runs until every one is final.

use std::time::{Duration, Instant};

use chrono::{FixedOffset, TimeDelta, Utc};
use sqlx::PgPool;

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

/// Waits until the run's `deliveries` are all there and final; the seconds it took from `started`.
pub(crate) async fn wait_final(pool: &PgPool, deliveries: usize, started: Instant) -> f64 {
    let deadline = started + Duration::from_secs(900);
    loop {
        let (all, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'retrying', 'scheduled'))
               FROM deliveries",
        )
        .fetch_one(pool)
        .await
        .unwrap_or_default();
        if all >= deliveries as i64 && open == 0 {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "not final within 15 minutes ({all} rows, {open} open)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
