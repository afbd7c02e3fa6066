//! Follower events and WeChat's 43004: a user who left gets no template message until they
//! follow again; the 43004 is noted only after the delivery's own outcome.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_left_gets_no_template_message_until_they_follow_again() {
    let env = TestEnv::new().await;
    let receiver = env.spawn_receiver(None, false).await;
    env.push_to(&receiver, true, 0);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    // The user leaves: WeChat pushes `unsubscribe`.
    env.sim.follow(APP_ID, "oLeft", false);
    wait_for("the unfollow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oLeft' AND NOT followed")
            .await
            == 1
    })
    .await;
    let sends_before = env.sim.stats().send_requests;
    env.publish(&event("left-1", "booking.confirmed", "oLeft")).await;
    // A subscribe message (mini program) is not about following the account: it goes.
    env.publish(&event("left-2", "booking.reminder", "oLeft")).await;
    wait_for("both final", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('suppressed', 'sent')")
            .await
            == 2
    })
    .await;
    let statuses = env.statuses().await;
    assert_eq!(statuses["left-1"], "suppressed");
    assert_eq!(statuses["left-2"], "sent");
    assert_eq!(
        env.sim.stats().send_requests,
        sends_before + 1,
        "no call for the suppressed one"
    );
    assert_eq!(
        env.collect_dlq(0, Duration::from_millis(200)).await.len(),
        0,
        "no dead letter"
    );
    // They follow again: the next one is sent.
    env.sim.follow(APP_ID, "oLeft", true);
    wait_for("the follow stored", Duration::from_secs(10), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oLeft' AND followed")
            .await
            == 1
    })
    .await;
    env.publish(&event("left-3", "booking.confirmed", "oLeft")).await;
    wait_for("sent", Duration::from_secs(30), || async {
        env.statuses().await.get("left-3").map(String::as_str) == Some("sent")
    })
    .await;
    worker.stop().await;
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_43004_marks_the_user_unfollowed_and_the_next_template_message_is_suppressed() {
    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oGone"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("gone-1", "booking.confirmed", "oGone")).await;
    wait_for("dead on 43004", Duration::from_secs(30), || async {
        env.statuses().await.get("gone-1").map(String::as_str) == Some("dead")
    })
    .await;
    // The unfollow is noted after the delivery's own outcome (carry-out's order): `dead` can be
    // seen a moment before the `followers` row (a CI run did).
    wait_for("the unfollow noted", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM followers WHERE openid = 'oGone' AND NOT followed AND source = 'errcode_43004'")
            .await
            == 1
    })
    .await;
    let sends = env.sim.stats().send_requests;
    env.publish(&event("gone-2", "booking.completed", "oGone")).await;
    wait_for("suppressed", Duration::from_secs(30), || async {
        env.statuses().await.get("gone-2").map(String::as_str) == Some("suppressed")
    })
    .await;
    assert_eq!(env.sim.stats().send_requests, sends, "WeChat was not called again");
    worker.stop().await;
}

/// The 43004 is noted only after the delivery's own outcome: a worker killed in between leaves
/// the message to be decided again (dead-lettered with its errcode, replayable), not suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_a_43004_but_before_its_record_leaves_a_dead_letter_not_a_suppression() {
    use std::process::Stdio;

    let env = TestEnv::with_faults(wechat_sim::Faults {
        latency_ms: 1500,
        ..wechat_sim::Faults::default()
    })
    .await;
    env.sim.set_unsubscribed(&["oKill43004"]);
    let mut child = env
        .worker_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    env.publish(&event("k43-1", "booking.confirmed", "oKill43004")).await;
    wait_for("claimed, being sent", Duration::from_secs(30), || async {
        env.statuses().await.get("k43-1").map(String::as_str) == Some("pending")
    })
    .await;
    // Hold the row: the worker's record of the outcome waits behind this lock.
    let mut tx = env.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM deliveries WHERE event_id = 'k43-1' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    wait_for("WeChat answered 43004", Duration::from_secs(30), || async {
        env.sim.stats().errors.get(&43004).copied().unwrap_or(0) == 1
    })
    .await;
    // The simulator counts the error when it decides, halfway through its latency: wait until
    // the answer has reached the worker and the worker has done whatever comes before its record,
    // i.e. until that record waits behind this lock.
    wait_for(
        "the worker's record waits behind the held row",
        Duration::from_secs(30),
        || async { env.lock_waiters().await >= 1 },
    )
    .await;
    let noted = env
        .count("SELECT count(*) FROM followers WHERE openid = 'oKill43004'")
        .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    drop(tx);
    assert_eq!(
        noted, 0,
        "the 43004 was noted before the delivery's outcome was recorded"
    );

    env.sim.patch_faults(wechat_sim::FaultsPatch {
        latency_ms: Some(0),
        ..Default::default()
    });
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    wait_for("dead on 43004", Duration::from_secs(60), || async {
        env.statuses().await.get("k43-1").map(String::as_str) == Some("dead")
    })
    .await;
    let dead = env.collect_dlq(1, Duration::from_secs(10)).await;
    // Its outcome: dead with its errcode, in the DLQ for a replay; the killed worker's held-back
    // record may land after it died (its statement was already in Postgres) or the next worker
    // decides again: either way the message is not `suppressed`.
    assert_eq!(dead[0].1.get("wxnotify-errcode").map(String::as_str), Some("43004"));
    worker.stop().await;
}

/// A 43004 whose dead letter could not be published (its exchange gone) is not noted: the message
/// goes back, meets WeChat's 43004 again and is dead-lettered with it, not suppressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_43004_whose_dead_letter_publish_failed_is_dead_lettered_on_its_next_delivery_not_suppressed() {
    use lapin::options::ExchangeDeleteOptions;

    let env = TestEnv::new().await;
    env.sim.set_unsubscribed(&["oNoDlx"]);
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("warm", "booking.confirmed", "oWarm")).await;
    wait_for("the worker delivers", Duration::from_secs(30), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 1
    })
    .await;
    // The dead-letter exchange vanishes: the 43004's dead-letter publish fails.
    let ch = env.channel().await;
    ch.exchange_delete(env.topology.dlx.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    env.publish(&event("nodlx-1", "booking.confirmed", "oNoDlx")).await;
    let dead = env.collect_dlq(1, Duration::from_secs(60)).await;
    assert_eq!(dead[0].1.get("wxnotify-errcode").map(String::as_str), Some("43004"));
    wait_for("dead", Duration::from_secs(30), || async {
        env.statuses().await.get("nodlx-1").map(String::as_str) == Some("dead")
    })
    .await;
    assert!(
        env.sim.stats().errors.get(&43004).copied().unwrap_or(0) >= 2,
        "sent again after the failed publish"
    );
    worker.stop().await;
}
