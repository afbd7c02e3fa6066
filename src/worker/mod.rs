//! The worker: consume the work queue with manual acks and a prefetch, process up to
//! `concurrency` deliveries at once (a semaphore, not prefetch 1), carry out each plan.
//!
//! Connection loss: everything broker-side (connection, channels, topology, prefetch, consumer)
//! is rebuilt from scratch with backoff; deliveries of the dead channel are never acked (their
//! acker refuses), the broker redelivers them and the ledger makes that harmless.
//!
//! Shutdown (`shutdown` token): cancel the consumer, let in-flight deliveries finish and be
//! recorded for up to the grace period, then close; whatever is unacked goes back to the queue.

mod dispatch;
mod gauges;
mod lanes;
mod park;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::{WorkerSettings, redact_url};
use crate::delivery::intake::Rules;
use crate::delivery::rate::RateLimit;
use crate::delivery::{Context, DbRetry};
use crate::ids::AppId;
use crate::ledger::Ledger;
use crate::platform::templates::MerchantTemplates;
use crate::queue::topology::MERCHANT_LANES;
use crate::queue::{self, Message, Publisher, Session};
use crate::schedule::Releaser;
use crate::token::{TokenProvider, TokenSettings};
use crate::wechat::WechatClient;
use dispatch::Intake;
use lanes::Lanes;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration problem found at start-up (exit 2).
    #[error("{0}")]
    Config(String),
    /// The broker's TLS refused at start-up (a certificate the CA did not sign, a host name it
    /// does not name): not an outage to wait out (exit 1).
    #[error("{0}")]
    Tls(String),
}

pub(crate) struct Worker {
    settings: WorkerSettings,
    ctx: Arc<Context>,
    releaser: Releaser,
}

/// The shared tokens of the configured apps and of the platforms' merchants, and the merchants'
/// library template ids (with platforms only).
fn token_provider(
    settings: &WorkerSettings,
    pool: &PgPool,
    wechat: &WechatClient,
) -> Result<(TokenProvider, Option<Arc<MerchantTemplates>>), WorkerError> {
    let provider = TokenProvider::new(
        pool.clone(),
        wechat.clone(),
        TokenSettings {
            api: settings.token_api,
            margin: settings.token_refresh_margin,
            credentials_pause: Duration::from_secs(600),
        },
        &settings.apps,
    );
    if settings.platforms.is_empty() {
        return Ok((provider, None));
    }
    let api = crate::platform::client::ComponentApi::new(&settings.wechat_api_base, settings.http_timeout)
        .map_err(|e| WorkerError::Config(format!("WECHAT_API_BASE: {e}")))?;
    let templates = MerchantTemplates::new(pool.clone(), api.clone());
    let tokens = crate::platform::tokens::PlatformTokens::new(pool.clone(), api);
    Ok((
        provider.with_platforms(pool.clone(), tokens, settings.platforms.clone()),
        Some(Arc::new(templates)),
    ))
}

impl Worker {
    /// Builds the worker over an existing (migrated) pool.
    pub(crate) fn new(settings: WorkerSettings, pool: PgPool, health: Arc<Health>) -> Result<Self, WorkerError> {
        let wechat = WechatClient::new(&settings.wechat_api_base, settings.http_timeout)
            .map_err(|e| WorkerError::Config(format!("WECHAT_API_BASE: {e}")))?;
        let (tokens, merchant_templates) = token_provider(&settings, &pool, &wechat)?;
        let app_ids: Vec<String> = settings.apps.iter().map(|a| a.app_id.clone()).collect();
        crate::metrics::register(&app_ids, &settings.catalog);
        let ctx = Context {
            rules: Rules {
                catalog: settings.catalog.clone(),
                default_app: AppId::from(settings.apps[0].app_id.as_str()),
                apps: settings
                    .apps
                    .iter()
                    .map(|a| AppId::from(a.app_id.as_str()))
                    .collect::<HashSet<_>>(),
                max_body: settings.max_body_bytes,
                merchants: !settings.platforms.is_empty(),
            },
            policy: settings.retry.clone(),
            topology: settings.topology.clone(),
            holds: crate::schedule::Holds::new(pool.clone()),
            ledger: Ledger::new(pool, settings.worker_id.clone()),
            tokens,
            merchant_templates,
            wechat,
            db: DbRetry {
                health,
                hard_stop: CancellationToken::new(),
            },
            rate: RateLimit::new(
                &settings
                    .apps
                    .iter()
                    .filter_map(|a| Some((a.app_id.clone(), a.rate_limit?)))
                    .collect::<Vec<_>>(),
            ),
        };
        let catalog = settings.catalog.clone();
        let releaser = Releaser {
            ledger: ctx.ledger.clone(),
            queue: settings.topology.queue.clone(),
            quiet_hours: Arc::new(move |app, event_type, template| {
                catalog.find_one(app, event_type, template).and_then(|t| t.quiet_hours)
            }),
        };
        Ok(Self {
            settings,
            ctx: Arc::new(ctx),
            releaser,
        })
    }

    /// Runs until `shutdown` fires (then drains) or a start-up check fails.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let ctx = self.ctx.clone();
        // Register before the first claim: others respect claims of live workers only.
        // Start-up hears SIGTERM too: a database that does not answer, or a token API that does
        // not, must not keep a stopping worker alive.
        let registered = tokio::select! {
            r = ctx.db.retry("register worker", || ctx.ledger.heartbeat()) => r,
            _ = shutdown.cancelled() => return Ok(()),
        };
        match registered {
            Ok(live) => ctx.share_rate(live),
            Err(_) => return Ok(()),
        }
        let heartbeat = tokio::spawn(heartbeat(ctx.clone()));
        // Merchants' state changes, heard until this returns.
        let watching = CancellationToken::new();
        let (watch_ctx, stop) = (ctx.clone(), watching.clone());
        tokio::spawn(async move { watch_ctx.tokens.watch_merchants(stop).await });
        let _stop_watching = watching.drop_guard();
        tokio::select! {
            checked = self.check_apps() => checked?,
            _ = shutdown.cancelled() => {
                heartbeat.abort();
                return Ok(());
            }
        }

        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut backoff = reconnect_backoff();
        let (mut consumed_once, mut fatal) = (false, None);
        while !shutdown.is_cancelled() {
            match self.session(&permits, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    // A session that got as far as consuming resets the backoff.
                    if ctx.db.health.broker() {
                        backoff = reconnect_backoff();
                        consumed_once = true;
                    }
                    // Before any session: a TLS refusal is AMQP_URL's to fix (CA, host name).
                    // Later it is retried like any outage (a certificate being rotated).
                    if !consumed_once && e.is_tls_failure() {
                        let url = redact_url(&self.settings.amqp_url);
                        fatal = Some(WorkerError::Tls(format!("AMQP_URL: TLS with {url} failed: {e}")));
                        break;
                    }
                    ctx.db.health.set_broker(false);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        ctx.db.health.set_broker(false);
        ctx.db.hard_stop.cancel();
        heartbeat.abort();
        // Bounded: with the database away, the claims expire by themselves (liveness, lease).
        match tokio::time::timeout(Duration::from_secs(3), ctx.ledger.retire()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not deregister this worker; its claims expire by themselves")
            }
            Err(_) => tracing::warn!("deregistering took too long; this worker's claims expire by themselves"),
        }
        tracing::info!("worker stopped");
        fatal.map_or(Ok(()), Err)
    }

    /// Fetches (or adopts) every app's token once: wrong credentials stop the worker at boot,
    /// naming the app, instead of failing every message later.
    async fn check_apps(&self) -> Result<(), WorkerError> {
        for app in &self.settings.apps {
            match self.ctx.tokens.get(&app.app_id).await {
                Ok(_) => {}
                Err(e) if e.is_configuration() => return Err(WorkerError::Config(e.to_string())),
                Err(e) => tracing::warn!(app = %app.app_id, error = %e, "no token yet; sends will retry"),
            }
        }
        Ok(())
    }

    /// One broker connection's life. `Ok` only when shutdown was requested.
    async fn session(&self, permits: &Arc<Semaphore>, shutdown: &CancellationToken) -> Result<(), SessionEnd> {
        let s = &self.settings;
        let conn = queue::connect(&s.amqp_url, &format!("wxnotify-worker {}", s.worker_id)).await?;
        let Opened {
            channel,
            lane_channel,
            session,
            mut intake,
            mut lanes,
            lane_apps,
            tag,
        } = self.open(&conn).await?;
        // The due-delivery loop publishes on this session's channel: it lives and dies with it.
        let due_stop = CancellationToken::new();
        let due_loop = tokio::spawn(crate::schedule::release::run(
            self.releaser.clone(),
            session.clone(),
            due_stop.clone(),
        ));
        let sampler = tokio::spawn(gauges::run(
            self.ctx.clone(),
            conn.create_channel().await?,
            lane_apps,
            due_stop.clone(),
        ));
        self.ctx.db.health.set_broker(true);
        tracing::info!(queue = %s.topology.queue, prefetch = s.prefetch, concurrency = s.concurrency, "consuming");

        let result = dispatch::run(self, &mut lanes, &mut intake, &session, permits, shutdown).await;
        // Stop releasing due deliveries (a release in progress still commits or rolls back: its
        // rows stay `scheduled`), and stop sampling.
        due_stop.cancel();
        if result.is_err() {
            session.broken.cancel();
        }
        sampler.abort();
        if result.is_ok() {
            self.drain(&channel, &lane_channel, &tag, permits).await;
        }
        stop_due_loop(due_loop).await;
        close(conn, result.is_ok()).await;
        result
    }

    /// Declares the topology, sets the prefetch and starts consuming the work queue and the
    /// apps' lanes.
    async fn open(&self, conn: &lapin::Connection) -> Result<Opened, SessionEnd> {
        let s = &self.settings;
        let channel = conn.create_channel().await?;
        s.topology.declare_core(&channel, s.delivery_limit).await?;
        s.topology.declare_retry_tiers(&channel, &s.retry.tiers()).await?;
        // A quorum queue counts deliveries in `x-delivery-count`; the judge dead-letters a
        // message one delivery before the broker's limit, so that its ledger row ends `dead` too.
        // Prefetch: how many unacked deliveries the broker lets this consumer hold.
        channel.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
        let session = Session {
            publisher: Publisher::open(conn).await?,
            broken: CancellationToken::new(),
        };
        let tag = format!("wxnotify-{}", s.worker_id);
        let work = channel
            .basic_consume(
                s.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let laned = self.laned_apps();
        let mut lanes = Lanes::new(&laned, usize::from(s.prefetch), !s.platforms.is_empty());
        lanes.set_live(self.ctx.rate.as_ref().map_or(1, RateLimit::live));
        let lane_channel = conn.create_channel().await?;
        let parking: Vec<String> = laned.into_iter().map(|(app, _)| app).collect();
        let (consumers, lane_apps) = self
            .consume_lanes(conn, &lane_channel, &mut lanes, &parking, &tag)
            .await?;
        Ok(Opened {
            channel,
            lane_channel,
            session,
            intake: Intake { work, lanes: consumers },
            lanes,
            lane_apps,
            tag,
        })
    }

    /// The apps that park in lanes, each with its rate limit: every configured app when there
    /// are several, a rate limit or a platform's merchants; a lone app without one never waits
    /// behind another's, so it needs none.
    fn laned_apps(&self) -> Vec<(String, Option<f64>)> {
        let apps = &self.settings.apps;
        if apps.len() > 1 || self.ctx.rate.is_some() || !self.settings.platforms.is_empty() {
            apps.iter().map(|a| (a.app_id.clone(), a.rate_limit)).collect()
        } else {
            Vec::new()
        }
    }

    /// Declares the lanes of `parking` (the apps that park) and consumes each, its prefetch the
    /// scheduler's (a paced app's: two seconds' worth, so that none of its messages waits long
    /// unacked). A lane left by an earlier configuration (another app list, a rate limit since
    /// removed) is consumed too, so nothing parked there is stranded.
    async fn consume_lanes(
        &self,
        conn: &lapin::Connection,
        ch: &lapin::Channel,
        lanes: &mut Lanes<Message>,
        parking: &[String],
        tag: &str,
    ) -> Result<(SelectAll<LaneStream>, Vec<String>), SessionEnd> {
        let s = &self.settings;
        let named: Vec<String> = parking.iter().map(|app| s.topology.lane(app)).collect();
        s.topology.declare_lanes(ch, &named, s.delivery_limit).await?;
        let mut consumed = parking.to_vec();
        for app in s.apps.iter().map(|a| &a.app_id).filter(|a| !parking.contains(a)) {
            if queue::exists(conn, &s.topology.lane(app)).await? {
                consumed.push(app.clone());
            }
        }
        let mut all = SelectAll::new();
        for app in &consumed {
            let line = lanes.line_of(app);
            // Each lane's consumer its own prefetch (a qos applies to the consumers made after it).
            let prefetch = u16::try_from(lanes.lane_prefetch(line, s.concurrency)).unwrap_or(u16::MAX);
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let consumer = ch
                .basic_consume(
                    s.topology.lane(app).as_str().into(),
                    lane_tag(tag, line).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            all.push(consumer.map(move |d| (Some(line), d)).boxed());
        }
        if !s.platforms.is_empty() {
            self.consume_merchant_lanes(ch, &mut all, tag).await?;
        }
        Ok((all, consumed))
    }

    /// Declares and consumes the lanes the platforms' merchants share; their messages find their
    /// line by their `app_id`.
    async fn consume_merchant_lanes(
        &self,
        ch: &lapin::Channel,
        all: &mut SelectAll<LaneStream>,
        tag: &str,
    ) -> Result<(), SessionEnd> {
        let s = &self.settings;
        let names: Vec<String> = (0..MERCHANT_LANES).map(|k| s.topology.merchant_lane(k)).collect();
        s.topology.declare_lanes(ch, &names, s.delivery_limit).await?;
        let prefetch = u16::try_from(lanes::batched_prefetch(s.concurrency)).unwrap_or(u16::MAX);
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        for (k, name) in names.iter().enumerate() {
            let consumer = ch
                .basic_consume(
                    name.as_str().into(),
                    merchant_lane_tag(tag, k).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            all.push(consumer.map(|d| (None, d)).boxed());
        }
        Ok(())
    }

    /// Shutdown: intake stops first (in-flight deliveries still ack on `channel`), then the
    /// deliveries in flight get the grace period to finish; past it they stop waiting for the
    /// database and their messages go back to the queue.
    async fn drain(&self, channel: &lapin::Channel, lane_channel: &lapin::Channel, tag: &str, permits: &Semaphore) {
        let s = &self.settings;
        let _ = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await;
        for line in 0..s.apps.len() {
            let _ = lane_channel
                .basic_cancel(lane_tag(tag, line).as_str().into(), BasicCancelOptions::default())
                .await;
        }
        for k in (0..MERCHANT_LANES).filter(|_| !s.platforms.is_empty()) {
            let _ = lane_channel
                .basic_cancel(merchant_lane_tag(tag, k).as_str().into(), BasicCancelOptions::default())
                .await;
        }
        let all = u32::try_from(s.concurrency).unwrap_or(u32::MAX);
        match tokio::time::timeout(s.shutdown_grace, permits.acquire_many(all)).await {
            Ok(_) => tracing::info!("in-flight deliveries finished"),
            Err(_) => tracing::warn!(
                grace_secs = s.shutdown_grace.as_secs_f64(),
                "grace period over; unfinished deliveries go back to the queue"
            ),
        }
        self.ctx.db.hard_stop.cancel();
    }
}

/// The release in progress had the drain's time too (it publishes on the session's connection);
/// one stuck on the database is dropped (its transaction rolls back).
async fn stop_due_loop(mut due_loop: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(1), &mut due_loop)
        .await
        .is_err()
    {
        tracing::warn!("the due-delivery loop did not stop in time; its rows stay scheduled");
        due_loop.abort();
    }
}

/// Closes the session's connection: whatever its channels still hold goes back to the queue.
/// Bounded: a broker that no longer answers must not keep the worker from reconnecting
/// (dropping the connection closes its socket, and the broker requeues all the same).
async fn close(conn: lapin::Connection, shutting_down: bool) {
    let reason = if shutting_down {
        "worker shutting down"
    } else {
        "session rebuilt"
    };
    if tokio::time::timeout(Duration::from_secs(5), conn.close(200, reason.into()))
        .await
        .is_err()
    {
        tracing::warn!("the broker did not confirm the connection's close in 5 s; dropping it");
    }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Beats until the worker aborts it (after draining: claims stay respected while in flight).
async fn heartbeat(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.ledger.heartbeat_interval());
    loop {
        tick.tick().await;
        match crate::db::bounded(ctx.ledger.heartbeat()).await {
            Ok(live) => {
                ctx.db.health.set_db(true);
                ctx.share_rate(live);
            }
            Err(e) => {
                ctx.db.health.set_db(false);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// The tag of the consumer of a lane (`line`: its app's line in the scheduler).
fn lane_tag(tag: &str, line: usize) -> String {
    format!("{tag}-lane-{line}")
}

fn merchant_lane_tag(tag: &str, k: usize) -> String {
    format!("{tag}-merchants-{k}")
}

/// One lane's deliveries, each with its app's line (`None`: a merchant lane's, found by the
/// message's `app_id`).
type LaneStream = futures_util::stream::BoxStream<'static, (Option<usize>, lapin::Result<Delivery>)>;

/// A session's channels and what it consumes.
struct Opened {
    /// The work queue's; deliveries from it are acked on it.
    channel: lapin::Channel,
    lane_channel: lapin::Channel,
    session: Session,
    intake: Intake,
    lanes: Lanes<Message>,
    /// The apps whose lanes it consumes.
    lane_apps: Vec<String>,
    /// The work queue consumer's tag; a lane's is `<tag>-lane-<line>`.
    tag: String,
}

/// Why a broker session ended (other than shutdown).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer (queue deleted?)")]
    ConsumerCancelled,
    #[error("a publish failed (its channel may be closed); rebuilding the session")]
    PublishFailed,
}

impl SessionEnd {
    fn is_tls_failure(&self) -> bool {
        matches!(self, SessionEnd::Amqp(e) if crate::tls::tls_failure(e).is_some())
    }
}
