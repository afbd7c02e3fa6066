//! `wxnotify migrate` on a live, large ledger (issue 16): the migrations since the release before
//! build their indexes and validate their checks concurrently, so workers keep delivering while
//! they run and nobody's write waits for a table lock longer than a catalog change takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{APP_ID, BEFORE_ISSUE_16, TestEnv, WorkerOpts, event, schema_at, wait_for};

/// Rows in the ledger when `migrate` runs.
const ROWS: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_keep_delivering_while_migrate_builds_indexes_on_a_large_ledger() {
    let env = TestEnv::new().await;
    schema_at(&env.pool, BEFORE_ISSUE_16).await;
    fill(&env).await;

    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    // Bookings keep coming while `migrate` runs, and the locks are watched.
    let publishing = Arc::new(AtomicBool::new(true));
    let published = publish_while(&env, publishing.clone());
    let watching = Arc::new(AtomicBool::new(true));
    let watch = watch_locks(env.pool.clone(), watching.clone());
    let migrate = async {
        // Some deliveries before, so the worker is warm.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        // Two at once, as when several new workers start together (each migrates first): the
        // one that waits for the other must not hold a snapshot the other's concurrent index
        // build waits for (a deadlock, Postgres aborts one of them).
        let (a, b) = tokio::join!(env.wxnotify(&["migrate"]).output(), env.wxnotify(&["migrate"]).output());
        for out in [a.unwrap(), b.unwrap()] {
            assert!(
                out.status.success(),
                "migrate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let took = started.elapsed();
        let ended = chrono::Utc::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        publishing.store(false, Ordering::Relaxed);
        watching.store(false, Ordering::Relaxed);
        (took, ended)
    };
    let (published, seen, (took, ended)) = tokio::join!(published, watch, migrate);
    eprintln!(
        "migrate took {:.2} s; {published} bookings published",
        took.as_secs_f64()
    );
    assert!(seen.is_empty(), "locks that stop writers during migrate: {seen:?}");
    let during: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deliveries WHERE event_id LIKE 'live-%' AND status = 'sent'
            AND sent_at BETWEEN $1 AND $2",
    )
    .bind(ended - chrono::TimeDelta::from_std(took).unwrap())
    .bind(ended)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        took < Duration::from_millis(300) || during > 0,
        "no delivery was sent during the {took:?} migrate"
    );
    wait_for("every live booking sent", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id LIKE 'live-%' AND status = 'sent'")
            .await
            == i64::from(published)
    })
    .await;
    let invalid = env.count("SELECT count(*) FROM pg_index WHERE NOT indisvalid").await;
    assert_eq!(invalid, 0, "an index build was left half done");
    let applied = env.count("SELECT count(*) FROM _sqlx_migrations WHERE success").await;
    assert_eq!(applied as usize, wxnotify::db::MIGRATOR.iter().count());
    worker.stop().await;
}

/// The ledger `migrate` meets: `ROWS` sent deliveries and half as many receipts.
async fn fill(env: &TestEnv) {
    let filled = Instant::now();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status, occurred_at, client_msg_id, sent_at)
         SELECT 'old-' || g, 'booking.confirmed', $1, 'o' || g, 'T', 'sent', now(), 'c' || g, now()
           FROM generate_series(1, $2) g",
    )
    .bind(APP_ID)
    .bind(ROWS)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery_receipts (app_id, msgid, status, wechat_status, event_at)
         SELECT $1, g, 'delivered', 'success', now() FROM generate_series(1, $2 / 2) g",
    )
    .bind(APP_ID)
    .bind(ROWS)
    .execute(&env.pool)
    .await
    .unwrap();
    eprintln!("{ROWS} deliveries in {:.1} s", filled.elapsed().as_secs_f64());
}

/// Publishes a booking every 20 ms while `on`; returns how many.
async fn publish_while(env: &TestEnv, on: Arc<AtomicBool>) -> u32 {
    let mut n = 0;
    while on.load(Ordering::Relaxed) {
        env.publish(&event(&format!("live-{n}"), "booking.confirmed", "oLive"))
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n
}

/// A lock may be seen this long, at most, during `migrate`: the moment of a catalog change (a
/// check added NOT VALID), never a scan or a build under a lock that stops writers.
const LONGEST_LOCK: Duration = Duration::from_millis(250);

/// Every 10 ms while `on`: the table locks that would stop a worker's writes (anything stronger
/// than what CREATE INDEX CONCURRENTLY takes), held by anyone on the test's database, and
/// sessions waiting for a relation lock. (A relation the watcher cannot see yet, an index being
/// built, is nobody else's either.) Returns those seen for longer than [`LONGEST_LOCK`] in a row,
/// with how long.
async fn watch_locks(pool: sqlx::PgPool, on: Arc<AtomicBool>) -> Vec<String> {
    let mut since = std::collections::HashMap::<String, Instant>::new();
    let mut too_long = std::collections::BTreeMap::<String, Duration>::new();
    while on.load(Ordering::Relaxed) {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT l.relation::regclass::text || ' ' || l.mode || CASE WHEN l.granted THEN ' held' ELSE ' awaited' END
               FROM pg_locks l
               JOIN pg_class c ON c.oid = l.relation
              WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
                AND (l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
                     OR NOT l.granted)",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let now = Instant::now();
        since.retain(|lock, _| rows.contains(lock));
        for lock in rows {
            let seen = now - *since.entry(lock.clone()).or_insert(now);
            if seen > LONGEST_LOCK {
                let longest = too_long.entry(lock).or_default();
                *longest = (*longest).max(seen);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    too_long
        .into_iter()
        .map(|(lock, d)| format!("{lock} for {} ms", d.as_millis()))
        .collect()
}
