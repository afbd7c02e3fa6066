//! A third-party platform's tokens (docs/interface.md §10), fleet-wide in Postgres, against the
//! simulator's platform: codes exchanged for merchants, refreshes racing between two processes
//! never storing an older refresh token over a newer one, and a merchant recovering by itself
//! from a refresh whose answer was never stored (a worker killed before its commit).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use wechat_sim::{Authorize, PlatformConfig, SimConfig};
use wxnotify::platform::client::ComponentApi;
use wxnotify::platform::tokens::{Platform, PlatformTokens};

use crate::helpers::TestEnv;

const PLATFORM: &str = "wx9999999999999999";
const SECRET: &str = "component-secret-9";

async fn env_with_platform() -> TestEnv {
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

fn platform() -> Platform {
    Platform {
        component_appid: PLATFORM.into(),
        secret: SecretString::from(SECRET),
    }
}

/// A process's view of the platform's tokens: its own pool, as another worker would have.
async fn tokens(env: &TestEnv) -> PlatformTokens {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&env.db_url)
        .await
        .unwrap();
    PlatformTokens::new(pool, ComponentApi::new(&env.sim_base, Duration::from_secs(10)).unwrap())
}

/// A ticket from WeChat stored (as the receiver stores a pushed one), and `merchants` authorized
/// and exchanged.
async fn onboard(env: &TestEnv, t: &PlatformTokens, merchants: &[&str]) {
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
        sqlx::query(
            "INSERT INTO platform_authorizations (component_appid, authorizer_appid, authorization_code, is_update, pushed_at)
             VALUES ($1, $2, $3, false, now())",
        )
        .bind(PLATFORM)
        .bind(m)
        .bind(a.authorization_code)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    assert_eq!(t.exchange_codes(&platform()).await.unwrap(), merchants.len());
}

async fn stored_refresh_token(env: &TestEnv, merchant: &str) -> Option<String> {
    sqlx::query_scalar("SELECT refresh_token FROM authorizers WHERE authorizer_appid = $1")
        .bind(merchant)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_to_refresh_never_store_an_older_refresh_token() {
    const ROUNDS: usize = 100;
    let env = env_with_platform().await;
    let (a, b) = (tokens(&env).await, tokens(&env).await);
    onboard(&env, &a, &["wxMERCHANT0000001"]).await;
    // A harsher WeChat than the real one: every refresh issues a new refresh token and the old
    // one is invalid at once.
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        rotate_refresh_on_refresh: Some(true),
        ..Default::default()
    });
    let race = |t: PlatformTokens| async move {
        for _ in 0..ROUNDS {
            let token = t.merchant(&platform(), "wxMERCHANT0000001").await.unwrap();
            // WeChat rejected it (a 40001): replaced once, if still the current one.
            t.invalidate_merchant("wxMERCHANT0000001", token.generation)
                .await
                .unwrap();
        }
    };
    tokio::join!(race(a), race(b));
    let stats = env.sim.platform_stats();
    println!(
        "{} refreshes by two processes over {} rounds each; 61023 answers: {}",
        stats.authorizer_token_calls, ROUNDS, stats.refresh_token_invalid
    );
    assert_eq!(stats.refresh_token_invalid, 0, "never an older refresh token used");
    assert!(stats.authorizer_token_calls >= ROUNDS as u64, "{stats:?}");
    assert_eq!(
        stored_refresh_token(&env, "wxMERCHANT0000001").await,
        env.sim.refresh_token_of(PLATFORM, "wxMERCHANT0000001"),
        "the stored refresh token is the one WeChat holds valid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_answered_but_never_stored_is_recovered_from_the_authorizer_list() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    onboard(&env, &t, &["wxMERCHANT0000002"]).await;
    env.sim.patch_faults(wechat_sim::FaultsPatch {
        rotate_refresh_on_refresh: Some(true),
        ..Default::default()
    });
    // A worker asked WeChat for a new token and was killed before its commit: WeChat rotated the
    // refresh token, the ledger still holds the old one.
    let stored = stored_refresh_token(&env, "wxMERCHANT0000002").await.unwrap();
    let component = t.component(&platform()).await.unwrap();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/cgi-bin/component/api_authorizer_token?component_access_token={}",
            env.sim_base,
            component.expose_secret()
        ))
        .json(
            &serde_json::json!({"component_appid": PLATFORM, "authorizer_appid": "wxMERCHANT0000002",
                                  "authorizer_refresh_token": stored}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["authorizer_access_token"].is_string(), "{answer}");
    assert_ne!(
        env.sim.refresh_token_of(PLATFORM, "wxMERCHANT0000002"),
        Some(stored.clone())
    );
    // The next token needs a refresh: 61023 for the stored one, then the authorizer list's.
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM authorizers WHERE authorizer_appid = 'wxMERCHANT0000002'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    t.invalidate_merchant("wxMERCHANT0000002", generation).await.unwrap();
    let token = t
        .merchant(&platform(), "wxMERCHANT0000002")
        .await
        .expect("recovered without ops");
    assert!(!token.token.expose_secret().is_empty());
    assert_eq!(
        stored_refresh_token(&env, "wxMERCHANT0000002").await,
        env.sim.refresh_token_of(PLATFORM, "wxMERCHANT0000002")
    );
    let state: String =
        sqlx::query_scalar("SELECT state FROM authorizers WHERE authorizer_appid = 'wxMERCHANT0000002'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(state, "active", "no re-authorization");
    assert_eq!(env.sim.platform_stats().refresh_token_invalid, 1, "the stale one, once");
}

/// A templates file naming the platform's secret, removed when dropped.
struct PlatformsFile(std::path::PathBuf);

impl Drop for PlatformsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn platforms_file(env: &TestEnv) -> PlatformsFile {
    let fixtures = std::fs::read_to_string(&env.templates).unwrap();
    let path = std::env::temp_dir().join(format!("wxn-platforms-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(
        &path,
        format!(
            "{fixtures}\n[[platforms]]\ncomponent_appid = \"{PLATFORM}\"\nsecret_env = \"WXN_TEST_COMPONENT_SECRET\"\n\
             callback_token_env = \"WXN_TEST_COMPONENT_TOKEN\"\naes_key_env = \"WXN_TEST_COMPONENT_KEY\"\n"
        ),
    )
    .unwrap();
    PlatformsFile(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_sync_restores_merchants_whose_tokens_were_lost_without_a_scan() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let merchants = [
        "wxMERCHANT0000011",
        "wxMERCHANT0000012",
        "wxMERCHANT0000013",
        "wxMERCHANT0000014",
    ];
    onboard(&env, &t, &merchants).await;
    // The cache is lost: two merchants' tokens gone, one merchant's row gone; and one merchant
    // revoked while nobody heard the push.
    sqlx::query("UPDATE authorizers SET refresh_token = NULL, access_token = NULL WHERE authorizer_appid IN ($1, $2)")
        .bind(merchants[0])
        .bind(merchants[1])
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM authorizers WHERE authorizer_appid = $1")
        .bind(merchants[2])
        .execute(&env.pool)
        .await
        .unwrap();
    env.sim.revoke_merchant(PLATFORM, merchants[3]).unwrap();
    let file = platforms_file(&env);
    let out = env
        .wxnotify(&["platform", "sync"])
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("3 merchant(s) listed by WeChat, 3 restored, 1 revoked"),
        "{stdout}"
    );
    for m in &merchants[..3] {
        assert_eq!(
            stored_refresh_token(&env, m).await,
            env.sim.refresh_token_of(PLATFORM, m),
            "{m} restored with WeChat's current refresh token"
        );
        t.merchant(&platform(), m).await.expect("a token, without a scan");
    }
    let state: String = sqlx::query_scalar("SELECT state FROM authorizers WHERE authorizer_appid = $1")
        .bind(merchants[3])
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "revoked");
    assert_eq!(env.sim.platform_stats().query_auth_calls, 4, "no code exchanged again");
    // `platform list` shows them, and never a token.
    let out = env.wxnotify_ok(&["platform", "list", "--format", "json"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    let text = String::from_utf8_lossy(&out.stdout);
    for m in &merchants[..3] {
        let refresh = env.sim.refresh_token_of(PLATFORM, m).unwrap();
        assert!(!text.contains(&refresh), "a refresh token in platform list");
    }
}
