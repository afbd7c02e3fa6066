//! `wechat-sim`: a WeChat server API simulator faithful to WECHAT_API.md, for the tests and the
//! demo stack. HTTP 200 with `{errcode, errmsg}` bodies (`errmsg` ends with a request id), tokens
//! only from the query string, token overlap and rotation, stable-token rules, keyword rules,
//! template messages' values cut as since 2023 ([`cut`]), `client_msg_id` dedup of template sends
//! (never of subscribe sends), quotas, unknown templates, unsubscribed users, subscription consent
//! credits ([`mod@consent`], enforced with `enforce_consent`), and injected faults.
//!
//! Inspection and control for tests and people (not part of WeChat):
//! `GET /sim/messages` (each accepted message; `cut` lists the keys WeChat cut), `GET /sim/stats`,
//! `POST /sim/faults` (partial JSON), `POST /sim/rotate?appid=`, `POST /sim/users`
//! (`{"unsubscribed": [...], "refused": [...], "enforce_consent": bool}`, each optional),
//! `POST /sim/reset` (messages, stats and platform stats; users, credits and merchants stay).
//!
//! Event push (off unless configured; see [`push`]): `POST /sim/push` sets where and how
//! (a [`PushConfig`] as JSON; `"format": "json"` for a mini program set to JSON), `GET /sim/pushes`
//! lists the pushes made and their fate, and `POST /sim/events` has a user act and pushes it:
//! `{"appid"?, "openid", "event": "subscribe" | "unsubscribe"}` follows or leaves;
//! `{"appid"?, "openid", "event": "subscribe_msg_popup_event" | "subscribe_msg_change_event",
//! "list": [{"template_id", "status": "accept" | "reject"}], "create_time"?}` answers a mini
//! program's subscription pop-up or settings page (`appid` may be left out when the simulator
//! knows one app; anything else is a 400 `{"error"}`). The result mix and delay are faults
//! (`push_*`).
//!
//! Third-party platforms (see [`platform`]; `SimConfig::platforms`): WeChat's
//! `/cgi-bin/component/*` endpoints and `/cgi-bin/template/api_add_template`, sends with a
//! merchant's access token, and for tests and people: `POST /sim/platform/authorize`
//! (`{"component_appid", "authorizer_appid", "func_info"?, "pre_auth_code"?}`: the merchant scans
//! and authorizes; pushed `authorized`, or `updateauthorized`), `POST /sim/platform/reauthorize`
//! (the same body, after a revocation), `POST /sim/platform/revoke` (`{"component_appid",
//! "authorizer_appid"}`: pushed `unauthorized`), `POST /sim/platform/rotate?component_appid=&
//! authorizer_appid=` (merchants' access tokens revoked; each optional), `POST
//! /sim/platform/push` (a [`PlatformPushConfig`]: the authorization event URL and the ticket
//! period), `POST /sim/platform/ticket?component_appid=` (a ticket pushed now), `POST
//! /sim/platform/expire_tickets?component_appid=` (61005 until the next ticket),
//! `GET /sim/platform/pushes`, `GET /sim/platform/stats`, `GET /sim/platform/merchants`. The
//! faults `component_token_busy_rate`, `authorizer_token_busy_rate`, `platform_latency_ms`,
//! `rotate_refresh_on_refresh` and `merchant_rotate_every` are in `/sim/faults`.

pub mod consent;
pub mod cut;
pub mod document;
pub mod platform;
pub mod push;
pub mod state;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use consent::{ConsentItem, ConsentKind, ConsentStatus};
pub use platform::event::{Authorization, PlatformEvent, PlatformInfo, PlatformPushed};
pub use platform::merchant::{MAX_TEMPLATES, MerchantTemplate};
pub use platform::onboard::{Authorize, Authorized};
pub use platform::{MerchantView, PlatformConfig, PlatformPushConfig, PlatformStats};
pub use push::{PushConfig, PushEvent, PushFormat, PushKind, Pushed};
pub use state::{Accepted, Faults, FaultsPatch, SimConfig, SimState, Stats};

/// The simulator, shareable between the HTTP server and a test that inspects it in-process.
#[derive(Clone)]
pub struct Sim {
    state: Arc<Mutex<SimState>>,
    /// The event push's client.
    http: reqwest::Client,
}

fn json_reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json; encoding=utf-8")],
        body.to_string(),
    )
        .into_response()
}

type Params = Query<HashMap<String, String>>;

impl Sim {
    /// A simulator; inside a Tokio runtime, the platforms' ticket task starts when the
    /// configuration asks for one.
    pub fn new(config: SimConfig) -> Self {
        let sim = Self {
            state: Arc::new(Mutex::new(SimState::new(config))),
            http: reqwest::Client::new(),
        };
        sim.start_platform_pushes();
        sim
    }

    /// Where and how to push (replaces the whole push configuration).
    pub fn set_push(&self, config: PushConfig) {
        self.with(|s| s.config.push = config);
    }

    /// Pushes made so far, with their fate.
    pub fn pushes(&self) -> Vec<Pushed> {
        self.with(|s| s.pushed.clone())
    }

    /// A user follows (or leaves) `appid`'s account: pushed when pushes are on.
    pub fn follow(&self, appid: &str, openid: &str, followed: bool) {
        self.with(|s| s.follow(appid, openid, followed));
        self.flush_outbox();
    }

    /// A user answers a subscription pop-up (`kind` [`ConsentKind::Popup`]) or changes the
    /// settings page ([`ConsentKind::Settings`]) of `appid` (a mini program), one answer per
    /// template: the credits change as WeChat's do (see [`mod@consent`]), and the event is pushed
    /// as given when pushes are on, its `CreateTime` being `create_time` (Unix seconds) when
    /// given, else the time of the push.
    pub fn consent(
        &self,
        appid: &str,
        openid: &str,
        kind: ConsentKind,
        items: &[(&str, ConsentStatus)],
        create_time: Option<i64>,
    ) {
        self.with(|s| s.consent(appid, openid, kind, items, create_time));
        self.flush_outbox();
    }

    /// The subscribe messages of `template_id` that `openid` still allows `appid` (0 while the
    /// template is blocked on the settings page).
    pub fn credits(&self, appid: &str, openid: &str, template_id: &str) -> u32 {
        self.with(|s| s.credits(appid, openid, template_id))
    }

    /// Subscribe sends need a consent credit (43101 without one) while `on`.
    pub fn set_enforce_consent(&self, on: bool) {
        self.with(|s| s.config.enforce_consent = on);
    }

    /// Pushes `event` in the background (after the configured delay), as WeChat would.
    pub fn push(&self, event: PushEvent) {
        let sim = self.clone();
        tokio::spawn(async move {
            // A merchant's account is pushed with its platform's token and key.
            let (config, sealed, delay) = sim.with(|s| {
                let (config, sealed) = s.platforms.push_config_for(&s.config, &event.appid);
                (config, sealed, s.config.faults.push_delay_ms)
            });
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let on_try = |acknowledged: bool| {
                sim.with(|s| {
                    s.stats.push_tries += 1;
                    s.stats.push_tries_failed += u64::from(!acknowledged);
                })
            };
            let (tries, acknowledged) = push::deliver(&sim.http, &config, &event, &sealed, on_try).await;
            sim.with(|s| {
                if acknowledged {
                    s.stats.pushes_acknowledged += 1;
                } else {
                    s.stats.pushes_abandoned += 1;
                }
                s.pushed.push(Pushed {
                    event,
                    tries,
                    acknowledged,
                });
            });
        });
    }

    /// Spawns the pushes the last calls queued.
    fn flush_outbox(&self) {
        for event in self.with(|s| std::mem::take(&mut s.outbox)) {
            self.push(event);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SimState) -> T) -> T {
        f(&mut self.state.lock().expect("sim state lock"))
    }

    pub fn messages(&self) -> Vec<Accepted> {
        self.with(|s| s.messages.clone())
    }

    pub fn stats(&self) -> Stats {
        self.with(|s| s.stats.clone())
    }

    pub fn patch_faults(&self, p: FaultsPatch) {
        self.with(|s| s.patch_faults(p));
    }

    /// Every token value issued so far (for tests proving they never leak): apps' tokens, then
    /// the platforms' component tokens, merchants' access and refresh tokens and verify tickets.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.iter().chain(&s.platforms.issued).cloned().collect())
    }

    pub fn rotate(&self, app: &str) {
        self.with(|s| s.rotate(app));
    }

    /// The app's secret is reset (as a merchant does in the admin console): the old one no
    /// longer gets a token (40125).
    pub fn set_secret(&self, app: &str, secret: &str) {
        self.with(|s| {
            s.config.apps.insert(app.to_string(), secret.to_string());
        });
    }

    pub fn set_unsubscribed(&self, openids: &[&str]) {
        self.with(|s| s.config.unsubscribed = openids.iter().map(|o| o.to_string()).collect());
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/token", get(classic_token))
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/message/template/send", post(template_send))
            .route("/cgi-bin/message/subscribe/send", post(subscribe_send))
            .route(
                "/sim/messages",
                get(|State(sim): State<Sim>| async move { axum::Json(sim.messages()) }),
            )
            .route(
                "/sim/stats",
                get(|State(sim): State<Sim>| async move { axum::Json(sim.stats()) }),
            )
            .route("/sim/faults", post(faults))
            .route("/sim/rotate", post(rotate))
            .route("/sim/users", post(users))
            .route("/sim/reset", post(reset))
            .route("/sim/push", post(set_push))
            .route(
                "/sim/pushes",
                get(|State(sim): State<Sim>| async move { axum::Json(sim.pushes()) }),
            )
            .route("/sim/events", post(user_event))
            .route("/sim/healthz", get(|| async { "ok\n" }))
            .merge(platform::http::routes())
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one); returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.start_platform_pushes();
        let app = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(local)
    }
}

/// A stalled token endpoint (`token_latency_ms`) answers late.
async fn token_stall(sim: &Sim) {
    let stall = sim.with(|s| s.config.faults.token_latency_ms);
    if stall > 0 {
        tokio::time::sleep(Duration::from_millis(stall)).await;
    }
}

async fn classic_token(State(sim): State<Sim>, Query(q): Params) -> Response {
    token_stall(&sim).await;
    let g = |k: &str| q.get(k).map(String::as_str);
    let (status, body) = sim.with(|s| s.classic_token(g("grant_type"), g("appid"), g("secret")));
    json_reply(status, body)
}

async fn stable_token(State(sim): State<Sim>, body: Bytes) -> Response {
    token_stall(&sim).await;
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_reply(
            200,
            state::error(wechat_rules::errcode::DATA_FORMAT, "data format error"),
        );
    };
    let (status, body) = sim.with(|s| s.stable_token(&body));
    json_reply(status, body)
}

async fn send(sim: Sim, api: &str, q: HashMap<String, String>, body: Bytes) -> Response {
    let (latency, fail_5xx) = sim.with(|s| {
        let f = &s.config.faults;
        (f.latency_ms, rand::rng().random::<f64>() < f.http_5xx_rate)
    });
    // Half the latency before WeChat acts on the request, half after: a client that dies while
    // waiting for the answer may have had its message accepted (the case `client_msg_id` is for).
    let half = Duration::from_millis(latency / 2);
    if latency > 0 {
        tokio::time::sleep(half).await;
    }
    if fail_5xx {
        sim.with(|s| s.stats.http_5xx += 1);
        return (StatusCode::BAD_GATEWAY, "<html><body>502 Bad Gateway</body></html>").into_response();
    }
    // The token counts only in the query string; a token in the body is ignored (→ 41001).
    let (status, body) = sim.with(|s| s.send(api, q.get("access_token").map(String::as_str), &body));
    sim.flush_outbox();
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency) - half).await;
    }
    json_reply(status, body)
}

async fn template_send(State(sim): State<Sim>, Query(q): Params, body: Bytes) -> Response {
    send(sim, "template", q, body).await
}

async fn subscribe_send(State(sim): State<Sim>, Query(q): Params, body: Bytes) -> Response {
    send(sim, "subscribe", q, body).await
}

async fn faults(State(sim): State<Sim>, axum::Json(p): axum::Json<FaultsPatch>) -> Response {
    sim.patch_faults(p);
    let f = sim.with(|s| s.config.faults.clone());
    json_reply(200, json!(f))
}

async fn rotate(State(sim): State<Sim>, Query(q): Params) -> Response {
    let apps: Vec<String> = match q.get("appid") {
        Some(a) => vec![a.clone()],
        None => sim.with(|s| s.config.apps.keys().cloned().collect()),
    };
    for a in &apps {
        sim.rotate(a);
    }
    json_reply(200, json!({ "rotated": apps }))
}

#[derive(Deserialize)]
struct Users {
    #[serde(default)]
    unsubscribed: Option<Vec<String>>,
    #[serde(default)]
    refused: Option<Vec<String>>,
    /// Turns `enforce_consent` on or off.
    #[serde(default)]
    enforce_consent: Option<bool>,
}

async fn users(State(sim): State<Sim>, axum::Json(u): axum::Json<Users>) -> Response {
    sim.with(|s| {
        if let Some(list) = u.unsubscribed {
            s.config.unsubscribed = list.into_iter().collect();
        }
        if let Some(list) = u.refused {
            s.config.refused = list.into_iter().collect();
        }
        if let Some(on) = u.enforce_consent {
            s.config.enforce_consent = on;
        }
    });
    json_reply(200, json!({ "ok": true }))
}

async fn set_push(State(sim): State<Sim>, axum::Json(config): axum::Json<PushConfig>) -> Response {
    sim.set_push(config);
    json_reply(200, json!({ "ok": true }))
}

/// A `POST /sim/events` body: a follower event, or a consent event with its answers.
#[derive(Deserialize)]
struct UserEvent {
    /// Optional when the simulator knows one app.
    appid: Option<String>,
    openid: String,
    /// `subscribe`, `unsubscribe`, `subscribe_msg_popup_event` or `subscribe_msg_change_event`.
    event: String,
    /// The consent events' answers, one per template (`{"template_id", "status"}`).
    list: Option<Vec<ConsentItem>>,
    /// The consent push's `CreateTime` (Unix seconds); the time of the push when absent.
    create_time: Option<i64>,
}

/// What a `/sim/events` body asks for.
enum Requested {
    Follow(bool),
    Consent(ConsentKind, Vec<ConsentItem>),
}

/// What `e` asks for, or why it cannot be done.
fn requested(e: &mut UserEvent) -> Result<Requested, &'static str> {
    if e.openid.is_empty() {
        return Err("openid is empty");
    }
    let follow = match e.event.as_str() {
        "subscribe" => Some(true),
        "unsubscribe" => Some(false),
        "subscribe_msg_popup_event" | "subscribe_msg_change_event" => None,
        _ => {
            return Err(
                "event must be subscribe, unsubscribe, subscribe_msg_popup_event or subscribe_msg_change_event",
            );
        }
    };
    if let Some(followed) = follow {
        if e.list.is_some() || e.create_time.is_some() {
            return Err("list and create_time are for subscribe_msg_popup_event and subscribe_msg_change_event only");
        }
        return Ok(Requested::Follow(followed));
    }
    let list = e.list.take().unwrap_or_default();
    if list.is_empty() {
        return Err("list must hold at least one {\"template_id\", \"status\": \"accept\" | \"reject\"}");
    }
    if list.iter().any(|i| i.template_id.is_empty()) {
        return Err("a template_id in list is empty");
    }
    let kind = if e.event == "subscribe_msg_popup_event" {
        ConsentKind::Popup
    } else {
        ConsentKind::Settings
    };
    Ok(Requested::Consent(kind, list))
}

/// `POST /sim/events`: a user follows or leaves an account, or answers a mini program's
/// subscription pop-up or settings page; pushed when pushes are on. 400 for anything else.
async fn user_event(State(sim): State<Sim>, body: Bytes) -> Response {
    let bad = |error: String| json_reply(400, json!({ "error": error }));
    let mut e = match serde_json::from_slice::<UserEvent>(&body) {
        Ok(e) => e,
        Err(err) => return bad(format!("not a /sim/events body: {err}")),
    };
    let what = match requested(&mut e) {
        Ok(w) => w,
        Err(error) => return bad(error.to_string()),
    };
    let apps: Vec<String> = sim.with(|s| s.config.apps.keys().cloned().collect());
    let merchant = |a: &str| sim.with(|s| s.platforms.component_of(a).is_some());
    let appid = match (e.appid, apps.as_slice()) {
        (Some(a), _) if apps.contains(&a) || merchant(&a) => a,
        (None, [only]) => only.clone(),
        _ => return bad("appid missing or unknown".into()),
    };
    match what {
        Requested::Follow(followed) => sim.follow(&appid, &e.openid, followed),
        Requested::Consent(kind, list) => {
            let items: Vec<(&str, ConsentStatus)> = list.iter().map(|i| (i.template_id.as_str(), i.status)).collect();
            sim.consent(&appid, &e.openid, kind, &items, e.create_time);
        }
    }
    json_reply(200, json!({ "ok": true }))
}

async fn reset(State(sim): State<Sim>) -> Response {
    sim.with(|s| {
        s.messages.clear();
        s.stats = Stats::default();
        s.platforms.stats = PlatformStats::default();
    });
    json_reply(200, json!({ "ok": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "wx1111111111111111";

    /// A simulator served on port 0 with a mini program beside the default app; its base URL.
    async fn served() -> (Sim, String) {
        let mut config = SimConfig::default();
        config.apps.insert("wxMini".into(), "mini-secret".into());
        let sim = Sim::new(config);
        let addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        (sim, format!("http://{addr}"))
    }

    /// POSTs `body` (JSON text) to `path`; the status and the answer.
    async fn post_json(base: &str, path: &str, body: &str) -> (u16, Value) {
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

    /// A callback server that acknowledges every push.
    async fn callback() -> String {
        let app = Router::new().route("/wechat/{app}", post(|| async { "success" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/wechat/{{appid}}")
    }

    #[tokio::test]
    async fn sim_events_takes_popup_and_settings_answers_and_pushes_them() {
        let (sim, base) = served().await;
        sim.set_push(PushConfig {
            callback_url: Some(callback().await),
            ..PushConfig::default()
        });
        let popup = r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_popup_event",
            "list": [{"template_id": "TPL_A", "status": "accept"}, {"template_id": "TPL_B", "status": "reject"}],
            "create_time": 1610969440}"#;
        assert_eq!(post_json(&base, "/sim/events", popup).await.0, 200);
        assert_eq!(sim.credits("wxMini", "oU", "TPL_A"), 1);
        assert_eq!(sim.credits("wxMini", "oU", "TPL_B"), 0);
        assert_eq!(
            sim.credits(APP, "oU", "TPL_A"),
            0,
            "the mini program's, not the account's"
        );
        let change = r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_change_event",
            "list": [{"template_id": "TPL_A", "status": "reject"}]}"#;
        assert_eq!(post_json(&base, "/sim/events", change).await.0, 200);
        assert_eq!(sim.credits("wxMini", "oU", "TPL_A"), 0);
        for _ in 0..100 {
            if sim.pushes().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut pushed = sim.pushes();
        pushed.sort_by_key(|p| matches!(p.event.kind, PushKind::SubscribeMsgChange { .. }));
        assert!(pushed.iter().all(|p| p.acknowledged && p.event.appid == "wxMini"));
        let kinds: Vec<Value> = pushed.iter().map(|p| json!(p)).collect();
        assert_eq!(kinds[0]["event"], "subscribe_msg_popup");
        assert_eq!(kinds[0]["create_time"], 1610969440);
        assert_eq!(kinds[0]["list"][1], json!({"template_id": "TPL_B", "status": "reject"}));
        assert_eq!(kinds[1]["event"], "subscribe_msg_change");
    }

    #[tokio::test]
    async fn sim_events_refuses_what_it_cannot_do_with_400() {
        let (sim, base) = served().await;
        let bad = [
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_sent_event"}"#,
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_popup_event"}"#,
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_popup_event", "list": []}"#,
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_popup_event",
                "list": [{"template_id": "TPL_A", "status": "maybe"}]}"#,
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe_msg_popup_event",
                "list": [{"template_id": "", "status": "accept"}]}"#,
            r#"{"appid": "wxMini", "openid": "oU", "event": "subscribe",
                "list": [{"template_id": "TPL_A", "status": "accept"}]}"#,
            r#"{"appid": "wxUnknown", "openid": "oU", "event": "subscribe_msg_popup_event",
                "list": [{"template_id": "TPL_A", "status": "accept"}]}"#,
            r#"{"openid": "oU", "event": "subscribe_msg_popup_event",
                "list": [{"template_id": "TPL_A", "status": "accept"}]}"#,
            r#"{"event": "subscribe"}"#,
            "not json",
        ];
        for body in bad {
            let (status, answer) = post_json(&base, "/sim/events", body).await;
            assert_eq!(status, 400, "{body}: {answer}");
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}: {answer}"
            );
        }
        assert_eq!(sim.credits("wxMini", "oU", "TPL_A"), 0);
        // Today's follower events still work.
        let leave = r#"{"appid": "wxMini", "openid": "oU", "event": "unsubscribe"}"#;
        assert_eq!(post_json(&base, "/sim/events", leave).await.0, 200);
    }

    #[tokio::test]
    async fn sim_users_turns_consent_enforcement_on_and_off() {
        let (sim, base) = served().await;
        assert_eq!(
            post_json(&base, "/sim/users", r#"{"enforce_consent": true}"#).await.0,
            200
        );
        assert!(sim.with(|s| s.config.enforce_consent));
        assert_eq!(post_json(&base, "/sim/users", r#"{"refused": []}"#).await.0, 200);
        assert!(sim.with(|s| s.config.enforce_consent), "unchanged when absent");
        assert_eq!(
            post_json(&base, "/sim/users", r#"{"enforce_consent": false}"#).await.0,
            200
        );
        assert!(!sim.with(|s| s.config.enforce_consent));
    }
}
