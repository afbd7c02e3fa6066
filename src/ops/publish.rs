//! `wxnotify publish [FILE]`: events, one JSON object a line, published to the exchange with
//! routing key = `event_type`, persistent, each confirmed by the broker.
//!
//! Every line is checked first; if any is not a valid event, nothing is published and each bad
//! line is reported with its number (`--raw` publishes lines as they are, to exercise the DLQ).

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::types::FieldTable;

use crate::event::BookingEvent;
use crate::ops::progress::Progress;
use crate::queue::{self, Publisher, Topology};
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum PublishCmdError {
    #[error("{count} invalid line(s), nothing published:\n{details}")]
    Invalid { count: usize, details: String },
    #[error("broker: {0}")]
    Broker(String),
}

/// One line to publish and where it goes.
struct Outgoing {
    line_no: usize,
    body: Vec<u8>,
    routing_key: String,
    event_id: Option<String>,
}

/// Checks the lines; returns those to publish.
fn prepare(input: &[u8], raw: bool) -> Result<Vec<Outgoing>, PublishCmdError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in input.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_no = i + 1;
        match BookingEvent::parse(line) {
            Ok(e) => out.push(Outgoing {
                line_no,
                body: line.to_vec(),
                routing_key: e.event_type().to_string(),
                event_id: Some(e.event_id().to_string()),
            }),
            Err(_) if raw => {
                let routing_key = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("event_type").and_then(|t| t.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "invalid".into());
                out.push(Outgoing {
                    line_no,
                    body: line.to_vec(),
                    routing_key,
                    event_id: BookingEvent::sniff_event_id(line),
                })
            }
            Err(e) => errors.push(format!("  line {line_no}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PublishCmdError::Invalid {
            count: errors.len(),
            details: errors.join("\n"),
        })
    }
}

/// Publishes; returns how many the broker confirmed. `progress` counts the events the broker
/// answered, out of the valid lines.
pub async fn publish(
    amqp_url: &SecretString,
    topology: &Topology,
    delivery_limit: u32,
    input: &[u8],
    raw: bool,
    progress: &Progress,
) -> Result<usize, PublishCmdError> {
    let lines = prepare(input, raw)?;
    progress.set_total(lines.len() as u64);
    let broker = |e: &dyn std::fmt::Display| PublishCmdError::Broker(e.to_string());
    let conn = queue::connect(amqp_url, "wxnotify-publish")
        .await
        .map_err(|e| broker(&e))?;
    let publisher = Publisher::open(&conn).await.map_err(|e| broker(&e))?;
    topology
        .declare_core(publisher.channel(), delivery_limit)
        .await
        .map_err(|e| broker(&e))?;
    let results: Vec<Result<(), String>> = futures_util::stream::iter(lines.iter())
        .map(|o| {
            let publisher = publisher.clone();
            async move {
                let mut props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_headers(FieldTable::default());
                if let Some(id) = &o.event_id {
                    props = props.with_message_id(crate::event::truncate(id, 128).into());
                }
                publisher
                    .publish(&topology.exchange, &o.routing_key, &o.body, props)
                    .await
                    .map_err(|e| format!("line {}: {e}", o.line_no))
            }
        })
        .buffered(256)
        .inspect(|_| progress.advance())
        .collect()
        .await;
    let _ = conn.close(200, "done".into()).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(lines.len())
    } else {
        Err(PublishCmdError::Broker(format!(
            "{} of {} not confirmed (the others were):\n  {}",
            failed.len(),
            lines.len(),
            failed.join("\n  ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_reported_with_numbers() {
        let good = r#"{"event_id":"e1","event_type":"booking.created","occurred_at":"2026-11-21T09:30:00+08:00","openid":"o","data":{}}"#;
        let input = format!("{good}\n\nnot json\n{good}\n");
        match prepare(input.as_bytes(), false) {
            Err(PublishCmdError::Invalid { count: 1, details }) => assert!(details.contains("line 3"), "{details}"),
            _ => panic!("expected one invalid line"),
        }
        assert_eq!(prepare(input.as_bytes(), true).unwrap().len(), 3);
        assert_eq!(
            prepare(good.as_bytes(), false).unwrap()[0].routing_key,
            "booking.created"
        );
    }
}
