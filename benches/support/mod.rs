//! What the two benchmarks share: fresh queues on the real broker, a plain consumer, and the
//! `wxnotify worker` process under test.

// Shared by several bench binaries, each of which uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use secrecy::SecretString;
use wxnotify::queue::{self, Publisher, Topology};

use crate::common::{amqp_url, worker_env};

/// The benchmarks' own runtime: two threads, like the machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A connection, a publisher with confirms and a fresh, declared topology named `<prefix>-<id>`.
pub struct Broker {
    pub conn: Connection,
    pub publisher: Publisher,
    pub topology: Topology,
}

impl Broker {
    pub async fn open(prefix: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let topology = Topology::new(&format!("{prefix}-{}.x", &id[..8]), &format!("{prefix}-{}.q", &id[..8]));
        let conn = queue::connect(&SecretString::from(amqp_url()), prefix)
            .await
            .expect("RabbitMQ (scripts/services.sh up)");
        let publisher = Publisher::open(&conn).await.expect("publisher");
        topology.declare_core(publisher.channel(), 20).await.expect("topology");
        Self {
            conn,
            publisher,
            topology,
        }
    }

    /// A consumer of the work queue with a prefetch of 512, as the worker has.
    pub async fn consumer(&self, tag: &str) -> Consumer {
        let ch = self.conn.create_channel().await.expect("channel");
        ch.basic_qos(512, BasicQosOptions::default()).await.expect("qos");
        ch.basic_consume(
            self.topology.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume")
    }

    /// Deletes the run's queues (quorum queues are not free) and closes.
    pub async fn close(self) {
        let ch = self.conn.create_channel().await.expect("channel");
        let policy = wxnotify::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(300));
        let mut names = vec![self.topology.queue.clone(), self.topology.dlq.clone()];
        names.extend(policy.tiers().into_iter().map(|t| self.topology.retry_queue(t)));
        for q in names {
            let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The real `wxnotify worker` (the release build under `cargo bench`) on this run's database,
/// queues and simulator; `WXNOTIFY_*` variables of the environment reach it.
pub fn spawn_worker(db_url: &str, topology: &Topology, sim: SocketAddr, admin: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wxnotify"))
        .arg("worker")
        .envs(worker_env(
            db_url,
            topology,
            &format!("http://{sim}"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates.toml"),
        ))
        .env("WXNOTIFY_ADMIN_ADDR", admin)
        .env("RUST_LOG", "warn")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("WXNOTIFY_")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("wxnotify binary")
}

/// SIGTERM, then wait (at most 30 s) for the worker to drain and exit.
pub async fn stop_worker(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
}
