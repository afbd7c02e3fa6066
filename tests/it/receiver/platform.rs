//! A third-party platform's authorization event URL (docs/interface.md §10), on the real
//! `wxnotify receiver` binary: verify tickets kept (the latest by CreateTime), authorization codes
//! kept to exchange, `unauthorized` revoking the merchant; forged, stale, wrong-key, plaintext and
//! misdirected pushes refused with nothing changed.

use std::process::Stdio;

use super::*;

pub(super) const PLATFORM: &str = "wx9999999999999999";
pub(super) const PLATFORM_TOKEN: &str = "platformToken42";
pub(super) const PLATFORM_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
const MERCHANT: &str = "wxMERCHANT0000001";

/// The receiver binary serving the default app and the platform; killed when dropped.
pub(super) struct PlatformReceiver {
    /// The platform's authorization event URL.
    pub(super) url: String,
    child: tokio::process::Child,
    _file: TempFile,
    /// Its log (debug level), to look for secrets in.
    log: TempFile,
}

impl PlatformReceiver {
    /// Stops the receiver and returns what it logged.
    pub(super) async fn log(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        std::fs::read_to_string(&self.log.0).unwrap_or_default()
    }
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) async fn spawn(env: &TestEnv) -> PlatformReceiver {
    let fixtures = std::fs::read_to_string(&env.templates).unwrap();
    let file = TempFile(std::env::temp_dir().join(format!("wxn-platform-{}.toml", uuid::Uuid::new_v4().simple())));
    std::fs::write(
        &file.0,
        format!(
            "{fixtures}\n[[platforms]]\ncomponent_appid = \"{PLATFORM}\"\nsecret_env = \"WXN_TEST_COMPONENT_SECRET\"\n\
             callback_token_env = \"WXN_TEST_COMPONENT_TOKEN\"\naes_key_env = \"WXN_TEST_COMPONENT_KEY\"\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = TempFile(std::env::temp_dir().join(format!("wxn-platform-{}.log", uuid::Uuid::new_v4().simple())));
    let child = env
        .wxnotify(&["receiver", "--no-migrate"])
        .env("WXNOTIFY_TEMPLATES", &file.0)
        .env("WXNOTIFY_RECEIVER_ADDR", format!("127.0.0.1:{port}"))
        .env("WECHAT_CALLBACK_TOKEN", CALLBACK_TOKEN)
        .env("WECHAT_ENCODING_AES_KEY", AES_KEY)
        .env("WXN_TEST_COMPONENT_SECRET", "component-secret")
        .env("WXN_TEST_COMPONENT_TOKEN", PLATFORM_TOKEN)
        .env("WXN_TEST_COMPONENT_KEY", PLATFORM_KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log.0).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the receiver listens", Duration::from_secs(30), || async {
        reqwest::get(format!("{base}/wechat/{APP_ID}")).await.is_ok()
    })
    .await;
    PlatformReceiver {
        url: format!("{base}/wechat/platform/{PLATFORM}"),
        child,
        _file: file,
        log,
    }
}

pub(super) fn platform_push(xml: &str) -> Push<'_> {
    Push {
        token: PLATFORM_TOKEN,
        aes_key: PLATFORM_KEY,
        appid: PLATFORM,
        ..Push::new(xml, Mode::Safe)
    }
}

pub(super) fn ticket_xml(ticket: &str, at: i64) -> String {
    format!(
        "<xml><AppId>{PLATFORM}</AppId><CreateTime>{at}</CreateTime><InfoType>component_verify_ticket</InfoType>\
         <ComponentVerifyTicket>{ticket}</ComponentVerifyTicket></xml>"
    )
}

async fn stored_ticket(env: &TestEnv) -> Option<String> {
    sqlx::query_scalar("SELECT ticket FROM platform_tickets WHERE component_appid = $1")
        .bind(PLATFORM)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_and_authorizations_are_kept_the_latest_winning() {
    let env = TestEnv::new().await;
    let receiver = spawn(&env).await;
    let now = unix_now();
    let newer = ticket_xml("ticket@@@newer", now - 10);
    for _ in 0..3 {
        let (status, body) = platform_push(&newer).send_to(&receiver.url).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    }
    // An older ticket arriving late never replaces the newer one.
    let older = ticket_xml("ticket@@@older", now - 600);
    assert_eq!(platform_push(&older).send_to(&receiver.url).await.0, StatusCode::OK);
    assert_eq!(stored_ticket(&env).await.as_deref(), Some("ticket@@@newer"));

    let authorized = format!(
        "<xml><AppId>{PLATFORM}</AppId><CreateTime>{now}</CreateTime><InfoType>authorized</InfoType>\
         <AuthorizerAppid>{MERCHANT}</AuthorizerAppid><AuthorizationCode>queryauthcode@@@1</AuthorizationCode>\
         <AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime><PreAuthCode>preauthcode@@@1</PreAuthCode></xml>",
        now + 3600
    );
    for _ in 0..2 {
        assert_eq!(
            platform_push(&authorized).send_to(&receiver.url).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        env.count("SELECT count(*) FROM platform_authorizations WHERE exchanged_at IS NULL")
            .await,
        1,
        "a repeated push is the same code"
    );
    let unauthorized = format!(
        "<xml><AppId>{PLATFORM}</AppId><CreateTime>{now}</CreateTime><InfoType>unauthorized</InfoType>\
         <AuthorizerAppid>{MERCHANT}</AuthorizerAppid></xml>"
    );
    assert_eq!(
        platform_push(&unauthorized).send_to(&receiver.url).await.0,
        StatusCode::OK
    );
    assert_eq!(
        env.count("SELECT count(*) FROM authorizers WHERE state = 'revoked'")
            .await,
        1
    );
    // Authorized (its code exchanged) and revoked within one second, CreateTime's resolution: the
    // revocation, arriving after, wins.
    sqlx::query("UPDATE authorizers SET state = 'active', changed_at = to_timestamp($1)")
        .bind(now as f64)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        platform_push(&unauthorized).send_to(&receiver.url).await.0,
        StatusCode::OK
    );
    assert_eq!(
        env.count("SELECT count(*) FROM authorizers WHERE state = 'revoked'")
            .await,
        1,
        "a revocation in the second of the authorization"
    );
    // Nothing secret in its log: the platform's secret, token and key, the tickets, the code.
    let log = receiver.log().await;
    assert!(log.contains("platforms=1"), "the log was read: {log}");
    for secret in [
        "component-secret",
        PLATFORM_TOKEN,
        PLATFORM_KEY,
        "ticket@@@newer",
        "ticket@@@older",
        "queryauthcode@@@1",
    ] {
        assert!(!log.contains(secret), "{secret} in the receiver's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_wrong_key_plaintext_and_misdirected_pushes_change_nothing() {
    let env = TestEnv::new().await;
    let receiver = spawn(&env).await;
    let xml = ticket_xml("ticket@@@forged", unix_now());
    let refusals = [
        (
            "forged signature",
            Push {
                token: "notTheToken",
                ..platform_push(&xml)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "stale",
            Push {
                timestamp: unix_now() - 600,
                ..platform_push(&xml)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another key",
            Push {
                aes_key: AES_KEY,
                ..platform_push(&xml)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "another platform's appid inside",
            Push {
                appid: APP_ID,
                ..platform_push(&xml)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "plaintext",
            Push {
                mode: Mode::Plain,
                ..platform_push(&xml)
            },
            StatusCode::UNAUTHORIZED,
        ),
        // The default app's own push (its token and key) is not the platform's.
        ("an app's push", Push::new(&xml, Mode::Safe), StatusCode::UNAUTHORIZED),
    ];
    for (what, push, expected) in refusals {
        assert_eq!(push.send_to(&receiver.url).await.0, expected, "{what}");
    }
    // Signed by the platform but not a platform event: refused.
    let message = finish(1, "success");
    assert_eq!(
        platform_push(&message).send_to(&receiver.url).await.0,
        StatusCode::BAD_REQUEST
    );
    // A platform event at an app's URL: refused there too.
    let app_url = receiver.url.replace(&format!("platform/{PLATFORM}"), APP_ID);
    assert_eq!(
        Push::new(&xml, Mode::Safe).send_to(&app_url).await.0,
        StatusCode::BAD_REQUEST
    );
    // Another platform's URL: unknown.
    let unknown = receiver.url.replace(PLATFORM, "wx0000000000000000");
    assert_eq!(platform_push(&xml).send_to(&unknown).await.0, StatusCode::NOT_FOUND);
    assert_eq!(stored_ticket(&env).await, None, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_who_scans_is_active_with_its_tokens_and_an_old_ticket_is_asked_again() {
    let platform = wechat_sim::PlatformConfig {
        secret: "component-secret".into(),
        token: PLATFORM_TOKEN.into(),
        aes_key: PLATFORM_KEY.into(),
    };
    let env = TestEnv::with_sim(wechat_sim::SimConfig {
        platforms: [(PLATFORM.to_string(), platform)].into(),
        ..Default::default()
    })
    .await;
    let receiver = spawn(&env).await;
    env.sim.set_platform_push(wechat_sim::PlatformPushConfig {
        callback_url: Some(receiver.url.replace(PLATFORM, "{component_appid}")),
        retry_gap_ms: 200,
        ..Default::default()
    });
    env.sim.push_ticket(PLATFORM).unwrap();
    wait_for("the ticket stored", Duration::from_secs(10), || async {
        stored_ticket(&env).await.is_some()
    })
    .await;
    let active = |merchant: &'static str| {
        let env = &env;
        async move {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT state, refresh_token FROM authorizers WHERE authorizer_appid = $1")
                    .bind(merchant)
                    .fetch_optional(&env.pool)
                    .await
                    .unwrap();
            row.is_some_and(|(state, refresh)| {
                state == "active" && refresh == env.sim.refresh_token_of(PLATFORM, merchant)
            })
        }
    };
    // The merchant scans: WeChat pushes `authorized`, the receiver exchanges the code.
    env.sim
        .authorize_merchant(wechat_sim::Authorize::new(PLATFORM, "wxMERCHANT0000021"))
        .unwrap();
    wait_for(
        "the merchant active with WeChat's refresh token",
        Duration::from_secs(20),
        || active("wxMERCHANT0000021"),
    )
    .await;
    // Ticket pushes stopped long ago: the stored one is older than 12 h and the component token
    // expired. The next merchant's exchange asks WeChat for a ticket (api_start_push_ticket);
    // once it is pushed and stored, the waiting code is exchanged.
    sqlx::query("UPDATE platform_tickets SET pushed_at = now() - interval '13 hours'")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE platform_tokens SET expires_at = now()")
        .execute(&env.pool)
        .await
        .unwrap();
    // `status` says so.
    let out = env.wxnotify_ok(&["status", "--format", "json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &status["platforms"][0];
    assert_eq!(p["component_appid"], PLATFORM, "{status}");
    assert_eq!(
        (p["waiting_for_ticket"].as_bool(), p["merchants_active"].as_i64()),
        (Some(true), Some(1))
    );
    let out = env.wxnotify_ok(&["status"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("WAITING FOR A TICKET"));
    env.sim
        .authorize_merchant(wechat_sim::Authorize::new(PLATFORM, "wxMERCHANT0000022"))
        .unwrap();
    wait_for("the second merchant active", Duration::from_secs(30), || {
        active("wxMERCHANT0000022")
    })
    .await;
    let stats = env.sim.platform_stats();
    assert_eq!(stats.start_push_ticket_calls.get(PLATFORM), Some(&1), "{stats:?}");
    assert_eq!(stats.query_auth_calls, 2, "each code exchanged once");
    let _ = receiver.log().await;
}
