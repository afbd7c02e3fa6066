//! Whose word is newer: a 43004 counts from the send that met it, not from when its outcome was
//! recorded, so a `subscribe` pushed while that send was under way stays (docs/interface.md §9).

use std::time::Duration;

use crate::helpers::{APP_ID, TestEnv, WorkerOpts, event, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_pushed_during_the_send_that_met_43004_is_not_overwritten() {
    let env = TestEnv::with_faults(wechat_sim::Faults {
        latency_ms: 1500,
        ..wechat_sim::Faults::default()
    })
    .await;
    env.sim.set_unsubscribed(&["oClock"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("clock-1", "booking.confirmed", "oClock")).await;
    wait_for("claimed, being sent", Duration::from_secs(30), || async {
        env.statuses().await.get("clock-1").map(String::as_str) == Some("pending")
    })
    .await;
    // The send is under way (WeChat answers in 1.5 s): the user follows again now, as the
    // receiver stores a `subscribe` push (CreateTime: now).
    sqlx::query(
        "INSERT INTO followers (app_id, openid, followed, changed_at, source)
         VALUES ($1, 'oClock', true, now(), 'push')",
    )
    .bind(APP_ID)
    .execute(&env.pool)
    .await
    .unwrap();
    wait_for("dead on 43004", Duration::from_secs(30), || async {
        env.statuses().await.get("clock-1").map(String::as_str) == Some("dead")
    })
    .await;
    // A graceful stop waits for carry-out, which notes the 43004 after the outcome.
    worker.stop().await;
    let followed: bool = sqlx::query_scalar("SELECT followed FROM followers WHERE openid = 'oClock'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        followed,
        "the 43004 of a send that started before the subscribe overwrote it"
    );
}
