//! Latency benchmark (issue 12): prints figures, asserts nothing.
//!
//!   cargo bench --bench latency                 # 500/s and 2,000/s, 20 s each
//!   cargo bench --bench latency -- 10           # 10 s each
//!
//! Under `cargo test --all-targets` (the CI) it is a smoke run: 50/s for 2 s.
//!
//! For each rate, in one run, on the real RabbitMQ and Postgres of this machine:
//! 1. `broker`: persistent messages published at a steady rate (confirms) into a fresh quorum
//!    queue; a consumer (prefetch 512) acks them. Latency = consume time − publish time.
//! 2. `wxnotify`: events published at the same rate with `occurred_at` = now; one `wxnotify worker`
//!    process; WeChat (the simulator) answers at once. Latency = the first attempt's `started_at`
//!    − `occurred_at` (publish → request sent), from the ledger.
//!
//! Both print p50/p95/p99/max, side by side, and the worker's mean time per stage
//! (`wxnotify_stage_seconds`, scraped from its `/metrics`) says where the time goes.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use wechat_sim::{Sim, SimConfig};
use wxnotify::queue::{Publisher, Topology};

use common::{APP_ID, APP_SECRET, event, fresh_database};
use support::{Broker, spawn_worker, stop_worker};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (rates, secs) = if args.iter().any(|a| a == "--bench") {
        (
            vec![500, 2000],
            args.iter().find_map(|a| a.parse().ok()).unwrap_or(20u64),
        )
    } else {
        println!("latency: smoke run under `cargo test` (figures are meaningless; use `cargo bench --bench latency`)");
        (vec![50], 2)
    };
    support::runtime().block_on(async {
        for rate in rates {
            let broker = broker_alone(rate, secs).await;
            let (ours, stages) = wxnotify_run(rate, secs).await;
            println!("latency: {rate}/s for {secs} s (ms)      p50      p95      p99      max");
            println!("latency:   broker alone         {}", row(&broker));
            println!("latency:   wxnotify (to send)   {}", row(&ours));
            println!(
                "latency:   wxnotify − broker    {:>8.2} {:>8.2} {:>8.2}",
                ours.p50 - broker.p50,
                ours.p95 - broker.p95,
                ours.p99 - broker.p99
            );
            let stages: Vec<String> = stages.iter().map(|(s, ms)| format!("{s} {ms:.2}")).collect();
            println!("latency:   worker stages, mean ms: {}", stages.join(", "));
        }
    });
}

#[derive(Debug, Default)]
struct Percentiles {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn row(p: &Percentiles) -> String {
    format!("{:>8.2} {:>8.2} {:>8.2} {:>8.2}", p.p50, p.p95, p.p99, p.max)
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: *ms.last().unwrap(),
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Publishes `rate × secs` messages at a steady pace (a tick every 10 ms), each confirmed, with
/// `make(i)` building message i; returns when all are confirmed.
async fn steady<F>(publisher: &Publisher, topology: &Topology, rate: u64, secs: u64, make: F)
where
    F: Fn(usize) -> (String, Vec<u8>, BasicProperties),
{
    let total = (rate * secs) as usize;
    let per_tick = (rate as f64 / 100.0).max(1.0);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = futures_util::stream::FuturesUnordered::new();
    let mut sent = 0usize;
    let mut due = 0.0f64;
    while sent < total {
        tick.tick().await;
        due += per_tick;
        while (sent as f64) < due && sent < total {
            let (rk, body, props) = make(sent);
            let p = publisher.clone();
            let x = topology.exchange.clone();
            pending.push(tokio::spawn(async move { p.publish(&x, &rk, &body, props).await }));
            sent += 1;
        }
        while let Some(Some(done)) = futures_util::FutureExt::now_or_never(pending.next()) {
            done.expect("publish task").expect("publish confirmed");
        }
    }
    while let Some(done) = pending.next().await {
        done.expect("publish task").expect("publish confirmed");
    }
}

async fn broker_alone(rate: u64, secs: u64) -> Percentiles {
    let broker = Broker::open("latency").await;
    let mut consumer = broker.consumer("latency").await;
    let total = (rate * secs) as usize;
    let consume = tokio::spawn(async move {
        let mut ms = Vec::with_capacity(total);
        while ms.len() < total {
            let d = consumer.next().await.expect("stream").expect("delivery");
            let sent_us = d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("t") {
                    Some(AMQPValue::LongLongInt(t)) => Some(*t),
                    _ => None,
                })
                .expect("publish time header");
            ms.push((now_us() - sent_us) as f64 / 1000.0);
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
        }
        ms
    });
    let body = event("lat-broker", "booking.confirmed", "o-lat")
        .to_string()
        .into_bytes();
    steady(&broker.publisher, &broker.topology, rate, secs, |_| {
        let mut h = FieldTable::default();
        h.insert("t".into(), AMQPValue::LongLongInt(now_us()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(h);
        ("booking.confirmed".into(), body.clone(), props)
    })
    .await;
    let ms = consume.await.expect("consumer");
    broker.close().await;
    percentiles(ms)
}

async fn wxnotify_run(rate: u64, secs: u64) -> (Percentiles, BTreeMap<String, f64>) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    let sim = Sim::new(SimConfig {
        apps: HashMap::from([(APP_ID.to_string(), APP_SECRET.to_string())]),
        ..SimConfig::default()
    });
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let broker = Broker::open("latency").await;
    let admin = support::free_addr();
    let child = spawn_worker(&db_url, &broker.topology, sim_addr, &admin);
    // Ready when it consumes: its admin endpoint says so.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "worker not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    steady(&broker.publisher, &broker.topology, rate, secs, |i| {
        let mut ev = event(&format!("lat-{i:07}"), "booking.confirmed", &format!("o-lat-{i:07}"));
        ev["occurred_at"] = chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into();
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        ("booking.confirmed".into(), ev.to_string().into_bytes(), props)
    })
    .await;
    let total = (rate * secs) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
        if sent >= total {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ms: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM a.started_at - d.occurred_at) * 1000)::float8
           FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE a.attempt = 1",
    )
    .fetch_all(&pool)
    .await
    .expect("latencies");
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    stop_worker(child).await;
    broker.close().await;
    pool.close().await;
    (percentiles(ms), stage_means(&metrics))
}

/// Mean milliseconds per stage, from `wxnotify_stage_seconds_{sum,count}{stage="…"}`.
fn stage_means(text: &str) -> BTreeMap<String, f64> {
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        for (suffix, slot) in [("_sum", 0), ("_count", 1)] {
            let prefix = format!("wxnotify_stage_seconds{suffix}{{stage=\"");
            if let Some(rest) = line.strip_prefix(&prefix)
                && let Some((stage, value)) = rest.split_once("\"} ")
                && let Ok(v) = value.trim().parse::<f64>()
            {
                let e = sums.entry(stage.to_string()).or_default();
                if slot == 0 { e.0 = v } else { e.1 = v }
            }
        }
    }
    sums.into_iter()
        .filter(|(_, (_, n))| *n > 0.0)
        .map(|(s, (sum, n))| (s, sum / n * 1000.0))
        .collect()
}
