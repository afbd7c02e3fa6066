//! From a request to the push inside it, or a refusal (pure; no I/O): the query's signature and
//! timestamp, the mode (plaintext; safe and compatible: `encrypt_type=aes`, where the decrypted
//! message is the one read), then the document and the push.

use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::crypto::DecryptError;
use super::document::{self, DocumentError};
use super::push::{self, Push, PushError};
use super::settings::CallbackApp;
use super::signature;

/// A push's timestamp may be this far from our clock, either way (replays are refused).
pub(crate) const MAX_SKEW_SECS: i64 = 300;

/// Why a request is refused. 401: the sender did not prove it is WeChat (or is replaying);
/// 400: it did, but the body is not a push we can read. No variant carries the sender's text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("missing or wrong signature")]
    Signature,
    #[error("missing or wrong msg_signature")]
    MsgSignature,
    #[error("timestamp missing or more than {MAX_SKEW_SECS} s away")]
    Stale,
    #[error("an encrypted push, but this app has no EncodingAESKey configured")]
    NoKey,
    #[error("cannot decrypt: {0}")]
    Decrypt(DecryptError),
    #[error("no Encrypt element in an encrypted push")]
    NoEncrypt,
    #[error("bad document: {0}")]
    Document(#[from] DocumentError),
    #[error("bad push: {0}")]
    Push(#[from] PushError),
}

impl Refusal {
    /// 401 for the sender's credentials, 400 for the body.
    pub(crate) fn is_unauthorized(&self) -> bool {
        match self {
            Refusal::Signature | Refusal::MsgSignature | Refusal::Stale | Refusal::NoKey => true,
            Refusal::Decrypt(e) => *e != DecryptError::NotUtf8,
            Refusal::NoEncrypt | Refusal::Document(_) | Refusal::Push(_) => false,
        }
    }
}

/// Checks the query's `signature` (over token, timestamp, nonce) and the timestamp: the URL
/// check and every push start with this.
pub(crate) fn check_query(app: &CallbackApp, query: &HashMap<String, String>, now: i64) -> Result<(), Refusal> {
    let q = |k: &str| query.get(k).map(String::as_str);
    let (Some(timestamp), Some(nonce), Some(sig)) = (q("timestamp"), q("nonce"), q("signature")) else {
        return Err(Refusal::Signature);
    };
    if !signature::verify(&[app.token.expose_secret(), timestamp, nonce], sig) {
        return Err(Refusal::Signature);
    }
    let fresh = timestamp.parse::<i64>().is_ok_and(|t| (now - t).abs() <= MAX_SKEW_SECS);
    if !fresh {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// Opens a push addressed to `app_id`: its checks, then what it says.
pub(crate) fn open(
    app: &CallbackApp,
    app_id: &str,
    query: &HashMap<String, String>,
    body: &[u8],
    now: i64,
) -> Result<Push, Refusal> {
    check_query(app, query, now)?;
    let outer = document::parse(body)?;
    if query.get("encrypt_type").map(String::as_str) != Some("aes") {
        return Ok(push::read(&outer)?);
    }
    let key = app.aes_key.as_ref().ok_or(Refusal::NoKey)?;
    let encrypted = outer.text_of("Encrypt").ok_or(Refusal::NoEncrypt)?;
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    let msg_signature = query.get("msg_signature").ok_or(Refusal::MsgSignature)?;
    let parts = [app.token.expose_secret(), q("timestamp"), q("nonce"), encrypted];
    if !signature::verify(&parts, msg_signature) {
        return Err(Refusal::MsgSignature);
    }
    let inner = key.decrypt(encrypted, app_id).map_err(Refusal::Decrypt)?;
    Ok(push::read(&document::parse(inner.as_bytes())?)?)
}
