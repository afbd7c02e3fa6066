//! `wechat-sim`: a WeChat server API simulator faithful to WECHAT_API.md, for the tests and the
//! demo stack. HTTP 200 with `{errcode, errmsg}` bodies (`errmsg` ends with a request id), tokens
//! only from the query string, token overlap and rotation, stable-token rules, keyword rules,
//! `client_msg_id` dedup of template sends (never of subscribe sends), quotas, unknown templates,
//! unsubscribed users, and injected faults.
//!
//! Inspection and control for tests and people (not part of WeChat):
//! `GET /sim/messages`, `GET /sim/stats`, `POST /sim/faults` (partial JSON), `POST /sim/rotate?appid=`,
//! `POST /sim/users` (`{"unsubscribed": [...], "refused": [...]}`), `POST /sim/reset`.
//!
//! Event push (off unless configured; see [`push`]): `POST /sim/push` sets where and how
//! (a [`PushConfig`] as JSON), `POST /sim/events` (`{"appid", "openid", "event": "subscribe" |
//! "unsubscribe"}`) has a user follow or leave and pushes it, `GET /sim/pushes` lists the pushes
//! made and their fate. The result mix and delay are faults (`push_*`).

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

pub use push::{PushConfig, PushEvent, PushKind, Pushed};
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
    pub fn new(config: SimConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState::new(config))),
            http: reqwest::Client::new(),
        }
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

    /// Pushes `event` in the background (after the configured delay), as WeChat would.
    pub fn push(&self, event: PushEvent) {
        let sim = self.clone();
        tokio::spawn(async move {
            let (config, delay) = sim.with(|s| (s.config.push.clone(), s.config.faults.push_delay_ms));
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let on_try = |acknowledged: bool| {
                sim.with(|s| {
                    s.stats.push_tries += 1;
                    s.stats.push_tries_failed += u64::from(!acknowledged);
                })
            };
            let (tries, acknowledged) = push::deliver(&sim.http, &config, &event, on_try).await;
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

    /// Every token value issued so far (for tests proving they never leak).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|s| s.issued.clone())
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
            .route("/sim/events", post(follow_event))
            .route("/sim/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone())
    }

    /// Serves on `addr` (port 0 picks one); returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
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
}

async fn users(State(sim): State<Sim>, axum::Json(u): axum::Json<Users>) -> Response {
    sim.with(|s| {
        if let Some(list) = u.unsubscribed {
            s.config.unsubscribed = list.into_iter().collect();
        }
        if let Some(list) = u.refused {
            s.config.refused = list.into_iter().collect();
        }
    });
    json_reply(200, json!({ "ok": true }))
}

async fn set_push(State(sim): State<Sim>, axum::Json(config): axum::Json<PushConfig>) -> Response {
    sim.set_push(config);
    json_reply(200, json!({ "ok": true }))
}

#[derive(Deserialize)]
struct FollowEvent {
    /// Optional when the simulator knows one app.
    appid: Option<String>,
    openid: String,
    /// `subscribe` or `unsubscribe`.
    event: String,
}

async fn follow_event(State(sim): State<Sim>, axum::Json(e): axum::Json<FollowEvent>) -> Response {
    let followed = match e.event.as_str() {
        "subscribe" => true,
        "unsubscribe" => false,
        _ => return json_reply(400, json!({ "error": "event must be subscribe or unsubscribe" })),
    };
    let apps: Vec<String> = sim.with(|s| s.config.apps.keys().cloned().collect());
    let appid = match (e.appid, apps.as_slice()) {
        (Some(a), _) if apps.contains(&a) => a,
        (None, [only]) => only.clone(),
        _ => return json_reply(400, json!({ "error": "appid missing or unknown" })),
    };
    sim.follow(&appid, &e.openid, followed);
    json_reply(200, json!({ "ok": true }))
}

async fn reset(State(sim): State<Sim>) -> Response {
    sim.with(|s| {
        s.messages.clear();
        s.stats = Stats::default();
    });
    json_reply(200, json!({ "ok": true }))
}
