//! A replay never sends what was cancelled meanwhile (docs/interface.md §8): a reminder that died
//! and whose booking was cancelled afterwards stays unsent when its dead letter is replayed.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{FixedOffset, TimeDelta, Utc};
use wechat_sim::Faults;

use crate::helpers::{TestEnv, WorkerHandle, WorkerOpts, wait_for};

const T: Duration = Duration::from_secs(60);

fn booking(event_id: &str, event_type: &str, slot_in: TimeDelta) -> serde_json::Value {
    let bj = FixedOffset::east_opt(8 * 3600).unwrap();
    let slot = (Utc::now() + slot_in).with_timezone(&bj).to_rfc3339();
    serde_json::json!({
        "event_id": event_id, "event_type": event_type,
        "occurred_at": Utc::now().with_timezone(&bj).to_rfc3339(), "openid": "oReplayCancel",
        "data": {"booking_id": "B-RC-1", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": slot, "plate": "沪A12345", "price_cents": 3980}
    })
}

async fn status(env: &TestEnv, event_id: &str, template_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM deliveries WHERE event_id = $1 AND template_id = $2")
        .bind(event_id)
        .bind(template_id)
        .fetch_optional(&env.pool)
        .await
        .expect("query")
}

async fn wait_status(env: &TestEnv, event_id: &str, template_id: &str, wanted: &[&str]) -> String {
    wait_for(&format!("{event_id}/{template_id} in {wanted:?}"), T, || async {
        status(env, event_id, template_id)
            .await
            .is_some_and(|s| wanted.contains(&s.as_str()))
    })
    .await;
    status(env, event_id, template_id).await.expect("a status")
}

/// The shipped templates, two attempts a delivery, and WeChat answering every send with -1 (until
/// the test says otherwise).
async fn failing_wechat() -> (TestEnv, WorkerHandle) {
    let env = TestEnv::with_faults(Faults {
        busy_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let opts = WorkerOpts {
        templates: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml")),
        max_attempts: 2,
        retry_base_secs: 0.2,
        ..WorkerOpts::default()
    };
    let worker = env.spawn_worker(&opts).await;
    (env, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_reminder_whose_booking_was_cancelled_is_not_sent_by_a_replay() {
    let (env, worker) = failing_wechat().await;
    // The reminder falls due in 2 s; WeChat answers every send with -1 until both die.
    let slot_in = TimeDelta::minutes(60) + TimeDelta::seconds(2);
    env.publish(&booking("rc-confirmed", "booking.confirmed", slot_in))
        .await;
    wait_status(&env, "rc-confirmed", "TPL_BOOKING_CONFIRMED", &["dead"]).await;
    wait_status(&env, "rc-confirmed", "TPL_BOOKING_REMINDER", &["dead"]).await;
    // WeChat recovers; then the booking is cancelled (its own notice goes out).
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        busy_rate: Some(0.0),
        ..Default::default()
    });
    env.publish(&booking("rc-cancelled", "booking.cancelled", slot_in))
        .await;
    wait_status(&env, "rc-cancelled", "TPL_BOOKING_CANCELLED", &["sent"]).await;
    // Ops replay what ran out of retries: the confirmation goes, the reminder must not.
    let report = env.replay_by_reason("retries_exhausted").await;
    assert_eq!(report.replayed.len(), 2, "replayed: {:?}", report.replayed);
    wait_status(&env, "rc-confirmed", "TPL_BOOKING_CONFIRMED", &["sent"]).await;
    let reminder = wait_status(&env, "rc-confirmed", "TPL_BOOKING_REMINDER", &["sent", "cancelled"]).await;
    let reminders = env
        .sim
        .messages()
        .into_iter()
        .filter(|m| m.template_id == "TPL_BOOKING_REMINDER")
        .count();
    worker.stop().await;
    assert_eq!(reminders, 0, "the cancelled booking's reminder reached WeChat");
    assert_eq!(reminder, "cancelled");
    let by: Option<String> = sqlx::query_scalar(
        "SELECT cancelled_by FROM deliveries WHERE event_id = 'rc-confirmed' AND template_id = 'TPL_BOOKING_REMINDER'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(by.as_deref(), Some("rc-cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_reminder_replayed_after_its_not_after_ends_expired_unsent() {
    let (env, worker) = failing_wechat().await;
    // The slot starts in 4 s: the reminder is due at once and may go until then.
    env.publish(&booking("rx-confirmed", "booking.confirmed", TimeDelta::seconds(4)))
        .await;
    wait_status(&env, "rx-confirmed", "TPL_BOOKING_REMINDER", &["dead"]).await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        busy_rate: Some(0.0),
        ..Default::default()
    });
    let not_after: chrono::DateTime<Utc> = sqlx::query_scalar(
        "SELECT not_after FROM deliveries WHERE event_id = 'rx-confirmed' AND template_id = 'TPL_BOOKING_REMINDER'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    wait_for("the slot to start", T, || async { Utc::now() > not_after }).await;
    env.replay_by_reason("retries_exhausted").await;
    let reminder = wait_status(&env, "rx-confirmed", "TPL_BOOKING_REMINDER", &["sent", "expired"]).await;
    worker.stop().await;
    assert_eq!(reminder, "expired");
    let reminders = env
        .sim
        .messages()
        .into_iter()
        .filter(|m| m.template_id == "TPL_BOOKING_REMINDER")
        .count();
    assert_eq!(reminders, 0, "a reminder reached WeChat after its slot started");
}
