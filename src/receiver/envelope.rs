//! From a request to the push inside it, or a refusal (pure; no I/O): the query's signature and
//! timestamp, the mode, then the document and the push.
//!
//! The mode is the app's, never the request's (docs/interface.md §9): an app with an
//! EncodingAESKey takes only encrypted pushes (safe and compatible modes: `encrypt_type=aes` and a
//! `msg_signature` over the `Encrypt` text; the decrypted message is the one read, and a compatible
//! push's plaintext copy is ignored, since no signature covers it). A plaintext push to such an app
//! is refused before its body is read: its signature covers token, timestamp and nonce, never the
//! body, and signed query strings sit in proxies' access logs. An app without a key takes
//! plaintext only.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
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
    #[error("a plaintext push, but this app has an EncodingAESKey: it takes encrypted pushes only")]
    Plaintext,
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
            Refusal::Signature | Refusal::MsgSignature | Refusal::Stale | Refusal::NoKey | Refusal::Plaintext => true,
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

/// Opens a push addressed to `app_id` that arrived at `arrival`: its checks, then what it says
/// (a `CreateTime` later than `arrival` counts as `arrival`).
pub(crate) fn open(
    app: &CallbackApp,
    app_id: &str,
    query: &HashMap<String, String>,
    body: &[u8],
    arrival: DateTime<Utc>,
) -> Result<Push, Refusal> {
    Ok(open_as_sent(app, app_id, query, body, arrival.timestamp())?.arrived_at(arrival))
}

/// [`open`], the push as its sender dated it.
fn open_as_sent(
    app: &CallbackApp,
    app_id: &str,
    query: &HashMap<String, String>,
    body: &[u8],
    now: i64,
) -> Result<Push, Refusal> {
    check_query(app, query, now)?;
    let encrypted_push = query.get("encrypt_type").map(String::as_str) == Some("aes");
    let key = match (&app.aes_key, encrypted_push) {
        (Some(key), true) => key,
        (Some(_), false) => return Err(Refusal::Plaintext),
        (None, true) => return Err(Refusal::NoKey),
        (None, false) => return Ok(push::read(&document::parse(body)?)?),
    };
    let msg_signature = query.get("msg_signature").ok_or(Refusal::MsgSignature)?;
    let outer = document::parse(body)?;
    let encrypted = outer.text_of("Encrypt").ok_or(Refusal::NoEncrypt)?;
    let q = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
    let parts = [app.token.expose_secret(), q("timestamp"), q("nonce"), encrypted];
    if !signature::verify(&parts, msg_signature) {
        return Err(Refusal::MsgSignature);
    }
    let inner = key.decrypt(encrypted, app_id).map_err(Refusal::Decrypt)?;
    Ok(push::read(&document::parse(inner.as_bytes())?)?)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use sha1::{Digest, Sha1};

    use super::*;

    const NOW: i64 = 1_795_000_000;

    fn app(aes: bool) -> CallbackApp {
        CallbackApp {
            token: SecretString::from("tok123"),
            aes_key: aes.then(|| {
                crate::receiver::crypto::AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap()
            }),
        }
    }

    /// The documented signature, by hand.
    fn query(timestamp: i64, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let ts = timestamp.to_string();
        let mut parts = ["tok123", ts.as_str(), "42"];
        parts.sort();
        let sig = hex::encode(Sha1::digest(parts.concat()));
        let mut q: HashMap<String, String> = [("timestamp", ts.as_str()), ("nonce", "42"), ("signature", &sig)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        q.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        q
    }

    const BODY: &[u8] = b"<xml><FromUserName>oU</FromUserName><CreateTime>1</CreateTime>\
        <MsgType>event</MsgType><Event>unsubscribe</Event></xml>";

    #[test]
    fn a_plain_push_with_its_signature_opens() {
        let push = open_as_sent(&app(false), "wx1", &query(NOW - 299, &[]), BODY, NOW).unwrap();
        assert_eq!(push.kind(), crate::receiver::push::EventKind::Unsubscribe);
    }

    #[test]
    fn signature_time_and_key_refusals_are_401_body_refusals_400() {
        let mut q = query(NOW, &[]);
        q.insert("signature".into(), "0".repeat(40));
        let refused = open_as_sent(&app(false), "wx1", &q, BODY, NOW).unwrap_err();
        assert!(matches!(refused, Refusal::Signature) && refused.is_unauthorized());
        let mut q = query(NOW, &[]);
        q.remove("nonce");
        assert!(matches!(
            open_as_sent(&app(false), "wx1", &q, BODY, NOW),
            Err(Refusal::Signature)
        ));
        for skew in [301, -301] {
            let refused = open_as_sent(&app(false), "wx1", &query(NOW + skew, &[]), BODY, NOW).unwrap_err();
            assert!(matches!(refused, Refusal::Stale) && refused.is_unauthorized(), "{skew}");
        }
        let aes = query(NOW, &[("encrypt_type", "aes"), ("msg_signature", "x")]);
        let refused = open_as_sent(&app(false), "wx1", &aes, BODY, NOW).unwrap_err();
        assert!(matches!(refused, Refusal::NoKey) && refused.is_unauthorized());
        let refused = open_as_sent(&app(true), "wx1", &aes, BODY, NOW).unwrap_err();
        assert!(matches!(refused, Refusal::NoEncrypt) && !refused.is_unauthorized());
        // The mode is the app's: a rightly signed plaintext push to an app with a key is refused
        // before its body is read (bad XML too: 401, not 400).
        for body in [BODY, b"<xml><MsgType>".as_slice()] {
            let refused = open_as_sent(&app(true), "wx1", &query(NOW, &[]), body, NOW).unwrap_err();
            assert!(matches!(refused, Refusal::Plaintext) && refused.is_unauthorized());
        }
        let raw = query(NOW, &[("encrypt_type", "raw")]);
        assert!(matches!(
            open_as_sent(&app(true), "wx1", &raw, BODY, NOW),
            Err(Refusal::Plaintext)
        ));
        let refused = open_as_sent(&app(false), "wx1", &query(NOW, &[]), b"<xml><MsgType>", NOW).unwrap_err();
        assert!(matches!(refused, Refusal::Document(_)) && !refused.is_unauthorized());
    }

    #[test]
    fn safe_mode_checks_msg_signature_before_decrypting() {
        let body = b"<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[AAAA]]></Encrypt></xml>";
        let q = query(NOW, &[("encrypt_type", "aes"), ("msg_signature", &"0".repeat(40))]);
        let refused = open_as_sent(&app(true), "wx1", &q, body, NOW).unwrap_err();
        assert!(matches!(refused, Refusal::MsgSignature) && refused.is_unauthorized());
        let mut parts = ["tok123", &NOW.to_string(), "42", "AAAA"].map(str::to_string);
        parts.sort();
        let msg_signature = hex::encode(Sha1::digest(parts.concat()));
        let q = query(NOW, &[("encrypt_type", "aes"), ("msg_signature", &msg_signature)]);
        let refused = open_as_sent(&app(true), "wx1", &q, body, NOW).unwrap_err();
        assert!(matches!(refused, Refusal::Decrypt(_)) && refused.is_unauthorized());
    }
}
