//! `wxnotify trace` (docs/interface.md §5): one delivery's whole story from the ledger — a send
//! retried, dead, replayed and sent, with its receipt; a reminder cancelled by a later event; a
//! user's deliveries; the JSON holds the attempts; what the sender wrote is printed escaped.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{FixedOffset, TimeDelta, Utc};
use serde_json::Value;
use wechat_sim::Faults;

use crate::helpers::{APP_ID, TestEnv, WorkerOpts, wait_for};

const T: Duration = Duration::from_secs(60);
const USER: &str = "oTraceUser";

fn booking(event_id: &str, event_type: &str, slot_in: TimeDelta) -> Value {
    let bj = FixedOffset::east_opt(8 * 3600).unwrap();
    let slot = (Utc::now() + slot_in).with_timezone(&bj).to_rfc3339();
    serde_json::json!({
        "event_id": event_id, "event_type": event_type,
        "occurred_at": Utc::now().with_timezone(&bj).to_rfc3339(), "openid": USER,
        "data": {"booking_id": "B-TR-1", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": slot, "plate": "沪A12345", "price_cents": 3980}
    })
}

async fn wait_status(env: &TestEnv, event_id: &str, template_id: &str, wanted: &str) {
    let sql = "SELECT count(*) FROM deliveries WHERE event_id = $1 AND template_id = $2 AND status = $3";
    wait_for(&format!("{event_id}/{template_id} {wanted}"), T, || async {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(event_id)
            .bind(template_id)
            .bind(wanted)
            .fetch_one(&env.pool)
            .await
            .expect("query");
        n == 1
    })
    .await;
}

/// A confirmation and its reminder die on -1 (2 attempts each); the booking is cancelled; ops
/// replay: the confirmation is sent (third attempt), the reminder stays unsent, cancelled.
async fn retried_replayed_and_cancelled(env: &TestEnv) {
    let opts = WorkerOpts {
        templates: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml")),
        max_attempts: 2,
        retry_base_secs: 0.2,
        ..WorkerOpts::default()
    };
    let worker = env.spawn_worker(&opts).await;
    let slot_in = TimeDelta::minutes(60) + TimeDelta::seconds(2);
    env.publish(&booking("tr-confirmed", "booking.confirmed", slot_in))
        .await;
    wait_status(env, "tr-confirmed", "TPL_BOOKING_CONFIRMED", "dead").await;
    wait_status(env, "tr-confirmed", "TPL_BOOKING_REMINDER", "dead").await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        busy_rate: Some(0.0),
        ..Default::default()
    });
    env.publish(&booking("tr-cancelled", "booking.cancelled", slot_in))
        .await;
    wait_status(env, "tr-cancelled", "TPL_BOOKING_CANCELLED", "sent").await;
    env.replay_by_reason("retries_exhausted").await;
    wait_status(env, "tr-confirmed", "TPL_BOOKING_CONFIRMED", "sent").await;
    wait_status(env, "tr-confirmed", "TPL_BOOKING_REMINDER", "cancelled").await;
    worker.stop().await;
}

/// WeChat's receipt for the confirmation's msgid, as the receiver stores it.
async fn receipt_for_confirmation(env: &TestEnv) {
    let msgid: i64 = sqlx::query_scalar(
        "SELECT wechat_msgid FROM deliveries WHERE event_id = 'tr-confirmed' AND template_id = 'TPL_BOOKING_CONFIRMED'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("a msgid");
    sqlx::query(
        "SELECT * FROM apply_receipts(ARRAY[$1], ARRAY[$2::bigint], ARRAY[$3], ARRAY['delivered'],
                                      ARRAY['success'], ARRAY[now()], true)",
    )
    .bind(APP_ID)
    .bind(msgid)
    .bind(USER)
    .execute(&env.pool)
    .await
    .expect("apply the receipt");
}

fn delivery<'a>(trace: &'a Value, template_id: &str) -> &'a Value {
    trace["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["template_id"] == template_id)
        .unwrap_or_else(|| panic!("no {template_id} in {trace:#}"))
}

fn check_confirmation(trace: &Value) {
    let d = delivery(trace, "TPL_BOOKING_CONFIRMED");
    assert_eq!(d["status"], "sent", "{d:#}");
    let attempts = d["attempts"].as_array().expect("attempts");
    assert!(attempts.len() >= 3, "two -1s, then the replay's send: {attempts:#?}");
    assert_eq!(attempts[0]["errcode"], -1);
    assert_eq!(attempts.last().unwrap()["errcode"], 0);
    assert!(
        attempts
            .iter()
            .all(|a| a["worker"].is_string() && a["duration_ms"].is_i64())
    );
    let replays = d["replays"].as_array().expect("replays");
    assert!(!replays.is_empty(), "{d:#}");
    assert_eq!(replays[0]["reason"], "retries_exhausted");
    assert_eq!(replays[0]["errcode"], -1);
    assert_eq!(d["receipt_status"], "delivered");
    assert!(d["wechat_msgid"].is_string(), "msgids exceed 2^53: a string");
    assert_eq!(d["receipts"][0]["wechat_status"], "success");
    assert_eq!(d["receipts"][0]["msgid"], d["wechat_msgid"]);
}

fn check_reminder(trace: &Value) {
    let d = delivery(trace, "TPL_BOOKING_REMINDER");
    assert_eq!(d["status"], "cancelled", "{d:#}");
    assert_eq!(d["cancelled_by"], "tr-cancelled");
    assert_eq!(d["cancelled_by_type"], "booking.cancelled");
    assert!(d["due_at"].is_string(), "a scheduled delivery: {d:#}");
    assert!(d["lateness_ms"].is_i64(), "first tried after it fell due: {d:#}");
    assert_eq!(
        d["attempts"].as_array().unwrap().len(),
        2,
        "never sent after the replay"
    );
}

fn check_table(table: &str) {
    for wanted in [
        "delivery ",
        "event tr-confirmed (booking.confirmed)  template TPL_BOOKING_CONFIRMED",
        "errcode -1 ",
        "errcode 0 ",
        "receipt    delivered at ",
        "(WeChat: success)",
        "--reason retries_exhausted",
        "cancelled  by tr-cancelled (booking.cancelled), cancel key B-TR-1",
        "due        ",
        &format!("follower {USER} of app {APP_ID}: no follow or unfollow heard of"),
        "2 deliveries of event tr-confirmed",
    ] {
        assert!(table.contains(wanted), "{wanted:?} not in:\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_tells_a_retried_replayed_sent_delivery_and_a_cancelled_reminder() {
    let env = TestEnv::with_faults(Faults {
        busy_rate: 1.0,
        ..Faults::default()
    })
    .await;
    retried_replayed_and_cancelled(&env).await;
    receipt_for_confirmation(&env).await;

    let out = env
        .wxnotify_ok(&["trace", "--event-id", "tr-confirmed", "--format", "json"])
        .await;
    let trace: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(trace["query"]["by"], "event_ids");
    assert_eq!(trace["deliveries"].as_array().unwrap().len(), 2, "{trace:#}");
    check_confirmation(&trace);
    check_reminder(&trace);

    let out = env.wxnotify_ok(&["trace", "--event-id", "tr-confirmed"]).await;
    check_table(&String::from_utf8(out.stdout).unwrap());

    let out = env
        .wxnotify_ok(&["trace", "--openid", USER, "--since", "1h", "--format", "json"])
        .await;
    let by_user: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let events: Vec<&str> = by_user["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.contains(&"tr-cancelled") && events.contains(&"tr-confirmed"));
    let out = env.wxnotify_ok(&["trace", "--openid", USER, "--limit", "1"]).await;
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("1 delivery to oTraceUser since ") && table.contains("(the latest 1: --limit)"),
        "{table}"
    );
    assert!(
        table.contains("event tr-cancelled (booking.cancelled)"),
        "the latest: {table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_escapes_what_the_sender_wrote_and_shows_doubt_and_followers() {
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status, attempts,
                                 last_errcode, last_error, occurred_at, client_msg_id, in_doubt_since, due_at)
         VALUES ($1, 'booking.confirmed', $2, 'oLeft', 'TPL', 'retrying', 1, NULL,
                 E'timeout\\n\\u001b[31mred', now(), 'c-1', now() - interval '1 minute', now() - interval '1 hour')",
    )
    .bind("tr-\u{1b}[2Jevil")
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .expect("insert a delivery");
    sqlx::query("INSERT INTO followers (app_id, openid, followed, changed_at, source) VALUES ($1, 'oLeft', false, now(), 'push')")
        .bind(APP_ID)
        .execute(&env.pool)
        .await
        .expect("insert a follower");

    let out = env.wxnotify_ok(&["trace", "--openid", "oLeft"]).await;
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(!table.contains('\u{1b}'), "a raw escape code: {table:?}");
    for wanted in [
        "event tr-\\u{1b}[2Jevil",
        "last error timeout\\n\\u{1b}[31mred",
        "in doubt   since ",
        "follower oLeft of app",
        ": LEFT at ",
        "(push)",
        "1 delivery to oLeft since ",
    ] {
        assert!(table.contains(wanted), "{wanted:?} not in:\n{table}");
    }

    let out = env.wxnotify_ok(&["trace", "--event-id", "tr-none"]).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text, "no deliveries of event tr-none in the ledger\n",
        "nothing found: said, exit 0"
    );
    for usage in [
        &["trace"][..],
        &["trace", "--event-id", "a", "--openid", "o"],
        &["trace", "--event-id", "a", "--since", "1d"],
        &["trace", "--openid", "o", "--since", "a while"],
        &["trace", "--openid", "o", "--limit", "0"],
    ] {
        let out = env.wxnotify(usage).output().await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{usage:?} is a usage error");
    }
}
