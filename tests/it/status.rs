//! `wxnotify status`: tokens, queues, ledger and workers as an on-call engineer sees them.

use std::path::PathBuf;
use std::time::Duration;

use crate::helpers::{APP_ID, TestEnv, WorkerOpts, event, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_token_the_queues_the_waiting_deliveries_and_the_workers() {
    let mut env = TestEnv::new().await;
    env.templates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml");
    let worker = env
        .spawn_worker(&WorkerOpts {
            templates: Some(env.templates.clone()),
            ..WorkerOpts::default()
        })
        .await;
    // A booking whose slot is two hours ahead: the confirmation goes, the reminder waits.
    let mut e = event("st-1", "booking.confirmed", "oSt");
    let slot = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    e["data"]["slot_start"] = slot.to_rfc3339().into();
    env.publish(&e).await;
    wait_for(
        "confirmation sent, reminder scheduled",
        Duration::from_secs(60),
        || async {
            env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'scheduled')")
                .await
                == 2
        },
    )
    .await;

    let out = env.wxnotify(&["status", "--format", "json"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &s["apps"][0];
    assert_eq!(app["app_id"], APP_ID);
    assert!(app["token_generation"].as_i64().unwrap() >= 1);
    assert!(app["token_expires_in_secs"].as_i64().unwrap() > 0);
    assert!(app["token_calls_today"].as_i64().unwrap() >= 1);
    assert_eq!(app["blocked_until"], serde_json::Value::Null);
    assert_eq!(s["scheduled"], 1);
    assert_eq!(s["due"], 0);
    assert_eq!(s["in_doubt"], 0);
    assert_eq!(s["live_workers"].as_array().unwrap().len(), 1);
    let queues = s["queues"].as_array().unwrap();
    let work = queues
        .iter()
        .find(|q| q["name"] == env.topology.queue.as_str())
        .unwrap();
    assert_eq!(work["consumers"], 1);
    assert_eq!(work["messages"], 0);
    assert!(
        queues
            .iter()
            .any(|q| q["name"] == env.topology.dlq.as_str() && q["messages"] == 0)
    );
    assert!(
        queues.iter().any(|q| q["name"].as_str().unwrap().contains(".retry.")),
        "the retry queues the worker declared are listed: {queues:?}"
    );
    // The table, for people: the app, the queue, the counts.
    let out = env.wxnotify(&["status"]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(APP_ID) && text.contains(&env.topology.queue), "{text}");
    assert!(text.contains("scheduled 1, due now 0"), "{text}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_a_broker_without_the_queues_says_absent_and_logs_no_error() {
    // No worker has declared anything under this name: every passive declare is refused, which
    // lapin logged as an ERROR line per queue (18 of them) above a correct table.
    let env = TestEnv::new().await;
    let out = env
        .wxnotify(&["status"])
        .env("WXNOTIFY_QUEUE", format!("{}-never-declared", env.topology.queue))
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("absent"), "{stdout}");
    assert!(
        !stderr.contains("ERROR"),
        "a refused passive declare is not an error:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_config_shows_the_effective_settings_with_secrets_masked() {
    let env = TestEnv::new().await;
    let out = env.wxnotify(&["worker", "--print-config"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("WXNOTIFY_QUEUE={}", env.topology.queue)),
        "{text}"
    );
    assert!(text.contains(&format!("WECHAT_APP_ID={APP_ID}")), "{text}");
    assert!(text.contains("WECHAT_APP_SECRET=*** (set)"), "{text}");
    assert!(!text.contains(crate::helpers::APP_SECRET), "the secret leaked: {text}");
    assert!(
        text.contains("postgres:***@"),
        "the database password is masked: {text}"
    );
    // Nothing else happened: no worker registered.
    assert_eq!(env.count("SELECT count(*) FROM workers").await, 0);
    let out = env
        .wxnotify(&["worker", "--print-config"])
        .env("WXNOTIFY_MAX_ATTEMPTS", "0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WXNOTIFY_MAX_ATTEMPTS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_migrate_and_say_when_the_schema_is_behind() {
    let env = TestEnv::new().await;
    // The database as the release before issue 16 left it.
    crate::helpers::schema_at(&env.pool, crate::helpers::BEFORE_ISSUE_16).await;
    let last = wxnotify::db::MIGRATOR.iter().map(|m| m.version).max().unwrap();
    let applied = || async {
        sqlx::query_scalar::<_, Vec<i64>>(
            "SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM _sqlx_migrations",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let before = applied().await;
    for args in [
        &["status"][..],
        &["report"],
        &["scheduled", "list"],
        &["scheduled", "cancel", "--cancel-key", "B-1"],
        &["prune", "--older-than", "180d"],
    ] {
        let out = env.wxnotify(args).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "wxnotify {args:?}: {stderr}");
        assert!(
            stderr.contains("wxnotify migrate"),
            "wxnotify {args:?} says what to do: {stderr}"
        );
        assert_eq!(applied().await, before, "wxnotify {args:?} migrated the database");
    }
    env.wxnotify_ok(&["migrate"]).await;
    assert!(applied().await.contains(&last));
    env.wxnotify_ok(&["report"]).await;
}
