//! Test resources that remove themselves, pass, fail or SIGKILL.
//!
//! Every name a test makes carries its process's run tag, `p<pid>` (queues and exchanges
//! `t-p<pid>-<hex>.…`, databases `wxn_test_p<pid>_<hex>`). A [`Leftovers`] guard deletes one
//! test's queues, exchanges and database when it is dropped: at the end of the test, or while a
//! failed assertion unwinds. What a killed process never dropped, [`sweep_killed_runs`] deletes when
//! the next test binary starts: every tagged name whose process is gone.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use secrecy::SecretString;
use sqlx::Connection;

/// This process's part of every name: `p<pid>`.
pub(crate) fn run_tag() -> String {
    format!("p{}", std::process::id())
}

/// The database of the test `id` (32 hex): `wxn_test_p<pid>_<16 hex>`.
pub(crate) fn database_name(id: &str) -> String {
    format!("wxn_test_{}_{}", run_tag(), &id[..16])
}

/// The prefix of the test `id`'s queues and exchanges: `<kind>-p<pid>-<10 hex>`.
pub(crate) fn broker_prefix(kind: &str, id: &str) -> String {
    format!("{kind}-{}-{}", run_tag(), &id[..10])
}

/// The process a tagged name belongs to: `t-p123-…`, `chaos-p123-…`, `wxn_test_p123_…`.
pub(crate) fn pid_of(name: &str) -> Option<u32> {
    let rest = ["t-p", "chaos-p", "cluster-p", "wxn_test_p"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next();
    if matches!(after, Some('-' | '_')) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Whether process `pid` still runs (always "yes" without a /proc to tell).
pub(crate) fn alive(pid: u32) -> bool {
    !std::path::Path::new("/proc/self").exists() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs the future `make` returns on a thread of its own, with a runtime of its own, and waits
/// for it: usable in `Drop` and inside a test's (current-thread) runtime. `None` when it panicked.
pub(crate) fn block_on_own_thread<F, T>(make: impl FnOnce() -> F + Send + 'static) -> Option<T>
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(rt.block_on(make()))
    })
    .join()
    .ok()
    .flatten()
}

/// One test's broker objects and database, deleted when this is dropped (unless `TEST_KEEP` is
/// set, to look at what a failed test left).
#[derive(Default)]
pub(crate) struct Leftovers {
    /// The broker the queues and exchanges are on.
    pub amqp_url: String,
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
    /// The database: its server (`postgres://user:password@host:port`), the query its URLs end
    /// with (`?sslmode=…`, or empty), its name.
    pub database: Option<(String, String, String)>,
}

impl Leftovers {
    /// The objects [`wxnotify::queue::Topology`] declares for `exchange` and `queue` (every retry
    /// tier there could be, the lanes of the test apps and of merchants) and the receiver's spill queue,
    /// `<queue>.pushes`.
    pub(crate) fn topology(amqp_url: &str, exchange: &str, queue: &str) -> Self {
        let mut queues = vec![queue.to_string(), format!("{queue}.dlq"), format!("{queue}.pushes")];
        queues.extend((0..24).map(|i| format!("{queue}.retry.{}s", 1u64 << i)));
        queues.extend(super::all_apps().map(|(app, _)| format!("{queue}.app.{app}")));
        queues.extend((0..wxnotify::queue::topology::MERCHANT_LANES).map(|k| format!("{queue}.merchants.{k}")));
        Self {
            amqp_url: amqp_url.to_string(),
            queues,
            exchanges: vec![exchange.to_string(), format!("{queue}.dlx")],
            database: None,
        }
    }

    /// Deletes everything now; nothing is left for `Drop`.
    pub(crate) async fn remove(&mut self) {
        let (queues, exchanges) = (std::mem::take(&mut self.queues), std::mem::take(&mut self.exchanges));
        let limit = Duration::from_secs(20);
        if !queues.is_empty() || !exchanges.is_empty() {
            let deleted = tokio::time::timeout(limit, delete_on_broker(&self.amqp_url, &queues, &exchanges)).await;
            if deleted.is_err() {
                note(&format!(
                    "cleanup: the broker did not answer in {limit:?}; left {queues:?}"
                ));
            }
        }
        if let Some((server, params, name)) = self.database.take() {
            match tokio::time::timeout(limit, drop_database(&server, &params, &name)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => note(&format!("cleanup: DROP DATABASE {name}: {e}")),
                Err(_) => note(&format!("cleanup: Postgres did not drop {name} in {limit:?}")),
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.exchanges.is_empty() && self.database.is_none()
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        if std::env::var_os("TEST_KEEP").is_some() {
            note(&format!(
                "TEST_KEEP: kept {:?}, {:?}, {:?}",
                self.queues, self.exchanges, self.database
            ));
            return;
        }
        let mut mine = std::mem::take(self);
        block_on_own_thread(move || async move { mine.remove().await });
    }
}

/// Deletes `queues`, then `exchanges` (a channel the broker closed on an error is replaced);
/// how many deletions the broker confirmed.
pub(crate) async fn delete_on_broker(amqp_url: &str, queues: &[String], exchanges: &[String]) -> usize {
    // One test's deletions at a time, and not in the second after its queues were (re)declared:
    // RabbitMQ 3.10 crashes the at-least-once dead-letter worker of a quorum queue deleted while
    // its leader is still taking up its configuration, and a few such crashes in a row stop its
    // supervisor (every quorum queue declare then fails with INTERNAL_ERROR until a restart).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = SecretString::from(amqp_url.to_string());
    let Ok(conn) = wxnotify::queue::connect(&url, "wxnotify-test-cleanup").await else {
        return 0;
    };
    let (mut ch, mut n) = (None, 0);
    for (name, is_queue) in queues
        .iter()
        .map(|q| (q, true))
        .chain(exchanges.iter().map(|x| (x, false)))
    {
        if ch.is_none() {
            ch = conn.create_channel().await.ok();
        }
        let Some(c) = &ch else { break };
        let done = if is_queue {
            c.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(drop)
        } else {
            c.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        };
        match done {
            Ok(()) => n += 1,
            Err(_) => ch = None,
        }
    }
    let _ = conn.close(200, "cleaned up".into()).await;
    n
}

/// `DROP DATABASE IF EXISTS <name> WITH (FORCE)` (its sessions ended), on a connection of its own.
pub(crate) async fn drop_database(server: &str, params: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres{params}")).await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await?;
    let _ = admin.close().await;
    Ok(())
}

/// Once per process: deletes the queues, exchanges and databases of earlier runs on these services
/// whose process is gone (killed before its guards ran), and says how many on stderr.
pub(crate) fn sweep_killed_runs(db_server: &str, amqp_url: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (db_server, amqp_url) = (db_server.to_string(), amqp_url.to_string());
        let counts = block_on_own_thread(move || async move { sweep(&db_server, &amqp_url).await });
        match counts {
            Some((q, x, d)) => note(&format!(
                "swept {} leftover queues/exchanges/databases from killed runs ({q} queues, {x} exchanges, {d} databases)",
                q + x + d
            )),
            None => note("sweeping leftovers of killed runs failed"),
        }
    });
}

fn of_dead_runs(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| pid_of(n).is_some_and(|pid| pid != std::process::id() && !alive(pid)))
        .collect()
}

async fn sweep(db_server: &str, amqp_url: &str) -> (usize, usize, usize) {
    let queues = of_dead_runs(broker_names("queues").await);
    let exchanges = of_dead_runs(broker_names("exchanges").await);
    let (mut q, mut x) = (0, 0);
    if !queues.is_empty() {
        q = delete_on_broker(amqp_url, &queues, &[]).await;
    }
    if !exchanges.is_empty() {
        x = delete_on_broker(amqp_url, &[], &exchanges).await;
    }
    let mut d = 0;
    for name in of_dead_runs(database_names(db_server).await) {
        match drop_database(db_server, "", &name).await {
            Ok(()) => d += 1,
            Err(e) => note(&format!("sweep: DROP DATABASE {name}: {e}")),
        }
    }
    (q, x, d)
}

/// Names of the default vhost's `queues` or `exchanges`: from the management API
/// (`TEST_RABBITMQ_API`, default `http://127.0.0.1:15672`, guest/guest) or else `rabbitmqctl`.
pub(crate) async fn broker_names(kind: &str) -> Vec<String> {
    let api = std::env::var("TEST_RABBITMQ_API").unwrap_or_else(|_| "http://127.0.0.1:15672".into());
    let listed = async {
        let resp = reqwest::Client::new()
            .get(format!("{api}/api/{kind}/%2f?columns=name"))
            .basic_auth("guest", Some("guest"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?;
        let rows: Vec<serde_json::Value> = resp.json().await.ok()?;
        Some(
            rows.iter()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect::<Vec<_>>(),
        )
    };
    if let Some(names) = listed.await {
        return names;
    }
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", &format!("list_{kind}"), "name"])
        .output()
        .await;
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && l != "name")
            .collect(),
        _ => {
            note(&format!(
                "sweep: cannot list {kind} (no management API, no rabbitmqctl)"
            ));
            Vec::new()
        }
    }
}

/// The test databases (`wxn_test_%`) on the server.
pub(crate) async fn database_names(db_server: &str) -> Vec<String> {
    let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{db_server}/postgres")).await else {
        note("sweep: cannot connect to Postgres");
        return Vec::new();
    };
    let names = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'wxn\\_test\\_%'")
        .fetch_all(&mut admin)
        .await
        .unwrap_or_default();
    let _ = admin.close().await;
    names
}

/// A line on the test binary's stderr, past libtest's capture (which only takes `eprintln!`).
fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
