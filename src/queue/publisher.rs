//! Publishing with publisher confirms: `publish` returns only once the broker has taken
//! responsibility for the message (persisted to the quorum queue's log), or says why it did not.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};

/// Longest wait for the broker's confirm of one publish.
const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}: the message was returned")]
    Unroutable(String),
    #[error("publisher confirms are not enabled on this channel")]
    NotConfirmed,
    #[error("the broker did not confirm the message within {0} s")]
    NoConfirm(u64),
}

/// A channel in confirm mode. Cheap to clone; concurrent publishes are fine.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `mandatory`, so a message no queue would take comes back as [`PublishError::Unroutable`].
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        // Boxed: lapin's publish future is ~1.5 KB, and a delivery's future would carry it
        // all its life for the few deliveries that publish (retries, dead letters).
        let publish = async {
            Box::pin(
                self.channel
                    .basic_publish(exchange.into(), routing_key.into(), opts, body, props),
            )
            .await?
            .await
        };
        // A broker that takes the message but never confirms it (a partition) must not hold the
        // caller (and the row locks of a due-delivery release) forever.
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            .await
            .map_err(|_| PublishError::NoConfirm(CONFIRM_TIMEOUT.as_secs()))??;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_string())),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::NotRequested => Err(PublishError::NotConfirmed),
        }
    }
}

/// The broker side of one worker session: what a delivery or the due-delivery loop publishes
/// with, and the signal that the session must be rebuilt.
#[derive(Clone)]
pub(crate) struct Session {
    pub publisher: Publisher,
    /// Cancelled when a publish failed: the session is rebuilt (channels, topology, consumer).
    pub broken: tokio_util::sync::CancellationToken,
}
