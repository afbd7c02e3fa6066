//! A message as a delivery sees it: its body and properties, and how it is settled once its
//! outcome is recorded. Most come from the broker one by one; a parked batch
//! ([`super::batch`]) hands out its members, and the batch is acked when the last one is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lapin::Acker;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::Publisher;
use super::batch::Member;

/// One message to deliver.
pub(crate) struct Message {
    pub data: Vec<u8>,
    pub properties: BasicProperties,
    /// The broker handed it out before (a batch's members: never).
    pub redelivered: bool,
    settle: Settle,
    /// Settled already: a second settle (a panic after the ack) does nothing, for a batch's
    /// count must not go down twice for one member, nor a delivery tag be acked twice.
    settled: AtomicBool,
}

enum Settle {
    /// Acked or handed back on its own.
    Broker(Acker),
    /// A member of a parked batch.
    Member(Arc<Batch>),
}

impl From<Delivery> for Message {
    fn from(d: Delivery) -> Self {
        Self {
            data: d.data,
            properties: d.properties,
            redelivered: d.redelivered,
            settle: Settle::Broker(d.acker),
            settled: AtomicBool::new(false),
        }
    }
}

impl Message {
    /// The members of `batch` (taken from `lane`), each settled through it.
    pub(crate) fn members(batch: Delivery, members: Vec<Member>, publisher: &Publisher) -> Vec<Message> {
        let shared = Arc::new(Batch {
            acker: batch.acker,
            left: Countdown::new(members.len()),
            lane: batch.routing_key.to_string(),
            publisher: publisher.clone(),
        });
        members
            .into_iter()
            .map(|m| Message {
                data: m.data,
                properties: m.properties,
                redelivered: false,
                settle: Settle::Member(shared.clone()),
                settled: AtomicBool::new(false),
            })
            .collect()
    }

    /// Done with: its outcome is recorded.
    pub(crate) async fn ack(&self) -> lapin::Result<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match &self.settle {
            Settle::Broker(acker) => acker.ack(BasicAckOptions::default()).await.map(drop),
            Settle::Member(batch) => batch.one_done(false).await,
        }
    }

    /// Back to the broker as it is, for another delivery to decide: nacked with requeue; a
    /// batch's member is published to its lane on its own (if that fails, the whole batch goes
    /// back when its last member is done).
    pub(crate) async fn hand_back(&self) -> lapin::Result<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match &self.settle {
            Settle::Broker(acker) => acker.nack(nack(true)).await.map(drop),
            Settle::Member(batch) => {
                let published = batch
                    .publisher
                    .publish("", &batch.lane, &self.data, self.properties.clone())
                    .await;
                if let Err(e) = &published {
                    tracing::warn!(lane = %batch.lane, error = %e, "could not hand a parked message back alone; its batch goes back whole");
                }
                batch.one_done(published.is_err()).await
            }
        }
    }

    /// A delivery of it panicked: back to the broker, which counts the delivery. A batch goes
    /// back whole, and comes back split into single messages (each counted on its own).
    pub(crate) async fn spoil(&self) -> lapin::Result<()> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        match &self.settle {
            Settle::Broker(acker) => acker.nack(nack(true)).await.map(drop),
            Settle::Member(batch) => batch.one_done(true).await,
        }
    }
}

/// A nack's options: back to the queue (`requeue`) or to its dead-letter exchange.
pub(crate) fn nack(requeue: bool) -> BasicNackOptions {
    BasicNackOptions {
        requeue,
        ..Default::default()
    }
}

/// A parked batch being delivered: acked when its last member is done, or handed back whole if
/// any member could not be settled alone.
struct Batch {
    acker: Acker,
    left: Countdown,
    lane: String,
    publisher: Publisher,
}

impl Batch {
    async fn one_done(&self, spoiled: bool) -> lapin::Result<()> {
        match self.left.one_done(spoiled) {
            None => Ok(()),
            Some(Whole::Ack) => self.acker.ack(BasicAckOptions::default()).await.map(drop),
            Some(Whole::Back) => self.acker.nack(nack(true)).await.map(drop),
        }
    }
}

/// What becomes of a whole batch.
#[derive(Debug, PartialEq, Eq)]
enum Whole {
    Ack,
    Back,
}

/// Members not yet done, and whether one was spoiled.
#[derive(Debug)]
struct Countdown {
    left: AtomicUsize,
    spoiled: AtomicBool,
}

impl Countdown {
    fn new(members: usize) -> Self {
        Self {
            left: AtomicUsize::new(members),
            spoiled: AtomicBool::new(false),
        }
    }

    /// One member is done; the last one says what becomes of the batch.
    fn one_done(&self, spoiled: bool) -> Option<Whole> {
        if spoiled {
            self.spoiled.store(true, Ordering::SeqCst);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        Some(if self.spoiled.load(Ordering::SeqCst) {
            Whole::Back
        } else {
            Whole::Ack
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_member_acks_the_batch() {
        let c = Countdown::new(3);
        assert_eq!(c.one_done(false), None);
        assert_eq!(c.one_done(false), None);
        assert_eq!(c.one_done(false), Some(Whole::Ack));
    }

    #[test]
    fn one_spoiled_member_sends_the_batch_back_whole() {
        let c = Countdown::new(3);
        assert_eq!(c.one_done(true), None);
        assert_eq!(c.one_done(false), None);
        assert_eq!(c.one_done(false), Some(Whole::Back));
        let last = Countdown::new(2);
        assert_eq!(last.one_done(false), None);
        assert_eq!(last.one_done(true), Some(Whole::Back));
    }
}
