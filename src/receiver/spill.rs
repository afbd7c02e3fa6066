//! The durable queue for pushes Postgres could not take in time (`<queue>.pushes`, a quorum
//! queue): when the database is down or slow, the receiver publishes what the push says there
//! with a publisher confirm and only then answers `success`; [`drain`] stores each queued push in
//! Postgres and acks it only after the commit. Either way nothing answered `success` is lost.
//! Off unless `AMQP_URL` is given to the receiver; without it a push Postgres cannot take gets 503.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::push::Push;
use super::store::Store;
use crate::queue::{self, PublishError, Publisher};

/// A queued push: its app and what it says.
#[derive(Debug, Serialize, Deserialize)]
struct Spilled {
    app_id: String,
    push: Push,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SpillError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}

/// The publishing side, (re)connecting on demand.
pub(crate) struct Spill {
    url: SecretString,
    queue: String,
    open: Mutex<Option<(Connection, Publisher)>>,
}

impl Spill {
    pub(crate) fn new(url: SecretString, work_queue: &str) -> Arc<Self> {
        Arc::new(Self {
            url,
            queue: format!("{work_queue}.pushes"),
            open: Mutex::new(None),
        })
    }

    /// Publishes `push` and returns once the broker confirmed it (persistent, quorum queue).
    pub(crate) async fn publish(&self, app_id: &str, push: &Push) -> Result<(), SpillError> {
        let body = serde_json::to_vec(&Spilled {
            app_id: app_id.to_string(),
            push: push.clone(),
        })?;
        let publisher = {
            let mut open = self.open.lock().await;
            match open.as_ref() {
                Some((conn, p)) if conn.status().connected() && p.channel().status().connected() => p.clone(),
                _ => {
                    let conn = queue::connect(&self.url, "wxnotify-receiver").await?;
                    let p = Publisher::open(&conn).await?;
                    declare(p.channel(), &self.queue).await?;
                    *open = Some((conn, p.clone()));
                    p
                }
            }
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let published = publisher.publish("", &self.queue, &body, props).await;
        if published.is_err() {
            *self.open.lock().await = None;
        }
        Ok(published?)
    }
}

async fn declare(ch: &Channel, queue: &str) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    // Replicated and fsync'd before the confirm: a push answered `success` survives the broker.
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args).await?;
    Ok(())
}

/// Moves queued pushes into Postgres until `shutdown`: each is acked after its commit; while the
/// database is away it is retried with backoff, unacked (the broker keeps it).
pub(crate) async fn drain(spill: Arc<Spill>, store: Store, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match drain_session(&spill, &store, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, queue = %spill.queue, "pushes queue unreachable; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// One broker session of [`drain`]; `Ok` when `shutdown` fired.
async fn drain_session(spill: &Spill, store: &Store, shutdown: &CancellationToken) -> Result<(), SpillError> {
    let conn = queue::connect(&spill.url, "wxnotify-receiver-drain").await?;
    let ch = conn.create_channel().await?;
    declare(&ch, &spill.queue).await?;
    ch.basic_qos(32, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            spill.queue.as_str().into(),
            "wxnotify-receiver".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let Some(delivery) = delivery else {
            return Err(SpillError::ConsumerEnded);
        };
        let delivery = delivery?;
        match serde_json::from_slice::<Spilled>(&delivery.data) {
            Ok(spilled) => {
                if !store_patiently(store, &spilled, shutdown).await {
                    return Ok(());
                }
            }
            // Only the receiver writes this queue: a body it cannot read is not a push to keep.
            Err(e) => tracing::error!(error = %e, "unreadable message in the pushes queue; dropped"),
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
}

/// Stores a queued push, retrying while the database is away; `false`: `shutdown` fired first.
async fn store_patiently(store: &Store, spilled: &Spilled, shutdown: &CancellationToken) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), store.store(&spilled.app_id, &spilled.push)).await {
            Ok(Ok(_)) => {
                metrics::counter!("wxnotify_pushes_drained_total").increment(1);
                return true;
            }
            Ok(Err(e)) if crate::db::is_data_error(&e) => {
                tracing::error!(app = ?spilled.app_id, error = ?e.to_string(), "Postgres refused a queued push; dropped");
                return true;
            }
            Ok(Err(e)) => tracing::warn!(error = ?e.to_string(), "queued push not stored yet; retrying"),
            Err(_) => tracing::warn!("queued push not stored within 10 s; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
