//! `wxnotify prune`: old final deliveries go, everything else stays.

use crate::helpers::{APP_ID, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_final_deliveries_only() {
    let env = TestEnv::new().await;
    seed(&env).await;
    dry_run_deletes_nothing(&env).await;
    prune_keeps_all_but_old_final_deliveries(&env).await;
}

/// Old rows of every status, one in doubt, an old ambiguous one and recent ones, each with an
/// attempt; an old receipt and a recent one.
async fn seed(env: &TestEnv) {
    // Old rows of every status, one in doubt, and recent ones; each with an attempt.
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, created_at, in_doubt_since, due_at)
         SELECT 'p-' || s || '-' || age, 'booking.confirmed', $1, 'o', 'T', now(), 'c-' || s || age, s,
                now() - make_interval(days => age), CASE WHEN s = 'retrying' THEN now() END,
                CASE WHEN s = 'scheduled' THEN now() + interval '1 day' END
           FROM unnest(ARRAY['sent', 'dead', 'cancelled', 'expired', 'suppressed', 'scheduled', 'pending', 'retrying']) AS s,
                unnest(ARRAY[200, 10]) AS age",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, created_at, in_doubt_since, dead_reason)
         VALUES ('p-ambiguous', 'booking.reminder', $1, 'o', 'T', now(), 'c-amb', 'dead', now() - interval '300 days',
                 now() - interval '300 days', 'ambiguous')",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms)
         SELECT id, 1, created_at, 5 FROM deliveries",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    sqlx::query(
        "INSERT INTO delivery_receipts (app_id, msgid, status, wechat_status, event_at, received_at)
         VALUES ($1, 1, 'delivered', 'success', now() - interval '200 days', now() - interval '200 days'),
                ($1, 2, 'delivered', 'success', now(), now())",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// `--dry-run` counts what would go and deletes nothing.
async fn dry_run_deletes_nothing(env: &TestEnv) {
    let out = env
        .wxnotify(&["prune", "--older-than", "180d", "--dry-run"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("would delete 5 final deliveries"));
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries").await,
        17,
        "a dry run deletes nothing"
    );
}

/// The old final deliveries go, with their attempts; the old receipt goes; everything else stays.
async fn prune_keeps_all_but_old_final_deliveries(env: &TestEnv) {
    let out = env.wxnotify(&["prune", "--older-than", "180d"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("deleted 5 final deliveries"));
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM deliveries ORDER BY event_id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    for gone in [
        "p-sent-200",
        "p-dead-200",
        "p-cancelled-200",
        "p-expired-200",
        "p-suppressed-200",
    ] {
        assert!(!left.contains(&gone.to_string()), "{gone} kept");
    }
    for kept in [
        "p-scheduled-200",
        "p-pending-200",
        "p-retrying-200",
        "p-ambiguous",
        "p-sent-10",
        "p-dead-10",
    ] {
        assert!(left.contains(&kept.to_string()), "{kept} pruned");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM delivery_attempts").await,
        12,
        "attempts go with their delivery"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM delivery_receipts").await,
        1,
        "the old receipt went"
    );
}
