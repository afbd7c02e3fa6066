//! What the benchmarks share: fresh queues on the real broker, a plain consumer, the
//! `wxnotify worker` process under test, and a live run of queued events through it.

// Shared by several bench binaries, each of which uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use std::collections::HashMap;
use std::time::Instant;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use secrecy::SecretString;
use wxnotify::queue::{self, Publisher, Topology};

use sqlx::PgPool;
use wechat_sim::{Sim, SimConfig};

use crate::common::{APP_ID, APP_SECRET, amqp_url, event, worker_env};

pub(crate) mod cost;
pub(crate) mod realistic;

/// A free local address (`127.0.0.1:<port>`) for a worker's or a receiver's endpoint.
pub(crate) fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string()
}

/// The text of a process's `/metrics` at `admin`; empty if it does not answer.
pub(crate) async fn metrics_text(admin: &str) -> String {
    match reqwest::get(format!("http://{admin}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The benchmarks' own runtime: two threads, like the machine.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A connection, a publisher with confirms and a fresh, declared topology named `<prefix>-<id>`.
pub(crate) struct Broker {
    pub conn: Connection,
    pub publisher: Publisher,
    pub topology: Topology,
}

impl Broker {
    pub(crate) async fn open(prefix: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology::new(&format!("{prefix}-{}.x", &id[..8]), &format!("{prefix}-{}.q", &id[..8]));
        let conn = queue::connect(&SecretString::from(amqp_url()), prefix)
            .await
            .expect("RabbitMQ (scripts/services.sh up)");
        let publisher = Publisher::open(&conn).await.expect("publisher");
        topology.declare_core(publisher.channel(), 20).await.expect("topology");
        Self {
            conn,
            publisher,
            topology,
        }
    }

    /// A consumer of the work queue with a prefetch of 512, as the worker has.
    pub(crate) async fn consumer(&self, tag: &str) -> Consumer {
        let ch = self.conn.create_channel().await.expect("channel");
        ch.basic_qos(512, BasicQosOptions::default()).await.expect("qos");
        ch.basic_consume(
            self.topology.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume")
    }

    /// Deletes the run's queues (quorum queues are not free) and exchanges, and closes; each on
    /// its own channel: deleting a queue that was never declared closes its channel.
    pub(crate) async fn close(self) {
        let policy = wxnotify::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(300));
        let mut names = vec![self.topology.queue.clone(), self.topology.dlq.clone()];
        names.extend(policy.tiers().into_iter().map(|t| self.topology.retry_queue(t)));
        names.extend(crate::common::all_apps().map(|(app, _)| self.topology.lane(app)));
        names.extend((0..wxnotify::queue::topology::MERCHANT_LANES).map(|k| self.topology.merchant_lane(k)));
        for q in names {
            if let Ok(ch) = self.conn.create_channel().await {
                let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
                let _ = ch.close(200, "done".into()).await;
            }
        }
        for x in [&self.topology.exchange, &self.topology.dlx] {
            if let Ok(ch) = self.conn.create_channel().await {
                let _ = ch.exchange_delete(x.as_str().into(), Default::default()).await;
                let _ = ch.close(200, "done".into()).await;
            }
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The real `wxnotify worker` (the release build under `cargo bench`) on this run's database,
/// queues and simulator; `WXNOTIFY_*` variables of the environment reach it.
pub(crate) fn spawn_worker(db_url: &str, topology: &Topology, sim: SocketAddr, admin: &str) -> tokio::process::Child {
    spawn_worker_with(db_url, topology, sim, admin, FIXTURES)
}

/// The test fixtures' templates: one template message per event type, sent at once.
pub(crate) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates.toml");
/// The shipped templates: a confirmation also schedules a reminder, a cancellation cancels it.
pub(crate) const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates.toml");

/// [`spawn_worker`] with another templates file.
pub(crate) fn spawn_worker_with(
    db_url: &str,
    topology: &Topology,
    sim: SocketAddr,
    admin: &str,
    templates: &str,
) -> tokio::process::Child {
    spawn_worker_env(db_url, topology, sim, templates, &[("WXNOTIFY_ADMIN_ADDR", admin)])
}

/// [`spawn_worker_with`] and more environment variables (the admin address among them, if any).
pub(crate) fn spawn_worker_env(
    db_url: &str,
    topology: &Topology,
    sim: SocketAddr,
    templates: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    tokio::process::Command::new(worker_binary())
        .arg("worker")
        .envs(worker_env(db_url, topology, &format!("http://{sim}"), templates))
        .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
        .envs(extra.iter().copied())
        .env("RUST_LOG", "warn")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("WXNOTIFY_")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("wxnotify binary")
}

/// The binary under test: this build's, or `BENCH_WORKER_BIN` (another build of the same
/// worker, to compare two builds in one run on this noisy machine).
pub(crate) fn worker_binary() -> String {
    std::env::var("BENCH_WORKER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wxnotify").to_string())
}

/// SIGTERM, then wait (at most 30 s) for the worker to drain and exit.
pub(crate) async fn stop_worker(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}

/// A simulator answering at once.
pub(crate) fn sim() -> Sim {
    Sim::new(SimConfig {
        apps: HashMap::from([(APP_ID.to_string(), APP_SECRET.to_string())]),
        ..SimConfig::default()
    })
}

pub(crate) async fn sent(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// Publishes `n` `booking.confirmed` events with ids `<prefix>-<i>` (confirmed by the broker),
/// 512 in flight.
pub(crate) async fn publish_live(publisher: &Publisher, topology: &Topology, prefix: &str, n: usize) {
    let results: Vec<_> = futures_util::stream::iter(0..n)
        .map(|i| {
            let body = event(
                &format!("{prefix}-{i:07}"),
                "booking.confirmed",
                &format!("o-{prefix}-{i:07}"),
            )
            .to_string();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            async move {
                publisher
                    .publish(&topology.exchange, "booking.confirmed", body.as_bytes(), props)
                    .await
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every publish confirmed");
}

/// `n` queued live events through one worker process on `db_url`: deliveries per second.
pub(crate) async fn live_run(db_url: &str, pool: &PgPool, n: usize) -> f64 {
    let sim = sim();
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("bench").await;
    let prefix = format!("live-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    publish_live(&broker.publisher, &broker.topology, &prefix, n).await;
    let child = spawn_worker(db_url, &broker.topology, sim_addr, "127.0.0.1:0");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let pattern = format!("{prefix}-%");
    let sent_live = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE status = 'sent' AND event_id LIKE $1")
            .bind(&pattern)
            .fetch_one(pool)
            .await
            .unwrap_or(0)
    };
    while sent_live().await < n as i64 {
        assert!(Instant::now() < deadline, "not delivered within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(sim.stats().accepted, n as u64, "one message per event");
    stop_worker(child).await;
    broker.close().await;
    rate
}
