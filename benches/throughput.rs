//! Throughput benchmark: prints figures; asserts only that each fixture event was sent once.
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
//!    build, default settings) delivers them to the simulator; clock from its start until every
//!    delivery is final in the ledger: consume, claim, render, send, record, ack.
//! 3. `wxnotify, WeChat 100 ms`: the same with every send answered after 100 ms.
//! 4. `realistic mix`: the shipped templates and car-wash traffic (`support/realistic.rs`), N/4
//!    bookings of four deliveries each, WeChat at once.
//!
//! For each: deliveries per second and the ratio to the broker; the worker's peak resident
//! memory (VmHWM); CPU µs per delivery of each group of processes (RabbitMQ, Postgres, the
//! worker, this benchmark with its simulator, others); Postgres's statements, commits, rows,
//! index entries and WAL bytes per delivery; the worker's heap allocations per delivery (it runs
//! with `WXNOTIFY_COUNT_ALLOCATIONS=1`). See `support/cost.rs`.
//! `WXNOTIFY_*` variables of the environment reach the worker (e.g. `WXNOTIFY_CONCURRENCY=1000`).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use wechat_sim::{Faults, Sim, SimConfig};
use wxnotify::queue::{Publisher, Topology};

use common::{APP_ID, APP_SECRET, event, fresh_database};
use support::cost::{self, Cpu, PgWork};
use support::{Broker, FIXTURES, SHIPPED, realistic, spawn_worker_env, stop_worker};

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
        let (cpu_before, started) = (Cpu::read(), Instant::now());
        let broker = broker_alone(events).await;
        println!("bench: broker alone                 {broker:>8.0} msgs/s (publish with confirms + consume + ack, persistent, quorum)");
        let secs = started.elapsed().as_secs_f64();
        println!("bench:   {} (over {secs:.1} s, publishing included)", Cpu::read().per(&cpu_before, events));
        for latency_ms in [0, 100] {
            let scenario = Scenario { bodies: bodies(events), deliveries: events, templates: FIXTURES, latency_ms };
            let r = run(scenario).await;
            assert_eq!(r.sends, events as u64, "one message per event");
            print(&format!("wxnotify, WeChat {latency_ms:>3} ms     "), events, &r, broker);
        }
        let bookings = events / 4;
        let scenario = Scenario {
            bodies: realistic::bodies(bookings),
            deliveries: realistic::deliveries(bookings),
            templates: SHIPPED,
            latency_ms: 0,
        };
        print("realistic mix, WeChat   0 ms", scenario.deliveries, &run(scenario).await, broker);
    });
}

fn print(label: &str, deliveries: usize, r: &Run, broker: f64) {
    println!(
        "bench: {label} {:>8.0} deliveries/s ({deliveries} in {:.1} s; worker peak RSS {} MiB; {:.2} x the broker)",
        r.rate,
        r.secs,
        r.rss_kib / 1024,
        r.rate / broker
    );
    println!("bench:   {}", r.cost);
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

/// One scenario's figures.
struct Run {
    rate: f64,
    secs: f64,
    rss_kib: u64,
    /// Messages the simulator accepted.
    sends: u64,
    /// CPU per process group, Postgres's work and the worker's allocations, per delivery.
    cost: String,
}

/// What a scenario runs: its events, the templates, the simulator's latency, and how to tell it
/// is done.
struct Scenario {
    bodies: Vec<(String, Vec<u8>)>,
    deliveries: usize,
    templates: &'static str,
    latency_ms: u64,
}

/// The scenario's events queued first, then one worker (counting its allocations) until every
/// delivery is final; the cost read around it.
async fn run(scenario: Scenario) -> Run {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    PgWork::prepare(&pool).await;
    let sim = Sim::new(SimConfig {
        apps: HashMap::from([(APP_ID.to_string(), APP_SECRET.to_string())]),
        faults: Faults {
            latency_ms: scenario.latency_ms,
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("bench").await;
    publish_all(&broker.publisher, &broker.topology, &scenario.bodies).await;
    let admin = support::free_addr();
    let (pg_before, cpu_before) = (PgWork::read(&pool).await, Cpu::read());
    let env = [
        ("WXNOTIFY_ADMIN_ADDR", admin.as_str()),
        ("WXNOTIFY_COUNT_ALLOCATIONS", "1"),
    ];
    let child = spawn_worker_env(&db_url, &broker.topology, sim_addr, scenario.templates, &env);
    let pid = child.id().expect("pid");
    let started = Instant::now();
    let rss = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(peak_rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
            if peak_rss_kib(pid) == 0 {
                return peak;
            }
        }
    });
    let secs = realistic::wait_final(&pool, scenario.deliveries, started).await;
    let sends = sim.stats().accepted;
    let cpu = Cpu::read().per(&cpu_before, scenario.deliveries);
    let allocations = cost::allocations(&admin).await;
    stop_worker(child).await;
    let pg = PgWork::read(&pool).await.per(pg_before, scenario.deliveries);
    broker.close().await;
    pool.close().await;
    let allocs = allocations.map_or("not read".into(), |a| {
        format!("{:.0}", a as f64 / scenario.deliveries as f64)
    });
    Run {
        rate: scenario.deliveries as f64 / secs,
        secs,
        rss_kib: rss.await.unwrap_or(0),
        sends,
        cost: format!("{cpu}\nbench:   {pg}\nbench:   worker allocations per delivery: {allocs} (start-up included)"),
    }
}
