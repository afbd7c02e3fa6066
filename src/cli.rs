//! The command line (docs/interface.md §5): clap parses, this module calls the library, and maps errors to
//! exit codes: 0 success, 2 usage or configuration (naming the setting), 1 runtime failure.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::app::{AppError, Application};
use crate::config::{AmqpArgs, ConfigError, DbArgs, WorkerArgs, redact_url};
use crate::ops::progress::{self, Progress};
use crate::receiver::{Receiver, ReceiverArgs};
use crate::telemetry::{self, LogFormat};
use crate::{db, ops, shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "wxnotify",
    version,
    about = "Booking events from RabbitMQ → WeChat notifications, exactly once in effect."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "WXNOTIFY_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume booking events, deliver them to WeChat, record each delivery (runs migrations first).
    Worker {
        /// Do not apply database migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
        /// Print the effective settings (environment, flags, templates file; secrets masked) and
        /// exit: 0 when they are valid, 2 naming the first invalid one.
        #[arg(long)]
        print_config: bool,
        #[command(flatten)]
        args: Box<WorkerArgs>,
    },
    /// Receive WeChat's event push (delivery receipts, follow/unfollow) at POST /wechat/{app_id}
    /// and store it in the ledger (runs migrations first).
    Receiver {
        /// Do not apply database migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
        #[command(flatten)]
        args: Box<ReceiverArgs>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Publish events (one JSON object a line) from FILE or stdin, each confirmed by the broker.
    Publish {
        /// Input file; stdin when absent or `-`.
        file: Option<PathBuf>,
        /// Publish lines as they are, even invalid ones (to exercise the dead-letter path).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        amqp: AmqpArgs,
    },
    /// The dead-letter queue: list it, replay from it.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The delivery summary (views `delivery_daily_summary` and `delivery_failures`).
    Report {
        /// From when: a duration back from now (7d, 24h, 90m) or a date (2026-11-01, Beijing time).
        #[arg(long, default_value = "7d")]
        since: ops::report::Since,
        /// `csv` prints the daily summary only; `table` and `json` add failures by errcode.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Per app the shared token (generation, expiry, blocks, calls today); queue depths; deliveries
    /// in doubt, scheduled and due; live workers. Never migrates (exit 1 if the schema is behind).
    Status {
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete final deliveries (and their attempts) created longer ago than DURATION, in small
    /// batches that never block workers; never a scheduled, open or in-doubt one. Never migrates.
    Prune {
        /// A duration back from now (180d, 2d) or a date (2026-05-01, Beijing time); at least 1 day.
        #[arg(long)]
        older_than: ops::report::Since,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// "Did the customer get it?": each delivery of the events (or of a user), its attempts with
    /// errcodes, doubt, dead letter and replays, cancellation, schedule and lateness, receipt, and
    /// whether the user follows the account. Read from the ledger only (not the DLQ); exit 0 also
    /// when nothing matches (it says so).
    Trace {
        #[command(flatten)]
        by: TraceArgs,
        /// With --openid: from when (deliveries created since), a duration back from now (7d, 24h)
        /// or a date (2026-11-01, Beijing time); 7d when absent.
        #[arg(long)]
        since: Option<ops::report::Since>,
        /// With --openid: at most this many deliveries, the latest (shown oldest first); 50 when absent.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        limit: Option<i64>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Deliveries waiting for their time (`send_at`, quiet hours): list them, cancel them by hand.
    Scheduled {
        #[command(subcommand)]
        command: ScheduledCommand,
    },
    /// Third-party platforms' merchants (the authorizers): list them, sync them with WeChat.
    Platform {
        #[command(subcommand)]
        command: PlatformCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlatformCommand {
    /// Every merchant of every platform: state, authorization, token expiry, whether a refresh
    /// token is held (never which), last error.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        db: DbArgs,
    },
    /// For each platform of the templates file, pages through WeChat's authorizer list: merchants
    /// missing from the ledger, or that lost their refresh token, are restored from it (no scan
    /// again); active ones WeChat no longer lists become revoked. Needs a verify ticket younger
    /// than 12 h (the receiver stores WeChat's pushes).
    Sync {
        #[command(flatten)]
        args: PlatformArgs,
    },
    /// A fresh pre-auth code and the URL of WeChat's page where a merchant scans to authorize the
    /// platform (valid 30 minutes). Needs a verify ticket younger than 12 h.
    AuthorizeUrl {
        /// The platform (a `[[platforms]]` entry).
        #[arg(long)]
        component_appid: String,
        /// Where WeChat sends the merchant after the scan.
        #[arg(long)]
        redirect_uri: String,
        #[command(flatten)]
        args: PlatformArgs,
    },
}

/// What `platform sync` needs: the ledger, WeChat, and the platforms' secrets.
#[derive(Debug, clap::Args)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Base URL of WeChat's API.
    #[arg(long, env = "WECHAT_API_BASE", default_value = "https://api.weixin.qq.com")]
    pub wechat_api_base: String,
    /// The templates file: its `[[platforms]]` and the variables holding their secrets.
    #[arg(long, env = "WXNOTIFY_TEMPLATES", default_value = "templates.toml")]
    pub templates: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ScheduledCommand {
    /// Scheduled deliveries, soonest first.
    List {
        /// Only those due before this: an instant (2026-11-22T14:00:00+08:00) or a duration from now (90m, 2h).
        #[arg(long)]
        due_before: Option<ops::scheduled::DueBefore>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Cancel waiting deliveries (never one being sent right now); prints how many.
    Cancel {
        #[command(flatten)]
        by: CancelArgs,
        /// With --cancel-key: only this app's deliveries (every app's when absent).
        #[arg(long, requires = "cancel_key")]
        app_id: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// What to cancel: exactly one of a cancel key or event ids.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct CancelArgs {
    /// Deliveries whose template's `cancel_key` rendered to this (e.g. a booking id).
    #[arg(long)]
    cancel_key: Option<String>,
    /// Deliveries of these events (repeatable).
    #[arg(long = "event-id", num_args = 1..)]
    event_id: Vec<String>,
}

/// Whose deliveries `trace` shows: exactly one of event ids or a user.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct TraceArgs {
    /// Every delivery of these events (repeatable).
    #[arg(long = "event-id", num_args = 1..)]
    event_id: Vec<String>,
    /// Every delivery to this user (openid), of every app, since --since.
    #[arg(long)]
    openid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show dead letters (oldest first) without removing them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        amqp: AmqpArgs,
    },
    /// Move matching dead letters back to the work queue with a fresh retry budget. A message
    /// leaves the DLQ only after the broker confirmed its copy and the replay is recorded.
    Replay {
        #[command(flatten)]
        filter: ReplayArgs,
        /// At most this many.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        limit: usize,
        /// Show what would be replayed; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        #[command(flatten)]
        amqp: AmqpArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Which dead letters to replay: exactly one kind of filter.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// These events (repeatable).
    #[arg(long = "event-id", num_args = 1..)]
    event_id: Vec<String>,
    /// Dead letters with this reason.
    #[arg(long, value_parser = [
        "invalid_event", "no_template", "render_failed", "permanent_error",
        "retries_exhausted", "delivery_limit", "ambiguous", "unauthorized",
    ])]
    reason: Option<String>,
    /// Dead letters with this WeChat errcode.
    #[arg(long, allow_negative_numbers = true)]
    errcode: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A failure and its exit code.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("configuration error: {0}")]
    Config(String),
    #[error("error: {0}")]
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    if std::env::var("WXNOTIFY_COUNT_ALLOCATIONS").is_ok_and(|v| v == "1") {
        crate::allocations::enable();
    }
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(match e {
                Failure::Config(_) => 2,
                Failure::Runtime(_) => 1,
            })
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Worker {
            print_config: true,
            args,
            ..
        } => {
            print!("{}", args.into_settings()?.effective());
            Ok(())
        }
        Command::Worker { no_migrate, args, .. } => worker(*args, no_migrate).await,
        Command::Receiver { no_migrate, args } => receiver(*args, no_migrate).await,
        Command::Migrate { db } => {
            connect_and_migrate(&db).await?;
            println!("migrations applied to {}", redact_url(&db.url()?));
            Ok(())
        }
        Command::Publish { file, raw, amqp } => publish(file.as_ref(), raw, &amqp).await,
        Command::Dlq { command } => dlq(command).await,
        Command::Scheduled { command } => scheduled(command).await,
        Command::Platform { command } => platform(command).await,
        Command::Prune {
            older_than,
            dry_run,
            db,
        } => prune(older_than, dry_run, &db).await,
        Command::Status { format, amqp, db } => status(format, &amqp, &db).await,
        Command::Report { since, format, db } => report(since, format, &db).await,
        Command::Trace {
            by,
            since,
            limit,
            format,
            db,
        } => trace(by, since, limit, format, &db).await,
    }
}

/// `wxnotify publish`: the events of a file (or stdin) into the exchange, confirmed.
async fn publish(file: Option<&PathBuf>, raw: bool, amqp: &AmqpArgs) -> Result<(), Failure> {
    let topology = amqp.topology()?;
    let url = amqp.url()?;
    let input = read_input(file)?;
    let started = Instant::now();
    let bar = Progress::on_stderr("events");
    let n = ops::publish::publish(&url, &topology, amqp.delivery_limit, &input, raw, &bar)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    bar.finish();
    let took = started.elapsed();
    println!(
        "published {n} event(s) to exchange {} (confirmed by the broker) in {} ({})",
        topology.exchange,
        progress::seconds(took),
        progress::per_second(n, took)
    );
    Ok(())
}

/// `wxnotify prune`: the ledger's finished rows older than `older_than`.
async fn prune(older_than: ops::report::Since, dry_run: bool, db: &DbArgs) -> Result<(), Failure> {
    ops::prune::check_cutoff(older_than.0).map_err(Failure::Config)?;
    let pool = connect_checked(db).await?;
    let pruned = ops::prune::prune(&pool, older_than.0, dry_run, std::time::Duration::from_millis(20))
        .await
        .map_err(|e| Failure::Runtime(format!("prune: {e}")))?;
    println!("{pruned}");
    Ok(())
}

/// `wxnotify status`: the ledger's and the queues' state.
async fn status(format: OutputFormat, amqp: &AmqpArgs, db: &DbArgs) -> Result<(), Failure> {
    let (url, topology) = (amqp.url()?, amqp.topology()?);
    let pool = connect_checked(db).await?;
    let mut status = ops::status::ledger(&pool)
        .await
        .map_err(|e| Failure::Runtime(format!("status: database: {e}")))?;
    let apps: Vec<String> = status.apps.iter().map(|a| a.app_id.clone()).collect();
    status.queues = ops::status::queues(&url, &topology, &apps)
        .await
        .map_err(|e| Failure::Runtime(format!("status: broker: {e}")))?;
    match format {
        OutputFormat::Table => print!("{}", ops::status::table(&status)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default()),
    }
    Ok(())
}

/// `wxnotify platform list | sync`.
async fn platform(command: PlatformCommand) -> Result<(), Failure> {
    use crate::platform::sync;
    match command {
        PlatformCommand::List { format, db } => {
            let pool = connect_checked(&db).await?;
            let rows = sync::list(&pool)
                .await
                .map_err(|e| Failure::Runtime(format!("platform list: {e}")))?;
            match format {
                OutputFormat::Table => print!("{}", sync::table(&rows)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
            }
            Ok(())
        }
        PlatformCommand::AuthorizeUrl {
            component_appid,
            redirect_uri,
            args,
        } => {
            let platforms = platforms_of(&args)?;
            let p = platforms
                .iter()
                .find(|p| p.component_appid == component_appid)
                .ok_or_else(|| {
                    ConfigError::new("--component-appid", "is no [[platforms]] entry of the templates file")
                })?;
            let api =
                crate::platform::client::ComponentApi::new(&args.wechat_api_base, std::time::Duration::from_secs(10))
                    .map_err(|e| ConfigError::new("WECHAT_API_BASE", e))?;
            let pool = connect_checked(&args.db).await?;
            let url = sync::authorize_url(&pool, &api, p, &redirect_uri)
                .await
                .map_err(|e| Failure::Runtime(format!("platform authorize-url: {e}")))?;
            println!("{url}");
            Ok(())
        }
        PlatformCommand::Sync { args } => {
            let platforms = platforms_of(&args)?;
            let libraries = libraries_of(&args)?;
            let api =
                crate::platform::client::ComponentApi::new(&args.wechat_api_base, std::time::Duration::from_secs(10))
                    .map_err(|e| ConfigError::new("WECHAT_API_BASE", e))?;
            let pool = connect_checked(&args.db).await?;
            for p in &platforms {
                let r = sync::sync(&pool, &api, p, &libraries)
                    .await
                    .map_err(|e| Failure::Runtime(format!("platform sync {}: {e}", p.component_appid)))?;
                println!(
                    "platform {}: {} merchant(s) listed by WeChat, {} restored, {} revoked, {} without a refresh token yet; {} authorization code(s) exchanged first",
                    r.component_appid, r.listed, r.restored, r.revoked, r.without_refresh_token, r.exchanged
                );
                if !libraries.is_empty() {
                    let t = &r.templates;
                    println!(
                        "platform {}: library templates: {} on merchants' accounts, {} refused by WeChat (see platform list), {} not added now (asked again on the first delivery)",
                        r.component_appid, t.provisioned, t.refused, t.failed
                    );
                }
            }
            Ok(())
        }
    }
}

/// The templates file's library templates (each (library id, keywords) once).
fn libraries_of(args: &PlatformArgs) -> Result<Vec<crate::template::library::Library>, Failure> {
    let catalog = crate::template::Catalog::load(&args.templates)
        .map_err(|e| ConfigError::new("WXNOTIFY_TEMPLATES", e.to_string()))?;
    let mut libraries: Vec<_> = catalog.libraries().cloned().collect();
    libraries.sort_by(|a, b| (&a.library_id, &a.keywords).cmp(&(&b.library_id, &b.keywords)));
    libraries.dedup();
    Ok(libraries)
}

/// The templates file's platforms with their secrets from the environment.
fn platforms_of(args: &PlatformArgs) -> Result<Vec<crate::platform::tokens::Platform>, Failure> {
    let catalog = crate::template::Catalog::load(&args.templates)
        .map_err(|e| ConfigError::new("WXNOTIFY_TEMPLATES", e.to_string()))?;
    if catalog.platforms.is_empty() {
        return Err(ConfigError::new("WXNOTIFY_TEMPLATES", "has no [[platforms]]").into());
    }
    catalog
        .platforms
        .iter()
        .map(|p| {
            Ok(crate::platform::tokens::Platform {
                component_appid: p.component_appid.trim().to_string(),
                secret: crate::config::env_secret(&p.secret_env)?,
            })
        })
        .collect()
}

/// `wxnotify report`: deliveries by day, failures by errcode.
async fn report(since: ops::report::Since, format: ReportFormat, db: &DbArgs) -> Result<(), Failure> {
    let pool = connect_checked(db).await?;
    let report = ops::report::report(&pool, since)
        .await
        .map_err(|e| Failure::Runtime(format!("report: {e}")))?;
    match format {
        ReportFormat::Table => print!("{}", ops::report::table(&report)),
        ReportFormat::Csv => print!("{}", ops::report::csv(&report)),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
    }
    Ok(())
}

/// `wxnotify trace`: the whole story of the deliveries of some events, or of a user.
async fn trace(
    by: TraceArgs,
    since: Option<ops::report::Since>,
    limit: Option<i64>,
    format: OutputFormat,
    db: &DbArgs,
) -> Result<(), Failure> {
    let query = match by.openid {
        Some(openid) => ops::trace::Query::Openid {
            openid,
            since: since.map_or_else(|| chrono::Utc::now() - chrono::TimeDelta::days(7), |s| s.0),
            limit: limit.unwrap_or(50),
        },
        None if since.is_some() || limit.is_some() => {
            return Err(Failure::Config(
                "--since and --limit go with --openid, not --event-id".into(),
            ));
        }
        None => ops::trace::Query::EventIds { event_ids: by.event_id },
    };
    let pool = connect_checked(db).await?;
    let trace = ops::trace::trace(&pool, query)
        .await
        .map_err(|e| Failure::Runtime(format!("trace: {e}")))?;
    match format {
        OutputFormat::Table => print!("{}", ops::trace::table(&trace)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&trace).unwrap_or_default()),
    }
    Ok(())
}

async fn dlq(command: DlqCommand) -> Result<(), Failure> {
    match command {
        DlqCommand::List { limit, format, amqp } => {
            let rows = ops::dlq::list(&amqp.url()?, &amqp.topology()?, limit)
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            match format {
                OutputFormat::Table => print!("{}", ops::dlq::table(&rows)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
            }
            Ok(())
        }
        DlqCommand::Replay {
            filter,
            limit,
            dry_run,
            format,
            amqp,
            db,
        } => dlq_replay(filter, limit, dry_run, format, &amqp, &db).await,
    }
}

/// `wxnotify dlq replay`: the matching dead letters back into the work queue, then what was
/// replayed and skipped.
async fn dlq_replay(
    filter: ReplayArgs,
    limit: usize,
    dry_run: bool,
    format: OutputFormat,
    amqp: &AmqpArgs,
    db: &DbArgs,
) -> Result<(), Failure> {
    let filter = ops::dlq::ReplayFilter {
        all: filter.all,
        event_ids: filter.event_id,
        reason: filter.reason,
        errcode: filter.errcode,
    };
    let (url, topology) = (amqp.url()?, amqp.topology()?);
    let pool = connect_checked(db).await?;
    let started = Instant::now();
    let bar = Progress::on_stderr("dead letters");
    let report = ops::dlq::replay(&url, &topology, &pool, &filter, limit, dry_run, &bar)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    bar.finish();
    let took = started.elapsed();
    // The table ends with it on stdout; JSON stays alone on stdout, it goes to stderr.
    let summary = |skipped_where: &str| replay_summary(&report, &topology, took, skipped_where);
    match format {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            eprintln!("{}", summary(""));
        }
        OutputFormat::Table => {
            print!("{}", ops::dlq::table(&report.replayed));
            print!("{}", ops::dlq::skipped_table(&report.skipped));
            println!("{}", summary(" (above)"));
        }
    }
    Ok(())
}

/// The last line of a replay: how many were replayed (or would be) and skipped, of how many,
/// where to, how fast; `skipped_where` points at the skipped list.
fn replay_summary(
    report: &ops::dlq::ReplayReport,
    topology: &crate::queue::Topology,
    took: std::time::Duration,
    skipped_where: &str,
) -> String {
    let verb = if report.dry_run { "would replay" } else { "replayed" };
    let skipped = match report.skipped.len() {
        0 => String::new(),
        n => format!("; skipped {n}{skipped_where}"),
    };
    format!(
        "{verb} {} of {} dead letter(s) looked at into {} in {} (replay {}){skipped}; the others stay in {}",
        report.replayed.len(),
        report.scanned,
        topology.queue,
        progress::seconds(took),
        report.replay_id,
        topology.dlq
    )
}

async fn scheduled(command: ScheduledCommand) -> Result<(), Failure> {
    let runtime = |e: sqlx::Error| Failure::Runtime(format!("scheduled: {e}"));
    match command {
        ScheduledCommand::List {
            due_before,
            limit,
            format,
            db,
        } => {
            let pool = connect_checked(&db).await?;
            let rows = ops::scheduled::list(&pool, due_before, limit).await.map_err(runtime)?;
            match format {
                OutputFormat::Table => print!("{}", ops::scheduled::table(&rows)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
            }
            Ok(())
        }
        ScheduledCommand::Cancel { by, app_id, db } => {
            let by = match by.cancel_key {
                Some(cancel_key) => ops::scheduled::CancelBy::Key { cancel_key, app_id },
                None => ops::scheduled::CancelBy::Events(by.event_id),
            };
            let pool = connect_checked(&db).await?;
            let n = ops::scheduled::cancel(&pool, &by).await.map_err(runtime)?;
            println!("cancelled {n} waiting deliver{}", if n == 1 { "y" } else { "ies" });
            Ok(())
        }
    }
}

/// A small pool for `wxnotify migrate`, with the schema brought up to date.
async fn connect_and_migrate(db_args: &DbArgs) -> Result<sqlx::PgPool, Failure> {
    let url = db_args.url()?;
    let pool = db::connect(&url, 2)
        .await
        .map_err(|e| Failure::Runtime(format!("database {}: {e}", redact_url(&url))))?;
    db::migrate(&pool).await.map_err(|e| {
        Failure::Runtime(format!(
            "migrations: {e} (after a run that stopped half way: docs/operations.md, Upgrading)"
        ))
    })?;
    Ok(pool)
}

/// A small pool for an operator's one-shot command, which never migrates: applying a migration
/// may lock a live table, and that is `wxnotify migrate`'s to do, at a time chosen for it. A schema
/// behind this binary is an error (exit 1) that says to run `wxnotify migrate`.
async fn connect_checked(db_args: &DbArgs) -> Result<sqlx::PgPool, Failure> {
    let url = db_args.url()?;
    let pool = db::connect(&url, 2)
        .await
        .map_err(|e| Failure::Runtime(format!("database {}: {e}", redact_url(&url))))?;
    db::check_schema(&pool)
        .await
        .map_err(|e| Failure::Runtime(format!("database {}: {e}", redact_url(&url))))?;
    Ok(pool)
}

fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>, Failure> {
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read(p).map_err(|e| Failure::Config(format!("FILE: cannot read {}: {e}", p.display())))
        }
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| Failure::Runtime(format!("stdin: {e}")))?;
            Ok(buf)
        }
    }
}

impl From<AppError> for Failure {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Config(m) => Failure::Config(m),
            AppError::Runtime(m) => Failure::Runtime(m),
        }
    }
}

async fn worker(args: WorkerArgs, no_migrate: bool) -> Result<(), Failure> {
    let settings = args.into_settings()?;
    let shutdown = shutdown::on_signals();
    match Application::build(settings, !no_migrate, &shutdown).await? {
        Some(app) => Ok(app.run(shutdown).await?),
        None => Ok(()),
    }
}

async fn receiver(args: ReceiverArgs, no_migrate: bool) -> Result<(), Failure> {
    let settings = args.into_settings()?;
    let shutdown = shutdown::on_signals();
    match Receiver::build(settings, !no_migrate, &shutdown).await? {
        Some(receiver) => Ok(receiver.run(shutdown).await?),
        None => Ok(()),
    }
}
