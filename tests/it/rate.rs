//! `WXNOTIFY_RATE_LIMIT` (docs/interface.md §6): the live workers share the fleet's sends a second per
//! app, re-balanced as workers come and go; waiting for a slot claims nothing, so a shutdown hands
//! the waiting messages back at once.

use std::time::{Duration, Instant};

use crate::helpers::{TestEnv, WorkerOpts, event, wait_for};

const T: Duration = Duration::from_secs(60);

fn limited(rate: f64) -> WorkerOpts {
    WorkerOpts {
        rate_limit: Some(rate),
        ..WorkerOpts::default()
    }
}

/// Every live worker has beaten (and so counted the fleet) since the last one joined or left.
async fn shares_settled(env: &TestEnv, since: chrono::DateTime<chrono::Utc>) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT count(*) > 0
            AND min(heartbeat_at) > greatest(max(started_at), $1) + interval '100 milliseconds'
           FROM workers",
    )
    .bind(since)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Sends the simulator accepted since `from_ms`: the most within any one second, within any five
/// seconds, and the mean rate.
fn rates(env: &TestEnv, from_ms: i64) -> (usize, usize, f64) {
    let mut at: Vec<i64> = env
        .sim
        .messages()
        .iter()
        .map(|m| m.accepted_at_ms)
        .filter(|t| *t >= from_ms)
        .collect();
    at.sort_unstable();
    let peak = |window: i64| {
        let (mut most, mut lo) = (0, 0);
        for hi in 0..at.len() {
            while at[hi] - at[lo] >= window {
                lo += 1;
            }
            most = most.max(hi - lo + 1);
        }
        most
    };
    let span = (at.last().unwrap() - at[0]) as f64 / 1000.0;
    (peak(1000), peak(5000), (at.len() - 1) as f64 / span)
}

/// The fleet stayed near its limit: slots are reserved at the limit; what reaches WeChat also
/// carries each send's own jitter (claim batch, HTTP), so one second may hold a few more.
fn assert_near(label: &str, limit: f64, (one, five, mean): (usize, usize, f64)) {
    eprintln!("{label}, limit {limit}/s: peak {one} in one second, {five} in five, mean {mean:.1}/s");
    assert!(
        five as f64 <= limit * 5.0 * 1.1,
        "{label}: over the limit, {five} in five seconds"
    );
    assert!(one as f64 <= limit * 1.35, "{label}: a burst, {one} in one second");
    assert!(
        mean >= limit * 0.8,
        "{label}: the fleet used its limit, mean {mean:.1}/s"
    );
}

async fn publish_batch(env: &TestEnv, prefix: &str, n: usize) {
    for i in 0..n {
        env.publish(&event(
            &format!("{prefix}-{i}"),
            "booking.confirmed",
            &format!("o{prefix}{i}"),
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_fleet_rate_and_two_take_over_the_share_of_one_that_left() {
    let env = TestEnv::new().await;
    let limit = 60.0;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.spawn_worker(&limited(limit)).await);
    }
    wait_for("three workers registered", T, || async {
        env.count("SELECT count(*) FROM workers").await == 3
    })
    .await;
    let t0 = chrono::Utc::now();
    wait_for("every worker counted three", T, || shares_settled(&env, t0)).await;

    let from = chrono::Utc::now().timestamp_millis();
    publish_batch(&env, "three", 300).await;
    wait_for("300 sent by three workers", T, || async {
        env.sim.stats().accepted == 300
    })
    .await;
    assert_near("three workers", limit, rates(&env, from));

    // One leaves (its row goes): the other two take 30/s each once they have beaten.
    workers.pop().unwrap().stop().await;
    let t1 = chrono::Utc::now();
    wait_for("the two counted two", T, || shares_settled(&env, t1)).await;
    let from = chrono::Utc::now().timestamp_millis();
    publish_batch(&env, "two", 240).await;
    wait_for("240 more sent by two workers", T, || async {
        env.sim.stats().accepted == 540
    })
    .await;
    // The two took over the share of the third.
    assert_near("two workers", limit, rates(&env, from));
    for w in workers {
        w.stop().await;
    }
    assert_eq!(env.sim.stats().accepted, 540, "each event sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_hands_back_the_messages_waiting_for_a_slot_at_once_and_claims_nothing() {
    let env = TestEnv::new().await;
    let slow = env
        .spawn_worker(&WorkerOpts {
            shutdown_grace_secs: 30.0,
            ..limited(2.0)
        })
        .await;
    publish_batch(&env, "wait", 40).await;
    wait_for("the first sends", T, || async { env.sim.stats().accepted >= 2 }).await;
    // Dozens wait for a slot (2/s): the stop does not wait them out (30 s of grace).
    let started = Instant::now();
    slow.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stopping took {took:?}: the waiters held it up"
    );
    let sent_before = env.sim.stats().accepted;
    assert_eq!(
        env.count("SELECT count(*) FROM deliveries WHERE in_doubt_since IS NOT NULL")
            .await,
        0,
        "a message waiting for its slot claimed nothing, so nothing is in doubt"
    );
    // An unlimited worker sends the rest, each once.
    let fast = env.spawn_worker(&WorkerOpts::default()).await;
    wait_for("all forty sent", T, || async {
        env.count("SELECT count(*) FROM deliveries WHERE status = 'sent'").await == 40
    })
    .await;
    fast.stop().await;
    assert!(sent_before < 40);
    assert_eq!(env.sim.stats().accepted, 40, "each event sent once");
}
