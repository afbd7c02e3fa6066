//! A platform's merchants' own pushes at `POST /wechat/{authorizer_appid}` (docs/interface.md §10),
//! on the real `wxnotify receiver` binary: signed and encrypted with the platform's token and key
//! (the trailing appid the `component_appid`), applied as an app's push is (receipts on that
//! merchant's deliveries, follow events in its followers, consent in its ledger), also for a
//! revoked merchant; forged, wrong-key and misdirected pushes refused with nothing changed; an
//! appid that is neither an app nor a merchant of a configured platform still unknown.

use super::platform::{PLATFORM, PLATFORM_KEY, PLATFORM_TOKEN, PlatformReceiver, platform_push, spawn, ticket_xml};
use super::*;

const MERCHANT: &str = "wxMERCHANT0000031";
const REVOKED: &str = "wxMERCHANT0000032";
/// A merchant of a platform this receiver does not serve.
const STRANGER: &str = "wxMERCHANT0000033";

/// The merchant's push URL on `receiver`.
fn url_of(receiver: &PlatformReceiver, appid: &str) -> String {
    receiver.url.replace(&format!("platform/{PLATFORM}"), appid)
}

async fn add_merchant(env: &TestEnv, appid: &str, component_appid: &str, state: &str) {
    sqlx::query(
        "INSERT INTO authorizers (authorizer_appid, component_appid, state, changed_at) VALUES ($1, $2, $3, now())",
    )
    .bind(appid)
    .bind(component_appid)
    .bind(state)
    .execute(&env.pool)
    .await
    .unwrap();
}

/// A `sent` delivery of `app_id` with `msgid`.
async fn insert_sent_for(env: &TestEnv, app_id: &str, event_id: &str, msgid: i64) {
    sqlx::query(
        "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status,
                                 wechat_msgid, occurred_at, client_msg_id, sent_at)
         VALUES ($1, 'booking.confirmed', $2, 'oUser', 'TPL', 'sent', $3, now(), $1, now())",
    )
    .bind(event_id)
    .bind(app_id)
    .bind(msgid)
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn receipt_of(env: &TestEnv, app_id: &str, msgid: i64) -> Option<String> {
    sqlx::query_scalar("SELECT receipt_status FROM deliveries WHERE app_id = $1 AND wechat_msgid = $2")
        .bind(app_id)
        .bind(msgid)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn followed(env: &TestEnv, app_id: &str, openid: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT followed FROM followers WHERE app_id = $1 AND openid = $2")
        .bind(app_id)
        .bind(openid)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchants_receipts_follow_and_consent_pushes_apply_to_that_merchant() {
    let env = TestEnv::new().await;
    add_merchant(&env, MERCHANT, PLATFORM, "active").await;
    add_merchant(&env, REVOKED, PLATFORM, "revoked").await;
    // The same msgid at the default app: a merchant's receipt is not the app's.
    insert_sent_for(&env, MERCHANT, "m-1", 6001).await;
    insert_sent_for(&env, APP_ID, "a-1", 6001).await;
    insert_sent_for(&env, REVOKED, "r-1", 6002).await;
    let receiver = spawn(&env).await;
    let merchant_url = url_of(&receiver, MERCHANT);

    let xml = finish(6001, "failed:user block");
    for _ in 0..2 {
        let (status, body) = platform_push(&xml).send_to(&merchant_url).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "success"));
    }
    assert_eq!(receipt_of(&env, MERCHANT, 6001).await.as_deref(), Some("user_block"));
    assert_eq!(
        receipt_of(&env, APP_ID, 6001).await,
        None,
        "the app's delivery untouched"
    );

    // Follow events: (merchant, openid), the latest winning.
    let t = unix_now();
    let leaves = wire::follow("oFan", t - 20, false);
    assert_eq!(platform_push(&leaves).send_to(&merchant_url).await.0, StatusCode::OK);
    assert_eq!(followed(&env, MERCHANT, "oFan").await, Some(false));
    assert_eq!(followed(&env, APP_ID, "oFan").await, None);
    let returns = wire::follow("oFan", t - 5, true);
    assert_eq!(platform_push(&returns).send_to(&merchant_url).await.0, StatusCode::OK);
    assert_eq!(followed(&env, MERCHANT, "oFan").await, Some(true));

    // Consent (a merchant's mini program): in the consent ledger, as the merchant's.
    let item = wechat_sim::ConsentItem {
        template_id: "TPL_SUB".into(),
        status: wechat_sim::ConsentStatus::Accept,
    };
    let popup = wechat_sim::document::consent("oFan", t, wechat_sim::ConsentKind::Popup, &[item]).xml();
    assert_eq!(platform_push(&popup).send_to(&merchant_url).await.0, StatusCode::OK);
    let consents: Vec<(String, String)> = sqlx::query_as("SELECT app_id, kind FROM consent_log WHERE openid = 'oFan'")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(consents, [(MERCHANT.to_string(), "accept".to_string())]);

    // A revoked merchant's pushes are applied all the same.
    let xml = finish(6002, "success");
    let revoked_url = url_of(&receiver, REVOKED);
    assert_eq!(platform_push(&xml).send_to(&revoked_url).await.0, StatusCode::OK);
    assert_eq!(receipt_of(&env, REVOKED, 6002).await.as_deref(), Some("delivered"));
    let _ = receiver.log().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_wrong_key_and_misdirected_merchant_pushes_change_nothing() {
    let env = TestEnv::new().await;
    add_merchant(&env, MERCHANT, PLATFORM, "active").await;
    add_merchant(&env, STRANGER, "wx0000000000000000", "active").await;
    insert_sent_for(&env, MERCHANT, "m-1", 6101).await;
    let receiver = spawn(&env).await;
    let merchant_url = url_of(&receiver, MERCHANT);
    let receipt = finish(6101, "success");
    let leaves = wire::follow("oFan", unix_now(), false);
    for xml in [&receipt, &leaves] {
        let refusals = [
            (
                "forged signature",
                Push {
                    token: "notTheToken",
                    ..platform_push(xml)
                },
            ),
            (
                "stale",
                Push {
                    timestamp: unix_now() - 600,
                    ..platform_push(xml)
                },
            ),
            (
                "another key",
                Push {
                    aes_key: AES_KEY,
                    ..platform_push(xml)
                },
            ),
            (
                "the merchant's appid inside, not the platform's",
                Push {
                    appid: MERCHANT,
                    ..platform_push(xml)
                },
            ),
            (
                "plaintext",
                Push {
                    mode: Mode::Plain,
                    ..platform_push(xml)
                },
            ),
            // The default app's own token and key are not the platform's.
            ("an app's push", Push::new(xml, Mode::Safe)),
        ];
        for (what, push) in refusals {
            assert_eq!(push.send_to(&merchant_url).await.0, StatusCode::UNAUTHORIZED, "{what}");
        }
    }
    assert_eq!(receipt_of(&env, MERCHANT, 6101).await, None, "nothing changed");
    assert_eq!(followed(&env, MERCHANT, "oFan").await, None, "nothing changed");
    // A platform event at a merchant's URL: refused.
    let ticket = ticket_xml("ticket@@@misdirected", unix_now());
    assert_eq!(
        platform_push(&ticket).send_to(&merchant_url).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(env.count("SELECT count(*) FROM platform_tickets").await, 0);
    // Neither an app nor a merchant of a configured platform: unknown, as before.
    for appid in ["wxNOBODY000000001", STRANGER] {
        let (status, _) = platform_push(&receipt).send_to(&url_of(&receiver, appid)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{appid}");
    }
    // Nothing secret in its log, refusals included.
    let log = receiver.log().await;
    assert!(log.contains("push refused"), "the log was read: {log}");
    for secret in ["component-secret", PLATFORM_TOKEN, PLATFORM_KEY] {
        assert!(!log.contains(secret), "{secret} in the receiver's log");
    }
}
