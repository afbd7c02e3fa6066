//! The chaos test's traffic: valid events with unique recipients, ~10% duplicate publishes, a few
//! recipients who unsubscribed (a permanent WeChat error), and malformed messages of every kind.
//! Every `booking.confirmed` also schedules a reminder (the shipped templates.toml) falling due
//! while the faults happen; a quarter of those bookings are cancelled by a `booking.cancelled`
//! published before or after them, and their reminders, due after the publishing ends, must never
//! arrive.
//! And a publisher that rides out a broker restart the way a booking app would: reconnect, publish
//! again (so a message whose confirm was lost may go twice — just another duplicate).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use lapin::{BasicProperties, Connection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use wxnotify::queue::{self, Publisher};

use crate::common::event;

const TYPES: [&str; 5] = [
    "booking.created",
    "booking.confirmed",
    "booking.cancelled",
    "booking.reminder",
    "booking.completed",
];

/// What a published message should come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// One message at WeChat for this openid, ever.
    Delivered(String),
    /// WeChat answers 43004 (unsubscribed): the DLQ with `permanent_error`, no message.
    Permanent(String),
    /// The DLQ with this `wxnotify-reason`.
    Malformed(&'static str),
}

pub(crate) struct Msg {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub expect: Expect,
}

pub(crate) struct Load {
    pub msgs: Vec<Msg>,
    /// Recipients whose reminder must arrive once, and those whose booking was cancelled.
    pub reminders: BTreeSet<String>,
    pub cancelled_reminders: BTreeSet<String>,
    pub delivered: BTreeSet<String>,
    pub unsubscribed: BTreeSet<String>,
    pub events: usize,
    pub duplicates: usize,
    pub malformed: usize,
    /// Malformed messages that still make a (dead) ledger row: their event parsed.
    pub malformed_with_row: usize,
}

/// The reminder of the shipped templates: an hour before `slot_start`.
pub(crate) const REMINDER: &str = "TPL_BOOKING_REMINDER";

fn beijing(t: DateTime<Utc>) -> String {
    t.with_timezone(&FixedOffset::east_opt(8 * 3600).expect("UTC+8"))
        .to_rfc3339()
}

/// `events` distinct events (1% of them to unsubscribed users), 10% duplicate publishes, and
/// `events / 100` malformed messages, shuffled by `seed` (the duplicates land after their original).
/// Reminders fall due between 5 and 45 s after `t0`; cancelled ones `cancelled_due` after it.
pub(crate) fn build(events: usize, seed: u64, t0: DateTime<Utc>, cancelled_due: Duration) -> Load {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut load = Load {
        msgs: Vec::new(),
        reminders: BTreeSet::new(),
        cancelled_reminders: BTreeSet::new(),
        delivered: BTreeSet::new(),
        unsubscribed: BTreeSet::new(),
        events,
        duplicates: events / 10,
        malformed: (events / 100).max(5),
        malformed_with_row: 0,
    };
    let cancels = load.add_events(&mut rng, t0, cancelled_due);
    // Cancellations anywhere: before their booking as often as after it.
    for c in cancels {
        let at = rng.random_range(0..=load.msgs.len());
        load.msgs.insert(at, c);
    }
    load.add_malformed(&mut rng);
    load.add_duplicates(&mut rng);
    load
}

/// Booking `i`'s app: the default app, B or C in turn (C is rate-limited, see `chaos_worker_env`).
fn set_app(ev: &mut serde_json::Value, i: usize) {
    if !i.is_multiple_of(3) {
        ev["app_id"] = crate::common::OTHER_APPS[i % 3 - 1].0.into();
    }
}

impl Load {
    /// The `events` distinct events, in order; returns the cancellations of the bookings whose
    /// reminders must never arrive, for the caller to scatter.
    fn add_events(&mut self, rng: &mut StdRng, t0: DateTime<Utc>, cancelled_due: Duration) -> Vec<Msg> {
        let mut cancels = Vec::new();
        for i in 0..self.events {
            let event_type = TYPES[i % TYPES.len()];
            let openid = format!("o-chaos-{i:05}");
            let mut ev = event(&format!("evt-chaos-{i:05}"), event_type, &openid);
            ev["data"]["booking_id"] = format!("B-{i:05}").into();
            set_app(&mut ev, i);
            if event_type == "booking.confirmed" && i % 100 != 37 {
                cancels.extend(self.schedule_reminder(rng, i, &mut ev, t0, cancelled_due));
            }
            let expect = if i % 100 == 37 {
                self.unsubscribed.insert(openid.clone());
                Expect::Permanent(openid)
            } else {
                self.delivered.insert(openid.clone());
                Expect::Delivered(openid)
            };
            self.msgs.push(Msg {
                routing_key: event_type.into(),
                body: ev.to_string().into_bytes(),
                expect,
            });
        }
        cancels
    }

    /// Sets booking `i`'s `slot_start` so its reminder falls due during the faults, or, for a
    /// quarter of them, after the publishing ends; those are cancelled: returns the cancellation.
    fn schedule_reminder(
        &mut self,
        rng: &mut StdRng,
        i: usize,
        ev: &mut serde_json::Value,
        t0: DateTime<Utc>,
        cancelled_due: Duration,
    ) -> Option<Msg> {
        let openid = format!("o-chaos-{i:05}");
        let cancelled = rng.random_bool(0.25);
        let due_in = if cancelled {
            cancelled_due
        } else {
            Duration::from_millis(rng.random_range(5_000..45_000))
        };
        let slot = t0 + chrono::TimeDelta::from_std(due_in).expect("small") + chrono::TimeDelta::minutes(60);
        ev["data"]["slot_start"] = beijing(slot).into();
        if !cancelled {
            self.reminders.insert(openid);
            return None;
        }
        self.cancelled_reminders.insert(openid);
        let notice = format!("o-chaos-cx-{i:05}");
        let mut cancel = event(&format!("evt-chaos-cx-{i:05}"), "booking.cancelled", &notice);
        cancel["data"]["booking_id"] = format!("B-{i:05}").into();
        set_app(&mut cancel, i);
        cancel["occurred_at"] = "2026-11-21T09:45:00+08:00".into();
        self.delivered.insert(notice.clone());
        Some(Msg {
            routing_key: "booking.cancelled".into(),
            body: cancel.to_string().into_bytes(),
            expect: Expect::Delivered(notice),
        })
    }

    /// `self.malformed` malformed messages of every kind, each at a random place.
    fn add_malformed(&mut self, rng: &mut StdRng) {
        for m in 0..self.malformed {
            let (body, reason) = malformed(m);
            if reason == "render_failed" {
                // Its event parsed: it still makes a (dead) ledger row.
                self.malformed_with_row += 1;
            }
            let at = rng.random_range(0..=self.msgs.len());
            self.msgs.insert(
                at,
                Msg {
                    routing_key: "booking.created".into(),
                    body,
                    expect: Expect::Malformed(reason),
                },
            );
        }
    }

    /// Duplicates: a copy of a random earlier message, right behind it or much later.
    fn add_duplicates(&mut self, rng: &mut StdRng) {
        let msgs = &mut self.msgs;
        for _ in 0..self.duplicates {
            let original = loop {
                let i = rng.random_range(0..msgs.len());
                if !matches!(msgs[i].expect, Expect::Malformed(_)) {
                    break i;
                }
            };
            let at = if rng.random_bool(0.5) {
                original + 1
            } else {
                rng.random_range(original + 1..=msgs.len())
            };
            let copy = Msg {
                routing_key: msgs[original].routing_key.clone(),
                body: msgs[original].body.clone(),
                expect: msgs[original].expect.clone(),
            };
            msgs.insert(at, copy);
        }
    }
}

/// Malformed message `m` (its kind is `m % 8`) and the `wxnotify-reason` it must be dead-lettered
/// with.
fn malformed(m: usize) -> (Vec<u8>, &'static str) {
    match m % 8 {
        0 => (
            format!("{{\"event_id\": \"bad-{m}\", truncated").into_bytes(),
            "invalid_event",
        ),
        1 => {
            let mut b = vec![0xff, 0xfe];
            b.extend(format!("bad-{m}").bytes());
            (b, "invalid_event")
        }
        2 => {
            let mut ev = event(&format!("bad-{m}"), "booking.created", "o-x");
            ev.as_object_mut().unwrap().remove("openid");
            (ev.to_string().into_bytes(), "invalid_event")
        }
        3 => (
            event(&format!("bad-{m}"), "booking.teleported", &format!("o-bad-{m}"))
                .to_string()
                .into_bytes(),
            "no_template",
        ),
        // Poison values: a NUL in a field, a body over WXNOTIFY_MAX_BODY_BYTES.
        5 => (
            event(&format!("bad-{m}"), "booking.confirmed", &format!("o-bad-\u{0}{m}"))
                .to_string()
                .into_bytes(),
            "invalid_event",
        ),
        6 => {
            let mut ev = event(&format!("bad-{m}"), "booking.confirmed", &format!("o-bad-{m}"));
            ev["data"]["store"] = "徐汇\u{0}店".into();
            (ev.to_string().into_bytes(), "invalid_event")
        }
        7 => {
            let mut ev = event(&format!("bad-{m}"), "booking.confirmed", &format!("o-bad-{m}"));
            ev["data"]["padding"] = "x".repeat(70_000).into();
            (ev.to_string().into_bytes(), "invalid_event")
        }
        // A booking id WeChat would cut (a template message shows 20 characters since 2023) and
        // that cannot be shortened: a `character_string` takes no "…".
        _ => {
            let mut ev = event(&format!("bad-{m}"), "booking.created", &format!("o-bad-{m}"));
            ev["data"]["booking_id"] = format!("B-{m:0>38}").into();
            (ev.to_string().into_bytes(), "render_failed")
        }
    }
}

/// Publishes with confirms; on any broker error reconnects (with a pause) and publishes again.
pub(crate) struct Feeder {
    url: String,
    exchange: String,
    conn: Option<(Connection, Publisher)>,
    /// Publishes that failed and were sent again (their first copy may have made it).
    pub republished: u32,
}

impl Feeder {
    pub(crate) fn new(url: &str, exchange: &str) -> Self {
        Self {
            url: url.into(),
            exchange: exchange.into(),
            conn: None,
            republished: 0,
        }
    }

    pub(crate) async fn publish(&mut self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let give_up = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            assert!(
                tokio::time::Instant::now() < give_up,
                "the broker stayed away for 3 minutes"
            );
            if self.conn.is_none() {
                match queue::connect(&SecretString::from(self.url.clone()), "wxnotify-chaos-feeder").await {
                    Ok(conn) => match Publisher::open(&conn).await {
                        Ok(p) => self.conn = Some((conn, p)),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    },
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let (_, publisher) = self.conn.as_ref().expect("connected");
            match publisher
                .publish(&self.exchange, routing_key, body, props.clone())
                .await
            {
                Ok(()) => return,
                Err(_) => {
                    self.conn = None;
                    self.republished += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    pub(crate) async fn close(self) {
        if let Some((conn, _)) = self.conn {
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
