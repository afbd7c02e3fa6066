//! Our message headers (docs/interface.md §2). No `x-` prefix: RabbitMQ reserves those. Retry counts travel
//! here, never in `x-death`, which newer brokers do not honour when a client republishes.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub const REASON: &str = "wxnotify-reason";
pub const ERRCODE: &str = "wxnotify-errcode";
pub const ERROR: &str = "wxnotify-error";
pub const ATTEMPTS: &str = "wxnotify-attempts";
pub const EVENT_ID: &str = "wxnotify-event-id";
/// When the message was dead-lettered (RFC 3339), for `dlq list`'s age.
pub const DEAD_AT: &str = "wxnotify-dead-at";
/// How often this message was requeued because its token was rejected.
pub const TOKEN_REQUEUES: &str = "wxnotify-token-requeues";
/// Set by `dlq replay`: the run that made this copy (it may reopen a `dead` delivery if that run
/// is recorded in `dlq_replays`).
pub const REPLAY: &str = "wxnotify-replay";
/// One delivery of its event: the template it is for. Set on every copy wxnotify publishes of a
/// delivery (a due delivery released from the ledger, a retry, a dead letter), so that the copy
/// makes that delivery only, not every delivery of its event.
pub const TEMPLATE: &str = "wxnotify-template";
/// Set by quorum queues on a redelivery: how often the message was handed out before.
pub const DELIVERY_COUNT: &str = "x-delivery-count";

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(name)
}

/// A header as text, whatever AMQP type it came in.
pub fn text(props: &BasicProperties, name: &str) -> Option<String> {
    match header(props, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => int_of(other).map(|i| i.to_string()),
    }
}

fn int_of(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

pub fn int(props: &BasicProperties, name: &str) -> Option<i64> {
    header(props, name).and_then(int_of)
}

/// Counted failed attempts so far (0 for a new message or a replayed one).
pub fn attempts(props: &BasicProperties) -> u32 {
    int(props, ATTEMPTS).and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// Properties for republishing a consumed message: persistent, same content type and id, the
/// producer's own headers kept, the broker's `x-` headers and our previous verdict dropped.
pub fn republish(original: &BasicProperties) -> (BasicProperties, FieldTable) {
    let mut headers = FieldTable::default();
    if let Some(h) = original.headers() {
        for (k, v) in h.inner() {
            let k_str = k.as_str();
            if k_str.starts_with("x-") || [REASON, ERRCODE, ERROR, DEAD_AT, REPLAY].contains(&k_str) {
                continue;
            }
            headers.insert(k.clone(), v.clone());
        }
    }
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(ct) = original.content_type() {
        props = props.with_content_type(ct.clone());
    }
    if let Some(id) = original.message_id() {
        props = props.with_message_id(id.clone());
    }
    if let Some(ts) = original.timestamp() {
        props = props.with_timestamp(*ts);
    }
    (props, headers)
}

pub fn set_text(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

pub fn set_int(headers: &mut FieldTable, name: &str, value: i64) {
    headers.insert(ShortString::from(name), AMQPValue::LongLongInt(value));
}
