//! A platform's tokens, fleet-wide: refreshes racing between two processes never store an older
//! refresh token over a newer one, and a merchant recovers by itself from a refresh whose answer
//! was never stored (a worker killed before its commit).

use secrecy::ExposeSecret;

use super::*;
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
