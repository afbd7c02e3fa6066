//! RabbitMQ: the [`topology`] wxnotify declares, the [`headers`] it reads and writes, a
//! [`publisher`] that waits for the broker's confirm, and [`connect`].

pub mod headers;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

/// Opens a connection named after this process (the name shows in the management UI).
/// Recovery is ours, not lapin's: the worker rebuilds connection, channels, topology, prefetch
/// and consumer from scratch after any failure, so no state of a dead channel is reused.
pub async fn connect(url: &SecretString, name: &str) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    Connection::connect(url.expose_secret(), props).await
}
