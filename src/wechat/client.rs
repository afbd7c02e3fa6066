//! The HTTP client for WeChat's token and send APIs, over [`super::transport`].
//!
//! Secrets stay secret here: the access token is put into the query string of a [`reqwest::Url`]
//! built inside the call and never formatted, and the transport's error text never holds the URL,
//! so neither a token nor an app secret can reach a log line, an error message or the ledger.

use std::time::Duration;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::TokenApi;
use super::message::OutgoingMessage;
use super::transport::{Failure, Transport};

/// A send that got an answer from WeChat (errcode 0 or not).
#[derive(Debug, Clone)]
pub struct SendReply {
    pub http_status: u16,
    pub errcode: i64,
    pub errmsg: String,
    /// WeChat's msgid; it can exceed 2^53, so it is parsed as an integer, never through f64.
    pub msgid: Option<i64>,
}

/// A send that got no usable answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The request never left: WeChat cannot have received it.
    #[error("cannot connect to WeChat: {0}")]
    Connect(String),
    /// Timeouts, resets, garbled answers: WeChat may have received and delivered it.
    #[error("{message}")]
    Unknown { message: String, http_status: Option<u16> },
}

impl SendError {
    /// Whether WeChat might have delivered the message anyway.
    pub fn maybe_delivered(&self) -> bool {
        matches!(self, SendError::Unknown { .. })
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            SendError::Connect(_) => None,
            SendError::Unknown { http_status, .. } => *http_status,
        }
    }
}

/// A freshly issued token and its lifetime in seconds, as WeChat gave it.
pub struct FetchedToken {
    pub token: SecretString,
    pub expires_in: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenFetchError {
    #[error("WeChat refused the token request: errcode {errcode} ({errmsg})")]
    WeChat { errcode: i64, errmsg: String },
    #[error("token request failed: {0}")]
    Transport(String),
}

#[derive(Clone)]
pub struct WechatClient {
    http: Transport,
    base: Url,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    msgid: Option<serde_json::Number>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl WechatClient {
    /// `base` is `WECHAT_API_BASE`, e.g. `https://api.weixin.qq.com`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let base = Url::parse(base).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        let http = Transport::to(&base, timeout).map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self { http, base })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// Sends one message. The token is trimmed and goes into the query string only.
    pub async fn send(&self, msg: &OutgoingMessage, token: &SecretString) -> Result<SendReply, SendError> {
        let mut url = self.url(msg.api.path());
        url.query_pairs_mut()
            .append_pair("access_token", token.expose_secret().trim());
        let body = serde_json::to_vec(&msg.body())
            .map_err(|e| SendError::Connect(format!("cannot encode the message: {e}")))?;
        let (status, bytes) = self.http.exchange(&url, Some(body)).await.map_err(|f| match f {
            Failure::Connect(message) => SendError::Connect(message),
            Failure::Unknown(message, http_status) => SendError::Unknown { message, http_status },
        })?;
        if status != 200 {
            return Err(SendError::Unknown {
                message: format!("HTTP {status} from WeChat"),
                http_status: Some(status),
            });
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).map_err(|e| SendError::Unknown {
            message: format!("unparseable answer from WeChat: {e}"),
            http_status: Some(status),
        })?;
        Ok(SendReply {
            http_status: status,
            errcode: body.errcode,
            errmsg: crate::event::truncate(&body.errmsg, 500).to_string(),
            msgid: body
                .msgid
                .and_then(|n| n.as_i64().or_else(|| n.as_u64().map(|u| u as i64))),
        })
    }

    /// Asks WeChat for a token. `force` only matters for the stable API.
    pub async fn fetch_token(
        &self,
        api: TokenApi,
        app_id: &str,
        secret: &SecretString,
        force: bool,
    ) -> Result<FetchedToken, TokenFetchError> {
        let (url, body) = match api {
            TokenApi::Classic => {
                let mut url = self.url("/cgi-bin/token");
                url.query_pairs_mut()
                    .append_pair("grant_type", "client_credential")
                    .append_pair("appid", app_id)
                    .append_pair("secret", secret.expose_secret());
                (url, None)
            }
            TokenApi::Stable => {
                let body = json!({
                    "grant_type": "client_credential",
                    "appid": app_id,
                    "secret": secret.expose_secret(),
                    "force_refresh": force,
                });
                (self.url("/cgi-bin/stable_token"), Some(body.to_string().into_bytes()))
            }
        };
        let (status, bytes) = self.http.exchange(&url, body).await.map_err(|f| match f {
            Failure::Connect(text) | Failure::Unknown(text, _) => TokenFetchError::Transport(text),
        })?;
        if status != 200 {
            return Err(TokenFetchError::Transport(format!("HTTP {status} from the token API")));
        }
        let body: ErrorBody = serde_json::from_slice(&bytes)
            .map_err(|e| TokenFetchError::Transport(format!("unparseable token answer: {e}")))?;
        match (body.errcode, body.access_token) {
            (0, Some(token)) if !token.trim().is_empty() => Ok(FetchedToken {
                token: SecretString::from(token.trim().to_string()),
                expires_in: body.expires_in.unwrap_or(7200),
            }),
            (0, _) => Err(TokenFetchError::Transport("token answer without access_token".into())),
            (errcode, _) => Err(TokenFetchError::WeChat {
                errcode,
                errmsg: crate::event::truncate(&body.errmsg, 300).to_string(),
            }),
        }
    }
}
