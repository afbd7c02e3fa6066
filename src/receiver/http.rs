//! The receiver's HTTP face: `GET /wechat/{app_id}` (the URL check), `POST /wechat/{app_id}`
//! (pushes: an app's, or a platform's merchant's) and `POST /wechat/platform/{component_appid}`
//! (a platform's own pushes). A push is answered `success` only once what it says is committed:
//! in Postgres, or, when Postgres does not take it in time and a broker is configured, in the
//! pushes queue ([`spill`](super::spill)). Otherwise it gets a 503 within 4 s, so WeChat tries
//! again. Bodies over [`MAX_BODY`] are refused by length before they are read; a body not complete
//! by the request's [`ReadBy`] gets 408 ([`serve`](super::serve) bounds the rest). Whatever the
//! sender wrote reaches the logs only `Debug`-escaped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tower_http::limit::RequestBodyLimitLayer;

use super::envelope::{self, Refusal};
use super::exchange::Exchange;
use super::merchants::Merchants;
use super::platform_push::PlatformInfo;
use super::push::{EventKind, Push, PushError};
use super::serve::{REQUEST_TIMEOUT, ReadBy};
use super::settings::CallbackApp;
use super::spill::Spill;
use super::store::{Store, Stored};
use crate::admin::Health;

/// WeChat's bodies are a few hundred bytes; docs/interface.md §9 caps them at 64 KiB.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// WeChat waits 5 s for an answer; we give the database 4 of them ...
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(4);
/// ... or 3, when the pushes queue may take the push in the next 1.5.
pub(crate) const STORE_TIMEOUT_BEFORE_SPILL: Duration = Duration::from_secs(3);
pub(crate) const SPILL_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone)]
pub(crate) struct ReceiverState {
    pub apps: Arc<HashMap<String, CallbackApp>>,
    /// The third-party platforms: their authorization event URL (docs/interface.md §10).
    pub platforms: Arc<HashMap<String, CallbackApp>>,
    /// Exchanges a platform's authorization codes once stored (`None`: no platform).
    pub exchange: Option<Arc<Exchange>>,
    /// The platforms' merchants, whose pushes come to `/wechat/{authorizer_appid}` (`None`: no
    /// platform).
    pub merchants: Option<Arc<Merchants>>,
    pub store: Store,
    pub spill: Option<Arc<Spill>>,
    /// The database probe's verdict: while it says down, a push goes straight to the spill.
    pub health: Arc<Health>,
}

pub(crate) fn router(state: ReceiverState) -> Router {
    Router::new()
        .route("/wechat/{app_id}", get(url_check).post(push))
        .route("/wechat/platform/{component_appid}", post(platform_push))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .layer(axum::middleware::map_response(count_too_large))
        .with_state(state)
}

/// The body limit answers 413 before any handler runs: count it here.
async fn count_too_large(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        count("unknown", "too_large");
    }
    response
}

fn count(event: &'static str, result: &'static str) {
    metrics::counter!("wxnotify_pushes_total", "event" => event, "result" => result).increment(1);
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn url_check(
    State(state): State<ReceiverState>,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(app) = state.apps.get(&app_id) else {
        tracing::debug!(app = ?app_id, "URL check for an unknown app");
        return text(StatusCode::NOT_FOUND, "unknown app\n");
    };
    if let Err(refusal) = envelope::check_query(app, &query, now()) {
        tracing::info!(app = ?app_id, error = ?refusal, "URL check refused");
        return text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    let echo = query.get("echostr").cloned().unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        echo,
    )
        .into_response()
}

/// The body, read by the request's [`ReadBy`] (10 s after its connection was ready for it), or
/// the answer: 408 (and the connection closed) past it, 413 over [`MAX_BODY`], 400 cut short.
async fn read_body(body: Body, read_by: Option<ReadBy>) -> Result<Bytes, Response> {
    let deadline = read_by.map_or_else(|| Instant::now() + REQUEST_TIMEOUT, |r| r.0);
    match tokio::time::timeout_at(deadline, Bytes::from_request(Request::new(body), &())).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) => Err(rejection.into_response()),
        Err(_) => {
            count("unknown", "timeout");
            tracing::info!("push body not complete within {REQUEST_TIMEOUT:?}; 408");
            Err((
                StatusCode::REQUEST_TIMEOUT,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CONNECTION, "close"),
                ],
                "request timeout\n",
            )
                .into_response())
        }
    }
}

async fn push(
    State(state): State<ReceiverState>,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    read_by: Option<Extension<ReadBy>>,
    body: Body,
) -> Response {
    let Some(app) = state.apps.get(&app_id) else {
        return merchant_push(&state, &app_id, &query, read_by, body).await;
    };
    let push = match open(app, &app_id, &query, read_by, body).await {
        Ok(Push::Platform(_)) => return refused(&app_id, &Refusal::Push(PushError::Misdirected)),
        Ok(push) => push,
        Err(answer) => return answer,
    };
    keep_and_answer(&state, &app_id, push, Duration::ZERO).await
}

/// `POST /wechat/{authorizer_appid}` for an appid that is no configured app: a platform's
/// merchant's push, checked and opened with the platform's token and key (its trailing appid is
/// the platform's), kept as the merchant's own (docs/interface.md §10). Neither an app nor a
/// merchant of a configured platform: 404.
async fn merchant_push(
    state: &ReceiverState,
    appid: &str,
    query: &HashMap<String, String>,
    read_by: Option<Extension<ReadBy>>,
    body: Body,
) -> Response {
    let asked = Instant::now();
    let found = match &state.merchants {
        Some(merchants) => merchants.platform_of(appid).await,
        None => Ok(None),
    };
    let looked_up = asked.elapsed();
    let platform = match found {
        Ok(component) => component.and_then(|c| state.platforms.get_key_value(&c)),
        Err(e) => {
            tracing::warn!(app = ?appid, error = ?e.to_string(), "push not taken: answering 503 so WeChat retries");
            count("unknown", "db_error");
            return text(StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
    };
    let Some((component, platform)) = platform else {
        tracing::debug!(app = ?appid, "push for an unknown app");
        return text(StatusCode::NOT_FOUND, "unknown app\n");
    };
    let body = match read_body(body, read_by.map(|Extension(r)| r)).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let push = match envelope::open(platform, component, query, &body, chrono::Utc::now()) {
        Ok(Push::Platform(_)) => return refused(appid, &Refusal::Push(PushError::Misdirected)),
        Ok(push) => push,
        Err(refusal) => return refused(appid, &refusal),
    };
    keep_and_answer(state, appid, push, looked_up).await
}

/// `POST /wechat/platform/{component_appid}`: a platform's tickets and authorizations, always
/// encrypted with its token and key, for that platform only (docs/interface.md §10).
async fn platform_push(
    State(state): State<ReceiverState>,
    Path(component_appid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    read_by: Option<Extension<ReadBy>>,
    body: Body,
) -> Response {
    let Some(platform) = state.platforms.get(&component_appid) else {
        tracing::debug!(platform = ?component_appid, "push for an unknown platform");
        return text(StatusCode::NOT_FOUND, "unknown platform\n");
    };
    let push = match open(platform, &component_appid, &query, read_by, body).await {
        Ok(Push::Platform(p)) if p.component_appid == component_appid => Push::Platform(p),
        Ok(Push::Other) => Push::Other,
        Ok(_) => return refused(&component_appid, &Refusal::Push(PushError::Misdirected)),
        Err(answer) => return answer,
    };
    // A code to exchange, or a ticket that lets a waiting one be exchanged.
    let exchange = matches!(&push, Push::Platform(p)
        if matches!(p.info, PlatformInfo::Authorized { .. } | PlatformInfo::Ticket { .. }));
    let answer = keep_and_answer(&state, &component_appid, push, Duration::ZERO).await;
    if exchange
        && answer.status() == StatusCode::OK
        && let Some(exchange) = &state.exchange
    {
        exchange.spawn(&component_appid);
    }
    answer
}

/// The body read, checked and opened, or the answer that refuses it.
async fn open(
    secrets: &CallbackApp,
    id: &str,
    query: &HashMap<String, String>,
    read_by: Option<Extension<ReadBy>>,
    body: Body,
) -> Result<Push, Response> {
    let body = read_body(body, read_by.map(|Extension(r)| r)).await?;
    envelope::open(secrets, id, query, &body, chrono::Utc::now()).map_err(|refusal| refused(id, &refusal))
}

/// Stores an opened push and answers: `success` once it is kept, else 400 or 503. `spent`: what
/// looking up its sender took, out of the store's budget.
async fn keep_and_answer(state: &ReceiverState, app_id: &str, push: Push, spent: Duration) -> Response {
    let event = push.kind().label();
    if push == Push::Other {
        count(EventKind::Other.label(), "ok");
        return text(StatusCode::OK, "success");
    }
    match keep(state, app_id, &push, spent).await {
        Kept::Stored(stored) => {
            count(
                event,
                if stored.unknown_msgids > 0 {
                    "unknown_msgid"
                } else {
                    "ok"
                },
            );
            text(StatusCode::OK, "success")
        }
        Kept::Queued => {
            count(event, "queued");
            text(StatusCode::OK, "success")
        }
        Kept::Refused => {
            count(event, "bad_body");
            text(StatusCode::BAD_REQUEST, "bad request\n")
        }
        Kept::Not => {
            count(event, "db_error");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again\n")
        }
    }
}

/// Where a push ended up.
enum Kept {
    /// Committed in Postgres.
    Stored(Stored),
    /// Confirmed by the pushes queue (Postgres being away or slow).
    Queued,
    /// Postgres refused one of its values: trying again cannot help.
    Refused,
    /// Nowhere: the answer must make WeChat try again.
    Not,
}

/// Stores `push` in Postgres within the budget (less what was `spent` before), or else in the
/// pushes queue when there is one.
async fn keep(state: &ReceiverState, app_id: &str, push: &Push, spent: Duration) -> Kept {
    let budget = if state.spill.is_some() {
        STORE_TIMEOUT_BEFORE_SPILL
    } else {
        STORE_TIMEOUT
    }
    .saturating_sub(spent);
    let failure = if state.spill.is_some() && !state.health.ready() {
        "the database probe says Postgres is down".to_string()
    } else {
        match tokio::time::timeout(budget, state.store.store(app_id, push)).await {
            Ok(Ok(stored)) => return Kept::Stored(stored),
            Ok(Err(e)) if crate::db::is_data_error(&e) => {
                tracing::warn!(app = ?app_id, error = ?e.to_string(), "Postgres refused a value of the push");
                return Kept::Refused;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {budget:?}"),
        }
    };
    if let Some(spill) = &state.spill {
        match tokio::time::timeout(SPILL_TIMEOUT, spill.publish(app_id, push)).await {
            Ok(Ok(())) => {
                tracing::info!(app = ?app_id, error = ?failure, "Postgres did not take the push; queued it durably");
                return Kept::Queued;
            }
            Ok(Err(e)) => tracing::warn!(app = ?app_id, error = %e, "the pushes queue did not take the push either"),
            Err(_) => tracing::warn!(app = ?app_id, "the pushes queue did not confirm in time"),
        }
    }
    tracing::warn!(app = ?app_id, error = ?failure, "push not stored; answering 503 so WeChat retries");
    Kept::Not
}

fn refused(app_id: &str, refusal: &Refusal) -> Response {
    tracing::info!(app = ?app_id, error = ?refusal, "push refused");
    if refusal.is_unauthorized() {
        count("unknown", "bad_signature");
        text(StatusCode::UNAUTHORIZED, "unauthorized\n")
    } else {
        count("unknown", "bad_body");
        text(StatusCode::BAD_REQUEST, "bad request\n")
    }
}
