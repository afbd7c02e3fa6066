//! One token for every worker: several independent workers (own pool, own cache, own id — as
//! separate processes would be) share one token through Postgres.

use std::time::Duration;

use wechat_sim::{FaultsPatch, SimConfig};
use wxnotify::wechat::TokenApi;
use wxnotify::worker::WorkerError;

use crate::helpers::{TestEnv, WorkerOpts, event, wait_for};

async fn publish_many(env: &TestEnv, prefix: &str, n: usize) {
    let events: Vec<_> = (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "booking.confirmed", &format!("o{prefix}{i}")))
        .collect();
    futures_util::future::join_all(events.iter().map(|e| env.publish(e))).await;
}

async fn sent(env: &TestEnv) -> i64 {
    env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await
}

/// `workers` independent workers deliver `n` events published at once; returns when all are sent
/// and the workers have stopped.
async fn deliver_with_workers(env: &TestEnv, opts: &WorkerOpts, workers: usize, prefix: &str, n: i64) {
    let handles = futures_util::future::join_all((0..workers).map(|_| env.spawn_worker(opts))).await;
    publish_many(env, prefix, n as usize).await;
    wait_for("all sent", Duration::from_secs(120), || async { sent(env).await == n }).await;
    for w in handles {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_a_thousand_events_one_token_fetch() {
    let env = TestEnv::new().await;
    let opts = WorkerOpts {
        token_api: TokenApi::Classic,
        ..WorkerOpts::default()
    };
    deliver_with_workers(&env, &opts, 3, "k", 1000).await;
    let stats = env.sim.stats();
    println!(
        "3 workers, 1000 events: token fetches = {}, accepted = {}",
        stats.token_calls, stats.accepted
    );
    assert_eq!(stats.token_calls, 1, "exactly one token fetch across three workers");
    assert_eq!(stats.accepted, 1000);
    assert_eq!(stats.errors.get(&40001), None);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_rotations_cause_at_most_five_refreshes_and_every_event_is_delivered_once() {
    let env = TestEnv::new().await;
    env.sim.patch_faults(FaultsPatch {
        rotate_every: Some(200),
        ..Default::default()
    });
    let opts = WorkerOpts {
        token_api: TokenApi::Classic,
        ..WorkerOpts::default()
    };
    deliver_with_workers(&env, &opts, 3, "rot", 1000).await;
    let stats = env.sim.stats();
    let rejected = stats.errors.get(&40001).copied().unwrap_or(0);
    println!(
        "3 workers, 1000 events, rotation every 200 sends: rotations = {}, token fetches = {} (refreshes = {}), 40001 answers = {rejected}",
        stats.rotations,
        stats.token_calls,
        stats.token_calls - 1
    );
    assert_eq!(stats.rotations, 5);
    assert!(
        stats.token_calls - 1 <= 5,
        "at most one refresh per rotation, got {}",
        stats.token_calls - 1
    );
    assert_eq!(stats.accepted, 1000, "every event delivered");
    let mut recipients: Vec<_> = env.sim.messages().into_iter().map(|m| m.touser).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 1000, "each exactly once");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_replaced_before_they_expire() {
    let env = TestEnv::with_sim(SimConfig {
        token_ttl: Duration::from_secs(20),
        overlap: Duration::from_secs(0),
        ..SimConfig::default()
    })
    .await;
    let opts = WorkerOpts {
        token_api: TokenApi::Classic,
        token_margin_secs: 5,
        ..WorkerOpts::default()
    };
    let workers = futures_util::future::join_all((0..2).map(|_| env.spawn_worker(&opts))).await;
    // A steady trickle across two and a half token lifetimes.
    for i in 0..60 {
        env.publish(&event(&format!("ttl-{i}"), "booking.confirmed", &format!("oT{i}")))
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for("60 sent", Duration::from_secs(60), || async { sent(&env).await == 60 }).await;
    for w in workers {
        w.stop().await;
    }
    let stats = env.sim.stats();
    println!(
        "20 s tokens, 5 s margin, 30 s run: token fetches = {}, 42001 = {:?}, 40001 = {:?}",
        stats.token_calls,
        stats.errors.get(&42001),
        stats.errors.get(&40001)
    );
    assert!(stats.token_calls >= 2, "refreshed proactively");
    assert_eq!(stats.errors.get(&42001), None, "no send carried an expired token");
    assert_eq!(stats.errors.get(&40001), None, "no send carried a replaced token");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_stops_the_worker_naming_the_app_without_a_fetch_loop() {
    let env = TestEnv::new().await;
    let opts = WorkerOpts {
        secret: "wrong".into(),
        ..WorkerOpts::default()
    };
    let w = env.spawn_worker(&opts).await;
    let result = tokio::time::timeout(Duration::from_secs(20), w.join)
        .await
        .expect("worker stops by itself")
        .unwrap();
    match result {
        Err(WorkerError::Config(msg)) => {
            assert!(msg.contains(crate::helpers::APP_ID), "names the app: {msg}");
            assert!(msg.contains("40125"), "says what WeChat said: {msg}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // A second worker finds the block in Postgres and does not ask WeChat again.
    let w2 = env.spawn_worker(&opts).await;
    let r2 = tokio::time::timeout(Duration::from_secs(20), w2.join)
        .await
        .expect("second worker stops")
        .unwrap();
    match r2 {
        Err(WorkerError::Config(msg)) => {
            assert!(msg.contains(crate::helpers::APP_ID) && msg.contains("40125"), "{msg}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(env.sim.stats().stable_token_calls, 1, "one call, no loop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_tokens_are_force_refreshed_only_after_a_rejection() {
    let env = TestEnv::new().await;
    let opts = WorkerOpts {
        token_api: TokenApi::Stable,
        ..WorkerOpts::default()
    };
    let workers = futures_util::future::join_all((0..2).map(|_| env.spawn_worker(&opts))).await;
    publish_many(&env, "st", 100).await;
    wait_for("100 sent", Duration::from_secs(60), || async {
        sent(&env).await == 100
    })
    .await;
    assert_eq!(env.sim.stats().forced_refreshes, 0, "no force without a rejection");
    env.sim.rotate(crate::helpers::APP_ID);
    publish_many(&env, "st2", 100).await;
    wait_for("200 sent", Duration::from_secs(60), || async {
        sent(&env).await == 200
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    let stats = env.sim.stats();
    println!(
        "stable: calls = {}, forced = {}",
        stats.stable_token_calls, stats.forced_refreshes
    );
    assert_eq!(stats.forced_refreshes, 1, "one forced refresh after the rotation");
    assert_eq!(stats.token_calls, 0, "the classic API was never used");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_rejected_many_times_still_gets_the_revoked_token_replaced() {
    // Found by the chaos test: a message already requeued twice for token errors waits like a
    // transient failure; its rejection must still replace the token, or with nothing else
    // failing the worker kept the revoked token until the message ran out of attempts.
    let env = TestEnv::new().await;
    let opts = WorkerOpts {
        token_api: TokenApi::Classic,
        max_attempts: 3,
        ..WorkerOpts::default()
    };
    let worker = env.spawn_worker(&opts).await;
    env.publish(&event("tk-1", "booking.confirmed", "oTk1")).await;
    wait_for("first sent", Duration::from_secs(30), || async {
        sent(&env).await == 1
    })
    .await;
    env.sim.rotate(crate::helpers::APP_ID);

    let mut headers = lapin::types::FieldTable::default();
    wxnotify::queue::headers::set_int(&mut headers, wxnotify::queue::headers::TOKEN_REQUEUES, 2);
    let props = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    env.channel()
        .await
        .basic_publish(
            env.topology.exchange.as_str().into(),
            "booking.confirmed".into(),
            lapin::options::BasicPublishOptions::default(),
            event("tk-2", "booking.confirmed", "oTk2").to_string().as_bytes(),
            props,
        )
        .await
        .expect("publish");
    wait_for(
        "the twice-requeued message is sent",
        Duration::from_secs(30),
        || async { sent(&env).await == 2 },
    )
    .await;
    worker.stop().await;
    assert_eq!(env.sim.stats().accepted, 2);
    assert!(env.drain_dlq().await.is_empty(), "nothing dead-lettered");
    env.cleanup().await;
}
