//! The third-party platform over HTTP: WeChat's endpoints (`/cgi-bin/component/*`,
//! `/cgi-bin/template/api_add_template`; every answer late by `platform_latency_ms`, WeChat acting
//! halfway through) and the simulator's own `/sim/platform/*` (control and inspection; a body it
//! cannot use is a 400 `{"error"}`).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::PlatformPushConfig;
use super::api::Api;
use super::onboard::Authorize;
use crate::{Sim, json_reply};

type Params = Query<HashMap<String, String>>;

/// The platform's routes, WeChat's and the simulator's.
pub(crate) fn routes() -> Router<Sim> {
    Router::new()
        .route("/cgi-bin/component/api_start_push_ticket", wechat(Api::StartPushTicket))
        .route("/cgi-bin/component/api_component_token", wechat(Api::ComponentToken))
        .route(
            "/cgi-bin/component/api_create_preauthcode",
            wechat(Api::CreatePreauthcode),
        )
        .route("/cgi-bin/component/api_query_auth", wechat(Api::QueryAuth))
        .route("/cgi-bin/component/api_authorizer_token", wechat(Api::AuthorizerToken))
        .route(
            "/cgi-bin/component/api_get_authorizer_list",
            wechat(Api::AuthorizerList),
        )
        .route("/cgi-bin/template/api_add_template", wechat(Api::AddTemplate))
        .route("/sim/platform/authorize", post(authorize))
        .route("/sim/platform/reauthorize", post(reauthorize))
        .route("/sim/platform/revoke", post(revoke))
        .route("/sim/platform/rotate", post(rotate))
        .route("/sim/platform/push", post(set_push))
        .route("/sim/platform/ticket", post(ticket))
        .route("/sim/platform/expire_tickets", post(expire_tickets))
        .route(
            "/sim/platform/pushes",
            get(|State(sim): State<Sim>| async move { axum::Json(sim.platform_pushes()) }),
        )
        .route(
            "/sim/platform/stats",
            get(|State(sim): State<Sim>| async move { axum::Json(sim.platform_stats()) }),
        )
        .route(
            "/sim/platform/merchants",
            get(|State(sim): State<Sim>| async move { axum::Json(sim.merchants()) }),
        )
}

/// `POST` to one of WeChat's platform endpoints.
fn wechat(api: Api) -> MethodRouter<Sim> {
    post(move |State(sim): State<Sim>, Query(q): Params, body: Bytes| answer(sim, api, q, body))
}

/// Answers `api` after the configured latency, WeChat acting on it halfway through (a client
/// that gives up waiting may have had its refresh done).
async fn answer(sim: Sim, api: Api, q: HashMap<String, String>, body: Bytes) -> Response {
    let latency = sim.with(|s| s.config.faults.platform_latency_ms);
    let half = Duration::from_millis(latency / 2);
    tokio::time::sleep(half).await;
    let token = match api {
        Api::AddTemplate => q.get("access_token"),
        _ => q.get("component_access_token"),
    };
    let (status, reply) = sim.with(|s| s.platforms.call(&s.config, api, token.map(String::as_str), &body));
    sim.flush_platform_outbox();
    tokio::time::sleep(Duration::from_millis(latency) - half).await;
    json_reply(status, reply)
}

/// A 400 `{"error"}`.
fn bad(error: impl std::fmt::Display) -> Response {
    json_reply(400, json!({ "error": error.to_string() }))
}

/// `body` as a `T`, or why not.
fn read<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a body this endpoint takes: {e}"))
}

/// `POST /sim/platform/authorize`: `{component_appid, authorizer_appid, func_info?,
/// pre_auth_code?}` → the authorization (code, `info_type`), pushed.
async fn authorize(State(sim): State<Sim>, body: Bytes) -> Response {
    match read::<Authorize>(&body).and_then(|req| sim.authorize_merchant(req)) {
        Ok(done) => json_reply(200, json!(done)),
        Err(error) => bad(error),
    }
}

/// `POST /sim/platform/reauthorize`: as `authorize`, for a merchant that revoked the platform.
async fn reauthorize(State(sim): State<Sim>, body: Bytes) -> Response {
    match read::<Authorize>(&body).and_then(|req| sim.reauthorize_merchant(req)) {
        Ok(done) => json_reply(200, json!(done)),
        Err(error) => bad(error),
    }
}

/// A merchant of a platform, named in a body.
#[derive(Deserialize)]
struct Named {
    component_appid: String,
    authorizer_appid: String,
}

/// `POST /sim/platform/revoke`: `{component_appid, authorizer_appid}`, pushed `unauthorized`.
async fn revoke(State(sim): State<Sim>, body: Bytes) -> Response {
    let revoked = read::<Named>(&body).and_then(|n| sim.revoke_merchant(&n.component_appid, &n.authorizer_appid));
    match revoked {
        Ok(()) => json_reply(200, json!({ "ok": true })),
        Err(error) => bad(error),
    }
}

/// `POST /sim/platform/rotate?component_appid=&authorizer_appid=` (each optional: all):
/// `{"rotated": [authorizer appids]}`.
async fn rotate(State(sim): State<Sim>, Query(q): Params) -> Response {
    let g = |k: &str| q.get(k).map(String::as_str);
    let rotated = sim.rotate_merchants(g("component_appid"), g("authorizer_appid"));
    json_reply(200, json!({ "rotated": rotated }))
}

/// `POST /sim/platform/push`: a [`PlatformPushConfig`] as JSON (missing fields: defaults).
async fn set_push(State(sim): State<Sim>, body: Bytes) -> Response {
    match read::<PlatformPushConfig>(&body) {
        Ok(config) => {
            sim.set_platform_push(config);
            json_reply(200, json!({ "ok": true }))
        }
        Err(error) => bad(error),
    }
}

/// `POST /sim/platform/ticket?component_appid=`: a ticket pushed now, `{"ticket"}`.
async fn ticket(State(sim): State<Sim>, Query(q): Params) -> Response {
    let component = q.get("component_appid").cloned().unwrap_or_default();
    match sim.push_ticket(&component) {
        Some(ticket) => json_reply(200, json!({ "ticket": ticket })),
        None => bad(format!("unknown component_appid {component:?}")),
    }
}

/// `POST /sim/platform/expire_tickets?component_appid=`: the platform's tickets expire (61005).
async fn expire_tickets(State(sim): State<Sim>, Query(q): Params) -> Response {
    let component = q.get("component_appid").cloned().unwrap_or_default();
    if sim.expire_tickets(&component) {
        json_reply(200, json!({ "ok": true }))
    } else {
        bad(format!("unknown component_appid {component:?}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use aes::cipher::block_padding::NoPadding;
    use aes::cipher::{BlockDecryptMut, KeyIvInit};
    use base64::Engine;
    use serde_json::Value;

    use super::*;
    use crate::{PlatformConfig, PushConfig, SimConfig, wire};

    const C: &str = "wx3333333333333333";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const TOKEN: &str = "ptoken";

    /// Each push a receiver saw: its path, query and body.
    type Seen = Arc<Mutex<Vec<(String, HashMap<String, String>, String)>>>;

    /// A receiver that records every push and answers `fail` to the first `failures`; its base URL.
    async fn receiver(failures: usize) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = move |State(seen): State<Seen>, uri: axum::http::Uri, Query(q): Params, body: String| async move {
            let mut seen = seen.lock().unwrap();
            seen.push((uri.path().to_string(), q, body));
            if seen.len() <= failures { "fail" } else { "success" }
        };
        let app = Router::new().route("/{*path}", post(record)).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    /// A simulator with platform `C` served on port 0, pushing to a receiver that fails its first
    /// `failures` tries: (simulator, its base URL, what the receiver saw).
    async fn served(failures: usize) -> (Sim, String, Seen) {
        let (to, seen) = receiver(failures).await;
        let mut config = SimConfig::default();
        config.platforms.insert(
            C.into(),
            PlatformConfig {
                secret: "csecret".into(),
                token: TOKEN.into(),
                aes_key: KEY.into(),
            },
        );
        config.push = PushConfig {
            callback_url: Some(format!("{to}/wechat/{{appid}}")),
            token: "apptoken".into(),
            retry_gap_ms: 10,
            ..PushConfig::default()
        };
        config.platform_push = PlatformPushConfig {
            callback_url: Some(format!("{to}/wechat/platform/{{component_appid}}")),
            retry_gap_ms: 10,
            ..PlatformPushConfig::default()
        };
        let sim = Sim::new(config);
        let addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        (sim, format!("http://{addr}"), seen)
    }

    /// POSTs `body` to `path`; the status and the JSON answer.
    async fn post_json(base: &str, path: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    /// Waits (up to 5 s) until the receiver has seen `n` pushes at paths ending in `suffix`; them.
    async fn pushes_at(seen: &Seen, suffix: &str, n: usize) -> Vec<(HashMap<String, String>, String)> {
        for _ in 0..250 {
            let at: Vec<_> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(path, _, _)| path.ends_with(suffix))
                .map(|(_, q, body)| (q.clone(), body.clone()))
                .collect();
            if at.len() >= n {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} pushes at {suffix}");
    }

    /// Checks a safe-mode push's signatures with the platform's token and decrypts it with its
    /// key: (the message, the appid sealed after it).
    fn open(q: &HashMap<String, String>, body: &str) -> (String, String) {
        assert_eq!(q["encrypt_type"], "aes");
        assert_eq!(q["signature"], wire::sign(&[TOKEN, &q["timestamp"], &q["nonce"]]));
        let b64 = body
            .split("<Encrypt><![CDATA[")
            .nth(1)
            .and_then(|r| r.split("]]>").next())
            .unwrap();
        assert_eq!(
            q["msg_signature"],
            wire::sign(&[TOKEN, &q["timestamp"], &q["nonce"], b64])
        );
        let key = wire::aes_key(KEY).unwrap();
        let mut buf = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let plain = cbc::Decryptor::<aes::Aes256>::new(key[..].into(), key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap();
        let plain = &plain[..plain.len() - *plain.last().unwrap() as usize];
        let len = u32::from_be_bytes(plain[16..20].try_into().unwrap()) as usize;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        (text(&plain[20..20 + len]), text(&plain[20 + len..]))
    }

    /// The bare text of `<name>` in `xml`.
    fn field<'a>(xml: &'a str, name: &str) -> &'a str {
        xml.split(&format!("<{name}>"))
            .nth(1)
            .and_then(|r| r.split(&format!("</{name}>")).next())
            .unwrap_or_else(|| panic!("no {name} in {xml}"))
    }

    /// `text` of `reply[key]`.
    fn s(reply: &Value, key: &str) -> String {
        reply[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {reply}"))
            .to_string()
    }

    #[tokio::test]
    async fn a_merchant_onboards_from_a_ticket_push_and_sends_from_its_own_account() {
        let (sim, base, seen) = served(0).await;
        let start = json!({ "component_appid": C, "component_secret": "csecret" });
        let (_, reply) = post_json(&base, "/cgi-bin/component/api_start_push_ticket", start).await;
        assert_eq!(reply["errcode"], 0, "{reply}");
        let (q, body) = pushes_at(&seen, "/wechat/platform/wx3333333333333333", 1)
            .await
            .remove(0);
        assert!(!q.contains_key("openid"));
        let (xml, sealed) = open(&q, &body);
        assert_eq!(sealed, C);
        assert_eq!(field(&xml, "InfoType"), "component_verify_ticket");
        let ticket = field(&xml, "ComponentVerifyTicket");
        let body = json!({ "component_appid": C, "component_appsecret": "csecret", "component_verify_ticket": ticket });
        let (_, reply) = post_json(&base, "/cgi-bin/component/api_component_token", body).await;
        let ctoken = s(&reply, "component_access_token");
        let with = |path: &str| format!("/cgi-bin/component/{path}?component_access_token={ctoken}");
        let (_, reply) = post_json(&base, &with("api_create_preauthcode"), json!({ "component_appid": C })).await;
        let pre = s(&reply, "pre_auth_code");
        let scan = json!({ "component_appid": C, "authorizer_appid": "wxM1", "pre_auth_code": pre });
        let (status, done) = post_json(&base, "/sim/platform/authorize", scan).await;
        assert_eq!(
            (status, done["info_type"].as_str()),
            (200, Some("authorized")),
            "{done}"
        );
        let (q, body) = pushes_at(&seen, "/wechat/platform/wx3333333333333333", 2)
            .await
            .remove(1);
        let (xml, _) = open(&q, &body);
        assert_eq!(field(&xml, "InfoType"), "authorized");
        assert_eq!(field(&xml, "AuthorizerAppid"), "wxM1");
        assert_eq!(field(&xml, "PreAuthCode"), pre);
        let code = field(&xml, "AuthorizationCode");
        assert_eq!(code, s(&done, "authorization_code"));
        assert!(field(&xml, "AuthorizationCodeExpiredTime").parse::<i64>().unwrap() > crate::push::unix_now());
        let exchange = json!({ "component_appid": C, "authorization_code": code });
        let (_, reply) = post_json(&base, &with("api_query_auth"), exchange).await;
        let info = &reply["authorization_info"];
        let (access, refresh) = (s(info, "authorizer_access_token"), s(info, "authorizer_refresh_token"));
        assert_eq!(sim.refresh_token_of(C, "wxM1"), Some(refresh));
        let add = json!({ "template_id_short": "OPENTM1", "keyword_name_list": ["门店"] });
        let path = format!("/cgi-bin/template/api_add_template?access_token={access}");
        let template_id = s(&post_json(&base, &path, add).await.1, "template_id");
        let message =
            json!({ "touser": "oU", "template_id": template_id, "data": { "thing1": { "value": "精洗套餐" } } });
        let path = format!("/cgi-bin/message/template/send?access_token={access}");
        assert_eq!(post_json(&base, &path, message).await.1["errcode"], 0);
        assert_eq!(sim.messages()[0].appid, "wxM1");
        let (q, body) = pushes_at(&seen, "/wechat/wxM1", 1).await.remove(0);
        assert_eq!(q["openid"], "oU");
        let (xml, sealed) = open(&q, &body);
        assert_eq!(sealed, C, "the platform's appid, not the merchant's");
        assert!(xml.contains("TEMPLATESENDJOBFINISH"), "{xml}");
    }

    #[tokio::test]
    async fn a_push_not_answered_success_is_tried_again() {
        let (sim, base, _) = served(1).await;
        let (status, reply) = post_json(
            &base,
            "/sim/platform/ticket?component_appid=wx3333333333333333",
            json!({}),
        )
        .await;
        assert_eq!(status, 200);
        assert!(s(&reply, "ticket").starts_with("ticket@@@"));
        for _ in 0..250 {
            if !sim.platform_pushes().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pushed = sim.platform_pushes();
        assert_eq!((pushed[0].tries, pushed[0].acknowledged), (2, true));
        let stats = sim.platform_stats();
        assert_eq!(
            (stats.push_tries, stats.push_tries_failed, stats.pushes_acknowledged),
            (2, 1, 1)
        );
        assert_eq!(json!(pushed[0])["info_type"], "component_verify_ticket");
    }

    #[tokio::test]
    async fn tickets_are_pushed_every_n_ms_until_the_period_is_cleared() {
        let (sim, base, seen) = served(0).await;
        let on =
            json!({ "callback_url": sim.with(|s| s.config.platform_push.callback_url.clone()), "ticket_every_ms": 30 });
        assert_eq!(post_json(&base, "/sim/platform/push", on.clone()).await.0, 200);
        let pushes = pushes_at(&seen, "/wechat/platform/wx3333333333333333", 3).await;
        let (xml, _) = open(&pushes[2].0, &pushes[2].1);
        assert_eq!(field(&xml, "InfoType"), "component_verify_ticket");
        let mut off = on;
        off["ticket_every_ms"] = Value::Null;
        assert_eq!(post_json(&base, "/sim/platform/push", off).await.0, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let issued = sim.platform_stats().tickets_issued[C];
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(sim.platform_stats().tickets_issued[C], issued, "stopped");
        assert!(!sim.with(|s| s.platforms.ticker_running));
    }

    #[tokio::test]
    async fn revoke_and_reauthorize_push_unauthorized_then_authorized() {
        let (sim, base, seen) = served(0).await;
        let merchant = json!({ "component_appid": C, "authorizer_appid": "wxM1" });
        assert_eq!(
            post_json(&base, "/sim/platform/authorize", merchant.clone()).await.0,
            200
        );
        let (_, again) = post_json(&base, "/sim/platform/authorize", merchant.clone()).await;
        assert_eq!(again["info_type"], "updateauthorized");
        assert_eq!(post_json(&base, "/sim/platform/revoke", merchant.clone()).await.0, 200);
        assert!(sim.merchants()[0].refresh_token.is_none());
        let (status, back) = post_json(&base, "/sim/platform/reauthorize", merchant).await;
        assert_eq!((status, back["info_type"].as_str()), (200, Some("authorized")));
        let mut types = Vec::new();
        for (q, body) in pushes_at(&seen, "/wechat/platform/wx3333333333333333", 4).await {
            let (xml, sealed) = open(&q, &body);
            assert_eq!((sealed.as_str(), field(&xml, "AppId")), (C, C));
            if field(&xml, "InfoType") == "unauthorized" {
                assert!(!xml.contains("AuthorizationCode"), "{xml}");
            }
            types.push(field(&xml, "InfoType").to_string());
        }
        types.sort();
        assert_eq!(types, ["authorized", "authorized", "unauthorized", "updateauthorized"]);
    }

    #[tokio::test]
    async fn control_endpoints_refuse_what_they_cannot_do_with_400() {
        let (_, base, _) = served(0).await;
        let m = |c: &str, a: &str| json!({ "component_appid": c, "authorizer_appid": a });
        let refused = [
            ("/sim/platform/authorize", m("wxUnknown", "wxM1")),
            ("/sim/platform/authorize", json!({ "component_appid": C })),
            (
                "/sim/platform/authorize",
                json!({ "component_appid": C, "authorizer_appid": "wxM1", "pre_auth_code": "forged" }),
            ),
            ("/sim/platform/reauthorize", m(C, "wxNever")),
            ("/sim/platform/revoke", m(C, "wxNever")),
            ("/sim/platform/push", json!({ "ticket_every_ms": "soon" })),
            ("/sim/platform/ticket?component_appid=wxUnknown", json!({})),
            ("/sim/platform/expire_tickets?component_appid=wxUnknown", json!({})),
        ];
        for (path, body) in refused {
            let (status, answer) = post_json(&base, path, body.clone()).await;
            assert_eq!(status, 400, "{path} {body}: {answer}");
            assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
        }
        let (status, _) = post_json(
            &base,
            "/sim/platform/expire_tickets?component_appid=wx3333333333333333",
            json!({}),
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn platform_latency_slows_every_component_api() {
        let (sim, base, _) = served(0).await;
        let (_, faults) = post_json(
            &base,
            "/sim/faults",
            json!({ "platform_latency_ms": 300, "rotate_refresh_on_refresh": true }),
        )
        .await;
        assert_eq!(
            (
                faults["platform_latency_ms"].as_u64(),
                faults["rotate_refresh_on_refresh"].as_bool()
            ),
            (Some(300), Some(true))
        );
        let started = Instant::now();
        let start = json!({ "component_appid": C, "component_secret": "wrong" });
        let (_, reply) = post_json(&base, "/cgi-bin/component/api_start_push_ticket", start).await;
        assert_eq!(reply["errcode"], wechat_rules::errcode::INVALID_APPSECRET);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(sim.platform_stats().start_push_ticket_calls[C], 1);
    }

    #[tokio::test]
    async fn rotate_stats_and_merchants_over_http() {
        let (sim, base, _) = served(0).await;
        for m in ["wxM1", "wxM2"] {
            sim.authorize_merchant(Authorize::new(C, m)).unwrap();
        }
        let (_, rotated) = post_json(
            &base,
            "/sim/platform/rotate?component_appid=wx3333333333333333",
            json!({}),
        )
        .await;
        assert_eq!(rotated["rotated"], json!(["wxM1", "wxM2"]));
        let get = |path: &'static str| {
            let base = base.clone();
            async move {
                let text = reqwest::get(format!("{base}{path}"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                serde_json::from_str::<Value>(&text).unwrap()
            }
        };
        assert_eq!(get("/sim/platform/stats").await["merchant_rotations"][C], 2);
        let merchants = get("/sim/platform/merchants").await;
        assert_eq!(merchants[1]["authorizer_appid"], "wxM2");
        assert_eq!(merchants[1]["authorized"], true);
        assert!(get("/sim/platform/pushes").await.is_array());
        assert_eq!(post_json(&base, "/sim/reset", json!({})).await.0, 200);
        assert_eq!(sim.platform_stats(), crate::PlatformStats::default());
        assert_eq!(sim.merchants().len(), 2, "merchants stay");
    }

    #[tokio::test]
    async fn a_merchants_follower_events_are_pushed_with_the_platforms_key() {
        let (sim, base, seen) = served(0).await;
        sim.authorize_merchant(Authorize::new(C, "wxM1")).unwrap();
        let leave = json!({ "appid": "wxM1", "openid": "oU", "event": "unsubscribe" });
        assert_eq!(post_json(&base, "/sim/events", leave).await.0, 200);
        let (q, body) = pushes_at(&seen, "/wechat/wxM1", 1).await.remove(0);
        let (xml, sealed) = open(&q, &body);
        assert_eq!(sealed, C);
        assert!(xml.contains("<Event><![CDATA[unsubscribe]]></Event>"), "{xml}");
    }

    #[tokio::test]
    async fn issued_tokens_include_the_platforms_tokens_refresh_tokens_and_tickets() {
        let (sim, _, _) = served(0).await;
        let ticket = sim.push_ticket(C).unwrap();
        sim.authorize_merchant(Authorize::new(C, "wxM1")).unwrap();
        let issued = sim.issued_tokens();
        assert!(issued.contains(&ticket));
        let config = sim.with(|s| s.config.clone());
        let body = json!({ "component_appid": C, "component_appsecret": "csecret", "component_verify_ticket": ticket });
        let reply = sim
            .with(|s| {
                s.platforms
                    .call(&config, Api::ComponentToken, None, body.to_string().as_bytes())
            })
            .1;
        assert!(sim.issued_tokens().contains(&s(&reply, "component_access_token")));
    }
}
