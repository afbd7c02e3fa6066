//! Fairness benchmark (docs/interface.md §11): prints figures, asserts nothing.
//!
//!   cargo bench --bench fairness                     # every scenario but `timeout` (~10 min)
//!   cargo bench --bench fairness -- campaign 20000   # one scenario, a smaller backlog
//!   cargo bench --bench fairness -- timeout          # the 5-minute consumer-timeout run
//!
//! Under `cargo test --all-targets` (the CI) it runs `campaign` with 300 events and a 3 s trickle,
//! as a smoke test. Each scenario: a fresh database, fresh queues, one `wxnotify worker` process
//! (release build, default settings but what the scenario sets), the simulator answering each
//! send after 100 ms, app A = the default app, B and C = the other test apps.
//!
//! - `campaign`: A's backlog (100,000) alone, then again with B publishing one event every
//!   100 ms for 60 s. B's publish → send latency p50 / p99; A's sends a second both times. Twice:
//!   the campaign published while the worker runs, then queued before it starts. Also how many
//!   of A's still waited in the work queue when B began, and when it was first empty: B's worst
//!   wait is the time the worker takes to look past them.
//! - `rate`: `WXNOTIFY_RATE_LIMIT=50`, A's backlog 20,000, B's trickle; 20 s in, A's tokens are
//!   revoked and the token endpoint stalls for 7 s. B's latency; A's most sends in any second.
//! - `shares`: A's, then B's, then C's backlog queued (30,000 each); each app's share of the
//!   sends while all three have a backlog.
//! - `blocked`: A's and B's backlogs; a few seconds in, A's secret is reset (its token can no
//!   longer be had). B's sends a second, beside B alone.
//! - `timeout`: the broker's `consumer_timeout` lowered to 60 s; A's backlog is 5 minutes at its
//!   rate limit (15,000 at 50/s). Sessions the broker ended, and sends made twice.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use sqlx::PgPool;
use wechat_sim::{Faults, FaultsPatch, Sim, SimConfig};

use common::{APP_ID, OTHER_APPS, apps_env, apps_file, event, fresh_database, worker_env};
use support::{Broker, stop_worker, worker_binary};

const B: &str = OTHER_APPS[0].0;
const C: &str = OTHER_APPS[1].0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let only = args
        .iter()
        .find(|a| a.chars().all(|c| c.is_ascii_lowercase()) && !a.is_empty());
    let n: Option<usize> = args.iter().find_map(|a| a.parse().ok());
    support::runtime().block_on(async {
        if !bench {
            println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
            campaign(300, Duration::from_secs(3), false).await;
            return;
        }
        let run = |name: &str| only.is_none_or(|o| o == name);
        if run("campaign") {
            campaign(n.unwrap_or(100_000), Duration::from_secs(60), false).await;
            campaign(n.unwrap_or(100_000), Duration::from_secs(60), true).await;
        }
        if run("rate") {
            rate(n.unwrap_or(20_000)).await;
        }
        if run("shares") {
            shares(n.unwrap_or(90_000)).await;
        }
        if run("blocked") {
            blocked(n.unwrap_or(20_000)).await;
        }
        if only.is_some_and(|o| o == "timeout") {
            timeout(n.unwrap_or(15_000)).await;
        }
    });
}

/// One scenario's database, queues, simulator (100 ms a send) and templates file of three apps.
struct World {
    db_url: String,
    pool: PgPool,
    sim: Sim,
    sim_addr: std::net::SocketAddr,
    broker: Broker,
    apps_file: std::path::PathBuf,
}

impl World {
    async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (db_url, pool) = fresh_database(&id, 2).await;
        let sim = Sim::new(SimConfig {
            apps: common::sim_apps(),
            faults: Faults {
                latency_ms: 100,
                ..Faults::default()
            },
            ..SimConfig::default()
        });
        let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
        Self {
            db_url,
            pool,
            sim,
            sim_addr,
            broker: Broker::open("fair").await,
            apps_file: apps_file(&std::env::temp_dir()),
        }
    }

    /// `wxnotify worker` for the three apps, with `env` on top; its log goes to `log`.
    fn worker(&self, env: &[(&str, &str)], log: Option<&std::path::Path>) -> tokio::process::Child {
        let sim = format!("http://{}", self.sim_addr);
        let templates = self.apps_file.to_string_lossy();
        let stderr = log.map_or_else(Stdio::null, |p| std::fs::File::create(p).expect("log file").into());
        tokio::process::Command::new(worker_binary())
            .arg("worker")
            .envs(worker_env(&self.db_url, &self.broker.topology, &sim, &templates))
            .envs(apps_env())
            .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("WXNOTIFY_")))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("wxnotify binary")
    }

    /// Publishes `n` events of `app` (ids `<app>-<tag>-<i>`), 512 in flight.
    async fn backlog(&self, app: &str, tag: &str, n: usize) {
        let b = &self.broker;
        let done: Vec<_> = futures_util::stream::iter(0..n)
            .map(|i| {
                let body = body(app, &format!("{tag}-{i}")).into_bytes();
                async move {
                    b.publisher
                        .publish(&b.topology.exchange, "booking.confirmed", &body, props())
                        .await
                }
            })
            .buffer_unordered(512)
            .collect()
            .await;
        assert!(done.iter().all(Result::is_ok), "every publish confirmed");
    }

    /// B publishes one event every 100 ms for `span`: each event's openid and when it was published
    /// (ms since the epoch).
    async fn trickle(&self, app: &str, span: Duration) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < span {
            tick.tick().await;
            let id = format!("trickle-{i}");
            let at = now_ms();
            let b = &self.broker;
            b.publisher
                .publish(
                    &b.topology.exchange,
                    "booking.confirmed",
                    body(app, &id).as_bytes(),
                    props(),
                )
                .await
                .expect("published");
            out.push((format!("o-{app}-{id}"), at));
            i += 1;
        }
        out
    }

    /// How many messages wait in the work queue (ready, not handed to a consumer).
    async fn work_queue_depth(&self) -> u32 {
        let ch = self.broker.conn.create_channel().await.expect("channel");
        let (depth, _) = queue_counts(&ch, &self.broker.topology.queue).await;
        let _ = ch.close(200, "done".into()).await;
        depth
    }

    /// A task that answers how long after its start the work queue was first empty (sampled
    /// every 50 ms).
    async fn when_emptied(&self) -> tokio::task::JoinHandle<Duration> {
        let ch = self.broker.conn.create_channel().await.expect("channel");
        let q = self.broker.topology.queue.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while queue_counts(&ch, &q).await.0 > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        })
    }

    /// Waits until the worker consumes the work queue (a consumer on it).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ch = self.broker.conn.create_channel().await.expect("channel");
        while queue_counts(&ch, &self.broker.topology.queue).await.1 == 0 {
            assert!(Instant::now() < deadline, "the worker did not start consuming in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `limit`) until WeChat accepted `n` sends of `app`.
    async fn wait_sent(&self, app: &str, n: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while sends(&self.sim, app).len() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    }

    async fn close(self, child: tokio::process::Child) {
        stop_worker(child).await;
        self.broker.close().await;
        self.pool.close().await;
        let _ = std::fs::remove_file(&self.apps_file);
    }
}

/// The messages ready in `queue` and its consumers, asked of the queue itself (a passive
/// declare); (0, 0) if it cannot say.
async fn queue_counts(ch: &lapin::Channel, queue: &str) -> (u32, u32) {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, Default::default())
        .await
        .map_or((0, 0), |q| (q.message_count(), q.consumer_count()))
}

fn body(app: &str, id: &str) -> String {
    let mut e = event(&format!("{app}-{id}"), "booking.confirmed", &format!("o-{app}-{id}"));
    e["app_id"] = app.into();
    e.to_string()
}

fn props() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// When WeChat accepted each send of `app` (ms since the epoch), in order.
fn sends(sim: &Sim, app: &str) -> Vec<i64> {
    let mut at: Vec<i64> = sim
        .messages()
        .iter()
        .filter(|m| m.appid == app)
        .map(|m| m.accepted_at_ms)
        .collect();
    at.sort_unstable();
    at
}

/// When the worker started each send to `app` (the ledger's attempts, ms since the epoch), in
/// order: the rate limit holds here; WeChat's receipt adds each request's own jitter.
async fn send_starts(pool: &PgPool, app: &str) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT (EXTRACT(EPOCH FROM a.started_at) * 1000)::int8 FROM delivery_attempts a
           JOIN deliveries d ON d.id = a.delivery_id WHERE d.app_id = $1 ORDER BY 1",
    )
    .bind(app)
    .fetch_all(pool)
    .await
    .expect("attempts")
}

/// Publish → send latency of the trickle's events: p50, p99, max (ms), and how many never went.
fn latencies(sim: &Sim, published: &[(String, i64)]) -> String {
    let sent: HashMap<String, i64> = sim
        .messages()
        .into_iter()
        .map(|m| (m.touser, m.accepted_at_ms))
        .collect();
    let mut ms: Vec<i64> = published
        .iter()
        .filter_map(|(openid, at)| sent.get(openid).map(|s| s - at))
        .collect();
    ms.sort_unstable();
    let missing = published.len() - ms.len();
    let q = |p: f64| {
        ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(-1)
    };
    format!(
        "B's latency p50 {} ms, p99 {} ms, max {} ms ({} events, {missing} not sent)",
        q(0.50),
        q(0.99),
        ms.last().copied().unwrap_or(-1),
        published.len()
    )
}

/// Sends a second over `at` (first to last).
fn rate_of(at: &[i64]) -> f64 {
    match (at.first(), at.last()) {
        (Some(a), Some(b)) if b > a => (at.len() - 1) as f64 * 1000.0 / (b - a) as f64,
        _ => 0.0,
    }
}

/// The most sends within any one second (a sliding window).
fn peak_second(at: &[i64]) -> usize {
    let (mut most, mut lo) = (0, 0);
    for hi in 0..at.len() {
        while at[hi] - at[lo] >= 1000 {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    most
}

/// A's backlog alone, then with B's trickle: `queued` first (the worker starts after the whole
/// campaign is in the work queue), or published while the worker runs (B starts when the last
/// of A's is confirmed).
async fn campaign(n: usize, span: Duration, queued: bool) {
    let when = if queued {
        "queued before the worker started"
    } else {
        "published while the worker ran"
    };
    let alone = {
        let w = World::new().await;
        let child = start_and_publish(&w, n, queued).await;
        w.wait_sent(APP_ID, n, Duration::from_secs(900)).await;
        let rate = rate_of(&sends(&w.sim, APP_ID));
        w.close(child).await;
        rate
    };
    let w = World::new().await;
    let started = Instant::now();
    let child = start_and_publish(&w, n, queued).await;
    let in_queue = started.elapsed();
    let depth = w.work_queue_depth().await;
    let emptied = w.when_emptied().await;
    let published = w.trickle(B, span).await;
    println!(
        "fairness campaign ({when}): A's {n} in the work queue {:.1} s after the start; {depth} still there when B began; the work queue was first empty {:.1} s later",
        in_queue.as_secs_f64(),
        emptied.await.expect("sampler").as_secs_f64()
    );
    w.wait_sent(APP_ID, n, Duration::from_secs(900)).await;
    w.wait_sent(B, published.len(), Duration::from_secs(60)).await;
    let with_b = rate_of(&sends(&w.sim, APP_ID));
    println!(
        "fairness campaign ({when}): A's {n} alone {alone:.0} sends/s; with B {with_b:.0} sends/s ({:.0}% of alone); {}",
        100.0 * with_b / alone,
        latencies(&w.sim, &published)
    );
    w.close(child).await;
}

/// A's campaign of `n` and the worker, in the order `campaign` says.
async fn start_and_publish(w: &World, n: usize, queued: bool) -> tokio::process::Child {
    if queued {
        w.backlog(APP_ID, "campaign", n).await;
        return w.worker(&[], None);
    }
    let child = w.worker(&[], None);
    w.wait_ready().await;
    w.backlog(APP_ID, "campaign", n).await;
    child
}

async fn rate(n: usize) {
    let w = World::new().await;
    w.backlog(APP_ID, "rate", n).await;
    let child = w.worker(&[("WXNOTIFY_RATE_LIMIT", "50")], None);
    let sim = w.sim.clone();
    let stall = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        sim.patch_faults(FaultsPatch {
            token_latency_ms: Some(7000),
            ..FaultsPatch::default()
        });
        sim.rotate(APP_ID);
        tokio::time::sleep(Duration::from_secs(7)).await;
        sim.patch_faults(FaultsPatch {
            token_latency_ms: Some(0),
            ..FaultsPatch::default()
        });
    });
    let published = w.trickle(B, Duration::from_secs(60)).await;
    w.wait_sent(B, published.len(), Duration::from_secs(30)).await;
    stall.await.expect("stall");
    let a = sends(&w.sim, APP_ID);
    let started = send_starts(&w.pool, APP_ID).await;
    println!(
        "fairness rate 50/s: A sent {} in the run, {:.1}/s, at most {} in any second as the worker sent them, {} as WeChat received them (a 7 s token stall 20 s in); {}",
        a.len(),
        rate_of(&a),
        peak_second(&started),
        peak_second(&a),
        latencies(&w.sim, &published)
    );
    w.close(child).await;
}

async fn shares(n: usize) {
    let w = World::new().await;
    let third = n / 3;
    for (app, tag) in [(APP_ID, "a"), (B, "b"), (C, "c")] {
        w.backlog(app, tag, third).await;
    }
    let child = w.worker(&[], None);
    for app in [APP_ID, B, C] {
        w.wait_sent(app, third, Duration::from_secs(900)).await;
    }
    // The window in which all three had a backlog: from the last app's first send to the first
    // app's last.
    let all: Vec<Vec<i64>> = [APP_ID, B, C].iter().map(|a| sends(&w.sim, a)).collect();
    let from = all.iter().map(|s| s[0]).max().unwrap_or(0);
    let to = all.iter().map(|s| *s.last().unwrap()).min().unwrap_or(0);
    let counts: Vec<usize> = all
        .iter()
        .map(|s| s.iter().filter(|t| (from..=to).contains(*t)).count())
        .collect();
    let total: usize = counts.iter().sum();
    let shares: Vec<String> = counts
        .iter()
        .map(|c| format!("{:.1}%", 100.0 * *c as f64 / total.max(1) as f64))
        .collect();
    println!(
        "fairness shares: three backlogs of {third}; while all three had one ({:.1} s, {total} sends): A {}, B {}, C {} (a third is 33.3%)",
        (to - from) as f64 / 1000.0,
        shares[0],
        shares[1],
        shares[2]
    );
    w.close(child).await;
}

async fn blocked(n: usize) {
    let alone = {
        let w = World::new().await;
        w.backlog(B, "alone", n).await;
        let child = w.worker(&[], None);
        w.wait_sent(B, n, Duration::from_secs(900)).await;
        let rate = rate_of(&sends(&w.sim, B));
        w.close(child).await;
        rate
    };
    let w = World::new().await;
    w.backlog(APP_ID, "blocked", n).await;
    w.backlog(B, "b", n).await;
    let child = w.worker(&[], None);
    w.wait_sent(APP_ID, 100, Duration::from_secs(60)).await;
    // A's secret is reset behind the worker's back, and its tokens revoked.
    w.sim.set_secret(APP_ID, "reset-by-the-merchant");
    w.sim.rotate(APP_ID);
    let blocked_at = now_ms();
    w.wait_sent(B, n, Duration::from_secs(900)).await;
    let b: Vec<i64> = sends(&w.sim, B).into_iter().filter(|t| *t >= blocked_at).collect();
    println!(
        "fairness blocked: A's token blocked; B sent {} after that at {:.0} sends/s (B alone: {alone:.0} sends/s, {:.0}%)",
        b.len(),
        rate_of(&b),
        100.0 * rate_of(&b) / alone
    );
    w.close(child).await;
}

async fn timeout(n: usize) {
    set_consumer_timeout(60_000).await;
    let w = World::new().await;
    w.backlog(APP_ID, "timeout", n).await;
    let log = std::env::temp_dir().join(format!("fairness-timeout-{}.log", std::process::id()));
    let child = w.worker(&[("WXNOTIFY_RATE_LIMIT", "50"), ("RUST_LOG", "info")], Some(&log));
    let secs = n as u64 / 50 + 30;
    let done = w.wait_sent(APP_ID, n, Duration::from_secs(secs)).await;
    let a = sends(&w.sim, APP_ID);
    let distinct: std::collections::HashSet<String> = w.sim.messages().into_iter().map(|m| m.touser).collect();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let ended = text.matches("broker session ended").count();
    let started = send_starts(&w.pool, APP_ID).await;
    println!(
        "fairness timeout: consumer_timeout 60 s, A's {n} at 50/s ({}): {} sent, {} twice; sessions the broker ended: {ended}; most in any second {} as sent, {} as received",
        if done { "all sent" } else { "NOT all sent" },
        a.len(),
        a.len() - distinct.len().min(a.len()),
        peak_second(&started),
        peak_second(&a)
    );
    w.close(child).await;
    set_consumer_timeout(1_800_000).await;
    let _ = std::fs::remove_file(log);
}

/// Sets the running broker's `consumer_timeout` (ms) through `rabbitmqctl eval`.
async fn set_consumer_timeout(ms: u64) {
    let expr = format!("application:set_env(rabbit, consumer_timeout, {ms}).");
    let ok = tokio::process::Command::new("rabbitmqctl")
        .args(["eval", &expr])
        .stdout(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    println!(
        "bench: consumer_timeout set to {ms} ms: {}",
        if ok { "ok" } else { "FAILED" }
    );
}
