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
async fn prune_deletes_old_final_deliveries_only() {
    let env = TestEnv::new().await;
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

/// Every `wxnotify_` series the README lists is exposed by a fresh worker, before anything happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_worker_exposes_every_series_with_its_help() {
    let env = TestEnv::new().await;
    let mut child = env
        .wxnotify(&["worker"])
        .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The admin address is logged at start-up.
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("addr=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("no admin address logged")
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}/metrics");
    let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    wait_for("sampled gauges", Duration::from_secs(30), || async {
        scrape().await.contains("wxnotify_live_workers 1")
    })
    .await;
    let text = scrape().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // The worker's metrics table: rows starting with a `wxnotify_` series.
    let listed: std::collections::BTreeSet<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `wxnotify_"))
        .flat_map(|l| l.split('|').nth(1).unwrap().split('`'))
        .filter(|w| w.starts_with("wxnotify_"))
        .map(|w| w.split('{').next().unwrap())
        .collect();
    assert!(listed.len() >= 20, "the README lists the metrics: {listed:?}");
    for name in &listed {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        assert!(
            text.lines().any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} has no series"
        );
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
