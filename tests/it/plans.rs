//! SQL that must not grow with the table (issue 16): the statements the workers run every few
//! seconds and the ones ops run on big tables, checked with `EXPLAIN ANALYZE` on tables of some
//! ten thousand rows: each reads a bounded number of rows, whatever the table holds.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, PgPool};

use wxnotify::ops::{scheduled, status};

use crate::helpers::{APP_ID, TestEnv};

/// Rows the scans of `plan` read: returned by each scan node over every loop, plus those its
/// filter removed.
fn rows_read(plan: &serde_json::Value) -> f64 {
    let own = match plan["Node Type"].as_str() {
        Some(t) if t.contains("Scan") && plan.get("Relation Name").is_some() => {
            let loops = plan["Actual Loops"].as_f64().unwrap_or(1.0);
            (plan["Actual Rows"].as_f64().unwrap_or(0.0) + plan["Rows Removed by Filter"].as_f64().unwrap_or(0.0))
                * loops
        }
        _ => 0.0,
    };
    own + plan["Plans"]
        .as_array()
        .map_or(0.0, |children| children.iter().map(rows_read).sum())
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of `sql` with `args`, in a transaction rolled back (a DELETE
/// or UPDATE changes nothing); returns the rows its scans read and the plan.
async fn explain(pool: &PgPool, sql: &str, args: PgArguments) -> (f64, serde_json::Value) {
    let mut tx = pool.begin().await.unwrap();
    let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
    let plan: serde_json::Value = sqlx::query_scalar_with(sqlx::AssertSqlSafe(explain), args)
        .fetch_one(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.rollback().await.unwrap();
    let plan = plan[0]["Plan"].clone();
    (rows_read(&plan), plan)
}

/// 60,000 deliveries, 40,000 of them scheduled (a campaign of reminders), over three templates,
/// each with a cancel key; 20 in doubt (retrying). Analyzed, as autovacuum would have.
async fn big_ledger(env: &TestEnv) {
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status, occurred_at,
                                 client_msg_id, due_at, cancel_key, in_doubt_since)
         SELECT 'e-' || g, 'booking.confirmed', $1, 'o' || g, 'TPL_' || (g % 3),
                CASE WHEN g % 3 = 0 THEN 'sent' WHEN g % 2000 = 1 THEN 'retrying' ELSE 'scheduled' END,
                now(), 'c' || g, CASE WHEN g % 3 <> 0 THEN now() + make_interval(secs => g) END, 'B-' || g,
                CASE WHEN g % 2000 = 1 AND g % 3 <> 0 THEN now() END
           FROM generate_series(1, 60000) g",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE deliveries")
        .execute(&env.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauges_sample_reads_a_bounded_number_of_rows() {
    let env = TestEnv::new().await;
    big_ledger(&env).await;
    let mut args = PgArguments::default();
    args.add(status::SAMPLE_CAP).unwrap();
    let (read, plan) = explain(&env.pool, status::COUNTS_SAMPLE, args).await;
    assert!(
        read <= 2.5 * status::SAMPLE_CAP as f64,
        "every worker reads {read} rows every 5 s: {plan:#}"
    );
    // What it says: the in-doubt rows exactly, the scheduled ones capped, or estimated beyond.
    let s = status::sample(&env.pool).await.unwrap();
    assert_eq!(s.in_doubt, 20);
    assert!(s.scheduled >= status::SAMPLE_CAP, "{s:?}");
    assert!(
        (35_000..=45_000).contains(&s.scheduled),
        "beyond the cap, the planner's estimate: {s:?}"
    );
    // `status` stays exact.
    let exact = status::ledger(&env.pool).await.unwrap();
    let scheduled = env
        .count("SELECT count(*) FROM deliveries WHERE status = 'scheduled'")
        .await;
    assert_eq!((exact.in_doubt, exact.scheduled), (20, scheduled));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_by_key_reads_a_bounded_number_of_rows() {
    let env = TestEnv::new().await;
    big_ledger(&env).await;
    let mut args = PgArguments::default();
    args.add("B-12346").unwrap();
    args.add(None::<String>).unwrap();
    let (read, plan) = explain(&env.pool, scheduled::CANCEL_BY_KEY, args).await;
    assert!(read <= 100.0, "cancel by key read {read} rows: {plan:#}");
    let n = scheduled::cancel(
        &env.pool,
        &scheduled::CancelBy::Key {
            cancel_key: "B-12346".into(),
            app_id: Some(APP_ID.into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    let n = scheduled::cancel(
        &env.pool,
        &scheduled::CancelBy::Key {
            cancel_key: "B-12347".into(),
            app_id: Some("wx-another-app".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 0, "--app-id limits it to that app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_batch_of_receipts_reads_about_a_batch() {
    let env = TestEnv::new().await;
    // 30,000 recent receipts first in the table, then 3,000 old ones: as after earlier batches
    // deleted the old rows at the table's start (dead until vacuumed), the old rows come last.
    sqlx::query(
        "INSERT INTO delivery_receipts (app_id, msgid, status, wechat_status, event_at, received_at)
         SELECT $1, g, 'delivered', 'success', now(), CASE WHEN g > 30000 THEN now() - interval '200 days' ELSE now() END
           FROM generate_series(1, 33000) g",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE delivery_receipts")
        .execute(&env.pool)
        .await
        .unwrap();
    let mut args = PgArguments::default();
    args.add(chrono::Utc::now() - chrono::TimeDelta::days(180)).unwrap();
    args.add(2_000_i64).unwrap();
    let (read, plan) = explain(&env.pool, wxnotify::ops::prune::RECEIPTS, args).await;
    assert!(read <= 5_000.0, "a batch of 2,000 read {read} rows: {plan:#}");
}
