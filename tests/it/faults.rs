//! Exactly once under faults, one fault at a time (the chaos test mixes them): a worker killed
//! after WeChat accepted its send, a delivery in doubt for longer than WeChat's dedup window,
//! a retry budget used up, and a message that keeps coming back (the broker's delivery limit).

use std::process::Stdio;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use secrecy::SecretString;
use wechat_sim::{Faults, SimConfig};
use wxnotify::event::DeliveryKey;
use wxnotify::ops::dlq;

use crate::helpers::{APP_ID, TestEnv, WorkerOpts, event, wait_for};

const T: Duration = Duration::from_secs(60);

async fn status_of(env: &TestEnv, event_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM deliveries WHERE event_id = $1")
        .bind(event_id)
        .fetch_optional(&env.pool)
        .await
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_wechat_accepted_is_taken_over_and_wechat_drops_the_resend() {
    // WeChat takes 4 s to answer and acts on the send after 2 s: time to kill the worker between.
    let env = TestEnv::with_sim(SimConfig {
        faults: Faults {
            latency_ms: 4000,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut child = env
        .worker_command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wxnotify worker");
    env.publish(&event("kill-1", "booking.confirmed", "oKill")).await;
    wait_for("WeChat accepted the send", T, || async {
        env.sim.stats().accepted == 1
    })
    .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    assert_eq!(
        status_of(&env, "kill-1").await.as_deref(),
        Some("pending"),
        "the killed worker never learnt the answer"
    );

    env.sim.patch_faults(wechat_sim::FaultsPatch {
        latency_ms: Some(0),
        ..Default::default()
    });
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    wait_for("the delivery is recorded sent", T, || async {
        status_of(&env, "kill-1").await.as_deref() == Some("sent")
    })
    .await;
    worker.stop().await;

    let stats = env.sim.stats();
    assert_eq!(stats.accepted, 1, "one message at WeChat");
    assert_eq!(
        stats.deduplicated, 1,
        "the resend carried the same client_msg_id and was dropped"
    );
    let in_doubt: bool =
        sqlx::query_scalar("SELECT in_doubt_since IS NOT NULL FROM deliveries WHERE event_id = 'kill-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(in_doubt, "the takeover marked the delivery in doubt");
    assert!(env.drain_dlq().await.is_empty());
    assert_eq!(env.ready_everywhere().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_in_doubt_past_the_dedup_window_is_dead_lettered_ambiguous_unsent_until_replayed() {
    let env = TestEnv::new().await;
    // The state a worker leaves when it dies mid-send and its message comes back 11 minutes later
    // (say the broker was down): a claim by a worker that stopped beating.
    let key = DeliveryKey {
        event_id: "amb-1".into(),
        template_id: "TPL_BOOKING_CONFIRMED".into(),
        openid: "oAmb".into(),
    };
    sqlx::query(
        "INSERT INTO workers (id, started_at, heartbeat_at) VALUES ('gone', now() - interval '1 hour', now() - interval '11 minutes')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, occurred_at, client_msg_id,
                                 owner, lease_until, claimed_at)
         VALUES ($1, 'booking.confirmed', $2, $3, $4, now(), $5, 'gone', now() - interval '9 minutes',
                 now() - interval '11 minutes')",
    )
    .bind(&key.event_id)
    .bind(APP_ID)
    .bind(&key.openid)
    .bind(&key.template_id)
    .bind(key.client_msg_id())
    .execute(&env.pool)
    .await
    .unwrap();

    let url = SecretString::from(crate::helpers::amqp_url());
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    env.publish(&event("amb-1", "booking.confirmed", "oAmb")).await;
    wait_for("a dead letter", T, || async {
        !dlq::list(&url, &env.topology, 10).await.unwrap().is_empty()
    })
    .await;
    worker.stop().await;
    let dead = dlq::list(&url, &env.topology, 10).await.unwrap();
    assert_eq!(dead[0].reason, "ambiguous");
    let error = dead[0].error.clone().unwrap_or_default();
    assert!(error.contains("client_msg_id window"), "{error}");
    assert_eq!(
        env.sim.stats().send_requests,
        0,
        "not resent: WeChat would no longer drop it"
    );
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, dead_reason FROM deliveries WHERE event_id = 'amb-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), reason.as_deref()), ("dead", Some("ambiguous")));

    // Ops decide it did not arrive and replay it: the replay clears the doubt and sends it.
    let worker = env.spawn_worker(&WorkerOpts::default()).await;
    let done = env.replay_by_reason("ambiguous").await;
    assert_eq!(done.replayed.len(), 1);
    wait_for("the replayed delivery is sent", T, || async {
        status_of(&env, "amb-1").await.as_deref() == Some("sent")
    })
    .await;
    worker.stop().await;
    assert_eq!(env.sim.stats().accepted, 1, "sent once, on the replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_are_retried_until_the_budget_is_spent_then_dead_lettered() {
    let env = TestEnv::with_sim(SimConfig {
        faults: Faults {
            busy_rate: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let opts = WorkerOpts {
        max_attempts: 3,
        retry_base_secs: 0.2,
        ..WorkerOpts::default()
    };
    let worker = env.spawn_worker(&opts).await;
    env.publish(&event("busy-1", "booking.confirmed", "oBusy")).await;
    let dead = env.collect_dlq(1, T).await;
    worker.stop().await;
    let h = &dead[0].1;
    assert_eq!(h["wxnotify-reason"], "retries_exhausted");
    assert_eq!(h["wxnotify-errcode"], "-1");
    assert_eq!(h["wxnotify-attempts"], "3");
    let (status, attempts, reason): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempts, dead_reason FROM deliveries WHERE event_id = 'busy-1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts, reason.as_deref()),
        ("dead", 3, Some("retries_exhausted"))
    );
    let rows = env
        .count("SELECT count(*) FROM delivery_attempts WHERE errcode = -1")
        .await;
    assert_eq!(rows, 3, "one attempt row per HTTP call");
    assert_eq!(env.sim.stats().send_requests, 3, "three sends, no more");
    assert_eq!(env.ready_everywhere().await, 0, "nothing left in the retry queues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_coming_back_is_dead_lettered_by_the_delivery_limit() {
    // The test plays a worker that crashes on this message every time: it takes it and hands it
    // back, again and again. The work queue's x-delivery-limit (20 here) ends the loop.
    let env = TestEnv::new().await;
    env.publish(&event("poison-1", "booking.confirmed", "oPoison")).await;
    let handed_back = env.hand_back(26).await;
    assert!(handed_back <= 25, "the broker keeps handing it out: no delivery limit");
    assert!(handed_back >= 20, "handed out {handed_back} times before the limit");
    let dead = wait_dlq_raw(&env).await;
    let headers = dead.properties.headers().as_ref().expect("headers");
    let reason = headers.inner().get("x-first-death-reason");
    assert!(
        matches!(reason, Some(AMQPValue::LongString(s)) if s.to_string() == "delivery_limit"),
        "x-first-death-reason: {reason:?}"
    );
    assert_eq!(
        dead.data,
        event("poison-1", "booking.confirmed", "oPoison")
            .to_string()
            .into_bytes()
    );
}

async fn wait_dlq_raw(env: &TestEnv) -> lapin::message::BasicGetMessage {
    let ch = env.channel().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(m) = ch
            .basic_get(env.topology.dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
