//! One token for every worker: several independent workers (own pool, own cache, own id — as
//! separate processes would be) share one token through Postgres.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use wechat_sim::{FaultsPatch, SimConfig};
use wxnotify::app::AppError;
use wxnotify::config::AppCredentials;
use wxnotify::token::{TokenError, TokenProvider, TokenSettings, TokenStore};
use wxnotify::wechat::{TokenApi, WechatClient};

use crate::helpers::{APP_ID, APP_SECRET, TestEnv, WorkerOpts, event, wait_for};

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
}

/// A simulator whose tokens live `ttl` and stop working as soon as they are replaced.
async fn with_token_lifetime(ttl: Duration) -> TestEnv {
    TestEnv::with_sim(SimConfig {
        token_ttl: ttl,
        overlap: Duration::from_secs(0),
        ..SimConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_replaced_before_they_expire() {
    let env = with_token_lifetime(Duration::from_secs(20)).await;
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
        tokio::time::sleep(Duration::from_millis(500)).await; // pacing: a trickle, not a burst
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
}

fn wrong_secret() -> WorkerOpts {
    WorkerOpts {
        secret: "wrong".into(),
        ..WorkerOpts::default()
    }
}

/// Starts a worker that must stop by itself at boot with a configuration error; returns its text.
async fn config_error_at_boot(env: &TestEnv, opts: &WorkerOpts) -> String {
    let w = env.spawn_worker(opts).await;
    let result = tokio::time::timeout(Duration::from_secs(20), w.join)
        .await
        .expect("worker stops by itself")
        .unwrap();
    match result {
        Err(AppError::Config(msg)) => msg,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_stops_the_worker_naming_the_app_without_a_fetch_loop() {
    let env = TestEnv::new().await;
    let opts = wrong_secret();
    let msg = config_error_at_boot(&env, &opts).await;
    assert!(msg.contains(APP_ID), "names the app: {msg}");
    assert!(msg.contains("40125"), "says what WeChat said: {msg}");
    // A second worker finds the block in Postgres and does not ask WeChat again.
    let msg = config_error_at_boot(&env, &opts).await;
    assert!(msg.contains(APP_ID) && msg.contains("40125"), "{msg}");
    assert_eq!(env.sim.stats().stable_token_calls, 1, "one call, no loop");
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
    env.sim.rotate(APP_ID);
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
    env.sim.rotate(APP_ID);

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
}

/// A token provider with its own pool and cache, as one worker process has.
async fn provider(env: &TestEnv, api: TokenApi, margin: Duration) -> TokenProvider {
    let pool = wxnotify::db::connect(&SecretString::from(env.db_url.clone()), 4)
        .await
        .expect("provider pool");
    let client = WechatClient::new(&env.sim_base, Duration::from_secs(5)).expect("client");
    let settings = TokenSettings {
        api,
        margin,
        credentials_pause: Duration::from_secs(600),
    };
    let app = AppCredentials {
        app_id: APP_ID.into(),
        secret: Arc::new(SecretString::from(APP_SECRET)),
        rate_limit: None,
    };
    TokenProvider::new(pool, client, settings, &[app])
}

fn token_api_down(env: &TestEnv, down: bool) {
    env.sim.patch_faults(FaultsPatch {
        token_busy_rate: Some(if down { 1.0 } else { 0.0 }),
        ..Default::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_api_outage_costs_one_call_per_backoff_not_one_per_waiting_task() {
    let env = TestEnv::new().await;
    token_api_down(&env, true);
    let processes = [
        provider(&env, TokenApi::Stable, Duration::from_secs(180)).await,
        provider(&env, TokenApi::Stable, Duration::from_secs(180)).await,
    ];
    // Two processes, each with 200 tasks wanting a token at once, every 200 ms for 3.5 s.
    let started = Instant::now();
    let mut gets = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let wave = processes.iter().flat_map(|p| (0..200).map(move |_| p.get(APP_ID)));
        for result in futures_util::future::join_all(wave).await {
            let err = result.expect_err("no token during the outage");
            assert!(matches!(err, TokenError::Transient { .. }), "a transient error: {err}");
            gets += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // pacing: a wave every 200 ms
    }
    let during = env.sim.stats().stable_token_calls;
    println!("token API down for 3.5 s: {gets} gets in 2 processes, token API calls = {during}");
    assert!(
        (2..=4).contains(&during),
        "one call per backoff period (1 s, 2 s, 4 s...), not one per task: {during}"
    );

    token_api_down(&env, false);
    wait_for(
        "a token once the token API is back",
        Duration::from_secs(40),
        || async { processes[0].get(APP_ID).await.is_ok() },
    )
    .await;
    let t = processes[1].get(APP_ID).await.expect("the other process adopts it");
    assert_eq!(t.generation, 1);
    assert_eq!(
        env.sim.stats().stable_token_calls,
        during + 1,
        "one call after the outage"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM wechat_tokens WHERE failures_in_row = 0 AND backoff_until IS NULL")
            .await,
        1,
        "a success resets the backoff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_due_for_refresh_is_used_until_it_expires_while_the_token_api_fails() {
    let env = with_token_lifetime(Duration::from_secs(6)).await;
    // 6 s tokens, 4 s margin: replaced after 3 s (half their life).
    let p = provider(&env, TokenApi::Classic, Duration::from_secs(4)).await;
    let fetched = Instant::now();
    let first = p.get(APP_ID).await.expect("first token");
    token_api_down(&env, true);
    // The test's point: the token's refresh time (3 s) passes during the outage.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let t = p
        .get(APP_ID)
        .await
        .expect("the refresh fails but the token has not expired: it is still used");
    assert_eq!(t.generation, first.generation);
    let other = provider(&env, TokenApi::Classic, Duration::from_secs(4)).await;
    let t = other
        .get(APP_ID)
        .await
        .expect("a process that never had it uses it too");
    assert_eq!(t.generation, first.generation);
    let calls = env.sim.stats().token_calls;
    println!("token API down past refresh time: token API calls = {calls}");
    assert!(
        calls <= 3,
        "one fetch, then failed refreshes at the backoff's pace: {calls}"
    );

    // The test's point: the token's 6 s life runs out.
    tokio::time::sleep(Duration::from_millis(6500).saturating_sub(fetched.elapsed())).await;
    let err = p.get(APP_ID).await.expect_err("an expired token is never handed out");
    assert!(matches!(err, TokenError::Transient { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forced_refresh_does_not_use_up_the_daily_twenty() {
    let env = TestEnv::new().await;
    let p = provider(&env, TokenApi::Stable, Duration::from_secs(180)).await;
    let first = p.get(APP_ID).await.expect("first token");
    env.sim.rotate(APP_ID);
    token_api_down(&env, true);
    let err = p.invalidate(&first).await.expect_err("the forced refresh fails");
    println!("failed forced refresh: {err}");
    let forced =
        || env.count("SELECT COALESCE(sum(forced), 0)::bigint FROM wechat_token_fetches WHERE token_api = 'stable'");
    assert_eq!(forced().await, 0, "a failed forced call is not counted against the 20");
    assert_eq!(
        env.count("SELECT count(*) FROM wechat_tokens WHERE last_forced_at IS NOT NULL")
            .await,
        0
    );

    token_api_down(&env, false);
    wait_for("the forced refresh succeeds", Duration::from_secs(30), || async {
        p.invalidate(&first).await.is_ok()
    })
    .await;
    let t = p.get(APP_ID).await.expect("the new token");
    assert!(t.generation > first.generation);
    assert_eq!(forced().await, 1, "the successful forced call is counted");
    assert_eq!(env.sim.stats().forced_refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_process_cannot_keep_the_token_row_locked() {
    let env = TestEnv::new().await;
    // A process takes the row lock to refresh, then freezes (SIGSTOP, a hung call): it says nothing more.
    let frozen_pool = wxnotify::db::connect(&SecretString::from(env.db_url.clone()), 1)
        .await
        .expect("pool");
    let held = TokenStore::new(frozen_pool).lock(APP_ID).await.expect("row lock");
    let p = provider(&env, TokenApi::Classic, Duration::from_secs(180)).await;
    let started = Instant::now();
    let t = tokio::time::timeout(Duration::from_secs(25), p.get(APP_ID))
        .await
        .expect("Postgres ends the frozen transaction: the lock is not held forever")
        .expect("a token once the lock is free");
    println!("waited {:?} for a frozen lock holder", started.elapsed());
    assert_eq!(t.generation, 1);
    assert!(held.commit().await.is_err(), "the frozen transaction was ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_secret_does_not_block_workers_with_the_right_one() {
    let env = TestEnv::new().await;
    let wrong = wrong_secret();
    config_error_at_boot(&env, &wrong).await;

    let right = env.spawn_worker(&WorkerOpts::default()).await;
    publish_many(&env, "fp", 20).await;
    wait_for("the right worker delivers", Duration::from_secs(30), || async {
        sent(&env).await == 20 || right.join.is_finished()
    })
    .await;
    assert!(
        !right.join.is_finished(),
        "the worker with the right secret keeps running"
    );
    right.stop().await;
    assert_eq!(env.sim.stats().accepted, 20);
    assert_eq!(env.sim.stats().stable_token_calls, 2, "one failed call, one good one");
}
