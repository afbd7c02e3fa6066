//! Intake: a message body and its headers → a validated delivery, or an early dead letter.
//! Pure: no I/O. Every limit of CONTRACT §1 is checked here (body size, UTF-8, JSON, fields,
//! NUL characters, known app, a template for the type), and the message is rendered once.

use std::collections::HashSet;
use std::sync::Arc;

use lapin::BasicProperties;

use crate::event::{BookingEvent, DeliveryKey};
use crate::outcome::DeadReason;
use crate::queue::headers;
use crate::template::Catalog;
use crate::wechat::{Api, OutgoingMessage};

/// What intake needs to know, fixed at start-up.
pub(crate) struct Rules {
    pub catalog: Arc<Catalog>,
    /// Events without `app_id` go to this app.
    pub default_app: String,
    pub apps: HashSet<String>,
    /// `WXNOTIFY_MAX_BODY_BYTES`: a larger body is not parsed.
    pub max_body: usize,
}

/// What the message's headers say about its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Counted failed attempts so far (`wxnotify-attempts`).
    pub failed_before: u32,
    /// Times it went straight back for a rejected token (`wxnotify-token-requeues`).
    pub token_requeues: u32,
    /// Times the broker handed it out before without it being settled (`x-delivery-count`).
    pub redeliveries: u32,
    /// `wxnotify-replay`: the `dlq replay` run that says it made this copy (checked in the ledger).
    pub replay_id: Option<String>,
}

impl Meta {
    pub(crate) fn read(props: &BasicProperties) -> Self {
        let count = |name| {
            headers::int(props, name)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        Self {
            failed_before: count(headers::ATTEMPTS),
            token_requeues: count(headers::TOKEN_REQUEUES),
            redeliveries: count(headers::DELIVERY_COUNT),
            replay_id: headers::text(props, headers::REPLAY).filter(|id| !id.is_empty() && !id.contains('\0')),
        }
    }
}

/// One delivery of an event: what to claim and what to send.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub event: BookingEvent,
    pub app_id: String,
    pub key: DeliveryKey,
    pub client_msg_id: String,
    pub api: Api,
    /// The rendered message, or why it did not render (decided after the claim, so that the
    /// delivery's row ends `dead` too).
    pub message: Result<OutgoingMessage, String>,
}

#[derive(Debug)]
pub(crate) enum Intake {
    Deliver(Box<Delivery>),
    Reject {
        reason: DeadReason,
        error: String,
        /// For logs and the `wxnotify-event-id` header, when it could be read.
        event_id: Option<String>,
    },
}

pub(crate) fn intake(body: &[u8], rules: &Rules) -> Intake {
    if body.len() > rules.max_body {
        return Intake::Reject {
            reason: DeadReason::InvalidEvent,
            error: format!(
                "body is {} bytes, over WXNOTIFY_MAX_BODY_BYTES ({}); not parsed",
                body.len(),
                rules.max_body
            ),
            event_id: None,
        };
    }
    let event = match BookingEvent::parse(body) {
        Ok(e) => e,
        Err(e) => {
            return Intake::Reject {
                reason: DeadReason::InvalidEvent,
                error: e.to_string(),
                event_id: BookingEvent::sniff_event_id(body),
            };
        }
    };
    let reject = |reason, error: String, event: &BookingEvent| Intake::Reject {
        reason,
        error,
        event_id: Some(event.event_id.clone()),
    };
    let app_id = event.app_id.clone().unwrap_or_else(|| rules.default_app.clone());
    if !rules.apps.contains(&app_id) {
        let error = format!("unknown app_id {app_id:?} (neither WECHAT_APP_ID nor in [[apps]])");
        return reject(DeadReason::InvalidEvent, error, &event);
    }
    let Some(template) = rules.catalog.find(&app_id, &event.event_type) else {
        let error = format!("no template for event type {:?} of app {app_id}", event.event_type);
        return reject(DeadReason::NoTemplate, error, &event);
    };
    let key = DeliveryKey {
        event_id: event.event_id.clone(),
        template_id: template.template_id.clone(),
        openid: event.openid.clone(),
    };
    let client_msg_id = key.client_msg_id();
    let message = rules
        .catalog
        .render(template, &event, client_msg_id.clone())
        .map_err(|e| format!("template {}: {e}", template.label));
    Intake::Deliver(Box::new(Delivery {
        app_id,
        key,
        client_msg_id,
        api: template.api,
        message,
        event,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let catalog = Catalog::load(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates.toml"))
            .expect("shipped templates");
        Rules {
            catalog: Arc::new(catalog),
            default_app: "wx1".into(),
            apps: HashSet::from(["wx1".to_string()]),
            max_body: 4096,
        }
    }

    fn body(openid: &str, event_type: &str) -> Vec<u8> {
        serde_json::json!({
            "event_id": "e1", "event_type": event_type, "occurred_at": "2026-11-21T09:30:00+08:00",
            "openid": openid,
            "data": {"booking_id": "B-1", "service": "精洗", "store": "徐汇店",
                     "slot_start": "2026-11-22T14:00:00+08:00", "plate": "沪A12345", "price_cents": 3980}
        })
        .to_string()
        .into_bytes()
    }

    fn rejected(i: Intake) -> (DeadReason, String) {
        match i {
            Intake::Reject { reason, error, .. } => (reason, error),
            Intake::Deliver(d) => panic!("delivered {:?}", d.key),
        }
    }

    #[test]
    fn a_good_event_becomes_one_rendered_delivery() {
        match intake(&body("o1", "booking.confirmed"), &rules()) {
            Intake::Deliver(d) => {
                assert_eq!(d.app_id, "wx1");
                assert_eq!(d.key.openid, "o1");
                assert_eq!(d.client_msg_id, d.key.client_msg_id());
                assert!(d.message.is_ok());
            }
            i => panic!("{i:?}"),
        }
    }

    #[test]
    fn nul_in_any_text_is_invalid() {
        let (reason, error) = rejected(intake(&body("o\u{0}1", "booking.confirmed"), &rules()));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("U+0000"), "{error}");
        let mut v: serde_json::Value = serde_json::from_slice(&body("o1", "booking.confirmed")).unwrap();
        v["data"]["store"] = "徐汇\u{0}店".into();
        let (reason, error) = rejected(intake(v.to_string().as_bytes(), &rules()));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("data.store"), "{error}");
    }

    #[test]
    fn an_oversized_body_is_invalid_without_parsing() {
        let mut b = body("o1", "booking.confirmed");
        b.extend(std::iter::repeat_n(b' ', 5000));
        let (reason, error) = rejected(intake(&b, &rules()));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("WXNOTIFY_MAX_BODY_BYTES"), "{error}");
        // Not even garbage is looked at.
        let (_, error) = rejected(intake(&vec![0xff; 5000], &rules()));
        assert!(error.contains("WXNOTIFY_MAX_BODY_BYTES"), "{error}");
    }

    #[test]
    fn unknown_app_and_type() {
        let mut v: serde_json::Value = serde_json::from_slice(&body("o1", "booking.confirmed")).unwrap();
        v["app_id"] = "wx9".into();
        assert_eq!(
            rejected(intake(v.to_string().as_bytes(), &rules())).0,
            DeadReason::InvalidEvent
        );
        assert_eq!(
            rejected(intake(&body("o1", "booking.nope"), &rules())).0,
            DeadReason::NoTemplate
        );
    }
}
