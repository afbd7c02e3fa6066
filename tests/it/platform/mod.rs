//! A third-party platform (docs/interface.md §10) against the simulator's platform: tokens
//! fleet-wide ([`tokens`]), merchants synced and onboarded ([`onboarding`]), bookings sent from
//! each merchant's account ([`sending`]), library templates added once per merchant
//! ([`templates`]), and a fleet of workers serving hundreds of merchants ([`fleet`]).

mod fairness;
mod fleet;
mod onboarding;
mod secrets;
mod sending;
mod templates;
mod tokens;

use std::time::Duration;

use secrecy::SecretString;
use wechat_sim::{Authorize, PlatformConfig, SimConfig};
use wxnotify::platform::client::ComponentApi;
use wxnotify::platform::tokens::{Platform, PlatformTokens};

use crate::helpers::TestEnv;

pub(crate) const PLATFORM: &str = "wx9999999999999999";
pub(crate) const SECRET: &str = "component-secret-9";

pub(crate) async fn env_with_platform() -> TestEnv {
    let platform = PlatformConfig {
        secret: SECRET.into(),
        token: "platformToken42".into(),
        aes_key: "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut".into(),
    };
    TestEnv::with_sim(SimConfig {
        platforms: [(PLATFORM.to_string(), platform)].into(),
        ..SimConfig::default()
    })
    .await
}

pub(crate) fn platform() -> Platform {
    Platform {
        component_appid: PLATFORM.into(),
        secret: SecretString::from(SECRET),
    }
}

/// A process's view of the platform's tokens: its own pool, as another worker would have.
pub(crate) async fn tokens(env: &TestEnv) -> PlatformTokens {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&env.db_url)
        .await
        .unwrap();
    PlatformTokens::new(pool, ComponentApi::new(&env.sim_base, Duration::from_secs(10)).unwrap())
}

/// A ticket from WeChat stored (as the receiver stores a pushed one), and `merchants` authorized
/// and exchanged.
pub(crate) async fn onboard(env: &TestEnv, t: &PlatformTokens, merchants: &[&str]) {
    let ticket = env.sim.push_ticket(PLATFORM).unwrap();
    sqlx::query("INSERT INTO platform_tickets (component_appid, ticket, pushed_at) VALUES ($1, $2, now())")
        .bind(PLATFORM)
        .bind(ticket)
        .execute(&env.pool)
        .await
        .unwrap();
    for m in merchants {
        let a = env
            .sim
            .authorize_merchant(Authorize::new(PLATFORM, m))
            .unwrap()
            .authorization;
        store_code(env, m, &a.authorization_code).await;
    }
    assert_eq!(t.exchange_codes(&platform()).await.unwrap(), merchants.len());
}

pub(crate) async fn stored_refresh_token(env: &TestEnv, merchant: &str) -> Option<String> {
    sqlx::query_scalar("SELECT refresh_token FROM authorizers WHERE authorizer_appid = $1")
        .bind(merchant)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// A templates file naming the platform's secret, removed when dropped.
pub(crate) struct PlatformsFile(pub(crate) std::path::PathBuf);

impl Drop for PlatformsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn platforms_file(env: &TestEnv) -> PlatformsFile {
    platforms_file_with(env, "")
}

/// The fixtures and `extra` (more templates), with the platform.
pub(crate) fn platforms_file_with(env: &TestEnv, extra: &str) -> PlatformsFile {
    let fixtures = std::fs::read_to_string(&env.templates).unwrap();
    let path = std::env::temp_dir().join(format!("wxn-platforms-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &path,
        format!(
            "{fixtures}\n{extra}\n[[platforms]]\ncomponent_appid = \"{PLATFORM}\"\nsecret_env = \"WXN_TEST_COMPONENT_SECRET\"\n\
             callback_token_env = \"WXN_TEST_COMPONENT_TOKEN\"\naes_key_env = \"WXN_TEST_COMPONENT_KEY\"\n"
        ),
    )
    .unwrap();
    PlatformsFile(path)
}

/// A free local address (for a worker's `/metrics`).
pub(crate) fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A booking event of `event_type` for `merchant`'s account, to user `o-<id>`.
pub(crate) fn booking(id: &str, event_type: &str, merchant: &str) -> serde_json::Value {
    let mut e = crate::common::event(id, event_type, &format!("o-{id}"));
    e["app_id"] = merchant.into();
    e
}

/// The worker binary with the platform configured, its `/metrics` on `admin`.
pub(crate) fn spawn_worker(env: &TestEnv, file: &PlatformsFile, admin: std::net::SocketAddr) -> tokio::process::Child {
    env.worker_command()
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .env("WXNOTIFY_ADMIN_ADDR", admin.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `merchant` authorizes the platform again (after a revocation) and its code is exchanged.
pub(crate) async fn reauthorize(env: &TestEnv, t: &PlatformTokens, merchant: &str) {
    let a = env
        .sim
        .reauthorize_merchant(Authorize::new(PLATFORM, merchant))
        .unwrap()
        .authorization;
    store_code(env, merchant, &a.authorization_code).await;
    assert_eq!(t.exchange_codes(&platform()).await.unwrap(), 1);
}

/// A merchant's authorization code stored as the receiver stores an `authorized` push.
pub(crate) async fn store_code(env: &TestEnv, merchant: &str, code: &str) {
    sqlx::query(
        "INSERT INTO platform_authorizations (component_appid, authorizer_appid, authorization_code, is_update, pushed_at)
         VALUES ($1, $2, $3, false, now())",
    )
    .bind(PLATFORM)
    .bind(merchant)
    .bind(code)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// Waits until the worker on `admin` exposes `active` active merchants and the ticket's age.
pub(crate) async fn wait_merchants_sampled(admin: std::net::SocketAddr, active: usize) {
    let metrics = format!("http://{admin}/metrics");
    let line = format!("wxnotify_platform_merchants{{platform=\"{PLATFORM}\",state=\"active\"}} {active}");
    crate::helpers::wait_for("the merchants sampled", Duration::from_secs(30), || async {
        let text = match reqwest::get(&metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.contains(&line) && text.contains("wxnotify_platform_ticket_age_seconds")
    })
    .await;
}
