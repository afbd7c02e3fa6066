//! Scheduling benchmark (issue 9): prints figures, asserts nothing but correctness.
//!
//!   cargo bench --bench schedule                  # 1,000,000 waiting, 20,000 live, 10,000 due at once
//!   cargo bench --bench schedule -- 200000        # fewer waiting rows
//!
//! Under `cargo test --all-targets` (the CI) it runs tiny, as a smoke test.
//!
//! 1. Live traffic (one template, sent at once) through one `wxnotify worker` process, with no
//!    deliveries waiting, then with N deliveries scheduled days ahead (inserted straight into the
//!    ledger): the ratio says what the waiting rows cost the live path (target ≥ 90%).
//! 2. 10,000 deliveries falling due in the same second, with the worker running: the time from
//!    that second until the last one is recorded `sent` (target ≤ 5 s), and the release lateness.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use sqlx::PgPool;

use common::{APP_ID, fresh_database};
use support::{Broker, sent, sim, spawn_worker, stop_worker};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let waiting: i64 = if bench {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(1_000_000)
    } else {
        println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
        1_000
    };
    let (live, due) = if bench { (20_000, 10_000) } else { (200, 200) };
    support::runtime().block_on(async {
        // Empty, full, empty again: the machine warms up (and is noisy); the full run is compared
        // with the mean of the two empty ones around it.
        let before = live_run(live, 0).await;
        println!("bench: live traffic, nothing waiting       {before:>8.0} deliveries/s ({live} events)");
        let full = live_run(live, waiting).await;
        println!("bench: live traffic, {waiting} waiting   {full:>8.0} deliveries/s");
        let after = live_run(live, 0).await;
        println!("bench: live traffic, nothing waiting       {after:>8.0} deliveries/s (again)");
        println!(
            "bench: with {waiting} waiting, live traffic keeps {:.0}% of its throughput (target ≥ 90%)",
            200.0 * full / (before + after)
        );
        let (all_sent, p50, max) = due_at_once(due).await;
        println!(
            "bench: {due} falling due in one second: all sent {all_sent:.2} s after it (target ≤ 5 s); sent after due_at: p50 {:.0} ms, max {:.0} ms",
            p50 * 1000.0,
            max * 1000.0
        );
    });
}

/// Inserts `n` deliveries scheduled 1 to 30 days ahead, straight into the ledger.
async fn schedule_far(pool: &PgPool, n: i64) {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, due_at, not_after, cancel_key, payload)
         SELECT 'far-' || g, 'booking.confirmed', $2, 'o-far-' || g, 'TPL_BOOKING_REMINDER', now(), 'wxn-far-' || g,
                'scheduled', now() + make_interval(days => (1 + g % 30)::int, secs => (g % 86400)::float8), now() + interval '60 days',
                'B-' || g, '{}'
           FROM generate_series(1, $1) AS g",
    )
    .bind(n)
    .bind(APP_ID)
    .execute(pool)
    .await
    .expect("schedule far");
    sqlx::query("ANALYZE deliveries").execute(pool).await.expect("analyze");
    println!(
        "bench: ({n} waiting deliveries inserted in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}

/// Deliveries per second of `n` queued live events, with `waiting` scheduled rows in the ledger.
async fn live_run(n: usize, waiting: i64) -> f64 {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    if waiting > 0 {
        schedule_far(&pool, waiting).await;
    }
    let rate = support::live_run(&db_url, &pool, n).await;
    pool.close().await;
    rate
}

/// `n` deliveries due in the same second, a worker running: (seconds from that second to the last
/// `sent`, release lateness p50, max).
async fn due_at_once(n: i64) -> (f64, f64, f64) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    let sim = sim();
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("bench").await;
    let child = spawn_worker(&db_url, &broker.topology, sim_addr, "127.0.0.1:0");
    // The worker is up when it registered.
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers")
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('second', now()) + interval '3 seconds'")
            .fetch_one(&pool)
            .await
            .expect("now");
    let template = serde_json::json!({"event_type": "booking.confirmed", "occurred_at": "2026-11-21T09:30:00+08:00",
        "data": {"booking_id": "B-1", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}});
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, due_at, payload)
         SELECT 'due-' || g, 'booking.confirmed', $2, 'o-due-' || g, 'TPL_BOOKING_CONFIRMED', now(), 'wxn-due-' || g,
                'scheduled', $3 + make_interval(secs => ((g % 1000) / 1000.0)::float8),
                ($4::jsonb || jsonb_build_object('event_id', 'due-' || g, 'openid', 'o-due-' || g))::text
           FROM generate_series(1, $1) AS g",
    )
    .bind(n)
    .bind(APP_ID)
    .bind(second)
    .bind(template)
    .execute(&pool)
    .await
    .expect("schedule due");
    sqlx::query("SELECT pg_notify('wxnotify_due', '')")
        .execute(&pool)
        .await
        .expect("notify");
    let deadline = Instant::now() + Duration::from_secs(300);
    while sent(&pool).await < n {
        assert!(Instant::now() < deadline, "not delivered within 5 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (all_sent, p50, max): (f64, f64, f64) = sqlx::query_as(
        "SELECT extract(epoch FROM max(sent_at) - $1)::float8,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - due_at))::float8,
                max(extract(epoch FROM sent_at - due_at))::float8
           FROM deliveries",
    )
    .bind(second)
    .fetch_one(&pool)
    .await
    .expect("figures");
    assert_eq!(sim.stats().accepted, n as u64, "one message per delivery");
    stop_worker(child).await;
    broker.close().await;
    pool.close().await;
    (all_sent, p50, max)
}
