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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_refuses_a_cutoff_younger_than_a_day() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO delivery_cancellations (app_id, template_id, cancel_key, event_id, event_type, occurred_at)
         VALUES ($1, 'TPL_REMINDER', 'B-1', 'cx-1', 'booking.cancelled', now())",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    for young in ["0s", "12h", "1439m"] {
        let out = env.wxnotify(&["prune", "--older-than", young]).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--older-than {young}: {stderr}");
        assert!(stderr.contains("--older-than"), "the message names the flag: {stderr}");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM delivery_cancellations").await,
        1,
        "a cancellation the booking it cancels may still follow is kept"
    );
    env.wxnotify_ok(&["prune", "--older-than", "1d"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_old_cancellations_a_delivery_can_still_need() {
    let env = TestEnv::new().await;
    // Three old cancellations: one whose key has nothing left, one whose key has a dead delivery
    // (a replay of its dead letter is checked against the cancellations again), one whose key
    // has a delivery still waiting; and a recent one.
    sqlx::query(
        "INSERT INTO delivery_cancellations (app_id, template_id, cancel_key, event_id, event_type, occurred_at, created_at)
         SELECT $1, 'TPL_REMINDER', k, 'cx-' || k, 'booking.cancelled', now() - make_interval(days => d), now() - make_interval(days => d)
           FROM unnest(ARRAY['gone', 'dead', 'waiting', 'recent'], ARRAY[200, 200, 200, 2]) AS t(k, d)",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 status, created_at, cancel_key, due_at)
         VALUES ('bk-dead', 'booking.confirmed', $1, 'o', 'TPL_REMINDER', now() - interval '201 days', 'c-d', 'dead',
                 now() - interval '1 day', 'dead', NULL),
                ('bk-wait', 'booking.confirmed', $1, 'o', 'TPL_REMINDER', now() - interval '201 days', 'c-w', 'scheduled',
                 now() - interval '201 days', 'waiting', now() + interval '1 day')",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    let out = env.wxnotify_ok(&["prune", "--older-than", "180d"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 cancellations"), "{stdout}");
    let left: Vec<String> = sqlx::query_scalar("SELECT cancel_key FROM delivery_cancellations ORDER BY cancel_key")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(left, ["dead", "recent", "waiting"]);
}
