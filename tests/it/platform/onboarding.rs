//! Onboarding and recovery: `platform authorize-url` gives a page WeChat accepts, and `platform
//! sync` restores merchants whose tokens were lost, without a scan.

use super::*;

use wechat_sim::Authorize;

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
