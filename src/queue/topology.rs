//! The broker objects of docs/interface.md §2, declared idempotently by every worker at start-up and after
//! every reconnect. Each argument is commented with its AMQP meaning.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// How many lanes the merchants of third-party platforms share (docs/interface.md §11).
pub const MERCHANT_LANES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange the booking app publishes to.
    pub exchange: String,
    /// Quorum work queue, bound to the exchange with `#`.
    pub queue: String,
    /// `<queue>.dlx`: fanout exchange of dead letters.
    pub dlx: String,
    /// `<queue>.dlq`: where dead letters wait for a person.
    pub dlq: String,
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Broker-side dead-lettering at least once (it needs overflow=reject-publish): without it, a
/// broker crash in the middle of dead-lettering could drop the message.
fn at_least_once(args: &mut FieldTable) {
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

impl Topology {
    pub fn new(exchange: &str, queue: &str) -> Self {
        Self {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            dlx: format!("{queue}.dlx"),
            dlq: format!("{queue}.dlq"),
        }
    }

    /// `<queue>.retry.<secs>s`: the retry queue of one delay tier.
    pub fn retry_queue(&self, tier: Duration) -> String {
        format!("{}.retry.{}s", self.queue, tier.as_secs())
    }

    /// The arguments of the work queue and of the lanes, which hold the same messages.
    fn work_args(&self, delivery_limit: u32) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        // A message redelivered this many times (it crashes workers, or never gets acked) is
        // dead-lettered by the broker instead of looping; RabbitMQ 3.10 has no default limit.
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(delivery_limit as i32));
        // ...to our dead-letter exchange; the DLQ shows it with x-first-death-reason=delivery_limit.
        args.insert("x-dead-letter-exchange".into(), string(&self.dlx));
        at_least_once(&mut args);
        args
    }

    /// `<queue>.app.<app_id>`: one app's lane, where a worker parks that app's messages while
    /// it has more than it can start (docs/interface.md §2): its backlog waits there, not in the
    /// work queue ahead of other apps' messages.
    pub fn lane(&self, app_id: &str) -> String {
        format!("{}.app.{app_id}", self.queue)
    }

    /// `<queue>.merchants.<k>`: one of the [`MERCHANT_LANES`] lanes the third-party platform's
    /// merchants share (docs/interface.md §11): merchants are rows, not configuration, so each
    /// parks in the lane its appid hashes to.
    pub fn merchant_lane(&self, k: usize) -> String {
        format!("{}.merchants.{k}", self.queue)
    }

    /// The merchant lane of `app_id` (FNV-1a of the appid: the same in every process).
    pub fn merchant_lane_of(&self, app_id: &str) -> String {
        let hash = app_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.merchant_lane((hash % MERCHANT_LANES as u64) as usize)
    }

    /// The lanes named (see [`Topology::lane`], [`Topology::merchant_lane`]): quorum queues like
    /// the work queue (the same delivery limit and dead-lettering), bound to nothing; workers
    /// publish to them through the default exchange.
    pub async fn declare_lanes(&self, ch: &Channel, lanes: &[String], delivery_limit: u32) -> lapin::Result<()> {
        for lane in lanes {
            ch.queue_declare(lane.as_str().into(), durable(), self.work_args(delivery_limit))
                .await?;
        }
        Ok(())
    }

    /// Exchange, work queue with its binding, dead-letter exchange and queue. Shared by the worker
    /// and `publish`, so events published before any worker ran are not dropped as unroutable.
    pub async fn declare_core(&self, ch: &Channel, delivery_limit: u32) -> lapin::Result<()> {
        let exchange_opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            self.exchange.as_str().into(),
            ExchangeKind::Topic,
            exchange_opts,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            self.dlx.as_str().into(),
            ExchangeKind::Fanout,
            exchange_opts,
            FieldTable::default(),
        )
        .await?;

        let mut dlq_args = FieldTable::default();
        // Replicated, fsync'd log: a dead letter is kept until a person replays it.
        dlq_args.insert("x-queue-type".into(), string("quorum"));
        ch.queue_declare(self.dlq.as_str().into(), durable(), dlq_args).await?;
        ch.queue_bind(
            self.dlq.as_str().into(),
            self.dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

        ch.queue_declare(self.queue.as_str().into(), durable(), self.work_args(delivery_limit))
            .await?;
        ch.queue_bind(
            self.queue.as_str().into(),
            self.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }

    /// One retry queue per delay tier. Nobody consumes them: a message waits out its `expiration`
    /// (at most the queue's TTL) and the broker dead-letters it back into the work queue through the
    /// default exchange. Durable quorum queues, so a pending retry survives a broker restart.
    pub async fn declare_retry_tiers(&self, ch: &Channel, tiers: &[Duration]) -> lapin::Result<()> {
        for tier in tiers {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            // Upper bound of the tier; each message carries its own, shorter, jittered expiration.
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(tier.as_millis() as i64));
            // Expired messages go to the default exchange with the work queue's name as routing key,
            // i.e. straight back into the work queue.
            args.insert("x-dead-letter-exchange".into(), string(""));
            args.insert("x-dead-letter-routing-key".into(), string(&self.queue));
            at_least_once(&mut args);
            ch.queue_declare(self.retry_queue(*tier).as_str().into(), durable(), args)
                .await?;
        }
        Ok(())
    }
}
