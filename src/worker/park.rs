//! Parking an app's backlog in its lane, and taking it back out (docs/interface.md §11).
//!
//! An app parks its messages in batches ([`Batching`]: up to [`super::lanes::BATCH`] messages
//! and [`batch::MAX_BYTES`], gathered for at most 5 ms; a paced app's, a second's worth gathered
//! for at most a second): one lane message (`src/queue/batch.rs`) published with a confirm,
//! then each member acked in the work queue. A message [`batch::fits`] refuses is parked alone.
//! Taken out of a lane, a batch hands its members to the lines and is acked when the last
//! one is done; a batch the broker hands out again (a worker died, or a member's delivery
//! panicked) is split into single messages first, so that each is counted on its own against
//! the lane's delivery limit.

use std::collections::HashMap;
use std::time::Instant;

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio::sync::mpsc;

use super::lanes::{Batching, MERCHANTS};
use crate::delivery::Context;
use crate::queue::batch::{self, Member};
use crate::queue::message::nack;
use crate::queue::{Message, Session};

/// Messages of the work queue waiting to be parked, and the publishes that park them.
pub(super) struct Parking {
    gathering: Gathering<Delivery>,
    /// Each publish says, once done, how many work-queue messages it settled.
    settled: mpsc::UnboundedSender<usize>,
}

impl Parking {
    /// The parking and where its publishes report the messages they settled.
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<usize>) {
        let (settled, rx) = mpsc::unbounded_channel();
        let parking = Self {
            gathering: Gathering::default(),
            settled,
        };
        (parking, rx)
    }

    /// Parks `msg` of `app` with the next batch of its lane, published once full or due.
    pub(super) fn park(&mut self, ctx: &Context, session: &Session, app: &str, batching: Batching, msg: Delivery) {
        let (lane, label) = if ctx.rules.apps.contains(&crate::ids::AppId::from(app)) {
            (ctx.topology.lane(app), app.to_string())
        } else {
            (ctx.topology.merchant_lane_of(app), MERCHANTS.to_string())
        };
        if batching.size <= 1 || !batch::fits(&msg.properties, &msg.data) {
            publish(session, lane, label, vec![msg], self.settled.clone());
        } else if let Some((lane, full)) = self.gathering.add(lane, label, batching, msg, Instant::now()) {
            publish(session, lane, full.label, full.msgs, self.settled.clone());
        }
    }

    /// Hands every message still gathering back to the work queue (shutdown, a broken session).
    pub(super) fn hand_back(&mut self) {
        let msgs: Vec<Delivery> = self.gathering.take_all().flat_map(|(_, p)| p.msgs).collect();
        if msgs.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for m in msgs {
                let _ = m.nack(nack(true)).await;
            }
        });
    }

    /// When the next pending batch must be published.
    pub(super) fn due(&self) -> Option<Instant> {
        self.gathering.due()
    }

    /// Publishes the pending batches that are due, full or not.
    pub(super) fn flush(&mut self, session: &Session) {
        for (lane, p) in self.gathering.take_due(Instant::now()) {
            publish(session, lane, p.label, p.msgs, self.settled.clone());
        }
    }
}

/// A message's body size, for the batch's byte limit.
trait Weighed {
    fn bytes(&self) -> usize;
}

impl Weighed for Delivery {
    fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// Batches being gathered, by lane: pure.
struct Gathering<M> {
    pending: HashMap<String, Pending<M>>,
}

impl<M> Default for Gathering<M> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

struct Pending<M> {
    label: String,
    msgs: Vec<M>,
    bytes: usize,
    /// When it goes, full or not: its first message's gathering time is up.
    due: Instant,
}

impl<M: Weighed> Gathering<M> {
    /// Adds `msg` to its lane's batch; the batch, if that filled it (`batching.size` messages,
    /// or [`batch::MAX_BYTES`] of bodies).
    fn add(
        &mut self,
        lane: String,
        label: String,
        batching: Batching,
        msg: M,
        now: Instant,
    ) -> Option<(String, Pending<M>)> {
        let pending = self.pending.entry(lane.clone()).or_insert_with(|| Pending {
            label,
            msgs: Vec::with_capacity(batching.size),
            bytes: 0,
            due: now + batching.gather,
        });
        pending.bytes += msg.bytes();
        pending.msgs.push(msg);
        if pending.msgs.len() >= batching.size || pending.bytes >= batch::MAX_BYTES {
            self.pending.remove(&lane).map(|p| (lane, p))
        } else {
            None
        }
    }

    /// When the next batch is due.
    fn due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.due).min()
    }

    /// The batches due at `now`, full or not.
    fn take_due(&mut self, now: Instant) -> Vec<(String, Pending<M>)> {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(lane, _)| lane.clone())
            .collect();
        due.into_iter()
            .filter_map(|lane| self.pending.remove(&lane).map(|p| (lane, p)))
            .collect()
    }

    /// Every pending batch.
    fn take_all(&mut self) -> impl Iterator<Item = (String, Pending<M>)> + '_ {
        self.pending.drain()
    }
}

/// Publishes `msgs` to `lane` (a batch if more than one; confirmed), then acks each; if the
/// publish fails they go back to the work queue and the session is rebuilt.
fn publish(session: &Session, lane: String, label: String, msgs: Vec<Delivery>, settled: mpsc::UnboundedSender<usize>) {
    let session = session.clone();
    tokio::spawn(async move {
        let published = match msgs.as_slice() {
            [one] => {
                session
                    .publisher
                    .publish("", &lane, &one.data, one.properties.clone())
                    .await
            }
            many => {
                let (body, props) = batch::encode(many.iter().map(|m| (&m.properties, m.data.as_slice())));
                session.publisher.publish("", &lane, &body, props).await
            }
        };
        match published {
            Ok(()) => {
                metrics::counter!("wxnotify_parked_total", "app" => label).increment(msgs.len() as u64);
                for m in &msgs {
                    let _ = m.ack(BasicAckOptions::default()).await;
                }
            }
            Err(e) => {
                tracing::warn!(%lane, error = %e, "could not park messages in their lane; they go back to the queue");
                for m in &msgs {
                    let _ = m.nack(nack(true)).await;
                }
                session.broken.cancel();
            }
        }
        let _ = settled.send(msgs.len());
    });
}

/// What a lane hands over, as messages for the lines: itself, or a batch's members. A batch
/// handed out again is split (published back one by one, then acked) and yields nothing now; one
/// that cannot be read is dead-lettered by the lane.
pub(super) fn unpark(session: &Session, d: Delivery) -> Vec<Message> {
    let Some(count) = batch::count(&d.properties) else {
        return vec![Message::from(d)];
    };
    match batch::decode(&d.data, count) {
        Ok(members) if d.redelivered => {
            split(session, d, members);
            Vec::new()
        }
        Ok(members) => Message::members(d, members, &session.publisher),
        Err(e) => {
            tracing::error!(lane = %d.routing_key, error = %e, "a parked batch cannot be read; the lane dead-letters it");
            tokio::spawn(async move {
                let _ = d.nack(nack(false)).await;
            });
            Vec::new()
        }
    }
}

/// Publishes a batch's members back to its lane one by one, then acks the batch.
fn split(session: &Session, d: Delivery, members: Vec<Member>) {
    let session = session.clone();
    tokio::spawn(async move {
        let lane = d.routing_key.as_str();
        tracing::info!(lane, members = members.len(), "a parked batch came back; splitting it");
        let publishes = members.into_iter().map(|m| {
            let publisher = session.publisher.clone();
            async move { publisher.publish("", lane, &m.data, m.properties).await }
        });
        let all = futures_util::future::join_all(publishes).await;
        if let Some(Err(e)) = all.into_iter().find(Result::is_err) {
            tracing::warn!(lane, error = %e, "could not split a parked batch; it goes back whole");
            let _ = d.nack(nack(true)).await;
            session.broken.cancel();
        } else {
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    impl Weighed for u32 {
        fn bytes(&self) -> usize {
            *self as usize
        }
    }

    const FAST: Batching = Batching {
        size: 3,
        gather: Duration::from_millis(5),
    };

    fn add(g: &mut Gathering<u32>, lane: &str, batching: Batching, msg: u32, now: Instant) -> Option<Vec<u32>> {
        g.add(lane.into(), lane.into(), batching, msg, now).map(|(_, p)| p.msgs)
    }

    #[test]
    fn a_batch_goes_when_full_and_the_next_one_gets_its_full_gathering_time() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        assert_eq!(add(&mut g, "a", FAST, 1, t0), None);
        assert_eq!(g.due(), Some(t0 + FAST.gather));
        assert_eq!(add(&mut g, "a", FAST, 2, t0), None);
        assert_eq!(add(&mut g, "a", FAST, 3, t0), Some(vec![1, 2, 3]));
        assert_eq!(g.due(), None, "nothing pending: no deadline");
        let t1 = t0 + FAST.gather * 3;
        assert_eq!(add(&mut g, "a", FAST, 4, t1), None);
        assert_eq!(
            g.due(),
            Some(t1 + FAST.gather),
            "not the first batch's deadline, long past"
        );
    }

    #[test]
    fn each_lane_gathers_for_its_own_time_and_only_the_due_ones_go() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        let paced = Batching {
            size: 50,
            gather: Duration::from_secs(1),
        };
        assert_eq!(add(&mut g, "paced", paced, 1, t0), None);
        assert_eq!(add(&mut g, "a", FAST, 2, t0 + Duration::from_millis(1)), None);
        assert_eq!(g.due(), Some(t0 + Duration::from_millis(6)), "the soonest deadline");
        let due: Vec<(String, Vec<u32>)> = g
            .take_due(t0 + Duration::from_millis(6))
            .into_iter()
            .map(|(lane, p)| (lane, p.msgs))
            .collect();
        assert_eq!(due, [("a".to_string(), vec![2])], "the paced lane keeps gathering");
        assert_eq!(g.due(), Some(t0 + paced.gather));
        let rest: Vec<Vec<u32>> = g.take_all().map(|(_, p)| p.msgs).collect();
        assert_eq!(rest, [vec![1]]);
        assert_eq!(g.due(), None);
    }

    #[test]
    fn a_batch_goes_when_its_bodies_reach_the_byte_limit() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        let half = (batch::MAX_BYTES / 2) as u32;
        let big = Batching { size: 64, ..FAST };
        assert_eq!(add(&mut g, "a", big, half, t0), None);
        assert_eq!(add(&mut g, "a", big, half, t0), Some(vec![half, half]));
    }
}
