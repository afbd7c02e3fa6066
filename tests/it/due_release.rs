//! A release of due deliveries that the broker never confirms gives its rows back in bounded
//! time (docs/interface.md §8): a cancellation of those rows is not stalled by a silent broker.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{FixedOffset, TimeDelta, Utc};

use crate::common::fault_proxy::FaultProxy;
use crate::helpers::{TestEnv, WorkerOpts, wait_for};

const T: Duration = Duration::from_secs(60);

fn booking(event_id: &str, slot_in: TimeDelta) -> serde_json::Value {
    let bj = FixedOffset::east_opt(8 * 3600).unwrap();
    serde_json::json!({
        "event_id": event_id, "event_type": "booking.confirmed",
        "occurred_at": Utc::now().with_timezone(&bj).to_rfc3339(), "openid": "oDueRelease",
        "data": {"booking_id": "B-DR-1", "service": "精洗套餐", "store": "徐汇店",
                 "slot_start": (Utc::now() + slot_in).with_timezone(&bj).to_rfc3339(),
                 "plate": "沪A12345", "price_cents": 3980}
    })
}

async fn status(env: &TestEnv, template_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM deliveries WHERE event_id = 'dr-1' AND template_id = $1")
        .bind(template_id)
        .fetch_optional(&env.pool)
        .await
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_the_broker_never_confirms_does_not_hold_its_rows() {
    let env = TestEnv::new().await;
    let upstream = env
        .amqp_url
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("host:port");
    let mq = FaultProxy::to(upstream.replace("localhost", "127.0.0.1").parse().expect("addr")).await;
    let opts = WorkerOpts {
        templates: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml")),
        amqp_url: Some(mq.url(&env.amqp_url)),
        ..WorkerOpts::default()
    };
    let worker = env.spawn_worker(&opts).await;
    // The reminder falls due in 5 s; the confirmation goes at once.
    env.publish(&booking("dr-1", TimeDelta::minutes(60) + TimeDelta::seconds(5)))
        .await;
    wait_for("the confirmation sent", T, || async {
        status(&env, "TPL_BOOKING_CONFIRMED").await.as_deref() == Some("sent")
    })
    .await;
    assert_eq!(status(&env, "TPL_BOOKING_REMINDER").await.as_deref(), Some("scheduled"));
    // The broker goes silent; the reminder falls due and its release waits for a confirm.
    mq.blackhole();
    let due: chrono::DateTime<Utc> = sqlx::query_scalar(
        "SELECT due_at FROM deliveries WHERE event_id = 'dr-1' AND template_id = 'TPL_BOOKING_REMINDER'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    wait_for("the reminder due", T, || async {
        Utc::now() > due + TimeDelta::seconds(1)
    })
    .await;
    // The booking is cancelled by hand meanwhile: it must not wait for the broker.
    let started = std::time::Instant::now();
    let cancel = env.wxnotify(&["scheduled", "cancel", "--event-id", "dr-1"]).output();
    let out = tokio::time::timeout(Duration::from_secs(45), cancel)
        .await
        .expect("`scheduled cancel` waited 45 s for the release's row locks")
        .expect("run wxnotify");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    mq.heal();
    worker.stop().await;
    assert_eq!(status(&env, "TPL_BOOKING_REMINDER").await.as_deref(), Some("cancelled"));
    eprintln!("cancelled {:.1} s after the reminder fell due", took.as_secs_f64());
}
