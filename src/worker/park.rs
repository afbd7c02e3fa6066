//! Parking an app's backlog in its lane, and taking it back out (docs/interface.md §11).
//!
//! An app without a rate limit parks its messages in batches of up to [`super::lanes::BATCH`]
//! (and [`batch::MAX_BYTES`]): one lane message (`src/queue/batch.rs`) published with a
//! confirm, then each member acked in the work queue. A batch is gathered for at most
//! [`GATHER`]. A paced app's messages, and any that [`batch::fits`] refuses, are parked alone.
//! Taken out of a lane, a batch hands its members to the lines and is acked when the last
//! one is done; a batch the broker hands out again (a worker died, or a member's delivery
//! panicked) is split into single messages first, so that each is counted on its own against
//! the lane's delivery limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;

use super::lanes::MERCHANTS;
use crate::delivery::Context;
use crate::queue::batch::{self, Member};
use crate::queue::{Message, Session};

/// The longest a parked message waits for its batch to fill.
const GATHER: Duration = Duration::from_millis(5);

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

    /// Parks `msg` of `app` with the next batch of its lane, published once it holds `batch`.
    pub(super) fn park(&mut self, ctx: &Context, session: &Session, app: &str, batch: usize, msg: Delivery) {
        let (lane, label) = if ctx.rules.apps.contains(&crate::ids::AppId::from(app)) {
            (ctx.topology.lane(app), app.to_string())
        } else {
            (ctx.topology.merchant_lane_of(app), MERCHANTS.to_string())
        };
        let batch = if batch::fits(&msg.properties, &msg.data) {
            batch
        } else {
            1
        };
        if batch == 1 {
            publish(session, lane, label, vec![msg], self.settled.clone());
        } else if let Some((lane, full)) = self.gathering.add(lane, label, batch, msg, Instant::now()) {
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
                let _ = m.nack(requeue(true)).await;
            }
        });
    }

    /// When the pending batches must be published at the latest.
    pub(super) fn due(&self) -> Option<Instant> {
        self.gathering.due
    }

    /// Publishes every pending batch, full or not.
    pub(super) fn flush(&mut self, session: &Session) {
        for (lane, p) in self.gathering.take_all() {
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
    /// When the oldest pending message is to be parked at the latest; none when nothing is.
    due: Option<Instant>,
}

impl<M> Default for Gathering<M> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            due: None,
        }
    }
}

struct Pending<M> {
    label: String,
    msgs: Vec<M>,
    bytes: usize,
}

impl<M: Weighed> Gathering<M> {
    /// Adds `msg` to its lane's batch; the batch, if that filled it (`batch` messages, or
    /// [`batch::MAX_BYTES`] of bodies).
    fn add(&mut self, lane: String, label: String, batch: usize, msg: M, now: Instant) -> Option<(String, Pending<M>)> {
        let pending = self.pending.entry(lane.clone()).or_insert_with(|| Pending {
            label,
            msgs: Vec::with_capacity(batch),
            bytes: 0,
        });
        pending.bytes += msg.bytes();
        pending.msgs.push(msg);
        let full = if pending.msgs.len() >= batch || pending.bytes >= batch::MAX_BYTES {
            self.pending.remove(&lane).map(|p| (lane, p))
        } else {
            None
        };
        // The next message after an empty gathering gets its full time.
        if self.pending.is_empty() {
            self.due = None;
        } else if self.due.is_none() {
            self.due = Some(now + GATHER);
        }
        full
    }

    /// Every pending batch, full or not.
    fn take_all(&mut self) -> impl Iterator<Item = (String, Pending<M>)> + '_ {
        self.due = None;
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
                    let _ = m.nack(requeue(true)).await;
                }
                session.broken.cancel();
            }
        }
        let _ = settled.send(msgs.len());
    });
}

fn requeue(requeue: bool) -> BasicNackOptions {
    BasicNackOptions {
        requeue,
        ..Default::default()
    }
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
                let _ = d.nack(requeue(false)).await;
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
            let _ = d.nack(requeue(true)).await;
            session.broken.cancel();
        } else {
            let _ = d.ack(BasicAckOptions::default()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weighed for u32 {
        fn bytes(&self) -> usize {
            *self as usize
        }
    }

    fn add(g: &mut Gathering<u32>, lane: &str, batch: usize, msg: u32, now: Instant) -> Option<Vec<u32>> {
        g.add(lane.into(), lane.into(), batch, msg, now).map(|(_, p)| p.msgs)
    }

    #[test]
    fn a_batch_goes_when_full_and_the_next_one_gets_its_full_gathering_time() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        assert_eq!(add(&mut g, "a", 3, 1, t0), None);
        assert_eq!(g.due, Some(t0 + GATHER));
        assert_eq!(add(&mut g, "a", 3, 2, t0), None);
        assert_eq!(add(&mut g, "a", 3, 3, t0), Some(vec![1, 2, 3]));
        assert_eq!(g.due, None, "nothing pending: no deadline");
        let t1 = t0 + GATHER * 3;
        assert_eq!(add(&mut g, "a", 3, 4, t1), None);
        assert_eq!(g.due, Some(t1 + GATHER), "not the first batch's deadline, long past");
    }

    #[test]
    fn a_batch_goes_when_its_bodies_reach_the_byte_limit() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        let half = (batch::MAX_BYTES / 2) as u32;
        assert_eq!(add(&mut g, "a", 64, half, t0), None);
        assert_eq!(add(&mut g, "a", 64, half, t0), Some(vec![half, half]));
    }

    #[test]
    fn each_lane_gathers_its_own_batch_and_a_flush_takes_them_all() {
        let mut g = Gathering::default();
        let t0 = Instant::now();
        assert_eq!(add(&mut g, "a", 2, 1, t0), None);
        assert_eq!(add(&mut g, "b", 2, 2, t0 + GATHER / 2), None);
        assert_eq!(g.due, Some(t0 + GATHER), "the oldest message's deadline");
        assert_eq!(add(&mut g, "b", 2, 3, t0), Some(vec![2, 3]));
        assert_eq!(g.due, Some(t0 + GATHER), "a's message still waits");
        let mut all: Vec<(String, Vec<u32>)> = g.take_all().map(|(lane, p)| (lane, p.msgs)).collect();
        all.sort();
        assert_eq!(all, [("a".to_string(), vec![1])]);
        assert_eq!(g.due, None);
        assert!(g.pending.is_empty());
    }
}
