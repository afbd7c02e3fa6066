//! Third-party platform benchmark (docs/interface.md §10): prints figures, asserts nothing.
//!
//!   cargo bench --bench platform                # 1,000 merchants × 20 bookings
//!   cargo bench --bench platform -- 200 50      # 200 merchants × 50 bookings
//!
//! Under `cargo test --all-targets` (the CI) it runs 10 merchants × 5 bookings, as a smoke test.
//!
//! The same load twice, each on a fresh database and fresh queues, the simulator answering each
//! send after 100 ms, one `wxnotify worker` process (release build, default settings) with a
//! platform configured, the bookings queued before it starts:
//! 1. `one app`: every booking for the configured app;
//! 2. `merchants`: the bookings spread over the platform's merchants (onboarded before: codes
//!    exchanged, so each has a token in the ledger), sent with each merchant's own token.
//!
//! For each: deliveries a second from the worker's start to the last `sent` row; then the ratio.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::BasicProperties;
use secrecy::SecretString;
use wechat_sim::{Authorize, Faults, PlatformConfig, Sim, SimConfig};
use wxnotify::platform::client::ComponentApi;
use wxnotify::platform::tokens::{Platform, PlatformTokens};

use common::{APP_ID, APP_SECRET, event, fresh_database};
use support::{Broker, FIXTURES, sent, spawn_worker_env, stop_worker};

const PLATFORM: &str = "wx9999999999999999";
const SECRET: &str = "component-secret-bench";
const AES_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (merchants, each) = if args.iter().any(|a| a == "--bench") {
        let mut n = args.iter().filter_map(|a| a.parse::<usize>().ok());
        (n.next().unwrap_or(1_000), n.next().unwrap_or(20))
    } else {
        println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
        (10, 5)
    };
    let file = templates_file();
    support::runtime().block_on(async {
        let n = merchants * each;
        println!("bench: {n} bookings, WeChat answering in 100 ms");
        let one = run(&file, 0, n).await;
        println!("bench: one app                    {one:>8.0} deliveries/s");
        let many = run(&file, merchants, each).await;
        println!(
            "bench: {merchants} merchants x {each}      {many:>8.0} deliveries/s ({:.2} x one app)",
            many / one
        );
    });
    let _ = std::fs::remove_file(&file);
}

/// The fixtures with the platform, in a temporary file.
fn templates_file() -> std::path::PathBuf {
    let fixtures = std::fs::read_to_string(FIXTURES).expect("fixtures");
    let path = std::env::temp_dir().join(format!("wxn-bench-platform-{}.toml", uuid::Uuid::new_v4().simple()));
    let platform = format!(
        "\n[[platforms]]\ncomponent_appid = \"{PLATFORM}\"\nsecret_env = \"WXN_BENCH_COMPONENT_SECRET\"\n\
         callback_token_env = \"WXN_BENCH_COMPONENT_TOKEN\"\naes_key_env = \"WXN_BENCH_COMPONENT_KEY\"\n"
    );
    std::fs::write(&path, fixtures + &platform).expect("templates file");
    path
}

fn merchant(i: usize) -> String {
    format!("wxBENCH{i:011}")
}

/// One run: `merchants` merchants with `each` bookings (0 merchants: `each` bookings for the
/// configured app). Deliveries a second.
async fn run(file: &std::path::Path, merchants: usize, each: usize) -> f64 {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 4).await;
    let sim = Sim::new(SimConfig {
        apps: HashMap::from([(APP_ID.to_string(), APP_SECRET.to_string())]),
        platforms: HashMap::from([(PLATFORM.to_string(), platform_config())]),
        faults: Faults {
            latency_ms: 100,
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let sim_addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim");
    let apps: Vec<String> = if merchants == 0 {
        vec![APP_ID.to_string()]
    } else {
        onboard(&sim, &format!("http://{sim_addr}"), &pool, merchants).await;
        (0..merchants).map(merchant).collect()
    };
    let broker = Broker::open("benchp").await;
    let mut bodies = Vec::with_capacity(apps.len() * each);
    for round in 0..each {
        for (a, app) in apps.iter().enumerate() {
            let mut e = event(
                &format!("p-{a}-{round}"),
                "booking.confirmed",
                &format!("o-{a}-{round}"),
            );
            e["app_id"] = app.as_str().into();
            bodies.push(e.to_string().into_bytes());
        }
    }
    let total = bodies.len();
    let results: Vec<_> = futures_util::stream::iter(&bodies)
        .map(|body| {
            let props = BasicProperties::default().with_delivery_mode(2);
            broker
                .publisher
                .publish(&broker.topology.exchange, "booking.confirmed", body, props)
        })
        .buffer_unordered(512)
        .collect()
        .await;
    assert!(results.iter().all(Result::is_ok), "every publish confirmed");
    let admin = support::free_addr();
    let secrets = [
        ("WXNOTIFY_ADMIN_ADDR", admin.as_str()),
        ("WXN_BENCH_COMPONENT_SECRET", SECRET),
        ("WXN_BENCH_COMPONENT_TOKEN", "benchPlatformToken"),
        ("WXN_BENCH_COMPONENT_KEY", AES_KEY),
    ];
    let templates = file.to_string_lossy();
    let child = spawn_worker_env(&db_url, &broker.topology, sim_addr, &templates, &secrets);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while sent(&pool).await < total as i64 {
        assert!(Instant::now() < deadline, "not delivered within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(sim.stats().accepted, total as u64, "one message per booking");
    println!(
        "bench:   {total} in {secs:.1} s; {} parked in lanes",
        parked(&admin).await
    );
    stop_worker(child).await;
    broker.close().await;
    pool.close().await;
    total as f64 / secs
}

/// Messages the worker parked in lanes (`wxnotify_parked_total`, all apps).
async fn parked(admin: &str) -> u64 {
    support::metrics_text(admin)
        .await
        .lines()
        .filter(|l| l.starts_with("wxnotify_parked_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn platform_config() -> PlatformConfig {
    PlatformConfig {
        secret: SECRET.into(),
        token: "benchPlatformToken".into(),
        aes_key: AES_KEY.into(),
    }
}

/// A ticket stored and `n` merchants authorized, their codes exchanged (as the receiver does).
async fn onboard(sim: &Sim, base: &str, pool: &sqlx::PgPool, n: usize) {
    let ticket = sim.push_ticket(PLATFORM).expect("ticket");
    sqlx::query("INSERT INTO platform_tickets (component_appid, ticket, pushed_at) VALUES ($1, $2, now())")
        .bind(PLATFORM)
        .bind(ticket)
        .execute(pool)
        .await
        .expect("ticket stored");
    for i in 0..n {
        let m = merchant(i);
        let code = sim
            .authorize_merchant(Authorize::new(PLATFORM, &m))
            .expect("authorized")
            .authorization
            .authorization_code;
        sqlx::query(
            "INSERT INTO platform_authorizations (component_appid, authorizer_appid, authorization_code, is_update, pushed_at)
             VALUES ($1, $2, $3, false, now())",
        )
        .bind(PLATFORM)
        .bind(&m)
        .bind(code)
        .execute(pool)
        .await
        .expect("code stored");
    }
    let tokens = PlatformTokens::new(
        pool.clone(),
        ComponentApi::new(base, Duration::from_secs(10)).expect("api"),
    );
    let p = Platform {
        component_appid: PLATFORM.into(),
        secret: SecretString::from(SECRET),
    };
    let exchanged = tokens.exchange_codes(&p).await.expect("codes exchanged");
    assert_eq!(exchanged, n);
}
