//! Booking events as they arrive (docs/interface.md §1), parsed once at the edge into [`BookingEvent`],
//! and the [`DeliveryKey`] that makes a delivery idempotent.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::ids::{AppId, OpenId};

/// Why a message body cannot become a delivery. Each becomes `invalid_event` in the dead-letter queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("body is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("body is not a JSON object: {0}")]
    NotJson(String),
    #[error("{0}")]
    Field(String),
}

/// A validated booking event. Holding one proves the required fields are present and well-formed:
/// it is made only by [`BookingEvent::parse`]. Templates see it as serialized here.
#[derive(Debug, Clone, Serialize)]
pub struct BookingEvent {
    event_id: String,
    event_type: String,
    /// Kept as the producer wrote it, so templates see the original offset.
    occurred_at: String,
    #[serde(skip)]
    occurred: DateTime<FixedOffset>,
    openid: OpenId,
    app_id: Option<AppId>,
    data: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawEvent {
    event_id: String,
    event_type: String,
    occurred_at: String,
    openid: String,
    #[serde(default)]
    app_id: Option<String>,
    data: Map<String, Value>,
}

#[derive(Deserialize)]
struct AppOnly<'a> {
    #[serde(borrow, default)]
    app_id: Option<std::borrow::Cow<'a, str>>,
}

/// The `app_id` of a message body, read without the rest: the worker's scheduler needs only
/// the app to put a message in its line. `None`: no `app_id` (the default app's), or not an
/// event at all (intake says why later).
pub(crate) fn peek_app_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<AppOnly<'_>>(body)
        .ok()
        .and_then(|a| a.app_id)
        .map(std::borrow::Cow::into_owned)
}

impl BookingEvent {
    /// Parses a message body. Unknown fields are ignored (docs/interface.md §1).
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let text = std::str::from_utf8(body).map_err(|e| EventError::NotUtf8(e.valid_up_to()))?;
        let raw: RawEvent = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                EventError::Field(e.to_string())
            } else {
                EventError::NotJson(e.to_string())
            }
        })?;
        let id_len = raw.event_id.chars().count();
        if !(1..=128).contains(&id_len) {
            return Err(EventError::Field(format!(
                "`event_id` must be 1–128 characters, got {id_len}"
            )));
        }
        for (name, value) in [("event_type", &raw.event_type), ("openid", &raw.openid)] {
            if value.trim().is_empty() {
                return Err(EventError::Field(format!("`{name}` must not be empty")));
            }
            if value.len() > 256 {
                return Err(EventError::Field(format!("`{name}` is longer than 256 bytes")));
            }
        }
        if let Some(app) = &raw.app_id
            && app.trim().is_empty()
        {
            return Err(EventError::Field("`app_id` must not be empty when present".into()));
        }
        // Postgres text cannot hold U+0000, and WeChat would refuse it: no field may carry it.
        for (name, value) in [
            ("event_id", raw.event_id.as_str()),
            ("event_type", raw.event_type.as_str()),
            ("occurred_at", raw.occurred_at.as_str()),
            ("openid", raw.openid.as_str()),
            ("app_id", raw.app_id.as_deref().unwrap_or("")),
        ] {
            if value.contains('\0') {
                return Err(EventError::Field(format!("`{name}` holds U+0000 (NUL)")));
            }
        }
        if let Some(path) = nul_in_map(&raw.data) {
            return Err(EventError::Field(format!("`data.{path}` holds U+0000 (NUL)")));
        }
        let occurred = DateTime::parse_from_rfc3339(&raw.occurred_at).map_err(|e| {
            EventError::Field(format!(
                "`occurred_at` is not an RFC 3339 timestamp ({e}): {:?}",
                truncate(&raw.occurred_at, 64)
            ))
        })?;
        Ok(Self {
            event_id: raw.event_id,
            event_type: raw.event_type,
            occurred_at: raw.occurred_at,
            occurred,
            openid: raw.openid.into(),
            app_id: raw.app_id.map(AppId::from),
            data: raw.data,
        })
    }

    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// `occurred_at`, parsed (with the producer's offset).
    pub fn occurred(&self) -> DateTime<FixedOffset> {
        self.occurred
    }

    pub fn openid(&self) -> &OpenId {
        &self.openid
    }

    /// The app the event names, if it names one (else the default app sends it).
    pub fn app_id(&self) -> Option<&AppId> {
        self.app_id.as_ref()
    }

    pub fn data(&self) -> &Map<String, Value> {
        &self.data
    }

    /// The event's id for logs and headers, even when the body did not parse.
    pub fn sniff_event_id(body: &[u8]) -> Option<String> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let id = value.get("event_id")?.as_str()?;
        Some(truncate(id, 128).to_string())
    }
}

/// The path (below `map`) of the first key or string that holds U+0000, if any. Allocates only
/// when one does.
fn nul_in_map(map: &Map<String, Value>) -> Option<String> {
    let name = |k: &str| truncate(k, 32).replace('\0', "\\0");
    map.iter().find_map(|(k, v)| {
        if k.contains('\0') {
            Some(name(k))
        } else {
            nul_in_value(v).map(|rest| format!("{}{rest}", name(k)))
        }
    })
}

fn nul_in_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(String::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_in_value(x).map(|rest| format!("[{i}]{rest}"))),
        Value::Object(m) => nul_in_map(m).map(|p| format!(".{p}")),
        _ => None,
    }
}

/// The idempotency key of a delivery: one WeChat message per key (docs/interface.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub event_id: String,
    pub template_id: String,
    pub openid: OpenId,
}

impl DeliveryKey {
    /// The `client_msg_id` WeChat deduplicates on for 10 minutes: the same for every resend of a key,
    /// different for different keys. A hash, so ids of any length and alphabet fit.
    pub fn client_msg_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [self.event_id.as_str(), &self.template_id, &self.openid] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        format!("wxn-{}", hex::encode(&digest[..16]))
    }
}

/// Cuts a string to at most `max` characters, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"event_id":"e1","event_type":"booking.confirmed","occurred_at":"2026-11-21T09:30:00+08:00","openid":"o1","data":{"x":1},"extra":true}"#;

    #[test]
    fn parses_a_good_event_and_ignores_unknown_fields() {
        let e = BookingEvent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.app_id, None);
        assert_eq!(e.occurred.offset().local_minus_utc(), 8 * 3600);
    }

    #[test]
    fn peeks_at_the_app_alone() {
        assert_eq!(peek_app_id(GOOD.as_bytes()), None);
        let with = GOOD.replace(r#""openid""#, r#""app_id":"wx\u0041","openid""#);
        assert_eq!(peek_app_id(with.as_bytes()).as_deref(), Some("wxA"));
        assert_eq!(peek_app_id(b"not json"), None);
        assert_eq!(peek_app_id(br#"{"app_id":7}"#), None);
    }

    #[test]
    fn rejects_each_malformed_kind() {
        assert!(matches!(BookingEvent::parse(b"\xff\xfe"), Err(EventError::NotUtf8(0))));
        assert!(matches!(BookingEvent::parse(b"{nope"), Err(EventError::NotJson(_))));
        let missing = GOOD.replace(r#""openid":"o1","#, "");
        let err = BookingEvent::parse(missing.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("openid"), "{err}");
        let long = GOOD.replace("\"e1\"", &format!("\"{}\"", "x".repeat(129)));
        assert!(
            BookingEvent::parse(long.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("1–128")
        );
        let bad_time = GOOD.replace("2026-11-21T09:30:00+08:00", "yesterday");
        assert!(
            BookingEvent::parse(bad_time.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
        let typed = GOOD.replace(r#""data":{"x":1}"#, r#""data":[1]"#);
        assert!(matches!(
            BookingEvent::parse(typed.as_bytes()),
            Err(EventError::Field(_))
        ));
    }

    #[test]
    fn client_msg_id_is_stable_and_distinct() {
        let k = |e: &str, t: &str, o: &str| DeliveryKey {
            event_id: e.into(),
            template_id: t.into(),
            openid: o.into(),
        };
        assert_eq!(k("a", "b", "c").client_msg_id(), k("a", "b", "c").client_msg_id());
        assert_ne!(k("ab", "", "c").client_msg_id(), k("a", "b", "c").client_msg_id());
        assert_eq!(k("a", "b", "c").client_msg_id().len(), 36);
    }
}
