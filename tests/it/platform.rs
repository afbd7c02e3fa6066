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
        store_code(env, m, &a.authorization_code).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookings_go_from_each_merchants_account_and_a_revoked_merchants_wait_in_the_dlq() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    let (m1, m2) = ("wxMERCHANT0000031", "wxMERCHANT0000032");
    onboard(&env, &t, &[m1, m2]).await;
    let file = platforms_file(&env);
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut worker = spawn_worker(&env, &file, admin);
    // m2 withdrew its authorization (the receiver stored `unauthorized`).
    env.sim.revoke_merchant(PLATFORM, m2).unwrap();
    sqlx::query("UPDATE authorizers SET state = 'revoked', revoked_at = now() WHERE authorizer_appid = $1")
        .bind(m2)
        .execute(&env.pool)
        .await
        .unwrap();
    let booking = |id: &str, app: &str| {
        let mut e = crate::common::event(id, "booking.confirmed", &format!("o-{id}"));
        e["app_id"] = app.into();
        e
    };
    env.publish(&booking("m-1", m1)).await;
    env.publish(&booking("m-2", m2)).await;
    env.publish(&booking("m-3", "wxNOBODY00000000")).await;
    crate::helpers::wait_for("the three final", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE status IN ('sent', 'dead')")
            .await
            == 3
    })
    .await;
    let reasons: std::collections::HashMap<String, (String, Option<String>)> =
        sqlx::query_as::<_, (String, String, Option<String>)>("SELECT event_id, status, dead_reason FROM deliveries")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(e, s, r)| (e, (s, r)))
            .collect();
    assert_eq!(reasons["m-1"], ("sent".into(), None));
    assert_eq!(reasons["m-2"], ("dead".into(), Some("unauthorized".into())));
    assert_eq!(reasons["m-3"], ("dead".into(), Some("invalid_event".into())));
    let sent = env.sim.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].appid, m1, "sent from the merchant's own account");
    // m2 authorizes again; its booking is replayed from the DLQ and goes from its account.
    reauthorize(&env, &t, m2).await;
    let report = env.replay_by_reason("unauthorized").await;
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    crate::helpers::wait_for("m-2 sent", Duration::from_secs(60), || async {
        env.count("SELECT count(*) FROM deliveries WHERE event_id = 'm-2' AND status = 'sent'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.sim.messages().last().unwrap().appid, m2);
    // The platform's merchants by state, sampled by the worker.
    wait_merchants_sampled(admin, 2).await;
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_url_gives_a_fresh_pre_auth_code_wechat_accepts() {
    let env = env_with_platform().await;
    let t = tokens(&env).await;
    onboard(&env, &t, &[]).await;
    let file = platforms_file(&env);
    let out = env
        .wxnotify(&[
            "platform",
            "authorize-url",
            "--component-appid",
            PLATFORM,
            "--redirect-uri",
            "https://wash.example.com/authorized?x=1",
        ])
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = reqwest::Url::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(url.host_str(), Some("mp.weixin.qq.com"));
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["component_appid"], PLATFORM);
    assert_eq!(q["redirect_uri"], "https://wash.example.com/authorized?x=1");
    assert_eq!(q["auth_type"], "1");
    // The merchant scans that page: WeChat takes the pre-auth code.
    let scan = Authorize {
        pre_auth_code: Some(q["pre_auth_code"].clone()),
        ..Authorize::new(PLATFORM, "wxMERCHANT0000041")
    };
    env.sim
        .authorize_merchant(scan)
        .expect("WeChat accepts the pre-auth code");
    assert_eq!(env.sim.platform_stats().preauthcode_calls, 1);
    // An unknown platform is a usage error.
    let out = env
        .wxnotify(&[
            "platform",
            "authorize-url",
            "--component-appid",
            "wx0",
            "--redirect-uri",
            "https://x",
        ])
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXN_TEST_COMPONENT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The worker binary with the platform configured, its `/metrics` on `admin`.
fn spawn_worker(env: &TestEnv, file: &PlatformsFile, admin: std::net::SocketAddr) -> tokio::process::Child {
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
async fn reauthorize(env: &TestEnv, t: &PlatformTokens, merchant: &str) {
    let a = env
        .sim
        .reauthorize_merchant(Authorize::new(PLATFORM, merchant))
        .unwrap()
        .authorization;
    store_code(env, merchant, &a.authorization_code).await;
    assert_eq!(t.exchange_codes(&platform()).await.unwrap(), 1);
}

/// A merchant's authorization code stored as the receiver stores an `authorized` push.
async fn store_code(env: &TestEnv, merchant: &str, code: &str) {
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
async fn wait_merchants_sampled(admin: std::net::SocketAddr, active: usize) {
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
