//! A delivery in doubt (its send may have arrived) is never resent: subscribe sends, replays
//! that keep or clear the doubt, forged replay headers, released claims, the dedup window.

use super::*;

/// Hole 2: subscribe messages have no client_msg_id dedup at WeChat; a subscribe delivery whose
/// earlier send may have arrived is dead-lettered `ambiguous` at once, never resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_doubt_subscribe_delivery_is_dead_lettered_ambiguous_not_resent() {
    let env = TestEnv::new().await;
    // A worker was killed 30 s ago while sending the reminder: well inside the 10-minute window
    // that would make a template message's resend harmless.
    killed_mid_send(&env, &key("sub-1", "TPL_REMINDER", "oSub"), "booking.reminder", 30).await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("sub-1", "booking.reminder", "oSub")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_dead_ambiguous_unsent(&env, &dead, "sub-1", "never resent").await;
}

/// Hole 3: a replay keeps the doubt unless the operator replays reason `ambiguous` by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_another_reason_keeps_the_doubt() {
    let env = TestEnv::new().await;
    // A template delivery whose send timed out an hour ago and then ran out of retries.
    let k = key("storm-1", "TPL_BOOKING_CONFIRMED", "oStorm");
    killed_mid_send(&env, &k, "booking.confirmed", 3600).await;
    sqlx::query(
        "UPDATE deliveries SET status = 'dead', dead_reason = 'retries_exhausted', owner = NULL,
                in_doubt_since = now() - interval '1 hour' WHERE event_id = 'storm-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let body = event("storm-1", "booking.confirmed", "oStorm").to_string();
    env.publish_dead_letter(
        body.as_bytes(),
        &[
            ("wxnotify-reason", "retries_exhausted"),
            ("wxnotify-event-id", "storm-1"),
        ],
    )
    .await;

    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let done = env.replay_by_reason("retries_exhausted").await;
    assert_eq!(done.replayed.len(), 1);
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_dead_ambiguous_unsent(&env, &dead, "storm-1", "not resent behind the user's back").await;
}

/// Hole 4: a copy that says it is a replay, with no row in `dlq_replays`, reopens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_replay_header_reopens_nothing() {
    let sim = SimConfig {
        unsubscribed: ["oLeft".to_string()].into(),
        ..Default::default()
    };
    let env = TestEnv::with_sim(sim).await;
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("left-1", "booking.confirmed", "oLeft")).await;
    env.collect_dlq(1, T).await;
    assert_eq!(row(&env, "left-1").await.0, "dead");
    assert_eq!(env.sim.stats().send_requests, 1);

    // The user follows again; someone republishes the event with a made-up replay header.
    env.sim.set_unsubscribed(&[]);
    let mut h = FieldTable::default();
    h.insert(
        "wxnotify-replay".into(),
        AMQPValue::LongString(LongString::from(b"made-up".to_vec())),
    );
    let body = event("left-1", "booking.confirmed", "oLeft").to_string();
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
    env.publish_to_queue(&env.topology.queue, body.as_bytes(), props).await;
    wait_for("the copy consumed", T, || async { env.ready_everywhere().await == 0 }).await;
    worker.stop().await;
    assert_eq!(env.sim.stats().send_requests, 1, "an ordinary duplicate: not sent");
    assert_eq!(row(&env, "left-1").await.0, "dead");
}

/// Hole 9 (with 2): when the dead-letter publish fails after an unknown outcome, the released
/// claim stays in doubt, so the redelivered copy is not resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_claim_keeps_its_doubt() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    let opts = WorkerOpts {
        http_timeout_secs: 1.0,
        ..Default::default()
    };
    let worker = env.spawn_worker(&opts).await;
    let ch = env.channel().await;
    ch.exchange_delete(env.topology.dlx.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    // WeChat takes the reminder at 750 ms; the worker gives up at 1 s: outcome unknown.
    env.publish(&event("rem-1", "booking.reminder", "oRem")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(
        env.sim.stats().accepted,
        1,
        "the reminder reached WeChat once, never twice"
    );
    let (status, reason, doubt, _) = row(&env, "rem-1").await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), doubt),
        ("dead", Some("ambiguous"), true)
    );
}

/// Hole 6: the 10-minute window is checked again right before the send, after the token wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_is_checked_again_after_a_long_token_wait() {
    // Tokens live 12 s and are replaced 5 s before they expire: after 7 s a send must fetch one.
    let sim = SimConfig {
        token_ttl: Duration::from_secs(12),
        ..Default::default()
    };
    let env = TestEnv::with_sim(sim).await;
    let opts = WorkerOpts {
        token_margin_secs: 5,
        ..Default::default()
    };
    let worker = env.spawn_worker(&opts).await;
    wait_for("the worker's token due for replacement", T, || async {
        env.count("SELECT count(*) FROM wechat_tokens WHERE refresh_after < now()")
            .await
            == 1
    })
    .await;
    // A delivery in doubt for 568 s: inside the 570 s window when claimed...
    killed_mid_send(
        &env,
        &key("win-1", "TPL_BOOKING_CONFIRMED", "oWin"),
        "booking.confirmed",
        568,
    )
    .await;
    // ...but the token refresh waits 3 s for another process holding the token row.
    let mut holder = env.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM wechat_tokens FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    env.publish(&event("win-1", "booking.confirmed", "oWin")).await;
    wait_for("the worker's token refresh waits for the held row", T, || async {
        env.lock_waiters().await >= 1
    })
    .await;
    // The test's point: time passes while the refresh waits (the other process's refresh takes
    // 3 s), carrying the doubt past the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    holder.commit().await.unwrap();
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous", "{:?}", dead[0].1);
    assert_eq!(env.sim.stats().send_requests, 0, "not sent past the window");
}

/// Hole 3, found in review: a replay of `ambiguous` clears only a doubt older than the replay. When
/// the replayed subscribe send itself times out, a redelivered copy of the replay (its ack lost)
/// must not clear that new doubt and send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_replay_copy_does_not_clear_the_doubt_of_its_own_send() {
    let env = TestEnv::with_faults(Faults {
        latency_ms: 1500,
        ..Default::default()
    })
    .await;
    // A reminder dead-lettered `ambiguous` an hour ago.
    let k = key("amb-sub-1", "TPL_REMINDER", "oAmbSub");
    killed_mid_send(&env, &k, "booking.reminder", 3600).await;
    sqlx::query(
        "UPDATE deliveries SET status = 'dead', dead_reason = 'ambiguous', owner = NULL,
                in_doubt_since = now() - interval '1 hour' WHERE event_id = 'amb-sub-1'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let body = event("amb-sub-1", "booking.reminder", "oAmbSub").to_string();
    env.publish_dead_letter(
        body.as_bytes(),
        &[("wxnotify-reason", "ambiguous"), ("wxnotify-event-id", "amb-sub-1")],
    )
    .await;

    // The operator replays it by name; WeChat takes it at 750 ms, the worker gives up at 1 s.
    let worker = env
        .spawn_worker(&WorkerOpts {
            http_timeout_secs: 1.0,
            ..Default::default()
        })
        .await;
    let done = env.replay_by_reason("ambiguous").await;
    assert_eq!(done.replayed.len(), 1);
    let dead = env.collect_dlq(1, T).await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(env.sim.stats().accepted, 1);

    // The replay's copy comes back (its ack was lost): same body, same replay header.
    let mut h = FieldTable::default();
    h.insert(
        "wxnotify-replay".into(),
        AMQPValue::LongString(LongString::from(done.replay_id.as_bytes().to_vec())),
    );
    let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
    env.publish_to_queue(&env.topology.queue, body.as_bytes(), props).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    assert_eq!(dead[0].1["wxnotify-reason"], "ambiguous");
    assert_eq!(
        env.sim.stats().accepted,
        1,
        "the reminder reached WeChat once, never twice"
    );
}
