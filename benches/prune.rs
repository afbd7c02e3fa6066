//! Retention benchmark (issue 11): `wxnotify prune` on millions of old rows while a worker
//! delivers live traffic. Prints figures, asserts nothing but correctness.
//!
//!   cargo bench --bench prune                 # 2,000,000 old deliveries (and attempts), 20,000 live
//!   cargo bench --bench prune -- 500000       # fewer old rows
//!
//! Under `cargo test --all-targets` (the CI) it runs tiny, as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;

use common::{APP_ID, fresh_database};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let old: i64 = if bench {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(2_000_000)
    } else {
        println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
        2_000
    };
    let live = if bench { 20_000 } else { 200 };
    support::runtime().block_on(async {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (db_url, pool) = fresh_database(&id, 4).await;
        insert_old(&pool, old).await;
        let alone = support::live_run(&db_url, &pool, live).await;
        println!("bench: live traffic, no prune running     {alone:>8.0} deliveries/s ({live} events)");
        // Prune while the next live run delivers.
        let p = pool.clone();
        let prune = tokio::spawn(async move {
            let cutoff = Utc::now() - chrono::TimeDelta::days(180);
            wxnotify::ops::prune::prune(&p, cutoff, false, Duration::from_millis(20)).await
        });
        let during = support::live_run(&db_url, &pool, live).await;
        let live_done = Instant::now();
        let pruned = prune.await.expect("prune task").expect("prune");
        println!(
            "bench: live traffic, prune running        {during:>8.0} deliveries/s ({:.0}% of alone)",
            100.0 * during / alone
        );
        println!(
            "bench: prune: {} old deliveries (and their attempts) in {:.1} s ({:.0} rows/s); finished {:.1} s after the live run",
            pruned.deliveries,
            pruned.seconds,
            pruned.deliveries as f64 / pruned.seconds,
            live_done.elapsed().as_secs_f64()
        );
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE created_at < now() - interval '180 days'")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(left, 0, "every old final row pruned");
        assert_eq!(pruned.deliveries, old as u64);
        pool.close().await;
    });
}

/// `n` final deliveries created 200–400 days ago, each with one attempt.
async fn insert_old(pool: &PgPool, n: i64) {
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, attempts, created_at, updated_at, sent_at, wechat_msgid)
         SELECT 'old-' || g, 'booking.confirmed', $2, 'o-old-' || g, 'TPL_BOOKING_CONFIRMED',
                now() - make_interval(days => (200 + g % 200)::int), 'wxn-old-' || g,
                CASE WHEN g % 50 = 0 THEN 'dead' ELSE 'sent' END, 1,
                now() - make_interval(days => (200 + g % 200)::int), now() - make_interval(days => (200 + g % 200)::int),
                now() - make_interval(days => (200 + g % 200)::int), g
           FROM generate_series(1, $1) AS g",
    )
    .bind(n)
    .bind(APP_ID)
    .execute(pool)
    .await
    .expect("old deliveries");
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, http_status, errcode)
         SELECT id, 1, created_at, 30, 200, 0 FROM deliveries",
    )
    .execute(pool)
    .await
    .expect("old attempts");
    sqlx::query("VACUUM ANALYZE deliveries")
        .execute(pool)
        .await
        .expect("analyze");
    println!(
        "bench: ({n} old deliveries and attempts inserted in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
