//! `dlq list` shows dead letters and leaves them; `dlq replay` moves the chosen ones back once
//! the cause is fixed, records each replay, and leaves the others.

use std::time::Duration;

use secrecy::SecretString;
use wxnotify::ops::dlq::{self, ReplayFilter};
use wxnotify::ops::progress::Progress;
use wxnotify::queue::headers;

use crate::helpers::{TestEnv, WorkerOpts, amqp_url, event, plain_stderr, summary_line, wait_for};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_in_place_and_replayed_once_the_cause_is_fixed() {
    let env = TestEnv::new().await;
    let url = SecretString::from(amqp_url());
    env.sim.set_unsubscribed(&["oGone"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("d-gone", "booking.confirmed", "oGone")).await;
    env.publish_raw("booking.confirmed", b"{not json").await;
    wait_for("two dead letters", T, || async {
        dlq::list(&url, &env.topology, 10).await.unwrap().len() == 2
    })
    .await;

    // Listing twice shows the same two: nothing is removed.
    let rows = dlq::list(&url, &env.topology, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    let gone = rows
        .iter()
        .find(|r| r.event_id.as_deref() == Some("d-gone"))
        .expect("listed");
    assert_eq!(gone.reason, "permanent_error");
    assert_eq!(gone.errcode, Some(43004));
    assert_eq!(gone.event_type.as_deref(), Some("booking.confirmed"));
    assert!(gone.age_secs.is_some_and(|a| a >= 0), "age from wxnotify-dead-at");
    assert!(rows.iter().any(|r| r.reason == "invalid_event"));

    let by_errcode = ReplayFilter {
        errcode: Some(43004),
        ..Default::default()
    };
    let no_bar = Progress::hidden();
    let dry = dlq::replay(&url, &env.topology, &env.pool, &by_errcode, usize::MAX, true, &no_bar)
        .await
        .unwrap();
    assert_eq!(dry.replayed.len(), 1, "a dry run names the match");
    assert_eq!(
        dlq::list(&url, &env.topology, 10).await.unwrap().len(),
        2,
        "and moves nothing"
    );
    assert_eq!(env.count("SELECT count(*) FROM dlq_replays").await, 0);

    // The user follows the account again; ops replay what 43004 refused.
    env.sim.set_unsubscribed(&[]);
    // WeChat pushes `subscribe`; the receiver stores it (as here): the 43004 no longer suppresses.
    sqlx::query("UPDATE followers SET followed = true, changed_at = now(), source = 'push' WHERE openid = 'oGone'")
        .execute(&env.pool)
        .await
        .unwrap();
    let done = dlq::replay(&url, &env.topology, &env.pool, &by_errcode, usize::MAX, false, &no_bar)
        .await
        .unwrap();
    assert_eq!(done.replayed.len(), 1);
    wait_for("the replayed delivery is sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id = 'd-gone' AND status = 'sent'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.sim.stats().accepted, 1);
    let left = dlq::list(&url, &env.topology, 10).await.unwrap();
    assert_eq!(left.len(), 1, "the unmatched dead letter stays");
    assert_eq!(left[0].reason, "invalid_event");
    let (filter, reason, errcode): (String, String, Option<i64>) =
        sqlx::query_as("SELECT filter, reason, errcode FROM dlq_replays WHERE event_id = 'd-gone'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (filter.as_str(), reason.as_str(), errcode),
        ("--errcode 43004", "permanent_error", Some(43004))
    );

    // A second copy of the replayed event (say the DLQ held it twice) finds it sent: no resend.
    env.publish(&event("d-gone", "booking.confirmed", "oGone")).await;
    wait_for("the copy is consumed", T, || async {
        env.ready_everywhere().await == 0
    })
    .await;
    worker.stop().await;
    assert_eq!(env.sim.stats().accepted, 1, "still one message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_as_json_and_refuses_a_replay_without_a_filter() {
    let env = TestEnv::new().await;
    env.publish_raw("booking.confirmed", b"{not json").await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let url = SecretString::from(amqp_url());
    wait_for("one dead letter", T, || async {
        dlq::list(&url, &env.topology, 10).await.unwrap().len() == 1
    })
    .await;
    worker.stop().await;

    let out = env
        .wxnotify(&["dlq", "list", "--format", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(rows[0]["reason"], "invalid_event");

    let out = env.wxnotify(&["dlq", "replay"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_replayed_is_skipped_reported_and_left_in_place() {
    let env = TestEnv::new().await;
    let url = SecretString::from(amqp_url());
    // Its event id holds a NUL: Postgres cannot record its replay. First in the queue.
    let poison = event("r-poison", "booking.confirmed", "oP").to_string();
    env.publish_dead_letter(
        poison.as_bytes(),
        &[(headers::REASON, "permanent_error"), (headers::EVENT_ID, "r-\0poison")],
    )
    .await;
    let good = event("r-good", "booking.confirmed", "oG").to_string();
    env.publish_dead_letter(
        good.as_bytes(),
        &[(headers::REASON, "permanent_error"), (headers::EVENT_ID, "r-good")],
    )
    .await;

    let out = env
        .wxnotify(&["dlq", "replay", "--all", "--format", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["scanned"], 2);
    assert_eq!(report["replayed"].as_array().unwrap().len(), 1);
    assert_eq!(report["replayed"][0]["event_id"], "r-good");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["event_id"], "r-\0poison");
    let why = skipped[0]["reason"].as_str().unwrap();
    assert!(why.contains("0x00"), "the database's reason: {why}");

    // The good one is in the work queue, its replay recorded; the poison one stays in the DLQ
    // and no copy of it went anywhere.
    assert_eq!(env.ready_everywhere().await, 1);
    assert_eq!(
        env.count("SELECT count(*) FROM dlq_replays WHERE event_id = 'r-good'")
            .await,
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM dlq_replays").await, 1);
    let left = dlq::list(&url, &env.topology, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id.as_deref(), Some("r-\0poison"));

    // Again, as a table: skipped again, named, and still no copy.
    let out = env.wxnotify(&["dlq", "replay", "--all"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("skipped 1"), "{table}");
    assert!(table.contains("r-\\0poison"), "the id, escaped: {table}");
    assert_eq!(env.ready_everywhere().await, 1);
    assert_eq!(dlq::list(&url, &env.topology, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_back_to_back_always_shows_every_dead_letter() {
    // A list hands what it read back by closing its channel; the quorum queue takes them back
    // a moment later. A list that opened in that moment saw an empty DLQ (CI).
    let env = TestEnv::new().await;
    let url = SecretString::from(amqp_url());
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    for i in 0..3 {
        env.publish_raw("booking.confirmed", format!("{{not json {i}").as_bytes())
            .await;
    }
    wait_for("three dead letters", T, || async {
        dlq::list(&url, &env.topology, 10).await.unwrap().len() == 3
    })
    .await;
    let ch = env.channel().await;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for round in 0..40 {
        let rows = dlq::list(&url, &env.topology, 10).await.unwrap();
        assert_eq!(rows.len(), 3, "round {round}: a list must see every dead letter");
        // Once `list` returns, what it read is back in the DLQ, ready for the next reader.
        let ready = ch
            .queue_declare(
                env.topology.dlq.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        assert_eq!(ready, 3, "round {round}: every dead letter is back when list returns");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_off_a_terminal_draws_no_bar_and_ends_with_a_timed_summary() {
    let env = TestEnv::new().await;
    for id in ["p-1", "p-2"] {
        let body = event(id, "booking.confirmed", "oP").to_string();
        env.publish_dead_letter(
            body.as_bytes(),
            &[(headers::REASON, "permanent_error"), (headers::EVENT_ID, id)],
        )
        .await;
    }
    env.publish_dead_letter(b"{not json", &[(headers::REASON, "invalid_event")])
        .await;

    // JSON: stdout stays JSON alone; the summary goes to stderr.
    let out = env
        .wxnotify_ok(&[
            "dlq",
            "replay",
            "--reason",
            "permanent_error",
            "--dry-run",
            "--format",
            "json",
        ])
        .await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON alone on stdout");
    assert_eq!(report["scanned"], 3);
    let stderr = plain_stderr(&out);
    let (line, secs) = summary_line(&stderr, "would replay 2 of 3 dead letter(s) looked at into ");
    assert!(line.contains(&env.topology.queue), "{line}");
    assert!((0.0..30.0).contains(&secs), "{line}");

    // A table: the summary ends it on stdout, timed as well.
    let out = env.wxnotify_ok(&["dlq", "replay", "--reason", "permanent_error"]).await;
    plain_stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (line, _) = summary_line(&stdout, "replayed 2 of 3 dead letter(s) looked at into ");
    assert!(
        line.ends_with(&format!("the others stay in {}", env.topology.dlq)),
        "{line}"
    );
    assert_eq!(env.ready_everywhere().await, 2);
}
