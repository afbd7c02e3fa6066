//! Throughput benchmark: prints figures, asserts nothing (CI does not run it).
//!
//!   cargo bench --bench throughput                     # all scenarios, 20,000 events each
//!   cargo bench --bench throughput -- 50000            # more events
//!
//! Under `cargo test --all-targets` (the CI) it runs with 200 events, as a smoke test.
//!
//! Scenarios, each on a fresh database and fresh queues of the real RabbitMQ and Postgres:
//! 1. `broker`: the broker alone: persistent messages published with confirms into a quorum queue
//!    while a consumer (prefetch 512) acks them. The ceiling for everything else.
//! 2. `wxnotify, WeChat 0 ms`: N events already queued; one `wxnotify worker` process (release
//!    build, default settings) delivers them to the simulator; clock from its start to the N-th
//!    `sent` row in the ledger: consume, claim, render, send, record, ack.
//! 3. `wxnotify, WeChat 100 ms`: the same with every send answered after 100 ms.
//!
//! For each: deliveries per second, and the worker's peak resident memory (VmHWM).
//! `WXNOTIFY_*` variables of the environment reach the worker (e.g. `WXNOTIFY_CONCURRENCY=1000`).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use sqlx::PgPool;
use wechat_sim::{Faults, Sim, SimConfig};
use wxnotify::queue::{Publisher, Topology};

use common::{APP_ID, APP_SECRET, event, fresh_database};
use support::{Broker, SHIPPED, realistic, spawn_worker, spawn_worker_with, stop_worker};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this too (with its own
    // flags): then it is a smoke test of the benchmark with a few events.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: usize = if args.iter().any(|a| a == "--bench") {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(20_000)
    } else {
        println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
        200
    };
    support::runtime().block_on(async {
        println!("bench: {events} events per scenario; {} cores", num_cpus());
        let broker = broker_alone(events).await;
        println!("bench: broker alone                 {broker:>8.0} msgs/s (publish with confirms + consume + ack, persistent, quorum)");
        for latency in [0, 100] {
            let (rate, rss_kib, secs) = wxnotify_run(events, latency).await;
            println!(
                "bench: wxnotify, WeChat {latency:>3} ms      {rate:>8.0} deliveries/s ({events} in {secs:.1} s; worker peak RSS {} MiB; {:.2} x the broker)",
                rss_kib / 1024,
                rate / broker
            );
        }
        let bookings = events / 4;
        let (rate, secs, work) = realistic_run(bookings).await;
        println!(
            "bench: realistic mix, WeChat   0 ms {rate:>8.0} deliveries/s ({} in {secs:.1} s; {:.2} x the broker)",
            realistic::deliveries(bookings),
            rate / broker
        );
        println!("bench:   {work}");
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

async fn publish_all(publisher: &Publisher, topology: &Topology, bodies: &[(String, Vec<u8>)]) {
    let results: Vec<_> = futures_util::stream::iter(bodies)
        .map(|(rk, body)| {
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            publisher.publish(&topology.exchange, rk, body, props)
        })
        .buffer_unordered(512)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every publish confirmed");
}

fn bodies(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let ev = event(
                &format!("bench-{i:07}"),
                "booking.confirmed",
                &format!("o-bench-{i:07}"),
            );
            ("booking.confirmed".to_string(), ev.to_string().into_bytes())
        })
        .collect()
}

async fn broker_alone(n: usize) -> f64 {
    let broker = Broker::open("bench").await;
    let mut consumer = broker.consumer("bench").await;
    let bodies = bodies(n);
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let d = consumer.next().await.expect("stream").expect("delivery");
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            got += 1;
        }
    });
    publish_all(&broker.publisher, &broker.topology, &bodies).await;
    consume.await.expect("consumer");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    broker.close().await;
    rate
}

async fn sent(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn wxnotify_run(n: usize, latency_ms: u64) -> (f64, u64, f64) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    let sim = Sim::new(SimConfig {
        apps: HashMap::from([(APP_ID.to_string(), APP_SECRET.to_string())]),
        faults: Faults {
            latency_ms,
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("bench").await;
    publish_all(&broker.publisher, &broker.topology, &bodies(n)).await;
    let child = spawn_worker(&db_url, &broker.topology, sim_addr, "127.0.0.1:0");
    let pid = child.id().expect("pid");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let mut rss = 0;
    while sent(&pool).await < n as i64 {
        assert!(Instant::now() < deadline, "not delivered within 10 minutes");
        rss = rss.max(peak_rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    rss = rss.max(peak_rss_kib(pid));
    assert_eq!(sim.stats().accepted, n as u64, "one message per event");
    stop_worker(child).await;
    broker.close().await;
    pool.close().await;
    (n as f64 / secs, rss, secs)
}

/// The realistic mix (see `realistic.rs`) through one worker, WeChat answering at once:
/// deliveries a second, the seconds it took, and what Postgres did per delivery.
async fn realistic_run(bookings: usize) -> (f64, f64, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    let sim = support::sim();
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("bench").await;
    publish_all(&broker.publisher, &broker.topology, &realistic::bodies(bookings)).await;
    let child = spawn_worker_with(&db_url, &broker.topology, sim_addr, "127.0.0.1:0", SHIPPED);
    let before = realistic::PgWork::read(&pool).await;
    let started = Instant::now();
    let secs = realistic::wait_final(&pool, bookings, started).await;
    let work = realistic::PgWork::read(&pool)
        .await
        .per(before, realistic::deliveries(bookings));
    stop_worker(child).await;
    broker.close().await;
    pool.close().await;
    (realistic::deliveries(bookings) as f64 / secs, secs, work)
}
