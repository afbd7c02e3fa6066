//! Receiver benchmark: prints figures, asserts nothing (CI does not run it).
//!
//!   cargo bench --bench receiver                # 20,000 pushes
//!   cargo bench --bench receiver -- 50000       # more
//!
//! Under `cargo test --all-targets` it runs with 200 pushes, as a smoke test.
//!
//! One `wxnotify receiver` process (release build, default settings) on a fresh database holding
//! N `sent` deliveries with msgids. The benchmark pushes each one's `TEMPLATESENDJOBFINISH` in
//! safe mode (signed, AES-encrypted; a third each delivered, user block, system failed), 64
//! requests in flight, as WeChat's servers would. The bodies are made before the clock starts.
//! The clock stops when every push was answered `success`; then the ledger is checked: every
//! delivery carries its receipt.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wechat_sim::wire;

use common::{APP_ID, fresh_database};

const TOKEN: &str = "benchToken1";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const IN_FLIGHT: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pushes: usize = if args.iter().any(|a| a == "--bench") {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(20_000)
    } else {
        println!("bench: smoke run under `cargo test` (figures are meaningless; use `cargo bench`)");
        200
    };
    support::runtime().block_on(async {
        let (rate, secs) = run(pushes).await;
        println!(
            "bench: wxnotify receiver, safe mode   {rate:>8.0} pushes/s ({pushes} receipts stored and applied in {secs:.1} s, {IN_FLIGHT} in flight)"
        );
    });
}

fn status(i: usize) -> &'static str {
    ["success", "failed:user block", "failed: system failed"][i % 3]
}

/// The query and body of push `i` (msgid `i + 1`), as WeChat makes them in safe mode.
fn push(i: usize, key: &[u8], now: i64) -> (String, String) {
    let xml = wire::template_finish("oBench", now, i as i64 + 1, status(i));
    let encrypted = wire::encrypt(key, &xml, APP_ID);
    let (ts, nonce) = (now.to_string(), i.to_string());
    let query = format!(
        "signature={}&timestamp={ts}&nonce={nonce}&openid=oBench&encrypt_type=aes&msg_signature={}",
        wire::sign(&[TOKEN, &ts, &nonce]),
        wire::sign(&[TOKEN, &ts, &nonce, &encrypted])
    );
    (query, wire::safe_body(&encrypted))
}

async fn run(n: usize) -> (f64, f64) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (db_url, pool) = fresh_database(&id, 2).await;
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status, wechat_msgid,
                                 occurred_at, client_msg_id, sent_at)
         SELECT 'bench-' || i, 'booking.confirmed', $1, 'oBench', 'TPL', 'sent', i, now(), 'c' || i, now()
           FROM generate_series(1, $2::bigint) i",
    )
    .bind(APP_ID)
    .bind(n as i64)
    .execute(&pool)
    .await
    .expect("deliveries");

    let addr = support::free_addr();
    let receiver = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxnotify"))
        .args(["receiver", "--no-migrate"])
        .env("DATABASE_URL", &db_url)
        .env("WECHAT_APP_ID", APP_ID)
        .env("WECHAT_CALLBACK_TOKEN", TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
        .env(
            "WXNOTIFY_TEMPLATES",
            concat!(env!("CARGO_MANIFEST_DIR"), "/templates.toml"),
        )
        .env("WXNOTIFY_RECEIVER_ADDR", &addr)
        .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("WXNOTIFY_DB")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("wxnotify binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(Instant::now() < deadline, "the receiver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let key = wire::aes_key(AES_KEY).expect("key");
    let now = chrono::Utc::now().timestamp();
    let requests: Vec<(String, String)> = (0..n).map(|i| push(i, &key, now)).collect();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/wechat/{APP_ID}");
    let started = Instant::now();
    let answers: Vec<bool> = futures_util::stream::iter(requests.into_iter().map(|(query, body)| {
        let (client, url) = (&client, &url);
        async move {
            let r = client.post(format!("{url}?{query}")).body(body).send().await;
            match r {
                Ok(r) => r.text().await.is_ok_and(|t| t == "success"),
                Err(_) => false,
            }
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    let secs = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|a| **a).count();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE receipt_status IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    println!("bench: {ok} of {n} pushes answered success; {applied} deliveries carry their receipt");
    support::stop_worker(receiver).await;
    (ok as f64 / secs, secs)
}
