//! A batch of parked messages in one lane message (docs/interface.md §11): the worker parks an
//! app's backlog many messages at a time, so the broker writes one message to the lane's log
//! instead of each. Pure: the wire form and nothing else.
//!
//! The body is, for each member in turn: its properties as JSON, then its body, each preceded by
//! its length (4 bytes, big-endian). The lane message says it is a batch with the header
//! [`BATCH`] (the member count); any other message in a lane is a single one.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// The header that marks a batch, its value the number of members.
pub(crate) const BATCH: &str = "wxnotify-batch";

/// The most body bytes a batch gathers; a message larger than this is parked alone.
pub(crate) const MAX_BYTES: usize = 1024 * 1024;

/// One member: the message as the booking app (or a retry) published it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub properties: BasicProperties,
    pub data: Vec<u8>,
}

/// A batch that cannot be read (a bug, or a body altered by hand).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a parked batch cannot be read: {0}")]
pub(crate) struct BadBatch(String);

/// The lane message's body and properties for these members (at least one).
pub(crate) fn encode<'a>(
    members: impl ExactSizeIterator<Item = (&'a BasicProperties, &'a [u8])>,
) -> (Vec<u8>, BasicProperties) {
    let count = members.len();
    let mut body = Vec::new();
    for (props, data) in members {
        // Only properties that pass [`fits`] are batched: their JSON reads back the same.
        let json = serde_json::to_vec(props).unwrap_or_default();
        frame(&mut body, &json);
        frame(&mut body, data);
    }
    let mut headers = FieldTable::default();
    headers.insert(
        BATCH.into(),
        AMQPValue::LongUInt(u32::try_from(count).unwrap_or(u32::MAX)),
    );
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/vnd.wxnotify.batch".into())
        .with_headers(headers);
    (body, props)
}

/// Whether a message may join a batch: not larger than [`MAX_BYTES`], and no header JSON cannot
/// carry (a float that is not finite would come back as `null`, and the batch unreadable).
pub(crate) fn fits(props: &BasicProperties, data: &[u8]) -> bool {
    fn finite(v: &AMQPValue) -> bool {
        match v {
            AMQPValue::Float(f) => f.is_finite(),
            AMQPValue::Double(d) => d.is_finite(),
            AMQPValue::FieldArray(a) => a.as_slice().iter().all(finite),
            AMQPValue::FieldTable(t) => t.inner().values().all(finite),
            _ => true,
        }
    }
    data.len() <= MAX_BYTES && props.headers().as_ref().is_none_or(|h| h.inner().values().all(finite))
}

fn frame(body: &mut Vec<u8>, part: &[u8]) {
    body.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(part);
}

/// The member count of a lane message, if it is a batch.
pub(crate) fn count(props: &BasicProperties) -> Option<usize> {
    match props.headers().as_ref()?.inner().get(BATCH)? {
        AMQPValue::LongUInt(n) => Some(*n as usize),
        AMQPValue::LongLongInt(n) => usize::try_from(*n).ok(),
        AMQPValue::LongInt(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

/// The members of a batch's body; `expected` is the count its header gave.
pub(crate) fn decode(body: &[u8], expected: usize) -> Result<Vec<Member>, BadBatch> {
    if expected == 0 {
        return Err(BadBatch("no members".into()));
    }
    let mut rest = body;
    let mut members = Vec::with_capacity(expected.min(4096));
    while !rest.is_empty() {
        let json = take(&mut rest)?;
        let properties =
            serde_json::from_slice(json).map_err(|e| BadBatch(format!("member {}: {e}", members.len())))?;
        let data = take(&mut rest)?.to_vec();
        members.push(Member { properties, data });
    }
    if members.len() != expected {
        return Err(BadBatch(format!(
            "{} members, the header says {expected}",
            members.len()
        )));
    }
    Ok(members)
}

fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], BadBatch> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| BadBatch("cut short".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if tail.len() < len {
        return Err(BadBatch("cut short".into()));
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    fn member(i: u8) -> Member {
        let mut headers = FieldTable::default();
        headers.insert("x-wxnotify-attempt".into(), AMQPValue::LongLongInt(i64::from(i)));
        headers.insert("x-text".into(), AMQPValue::LongString("重试 \0 nul".into()));
        Member {
            properties: BasicProperties::default()
                .with_message_id(ShortString::from(format!("evt-{i}")))
                .with_timestamp(1_796_000_000 + u64::from(i))
                .with_headers(headers),
            data: vec![b'{', 0, 0xff, i, b'}'],
        }
    }

    #[test]
    fn members_come_back_as_they_went_in() {
        let members: Vec<Member> = (0..3).map(member).collect();
        let (body, props) = encode(members.iter().map(|m| (&m.properties, m.data.as_slice())));
        assert_eq!(count(&props), Some(3));
        assert_eq!(props.delivery_mode(), &Some(2), "persistent, like every parked message");
        assert_eq!(decode(&body, 3).unwrap(), members);
    }

    #[test]
    fn a_header_json_cannot_carry_or_a_large_body_keeps_a_message_out_of_batches() {
        let m = member(1);
        assert!(fits(&m.properties, &m.data));
        let mut headers = FieldTable::default();
        let mut inner = FieldTable::default();
        inner.insert("f".into(), AMQPValue::Double(f64::NAN));
        headers.insert("nested".into(), AMQPValue::FieldTable(inner));
        let nan = BasicProperties::default().with_headers(headers);
        assert!(!fits(&nan, b"{}"));
        let (body, _) = encode([(&nan, b"{}".as_slice())].into_iter());
        assert!(decode(&body, 1).is_err(), "what fits guards against");
        assert!(!fits(&m.properties, &vec![b' '; MAX_BYTES + 1]));
    }

    #[test]
    fn a_single_message_is_not_a_batch() {
        assert_eq!(count(&member(1).properties), None);
        assert_eq!(count(&BasicProperties::default()), None);
    }

    #[test]
    fn a_batch_cut_short_or_miscounted_is_refused() {
        let members: Vec<Member> = (0..2).map(member).collect();
        let (body, _) = encode(members.iter().map(|m| (&m.properties, m.data.as_slice())));
        assert!(decode(&body[..body.len() - 1], 2).is_err());
        assert!(decode(&body[..3], 2).is_err());
        assert_eq!(
            decode(&body, 3).unwrap_err(),
            BadBatch("2 members, the header says 3".into())
        );
        assert!(
            decode(b"\0\0\0\x02{x\0\0\0\0", 1).is_err(),
            "properties that are not JSON"
        );
        assert!(decode(b"", 0).is_err(), "a batch of nothing would never be acked");
    }
}
