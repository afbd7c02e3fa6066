//! Intake: a message body and its headers → a validated delivery, deliveries to hold in the
//! ledger, or an early dead letter. Pure: no I/O (the current time is given). Every limit of
//! docs/interface.md §1 is checked here (body size, UTF-8, JSON, fields, NUL characters, known app, a
//! template for the type), and each delivery is rendered once.
//!
//! An event makes one delivery per template of its type (docs/interface.md §8). The common case, one
//! template that sends at once, is a [`Delivery`] sent on this trip. Anything else (several
//! templates, a `send_at`, quiet hours, an expiry, a cancel key, or an event that cancels) is a
//! [`Hold`]: its deliveries are stored in the ledger with their due times and its cancellations
//! applied, in one transaction, and the due-delivery loop releases each delivery as its own
//! message (header `wxnotify-template`) when it falls due. The first of its templates that sends
//! at once with no timing rule (a booking confirmation beside its reminder, a cancellation's
//! notice) is not stored to wait: it goes on this trip once the rest is committed.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;

use crate::event::{BookingEvent, DeliveryKey};
use crate::fate::DeadReason;
use crate::ids::AppId;
use crate::queue::headers;
use crate::schedule::{Cancellation, QuietHours, Waiting};
use crate::template::{Catalog, Template};
use crate::wechat::{Api, OutgoingMessage};

/// What intake needs to know, fixed at start-up.
pub(crate) struct Rules {
    pub catalog: Arc<Catalog>,
    /// Events without `app_id` go to this app.
    pub default_app: AppId,
    pub apps: HashSet<AppId>,
    /// `WXNOTIFY_MAX_BODY_BYTES`: a larger body is not parsed.
    pub max_body: usize,
    /// Third-party platforms are configured: an app id that is none of `apps` may be a merchant's
    /// (the token step decides, from `authorizers`: docs/interface.md §10).
    pub merchants: bool,
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
    /// `wxnotify-template`: this copy is the delivery of this template only.
    pub template_id: Option<String>,
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
            template_id: headers::text(props, headers::TEMPLATE).filter(|id| !id.is_empty() && !id.contains('\0')),
        }
    }
}

/// One delivery of an event: what to claim and what to send.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub event: BookingEvent,
    pub app_id: AppId,
    pub key: DeliveryKey,
    pub client_msg_id: String,
    pub api: Api,
    /// The rendered message, or why it did not render (decided after the claim, so that the
    /// delivery's row ends `dead` too).
    pub message: Result<OutgoingMessage, String>,
    /// Never send after this instant (`not_after`): the delivery ends `expired`.
    pub not_after: Option<DateTime<Utc>>,
    pub quiet_hours: Option<QuietHours>,
    /// Sent only with a consent credit (docs/interface.md §12).
    pub consent_tracked: bool,
    /// A library template: sent with the merchant's own id of it (docs/interface.md §10).
    pub library: Option<std::sync::Arc<crate::template::library::Library>>,
}

/// An event whose deliveries wait in the ledger, and the cancellations it makes.
#[derive(Debug)]
pub(crate) struct Hold {
    pub event_id: String,
    pub waiting: Vec<Waiting>,
    pub cancellations: Vec<Cancellation>,
    /// The delivery that goes at once, on this trip, after the rest is stored.
    pub now: Option<Box<Delivery>>,
}

#[derive(Debug)]
pub(crate) enum Intake {
    Deliver(Box<Delivery>),
    Hold(Box<Hold>),
    Reject {
        reason: DeadReason,
        error: String,
        /// For logs and the `wxnotify-event-id` header, when it could be read.
        event_id: Option<String>,
    },
}

pub(crate) fn intake(body: &[u8], meta: &Meta, rules: &Rules, now: DateTime<Utc>) -> Intake {
    let (event, app_id) = match accept(body, rules) {
        Ok(accepted) => accepted,
        Err(rejected) => return rejected,
    };
    let catalog = &rules.catalog;
    // A copy of one delivery (released when due, a retry, a dead letter replayed).
    if let Some(template_id) = &meta.template_id {
        let Some(template) = catalog.find_one(&app_id, event.event_type(), template_id) else {
            let error = format!(
                "no template {template_id} for event type {:?} of app {app_id} (any more)",
                event.event_type()
            );
            return reject(DeadReason::NoTemplate, error, &event);
        };
        return Intake::Deliver(Box::new(delivery(catalog, template, event, app_id)));
    }
    let templates = catalog.find(&app_id, event.event_type());
    let cancelling = catalog.cancelled_by(&app_id, event.event_type());
    match (templates.as_slice(), cancelling.is_empty()) {
        ([], true) => {
            let error = format!("no template for event type {:?} of app {app_id}", event.event_type());
            reject(DeadReason::NoTemplate, error, &event)
        }
        ([one], true) if !one.is_held() => Intake::Deliver(Box::new(delivery(catalog, one, event, app_id))),
        _ => {
            let cancellations = match cancellations(catalog, &cancelling, &event, &app_id) {
                Ok(c) => c,
                Err(error) => return reject(DeadReason::RenderFailed, error, &event),
            };
            // The body was parsed as UTF-8 JSON by `accept`.
            let payload = String::from_utf8_lossy(body).into_owned();
            let at_once = templates.iter().position(|t| !t.is_held());
            let waiting = (templates.iter().enumerate())
                .filter(|(i, _)| Some(*i) != at_once)
                .map(|(_, t)| waiting(catalog, t, &event, &app_id, &payload, now))
                .collect();
            let event_id = event.event_id().to_string();
            let now = at_once.map(|i| Box::new(delivery(catalog, templates[i], event, app_id)));
            Intake::Hold(Box::new(Hold {
                event_id,
                waiting,
                cancellations,
                now,
            }))
        }
    }
}

/// The body's limits (size, then everything `BookingEvent::parse` checks) and a known app: the
/// event and its app id, or the message's rejection.
fn accept(body: &[u8], rules: &Rules) -> Result<(BookingEvent, AppId), Intake> {
    if body.len() > rules.max_body {
        return Err(Intake::Reject {
            reason: DeadReason::InvalidEvent,
            error: format!(
                "body is {} bytes, over WXNOTIFY_MAX_BODY_BYTES ({}); not parsed",
                body.len(),
                rules.max_body
            ),
            event_id: None,
        });
    }
    let event = BookingEvent::parse(body).map_err(|e| Intake::Reject {
        reason: DeadReason::InvalidEvent,
        error: e.to_string(),
        event_id: BookingEvent::sniff_event_id(body),
    })?;
    let app_id = event.app_id().unwrap_or(&rules.default_app).clone();
    if !rules.apps.contains(&app_id) && !rules.merchants {
        let error = format!("unknown app_id {app_id:?} (neither WECHAT_APP_ID nor in [[apps]])");
        return Err(reject(DeadReason::InvalidEvent, error, &event));
    }
    Ok((event, app_id))
}

fn reject(reason: DeadReason, error: String, event: &BookingEvent) -> Intake {
    Intake::Reject {
        reason,
        error,
        event_id: Some(event.event_id().to_string()),
    }
}

/// What this event cancels: one cancellation per (template id, cancel key), or the error of a
/// template whose cancel key does not render.
fn cancellations(
    catalog: &Catalog,
    cancelling: &[&Template],
    event: &BookingEvent,
    app_id: &AppId,
) -> Result<Vec<Cancellation>, String> {
    let mut cancellations: Vec<Cancellation> = Vec::with_capacity(cancelling.len());
    for t in cancelling {
        let cancel_key = match catalog.cancel_key(t, event) {
            Ok(Some(key)) => key,
            Ok(None) => continue,
            Err(e) => return Err(format!("template {}: cancelling by this event: {e}", t.label)),
        };
        // Two templates of one template id (from different event types) cancel the same deliveries.
        if cancellations
            .iter()
            .any(|c| c.template_id == t.template_id && c.cancel_key == cancel_key)
        {
            continue;
        }
        cancellations.push(Cancellation {
            app_id: app_id.clone(),
            template_id: t.template_id.clone(),
            cancel_key,
            event_id: event.event_id().to_string(),
            event_type: event.event_type().to_string(),
            occurred_at: event.occurred().with_timezone(&Utc),
        });
    }
    Ok(cancellations)
}

fn key_of(template: &Template, event: &BookingEvent) -> DeliveryKey {
    DeliveryKey {
        event_id: event.event_id().to_string(),
        template_id: template.template_id.clone(),
        openid: event.openid().clone(),
    }
}

/// One template's delivery, to send on this trip.
fn delivery(catalog: &Catalog, template: &Template, event: BookingEvent, app_id: AppId) -> Delivery {
    let key = key_of(template, &event);
    let client_msg_id = key.client_msg_id();
    let fail = |e: crate::template::RenderError| format!("template {}: {e}", template.label);
    let timing = catalog.timing(template, &event).map_err(fail);
    let message = catalog
        .render(template, &event, client_msg_id.clone())
        .map_err(fail)
        .and_then(|m| timing.as_ref().map(|_| m).map_err(Clone::clone));
    Delivery {
        key,
        client_msg_id,
        api: template.api,
        message,
        not_after: timing.ok().and_then(|t| t.not_after),
        quiet_hours: template.quiet_hours,
        consent_tracked: catalog.tracks_consent(template, &app_id),
        library: template.library.clone(),
        app_id,
        event,
    }
}

/// One template's delivery, to wait in the ledger until due. One that cannot render (message or
/// timing) is due at once: released, it fails as its own delivery (`render_failed`).
fn waiting(
    catalog: &Catalog,
    template: &Template,
    event: &BookingEvent,
    app_id: &AppId,
    payload: &str,
    now: DateTime<Utc>,
) -> Waiting {
    let key = key_of(template, event);
    let client_msg_id = key.client_msg_id();
    let rendered = catalog
        .render(template, event, client_msg_id.clone())
        .and_then(|_| catalog.timing(template, event));
    let timing = rendered.unwrap_or_default();
    let due = timing.send_at.unwrap_or(now).max(now);
    let due_at = template.quiet_hours.map_or(due, |q| q.release(due));
    Waiting {
        key,
        event_type: event.event_type().to_string(),
        app_id: app_id.clone(),
        occurred_at: event.occurred().with_timezone(&Utc),
        client_msg_id,
        due_at,
        not_after: timing.not_after,
        cancel_key: timing.cancel_key,
        payload: payload.to_string(),
    }
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
            apps: HashSet::from([AppId::from("wx1")]),
            max_body: 4096,
            merchants: false,
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

    fn now() -> DateTime<Utc> {
        "2026-11-22T01:00:00Z".parse().unwrap()
    }

    fn held(i: Intake) -> Hold {
        match i {
            Intake::Hold(h) => *h,
            i => panic!("{i:?}"),
        }
    }

    fn rejected(i: Intake) -> (DeadReason, String) {
        match i {
            Intake::Reject { reason, error, .. } => (reason, error),
            i => panic!("not rejected: {i:?}"),
        }
    }

    #[test]
    fn a_good_event_becomes_one_rendered_delivery() {
        match intake(&body("o1", "booking.created"), &Meta::default(), &rules(), now()) {
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
        let (reason, error) = rejected(intake(
            &body("o\u{0}1", "booking.confirmed"),
            &Meta::default(),
            &rules(),
            now(),
        ));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("U+0000"), "{error}");
        let mut v: serde_json::Value = serde_json::from_slice(&body("o1", "booking.confirmed")).unwrap();
        v["data"]["store"] = "徐汇\u{0}店".into();
        let (reason, error) = rejected(intake(v.to_string().as_bytes(), &Meta::default(), &rules(), now()));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("data.store"), "{error}");
    }

    #[test]
    fn an_oversized_body_is_invalid_without_parsing() {
        let mut b = body("o1", "booking.confirmed");
        b.extend(std::iter::repeat_n(b' ', 5000));
        let (reason, error) = rejected(intake(&b, &Meta::default(), &rules(), now()));
        assert_eq!(reason, DeadReason::InvalidEvent);
        assert!(error.contains("WXNOTIFY_MAX_BODY_BYTES"), "{error}");
        // Not even garbage is looked at.
        let (_, error) = rejected(intake(&vec![0xff; 5000], &Meta::default(), &rules(), now()));
        assert!(error.contains("WXNOTIFY_MAX_BODY_BYTES"), "{error}");
    }

    #[test]
    fn unknown_app_and_type() {
        let mut v: serde_json::Value = serde_json::from_slice(&body("o1", "booking.confirmed")).unwrap();
        v["app_id"] = "wx9".into();
        assert_eq!(
            rejected(intake(v.to_string().as_bytes(), &Meta::default(), &rules(), now())).0,
            DeadReason::InvalidEvent
        );
        assert_eq!(
            rejected(intake(&body("o1", "booking.nope"), &Meta::default(), &rules(), now())).0,
            DeadReason::NoTemplate
        );
    }

    #[test]
    fn each_template_of_the_type_is_its_own_delivery_the_plain_one_goes_at_once() {
        let h = held(intake(
            &body("o1", "booking.confirmed"),
            &Meta::default(),
            &rules(),
            now(),
        ));
        assert!(h.cancellations.is_empty());
        // The confirmation has no timing rule: it goes on this trip, after the reminder is stored.
        let confirmation = h.now.as_ref().expect("a delivery at once");
        assert_eq!(confirmation.key.template_id, "TPL_BOOKING_CONFIRMED");
        assert!(confirmation.message.is_ok());
        let ids: Vec<&str> = h.waiting.iter().map(|w| w.key.template_id.as_str()).collect();
        assert_eq!(ids, ["TPL_BOOKING_REMINDER"]);
        // The reminder: an hour before the 14:00 (+08:00) slot.
        let r = &h.waiting[0];
        assert_eq!(r.due_at.to_rfc3339(), "2026-11-22T05:00:00+00:00");
        assert_eq!(r.not_after.unwrap().to_rfc3339(), "2026-11-22T06:00:00+00:00");
        assert_eq!(r.cancel_key.as_deref(), Some("B-1"));
        assert!(r.payload.contains("\"booking.confirmed\""));
        assert_ne!(confirmation.client_msg_id, r.client_msg_id);
    }

    #[test]
    fn a_copy_for_one_template_is_that_delivery_only() {
        let meta = Meta {
            template_id: Some("TPL_BOOKING_REMINDER".into()),
            ..Meta::default()
        };
        match intake(&body("o1", "booking.confirmed"), &meta, &rules(), now()) {
            Intake::Deliver(d) => {
                assert_eq!(d.key.template_id, "TPL_BOOKING_REMINDER");
                assert_eq!(d.not_after.unwrap().to_rfc3339(), "2026-11-22T06:00:00+00:00");
                assert!(d.message.is_ok());
            }
            i => panic!("{i:?}"),
        }
        let gone = Meta {
            template_id: Some("TPL_GONE".into()),
            ..Meta::default()
        };
        let (reason, error) = rejected(intake(&body("o1", "booking.confirmed"), &gone, &rules(), now()));
        assert_eq!(reason, DeadReason::NoTemplate);
        assert!(error.contains("TPL_GONE"), "{error}");
    }

    #[test]
    fn cancelling_events_carry_their_cancellations() {
        let h = held(intake(
            &body("o1", "booking.cancelled"),
            &Meta::default(),
            &rules(),
            now(),
        ));
        assert_eq!(h.cancellations.len(), 1);
        let c = &h.cancellations[0];
        assert_eq!(
            (c.template_id.as_str(), c.cancel_key.as_str()),
            ("TPL_BOOKING_REMINDER", "B-1")
        );
        assert_eq!(c.event_id, "e1");
        assert!(h.waiting.is_empty());
        let notice = h.now.as_ref().expect("its own notice still goes, at once");
        assert_eq!(notice.key.template_id, "TPL_BOOKING_CANCELLED");
        // A move cancels the old reminder and schedules its own.
        let h = held(intake(
            &body("o1", "booking.rescheduled"),
            &Meta::default(),
            &rules(),
            now(),
        ));
        assert_eq!(h.cancellations.len(), 1);
        assert_eq!(h.waiting.len(), 1, "the new reminder waits");
        assert!(h.now.is_some(), "the notice of the move goes at once");
        // No booking id: the cancellation cannot be made, the event is dead-lettered.
        let mut v: serde_json::Value = serde_json::from_slice(&body("o1", "booking.cancelled")).unwrap();
        v["data"].as_object_mut().unwrap().remove("booking_id");
        let (reason, error) = rejected(intake(v.to_string().as_bytes(), &Meta::default(), &rules(), now()));
        assert_eq!(reason, DeadReason::RenderFailed);
        assert!(error.contains("cancel"), "{error}");
    }
}
