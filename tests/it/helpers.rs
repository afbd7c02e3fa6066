//! Test harness: every test gets a fresh database (named by a UUID, migrated), random exchange and
//! queue names on the real RabbitMQ, and its own WeChat simulator on port 0. Conditions are awaited
//! with a timeout, never slept on. Logs show only when `TEST_LOG` is set.
//!
//! Nothing to clean up by hand: a test's queues, exchanges and database go when its `TestEnv` is
//! dropped, passed or failed (`common::leftovers`); what a killed test binary left, the next one
//! sweeps when it starts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::{BasicProperties, Connection};
use secrecy::SecretString;
use sqlx::{PgPool, Row};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wechat_sim::{Faults, Sim, SimConfig};
use wxnotify::app::{AppError, Application};
use wxnotify::config::{AmqpArgs, DbArgs, WorkerArgs};
use wxnotify::ops::dlq::{self, ReplayFilter, ReplayReport};
use wxnotify::ops::progress::Progress;
use wxnotify::queue::{self, Publisher, Topology};
use wxnotify::wechat::TokenApi;

use crate::common::leftovers::{self, Leftovers};
pub(crate) use crate::common::{APP_ID, APP_SECRET, amqp_url, event, wait_for};
use crate::common::{Taken, base_db_url, fresh_database_at, take_all, worker_env};

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            wxnotify::telemetry::init(wxnotify::telemetry::LogFormat::Text);
        }
    });
}

/// Where a test environment's Postgres and RabbitMQ are: the shared services of
/// `scripts/services.sh` by default, the TLS ones of `scripts/tls-services.sh` in tls.rs.
#[derive(Clone)]
pub(crate) struct Services {
    /// `postgres://user:password@host:port`: the test's database is made there.
    pub db_base: String,
    /// The query every database URL ends with (`?sslmode=…`), or empty.
    pub db_params: String,
    pub amqp_url: String,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            db_base: base_db_url(),
            db_params: String::new(),
            amqp_url: amqp_url(),
        }
    }
}

pub(crate) struct TestEnv {
    pub db_url: String,
    /// The broker the topology is on, the workers and the test's publisher connect to.
    pub amqp_url: String,
    pub pool: PgPool,
    pub topology: Topology,
    pub sim: Sim,
    pub sim_base: String,
    pub templates: PathBuf,
    conn: Connection,
    publisher: Publisher,
    /// Stops the in-process workers and receivers still running when the environment is
    /// dropped (a failed test's): a live worker would declare the deleted queues again.
    running: StopOnDrop,
    /// Deletes the queues, exchanges and database when the environment is dropped (last field:
    /// dropped after the pool and the connection).
    _leftovers: Leftovers,
}

/// Cancels these shutdown tokens when dropped.
#[derive(Default)]
struct StopOnDrop(std::sync::Mutex<Vec<CancellationToken>>);

impl StopOnDrop {
    fn add(&self, token: &CancellationToken) {
        let mut tokens = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.push(token.clone());
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let tokens = self.0.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        for token in tokens.drain(..) {
            token.cancel();
        }
    }
}

pub(crate) struct WorkerHandle {
    pub shutdown: CancellationToken,
    pub join: JoinHandle<Result<(), AppError>>,
    /// Where `/metrics` answers (the process's one recorder: every in-process worker's series).
    pub admin_addr: std::net::SocketAddr,
}

impl WorkerHandle {
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("worker stops within 30 s");
        r.expect("worker task").expect("worker exits cleanly");
    }
}

/// Options a test may change from the defaults.
#[derive(Clone)]
pub(crate) struct WorkerOpts {
    pub token_api: TokenApi,
    pub secret: String,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub token_margin_secs: u64,
    pub retry_base_secs: f64,
    pub http_timeout_secs: f64,
    pub shutdown_grace_secs: f64,
    /// Another database URL (e.g. through a proxy the test can cut).
    pub database_url: Option<String>,
    /// Another RabbitMQ URL (e.g. through a fault proxy).
    pub amqp_url: Option<String>,
    /// Another templates file.
    pub templates: Option<PathBuf>,
    /// `WXNOTIFY_RATE_LIMIT`.
    pub rate_limit: Option<f64>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        Self {
            token_api: TokenApi::Stable,
            secret: APP_SECRET.into(),
            concurrency: 64,
            max_attempts: 8,
            token_margin_secs: 180,
            retry_base_secs: 0.2,
            http_timeout_secs: 5.0,
            shutdown_grace_secs: 10.0,
            database_url: None,
            amqp_url: None,
            templates: None,
            rate_limit: None,
        }
    }
}

impl TestEnv {
    pub(crate) async fn new() -> Self {
        Self::with_sim(SimConfig::default()).await
    }

    /// A test environment whose simulator injects `faults`.
    pub(crate) async fn with_faults(faults: Faults) -> Self {
        Self::with_sim(SimConfig {
            faults,
            ..Default::default()
        })
        .await
    }

    /// `wxnotify dlq replay --reason <reason>`, as the library runs it.
    pub(crate) async fn replay_by_reason(&self, reason: &str) -> ReplayReport {
        let filter = ReplayFilter {
            reason: Some(reason.into()),
            ..Default::default()
        };
        let (url, no_bar) = (SecretString::from(self.amqp_url.clone()), Progress::hidden());
        dlq::replay(&url, &self.topology, &self.pool, &filter, usize::MAX, false, &no_bar)
            .await
            .expect("replay")
    }

    pub(crate) async fn with_sim(sim_config: SimConfig) -> Self {
        Self::on(Services::default(), sim_config).await
    }

    /// A test environment on other services than the shared ones.
    pub(crate) async fn on(services: Services, mut sim_config: SimConfig) -> Self {
        init_logs();
        let shared = Services::default();
        leftovers::sweep_killed_runs(&shared.db_base, &shared.amqp_url);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = leftovers::broker_prefix("t", &id);
        let topology = Topology::new(&format!("{prefix}.x"), &format!("{prefix}.q"));
        // Armed before anything exists: a failure halfway leaves nothing either.
        let mut guard = Leftovers::topology(&services.amqp_url, &topology.exchange, &topology.queue);
        guard.database = Some((
            services.db_base.clone(),
            services.db_params.clone(),
            leftovers::database_name(&id),
        ));
        let (db_url, pool) = fresh_database_at(&services.db_base, &services.db_params, &id, 4).await;

        sim_config.apps = crate::common::sim_apps();
        let sim = Sim::new(sim_config);
        let addr = sim.spawn("127.0.0.1:0".parse().unwrap()).await.expect("sim binds");

        let conn = queue::connect(&SecretString::from(services.amqp_url.clone()), "wxnotify-test")
            .await
            .expect("connect to RabbitMQ (run scripts/services.sh up)");
        let publisher = Publisher::open(&conn).await.expect("publisher");
        topology
            .declare_core(publisher.channel(), 20)
            .await
            .expect("declare topology");
        Self {
            db_url,
            amqp_url: services.amqp_url,
            pool,
            topology,
            sim,
            sim_base: format!("http://{addr}"),
            templates: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates.toml"),
            conn,
            publisher,
            running: StopOnDrop::default(),
            _leftovers: guard,
        }
    }

    pub(crate) fn worker_args(&self, opts: &WorkerOpts) -> WorkerArgs {
        WorkerArgs {
            db: DbArgs {
                database_url: opts.database_url.clone().unwrap_or_else(|| self.db_url.clone()),
            },
            amqp: AmqpArgs {
                amqp_url: opts.amqp_url.clone().unwrap_or_else(|| self.amqp_url.clone()),
                exchange: self.topology.exchange.clone(),
                queue: self.topology.queue.clone(),
                delivery_limit: 20,
            },
            wechat_api_base: self.sim_base.clone(),
            wechat_app_id: Some(APP_ID.into()),
            wechat_app_secret: Some(opts.secret.clone()),
            wechat_token_api: opts.token_api,
            templates: opts.templates.clone().unwrap_or_else(|| self.templates.clone()),
            prefetch: (opts.concurrency * 2) as u16,
            concurrency: opts.concurrency,
            max_attempts: opts.max_attempts,
            retry_base_secs: opts.retry_base_secs,
            retry_max_secs: 2.0,
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            http_timeout_secs: opts.http_timeout_secs,
            token_refresh_margin_secs: opts.token_margin_secs,
            shutdown_grace_secs: opts.shutdown_grace_secs,
            db_pool: 8,
            max_body_bytes: 65536,
            rate_limit: opts.rate_limit,
        }
    }

    /// An in-process worker with its own pool, token cache and id, as a separate process would
    /// have, started the way `wxnotify worker` starts one (`Application::build`).
    pub(crate) async fn spawn_worker(&self, opts: &WorkerOpts) -> WorkerHandle {
        let settings = self.worker_args(opts).into_settings().expect("valid settings");
        let shutdown = CancellationToken::new();
        let app = Application::build(settings, false, &shutdown)
            .await
            .expect("worker builds")
            .expect("not shut down");
        self.running.add(&shutdown);
        let admin_addr = app.admin_addr();
        let join = tokio::spawn(app.run(shutdown.clone()));
        WorkerHandle {
            shutdown,
            join,
            admin_addr,
        }
    }

    /// A fresh channel on the test's own connection.
    pub(crate) async fn channel(&self) -> lapin::Channel {
        self.conn.create_channel().await.expect("channel")
    }

    /// The real `wxnotify worker` binary, configured for this environment (stdio left to the caller).
    pub(crate) fn worker_command(&self) -> tokio::process::Command {
        self.wxnotify(&["worker"])
    }

    /// The real `wxnotify` binary with `args`, configured for this environment.
    pub(crate) fn wxnotify(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxnotify"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(worker_env(
                &self.db_url,
                &self.topology,
                &self.sim_base,
                &self.templates.to_string_lossy(),
            ))
            .env("AMQP_URL", &self.amqp_url)
            .env("WECHAT_TOKEN_API", "classic")
            .env("WXNOTIFY_ADMIN_ADDR", "127.0.0.1:0")
            .kill_on_drop(true);
        cmd
    }

    /// Runs the `wxnotify` binary with `args`, its output captured (not a terminal), and checks
    /// that it exited 0 (showing its stderr when not).
    pub(crate) async fn wxnotify_ok(&self, args: &[&str]) -> std::process::Output {
        let out = self.wxnotify(args).output().await.expect("run wxnotify");
        assert!(
            out.status.success(),
            "wxnotify {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub(crate) async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        self.publisher
            .publish(&self.topology.exchange, routing_key, body, props)
            .await
            .expect("publish");
    }

    /// Plays a worker that crashes on the work queue's head message: takes it and hands it back
    /// (reject, requeue), up to `times` times or until the queue is empty. Returns how often.
    pub(crate) async fn hand_back(&self, times: usize) -> usize {
        let ch = self.channel().await;
        let mut handed_back = 0;
        while handed_back < times {
            let Some(msg) = ch
                .basic_get(self.topology.queue.as_str().into(), BasicGetOptions::default())
                .await
                .expect("basic_get")
            else {
                break;
            };
            msg.delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await
                .expect("reject");
            handed_back += 1;
        }
        let _ = ch.close(200, "done".into()).await;
        handed_back
    }

    /// Straight into `queue` (the default exchange), with the given properties.
    pub(crate) async fn publish_to_queue(&self, queue: &str, body: &[u8], props: BasicProperties) {
        self.publisher.publish("", queue, body, props).await.expect("publish");
    }

    pub(crate) async fn publish(&self, event: &serde_json::Value) {
        let rk = event["event_type"].as_str().unwrap_or("none").to_string();
        self.publish_raw(&rk, event.to_string().as_bytes()).await;
    }

    /// Puts a message straight into the dead-letter queue, with these `wxnotify-*` headers.
    pub(crate) async fn publish_dead_letter(&self, body: &[u8], headers: &[(&str, &str)]) {
        let mut table = lapin::types::FieldTable::default();
        for (name, value) in headers {
            queue::headers::set_text(&mut table, name, value);
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(table);
        self.publisher
            .publish("", &self.topology.dlq, body, props)
            .await
            .expect("publish to the DLQ");
    }

    /// Takes every message of the dead-letter queue: (body, wxnotify-* headers).
    pub(crate) async fn drain_dlq(&self) -> Vec<Taken> {
        take_all(self.publisher.channel(), &self.topology.dlq).await
    }

    /// Drains the DLQ until it has yielded at least `n` messages; panics after `timeout`.
    pub(crate) async fn collect_dlq(&self, n: usize, timeout: Duration) -> Vec<Taken> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.drain_dlq().await);
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {n} dead letters, got {}", out.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out
    }

    /// Ready messages in the work queue and every retry queue (not the DLQ).
    pub(crate) async fn ready_everywhere(&self) -> u32 {
        let ch = self.conn.create_channel().await.expect("channel");
        let policy = wxnotify::retry::RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(2));
        let mut queues = vec![self.topology.queue.clone()];
        queues.extend(policy.tiers().into_iter().map(|t| self.topology.retry_queue(t)));
        let mut total = 0;
        for q in queues {
            let opts = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Ok(info) = ch
                .queue_declare(q.as_str().into(), opts, lapin::types::FieldTable::default())
                .await
            {
                total += info.message_count();
            }
        }
        let _ = ch.close(200, "done".into()).await;
        total
    }

    pub(crate) async fn statuses(&self) -> HashMap<String, String> {
        sqlx::query("SELECT event_id, status FROM deliveries")
            .fetch_all(&self.pool)
            .await
            .expect("query")
            .into_iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect()
    }

    pub(crate) async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.expect("count")
    }

    /// Sessions on the test's database waiting for a lock (e.g. a worker's statement behind a row
    /// the test holds).
    pub(crate) async fn lock_waiters(&self) -> i64 {
        self.count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
    }
}

/// The default app's callback token and EncodingAESKey in the receiver tests.
pub(crate) const CALLBACK_TOKEN: &str = "cbToken2026";
pub(crate) const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// An in-process `wxnotify receiver`.
pub(crate) struct ReceiverHandle {
    pub addr: std::net::SocketAddr,
    pub admin_addr: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    pub join: JoinHandle<Result<(), AppError>>,
}

impl ReceiverHandle {
    /// The default app's push URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/wechat/{APP_ID}", self.addr)
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("receiver stops within 30 s");
        r.expect("receiver task").expect("receiver exits cleanly");
    }
}

impl TestEnv {
    /// A receiver for the default app (callback token and AES key above), on this test's
    /// database or on `database_url` (e.g. through a proxy the test can cut); with `spill`, it
    /// queues what Postgres cannot take in `<queue>.pushes` on the real RabbitMQ.
    pub(crate) async fn spawn_receiver(&self, database_url: Option<&str>, spill: bool) -> ReceiverHandle {
        self.spawn_receiver_with(database_url, spill, |_| {}).await
    }

    /// [`TestEnv::spawn_receiver`] with its settings changed by `adjust` first (e.g. no AES key,
    /// fewer connections).
    pub(crate) async fn spawn_receiver_with(
        &self,
        database_url: Option<&str>,
        spill: bool,
        adjust: impl FnOnce(&mut wxnotify::receiver::ReceiverArgs),
    ) -> ReceiverHandle {
        let mut args = wxnotify::receiver::ReceiverArgs {
            db: DbArgs {
                database_url: database_url.unwrap_or(&self.db_url).to_string(),
            },
            wechat_app_id: Some(APP_ID.into()),
            wechat_callback_token: Some(CALLBACK_TOKEN.into()),
            wechat_encoding_aes_key: Some(AES_KEY.into()),
            templates: self.templates.clone(),
            receiver_addr: "127.0.0.1:0".parse().unwrap(),
            receiver_max_connections: 10_000,
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: spill.then(|| self.amqp_url.clone()),
            queue: self.topology.queue.clone(),
            db_pool: 8,
            wechat_api_base: self.sim_base.clone(),
        };
        adjust(&mut args);
        let settings = args.into_settings().expect("valid receiver settings");
        let shutdown = CancellationToken::new();
        let receiver = wxnotify::receiver::Receiver::build(settings, false, &shutdown)
            .await
            .expect("receiver builds")
            .expect("not shut down");
        let (addr, admin_addr) = (receiver.addr(), receiver.admin_addr());
        self.running.add(&shutdown);
        let join = tokio::spawn(receiver.run(shutdown.clone()));
        ReceiverHandle {
            addr,
            admin_addr,
            shutdown,
            join,
        }
    }

    /// Has the simulator push to `receiver` (safe mode when `aes`), at once, retrying after
    /// `retry_gap_ms`.
    pub(crate) fn push_to(&self, receiver: &ReceiverHandle, aes: bool, retry_gap_ms: u64) {
        self.push_to_addr(receiver.addr, aes, retry_gap_ms);
    }

    /// [`TestEnv::push_to`] a receiver listening on `addr` (e.g. the real binary).
    pub(crate) fn push_to_addr(&self, addr: std::net::SocketAddr, aes: bool, retry_gap_ms: u64) {
        self.sim.set_push(wechat_sim::PushConfig {
            callback_url: Some(format!("http://{addr}/wechat/{{appid}}")),
            token: CALLBACK_TOKEN.into(),
            aes_key: aes.then(|| AES_KEY.into()),
            retry_gap_ms,
            ..Default::default()
        });
    }

    /// Inserts a `sent` delivery with this msgid (or none), as the worker would have; its id.
    pub(crate) async fn insert_sent(&self, event_id: &str, msgid: Option<i64>) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO deliveries (event_id, event_type, app_id, openid, template_id, status,
                                     wechat_msgid, occurred_at, client_msg_id, sent_at)
             VALUES ($1, 'booking.confirmed', $2, 'oUser', 'TPL', CASE WHEN $3::bigint IS NULL THEN 'pending' ELSE 'sent' END,
                     $3, now(), $1, now())
             RETURNING id",
        )
        .bind(event_id)
        .bind(APP_ID)
        .bind(msgid)
        .fetch_one(&self.pool)
        .await
        .expect("insert delivery")
    }

    /// `receipt_status` of the delivery with this msgid.
    pub(crate) async fn receipt_of(&self, msgid: i64) -> Option<String> {
        sqlx::query_scalar("SELECT receipt_status FROM deliveries WHERE wechat_msgid = $1")
            .bind(msgid)
            .fetch_optional(&self.pool)
            .await
            .expect("query")
            .flatten()
    }
}

/// What the command wrote to stderr, checked to hold no terminal escape code: off a terminal
/// (a pipe, as here) there is no progress bar and no colour.
pub(crate) fn plain_stderr(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("\x1b["), "escape codes off a terminal: {stderr:?}");
    stderr
}

/// The line of `text` that starts with `start`, and the seconds it says the run took
/// (`… in 1.2s …`). Panics, showing `text`, when there is no such line.
pub(crate) fn summary_line<'a>(text: &'a str, start: &str) -> (&'a str, f64) {
    let line = text
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in {text:?}"));
    let secs = line
        .split(" in ")
        .skip(1)
        .find_map(|rest| rest.split_once("s")?.0.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time (`in 1.2s`) in {line:?}"));
    (line, secs)
}

/// The last migration of the release before issue 16 (whose migrations build indexes
/// concurrently).
pub(crate) const BEFORE_ISSUE_16: i64 = 20261123000011;

/// Puts the test's database back to the schema of migration `version`: everything dropped, then
/// the migrations up to that one applied.
pub(crate) async fn schema_at(pool: &PgPool, version: i64) {
    sqlx::query("DROP SCHEMA public CASCADE").execute(pool).await.unwrap();
    sqlx::query("CREATE SCHEMA public").execute(pool).await.unwrap();
    wxnotify::db::MIGRATOR
        .run_to(version, pool)
        .await
        .expect("older migrations");
}
