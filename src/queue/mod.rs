//! RabbitMQ: the [`topology`] wxnotify declares, the [`headers`] it reads and writes, a
//! [`publisher`] that waits for the broker's confirm, the [`message`] a delivery settles (alone
//! or as a member of a parked [`batch`]), and [`connect`].

pub(crate) mod batch;
pub mod headers;
pub(crate) mod message;
pub mod publisher;
pub mod topology;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

pub(crate) use message::Message;
pub(crate) use publisher::Session;
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use crate::tls::{self, AmqpUrl};

/// How long one node gets to answer before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The heartbeat asked for when `AMQP_URL` has no `heartbeat`: a broker silent for twice this
/// long (a partition, a half-open connection) ends the connection, and the worker reconnects.
/// RabbitMQ's default (60 s) would take two minutes to notice.
const HEARTBEAT_SECS: u16 = 10;

/// The frame size asked for when `AMQP_URL` has no `frame_max`. lapin keeps 32 frames of read and
/// of write buffer per connection, zero-filled when it connects: at RabbitMQ's default (128 KiB)
/// that is 8 MiB resident per connection. Events are far smaller than a frame; a larger body is
/// split over several frames.
const FRAME_MAX: u32 = 16 * 1024;

/// The node this process connected to last (an index into its URL list); unset at first.
static LAST_NODE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Opens a connection named after this process (the name shows in the management UI).
/// Recovery is ours, not lapin's: the worker rebuilds connection, channels, topology, prefetch
/// and consumer from scratch after any failure, so no state of a dead channel is reused.
///
/// `url` may list the nodes of a RabbitMQ cluster separated by commas (docs/interface.md §6): they are
/// tried in turn, each for at most [`CONNECT_TIMEOUT`], starting with the node this process used
/// last (at first one picked by process id, so a fleet spreads over the nodes). A node that went
/// away refuses at once, so a reconnect lands on the next one that answers.
///
/// `amqps://` URLs use TLS, trusting the system's roots and the CA file of a `cacertfile`
/// parameter (read anew at each connection, so a renewed CA file needs no restart).
pub async fn connect(url: &SecretString, name: &str) -> lapin::Result<Connection> {
    tls::install_crypto_provider();
    let urls = node_urls(url.expose_secret());
    let start = match LAST_NODE.load(Ordering::Relaxed) {
        usize::MAX => std::process::id() as usize,
        last => last,
    };
    let mut last_error = None;
    for i in 0..urls.len() {
        let node = (start + i) % urls.len();
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_node(urls[node], name)).await {
            Ok(Ok(conn)) => {
                LAST_NODE.store(node, Ordering::Relaxed);
                if urls.len() > 1 {
                    let address = reqwest::Url::parse(urls[node])
                        .map(|u| {
                            let port = u.port().unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 });
                            format!("{}:{port}", u.host_str().unwrap_or("?"))
                        })
                        .unwrap_or_default();
                    tracing::info!(node = node + 1, of = urls.len(), %address, connection = name, "connected to a RabbitMQ node");
                }
                return Ok(conn);
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                last_error = Some(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("node {} of AMQP_URL did not answer in {CONNECT_TIMEOUT:?}", node + 1),
                    )
                    .into(),
                )
            }
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "AMQP_URL is empty").into()))
}

/// One node's connection: its `cacertfile` taken off the URL and given to lapin as an extra root.
async fn connect_node(url: &str, name: &str) -> lapin::Result<Connection> {
    let invalid =
        |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("AMQP_URL: {message}"));
    let AmqpUrl { url, ca_file } = AmqpUrl::parse(url).map_err(invalid)?;
    let tls_config = OwnedTLSConfig {
        identity: None,
        cert_chain: match ca_file {
            Some(path) => Some(tls::read_ca_file(&path).map_err(|e| invalid(format!("cacertfile: {e}")))?),
            None => None,
        },
    };
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| invalid(e))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    Connection::connect_uri_with_config(uri, props, tls_config, lapin::runtime::default_runtime()?).await
}

/// A queue's counts (ready messages, consumers) without declaring it: a passive declare. A queue
/// that does not exist is an error, and the broker closes `channel` with it.
pub(crate) async fn peek(channel: &lapin::Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
}

/// Whether `queue` exists, by a passive declare on a channel of its own (a queue that does not
/// exist closes that channel, 404). An error that took the connection with it is an error.
pub(crate) async fn exists(conn: &Connection, queue: &str) -> lapin::Result<bool> {
    let channel = conn.create_channel().await?;
    match peek(&channel, queue).await {
        Ok(_) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(true)
        }
        Err(_) if conn.status().connected() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The URLs of a comma-separated list, blanks dropped.
pub(crate) fn node_urls(list: &str) -> Vec<&str> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_nodes_is_split_and_blanks_dropped() {
        assert_eq!(
            node_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,,"),
            ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]
        );
        assert_eq!(node_urls("amqp://one/%2f"), ["amqp://one/%2f"]);
        assert!(node_urls(" , ").is_empty());
    }

    #[tokio::test]
    async fn a_node_that_accepts_but_never_speaks_is_an_error_not_a_hang() {
        // A wedged broker: the TCP connection is accepted, the AMQP handshake never answered.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = silent.accept().await {
                open.push(sock);
            }
        });
        let url = SecretString::from(format!("amqp://guest:guest@{addr}/%2f"));
        let err = tokio::time::timeout(CONNECT_TIMEOUT * 3, connect(&url, "test"))
            .await
            .expect("connect gives up by itself")
            .expect_err("nothing answered");
        assert!(err.to_string().contains("did not answer"), "{err}");
        held.abort();
    }

    #[tokio::test]
    async fn a_node_that_refuses_is_skipped_for_the_next() {
        // Port 1 refuses at once; the second "node" is not a broker either: the error is the
        // last node's, after both were tried (no hang, no panic).
        let list = SecretString::from("amqp://guest:guest@127.0.0.1:1/%2f,amqp://guest:guest@127.0.0.1:2/%2f");
        let started = std::time::Instant::now();
        assert!(connect(&list, "test").await.is_err());
        assert!(started.elapsed() < CONNECT_TIMEOUT, "refusals are not waited out");
    }
}
