//! Settings, from flags or environment variables (docs/interface.md §6; a `.env` file is read when present),
//! validated once into plain structs. A bad setting is a [`ConfigError`] that names it (exit 2).
//! Secrets are `SecretString`s: their `Debug` prints `[REDACTED]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;

use crate::queue::topology::Topology;
use crate::retry::RetryPolicy;
use crate::template::Catalog;
use crate::tls::{self, AmqpUrl};
use crate::wechat::TokenApi;

pub use crate::redact::redact_url;

/// A setting that cannot be used; `setting` is the env var (or flag) name.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL of the ledger.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/wxnotify",
        hide_env_values = true
    )]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL; the nodes of a cluster as several URLs separated by commas.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// The topic exchange the booking app publishes to.
    #[arg(long, env = "WXNOTIFY_EXCHANGE", default_value = "booking.events")]
    pub exchange: String,
    /// The work queue; the dead-letter and retry queues are named after it.
    #[arg(long, env = "WXNOTIFY_QUEUE", default_value = "wxnotify.deliveries")]
    pub queue: String,
    /// Quorum-queue delivery limit: a message redelivered this often (e.g. it crashes workers) is
    /// dead-lettered `delivery_limit`. Part of the work queue's declaration: keep it equal everywhere.
    #[arg(long, env = "WXNOTIFY_DELIVERY_LIMIT", default_value_t = 20)]
    pub delivery_limit: u32,
}

impl AmqpArgs {
    pub fn topology(&self) -> Result<Topology, ConfigError> {
        for (setting, name) in [("WXNOTIFY_EXCHANGE", &self.exchange), ("WXNOTIFY_QUEUE", &self.queue)] {
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(ConfigError::new(
                    setting,
                    format!("{name:?} is not a usable name (1–200 bytes, not amq.*)"),
                ));
            }
        }
        Ok(Topology::new(&self.exchange, &self.queue))
    }

    /// The URL (each node's, for a cluster), checked: its scheme, and the CA file of a
    /// `cacertfile` parameter (amqps:// only), which must hold a PEM certificate.
    pub fn url(&self) -> Result<SecretString, ConfigError> {
        let nodes = crate::queue::node_urls(&self.amqp_url);
        if nodes.is_empty() {
            return Err(ConfigError::new("AMQP_URL", "is empty"));
        }
        for (i, node) in nodes.iter().enumerate() {
            // "URL 2 of 3: …" where there are several.
            let which = |message: String| match nodes.len() {
                1 => ConfigError::new("AMQP_URL", message),
                n => ConfigError::new("AMQP_URL", format!("URL {} of {n}: {message}", i + 1)),
            };
            if !(node.starts_with("amqp://") || node.starts_with("amqps://")) {
                return Err(which("must start with amqp:// or amqps://".into()));
            }
            let parsed = AmqpUrl::parse(node).map_err(which)?;
            if let Some(ca) = &parsed.ca_file {
                tls::read_ca_file(ca).map_err(|e| which(format!("cacertfile: {e}")))?;
            }
        }
        Ok(SecretString::from(self.amqp_url.clone()))
    }
}

impl DbArgs {
    /// The URL, checked as sqlx reads it (an `sslmode` it does not know is refused here, not at
    /// every connection attempt), with the files of `sslrootcert` (a PEM certificate), `sslcert`
    /// and `sslkey` readable.
    pub fn url(&self) -> Result<SecretString, ConfigError> {
        let url = &self.database_url;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must start with postgres://"));
        }
        PgConnectOptions::from_str(url).map_err(|e| {
            let message = match e {
                sqlx::Error::Configuration(inner) => inner.to_string(),
                e => e.to_string(),
            };
            ConfigError::new("DATABASE_URL", message)
        })?;
        if let Ok(parsed) = reqwest::Url::parse(url) {
            for (key, value) in parsed.query_pairs() {
                // sqlx takes a value that looks like PEM as the certificate itself.
                if value.trim_start().starts_with("-----BEGIN") {
                    continue;
                }
                let path = Path::new(value.as_ref());
                let checked = match key.as_ref() {
                    "sslrootcert" | "ssl-root-cert" | "ssl-ca" => tls::read_ca_file(path).map(drop),
                    "sslcert" | "ssl-cert" | "sslkey" | "ssl-key" => std::fs::File::open(path)
                        .map(drop)
                        .map_err(|e| format!("cannot read {}: {e}", path.display())),
                    _ => Ok(()),
                };
                checked.map_err(|e| ConfigError::new("DATABASE_URL", format!("{key}: {e}")))?;
            }
        }
        Ok(SecretString::from(url.clone()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    /// Base URL of WeChat's API (the simulator's address in tests and the demo).
    #[arg(long, env = "WECHAT_API_BASE", default_value = "https://api.weixin.qq.com")]
    pub wechat_api_base: String,
    /// The default app's id (the official account events without `app_id` go to).
    #[arg(long, env = "WECHAT_APP_ID")]
    pub wechat_app_id: Option<String>,
    /// The default app's secret.
    #[arg(long, env = "WECHAT_APP_SECRET", hide_env_values = true)]
    pub wechat_app_secret: Option<String>,
    /// Token API: `stable` (/cgi-bin/stable_token) or `classic` (/cgi-bin/token).
    #[arg(long, env = "WECHAT_TOKEN_API", value_enum, default_value = "stable")]
    pub wechat_token_api: TokenApi,
    /// The templates file (TOML).
    #[arg(long, env = "WXNOTIFY_TEMPLATES", default_value = "templates.toml")]
    pub templates: PathBuf,
    /// Unacknowledged messages the broker may hand this worker at once.
    #[arg(long, env = "WXNOTIFY_PREFETCH", default_value_t = 1024)]
    pub prefetch: u16,
    /// Deliveries processed at once (sends in flight); at most the prefetch.
    #[arg(long, env = "WXNOTIFY_CONCURRENCY", default_value_t = 1000)]
    pub concurrency: usize,
    /// Send attempts per delivery before it is dead-lettered `retries_exhausted`.
    #[arg(long, env = "WXNOTIFY_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// First retry delay in seconds; doubles per attempt, with jitter.
    #[arg(long, env = "WXNOTIFY_RETRY_BASE_SECS", default_value_t = 1.0)]
    pub retry_base_secs: f64,
    /// Longest retry delay in seconds (before jitter).
    #[arg(long, env = "WXNOTIFY_RETRY_MAX_SECS", default_value_t = 300.0)]
    pub retry_max_secs: f64,
    /// Health and metrics endpoint.
    #[arg(long, env = "WXNOTIFY_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
    /// HTTP timeout for WeChat calls, seconds.
    #[arg(long, env = "WXNOTIFY_HTTP_TIMEOUT_SECS", default_value_t = 10.0)]
    pub http_timeout_secs: f64,
    /// Replace a token this many seconds before it expires.
    #[arg(long, env = "WXNOTIFY_TOKEN_REFRESH_MARGIN_SECS", default_value_t = 180)]
    pub token_refresh_margin_secs: u64,
    /// Seconds in-flight deliveries get to finish after SIGTERM before they are handed back.
    #[arg(long, env = "WXNOTIFY_SHUTDOWN_GRACE_SECS", default_value_t = 20.0)]
    pub shutdown_grace_secs: f64,
    /// Postgres connections of this worker.
    #[arg(long, env = "WXNOTIFY_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// A message body larger than this is dead-lettered `invalid_event` without being parsed.
    #[arg(long, env = "WXNOTIFY_MAX_BODY_BYTES", default_value_t = 65536)]
    pub max_body_bytes: usize,
    /// Sends a second per app for the whole fleet: each live worker takes an equal share.
    /// Unset: no limit.
    #[arg(long, env = "WXNOTIFY_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
}

/// A WeChat app and its secret.
#[derive(Clone)]
pub struct AppCredentials {
    pub app_id: String,
    pub secret: Arc<SecretString>,
    /// Sends a second for the whole fleet: its `[[apps]]` `rate_limit`, else `WXNOTIFY_RATE_LIMIT`.
    pub rate_limit: Option<f64>,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("secret", &"[REDACTED]")
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// Everything a worker needs, validated.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub database_url: SecretString,
    pub db_pool: u32,
    pub amqp_url: SecretString,
    pub topology: Topology,
    pub delivery_limit: u32,
    pub wechat_api_base: String,
    pub token_api: TokenApi,
    /// The default app first, then the templates file's `[[apps]]`.
    pub apps: Vec<AppCredentials>,
    /// The third-party platforms whose merchants this worker sends for (docs/interface.md §10).
    pub platforms: Vec<crate::platform::tokens::Platform>,
    pub catalog: Arc<Catalog>,
    pub prefetch: u16,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub admin_addr: SocketAddr,
    pub http_timeout: Duration,
    pub token_refresh_margin: Duration,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    /// `WXNOTIFY_RATE_LIMIT`: sends a second per app, shared by the live workers.
    pub rate_limit: Option<f64>,
    /// Unique per process: owner of claims in the ledger.
    pub worker_id: String,
}

impl WorkerSettings {
    /// The effective settings as `NAME=value` lines (`wxnotify worker --print-config`), each under
    /// the environment variable that sets it; passwords and secrets masked.
    pub fn effective(&self) -> String {
        let mut lines = self.connection_lines();
        lines.extend(self.tuning_lines());
        lines.push(("WXNOTIFY_TEMPLATES", self.templates_summary()));
        let mut out = String::new();
        for (name, value) in lines {
            out.push_str(&format!("{name}={value}\n"));
        }
        out
    }

    /// Where the worker connects: database, broker, WeChat and the default app.
    fn connection_lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", redact_url(&self.database_url)),
            ("WXNOTIFY_DB_POOL", self.db_pool.to_string()),
            ("AMQP_URL", redact_url(&self.amqp_url)),
            ("WXNOTIFY_EXCHANGE", self.topology.exchange.clone()),
            ("WXNOTIFY_QUEUE", self.topology.queue.clone()),
            ("WXNOTIFY_DELIVERY_LIMIT", self.delivery_limit.to_string()),
            ("WECHAT_API_BASE", self.wechat_api_base.clone()),
            (
                "WECHAT_TOKEN_API",
                match self.token_api {
                    TokenApi::Stable => "stable".into(),
                    TokenApi::Classic => "classic".into(),
                },
            ),
            ("WECHAT_APP_ID", self.apps[0].app_id.clone()),
            ("WECHAT_APP_SECRET", "*** (set)".into()),
        ]
    }

    /// How the worker paces, retries and bounds its work.
    fn tuning_lines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WXNOTIFY_PREFETCH", self.prefetch.to_string()),
            ("WXNOTIFY_CONCURRENCY", self.concurrency.to_string()),
            ("WXNOTIFY_MAX_ATTEMPTS", self.retry.max_attempts.to_string()),
            ("WXNOTIFY_RETRY_BASE_SECS", self.retry.base.as_secs_f64().to_string()),
            (
                "WXNOTIFY_RETRY_MAX_SECS",
                self.retry.max_delay.as_secs_f64().to_string(),
            ),
            ("WXNOTIFY_ADMIN_ADDR", self.admin_addr.to_string()),
            (
                "WXNOTIFY_HTTP_TIMEOUT_SECS",
                self.http_timeout.as_secs_f64().to_string(),
            ),
            (
                "WXNOTIFY_TOKEN_REFRESH_MARGIN_SECS",
                self.token_refresh_margin.as_secs().to_string(),
            ),
            (
                "WXNOTIFY_SHUTDOWN_GRACE_SECS",
                self.shutdown_grace.as_secs_f64().to_string(),
            ),
            ("WXNOTIFY_MAX_BODY_BYTES", self.max_body_bytes.to_string()),
            (
                "WXNOTIFY_RATE_LIMIT",
                self.rate_limit.map_or("unset (no limit)".into(), |r| {
                    format!("{r} sends/s per app, shared by the live workers")
                }),
            ),
        ]
    }

    /// The templates (how many, how many held) and the apps they send for.
    fn templates_summary(&self) -> String {
        let held = self.catalog.templates().iter().filter(|t| t.is_held()).count();
        format!(
            "{} templates ({held} held: send_at, quiet hours, expiry or cancellation); apps {}",
            self.catalog.templates().len(),
            self.apps
                .iter()
                .map(|a| a.app_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn secs(setting: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(setting, format!("{value} is not a positive number of seconds")))
}

pub(crate) fn env_secret(name: &str) -> Result<SecretString, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(SecretString::from(v.trim().to_string())),
        Ok(_) => Err(ConfigError::new(name, "is empty")),
        Err(_) => Err(ConfigError::new(name, "is not set")),
    }
}

impl WorkerArgs {
    pub fn into_settings(self) -> Result<WorkerSettings, ConfigError> {
        let default_app = self.default_app()?;
        crate::wechat::WechatClient::new(&self.wechat_api_base, Duration::from_secs(1))
            .map_err(|e| ConfigError::new("WECHAT_API_BASE", e))?;
        let catalog =
            Catalog::load(&self.templates).map_err(|e| ConfigError::new("WXNOTIFY_TEMPLATES", e.to_string()))?;
        let apps = all_apps(default_app, &catalog)?;
        let platforms = catalog
            .platforms
            .iter()
            .map(|p| {
                Ok(crate::platform::tokens::Platform {
                    component_appid: p.component_appid.trim().to_string(),
                    secret: env_secret(&p.secret_env)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        self.check_limits()?;
        let retry = self.retry_policy()?;
        Ok(WorkerSettings {
            platforms,
            database_url: self.db.url()?,
            db_pool: self.db_pool,
            amqp_url: self.amqp.url()?,
            topology: self.amqp.topology()?,
            delivery_limit: self.amqp.delivery_limit,
            wechat_api_base: self.wechat_api_base,
            token_api: self.wechat_token_api,
            apps,
            catalog: Arc::new(catalog),
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            retry,
            admin_addr: self.admin_addr,
            http_timeout: secs("WXNOTIFY_HTTP_TIMEOUT_SECS", self.http_timeout_secs)?,
            token_refresh_margin: Duration::from_secs(self.token_refresh_margin_secs),
            shutdown_grace: secs("WXNOTIFY_SHUTDOWN_GRACE_SECS", self.shutdown_grace_secs)?,
            max_body_bytes: self.max_body_bytes,
            rate_limit: self.rate_limit,
            worker_id: new_worker_id(),
        })
    }

    /// The default app: `WECHAT_APP_ID` and `WECHAT_APP_SECRET`, both required.
    fn default_app(&self) -> Result<AppCredentials, ConfigError> {
        let app_id = self
            .wechat_app_id
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ConfigError::new("WECHAT_APP_ID", "is not set (the default WeChat app's id)"))?;
        let secret = self
            .wechat_app_secret
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| ConfigError::new("WECHAT_APP_SECRET", "is not set (the default WeChat app's secret)"))?;
        Ok(AppCredentials {
            app_id: app_id.trim().to_string(),
            secret: Arc::new(SecretString::from(secret.trim().to_string())),
            rate_limit: self.rate_limit,
        })
    }

    /// Each number setting within its bounds.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return Err(ConfigError::new("WXNOTIFY_PREFETCH", "must be at least 1"));
        }
        if self.concurrency == 0 || self.concurrency > usize::from(self.prefetch) {
            return Err(ConfigError::new(
                "WXNOTIFY_CONCURRENCY",
                format!("must be between 1 and WXNOTIFY_PREFETCH ({})", self.prefetch),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::new("WXNOTIFY_MAX_ATTEMPTS", "must be between 1 and 100"));
        }
        if self.amqp.delivery_limit < 2 {
            return Err(ConfigError::new("WXNOTIFY_DELIVERY_LIMIT", "must be at least 2"));
        }
        if !(5..=3600).contains(&self.token_refresh_margin_secs) {
            return Err(ConfigError::new(
                "WXNOTIFY_TOKEN_REFRESH_MARGIN_SECS",
                "must be between 5 and 3600",
            ));
        }
        if !(1..=200).contains(&self.db_pool) {
            return Err(ConfigError::new("WXNOTIFY_DB_POOL", "must be between 1 and 200"));
        }
        if !(256..=16 << 20).contains(&self.max_body_bytes) {
            return Err(ConfigError::new(
                "WXNOTIFY_MAX_BODY_BYTES",
                "must be between 256 and 16777216",
            ));
        }
        if let Some(r) = self.rate_limit
            && !(r.is_finite() && (0.01..=100_000.0).contains(&r))
        {
            return Err(ConfigError::new(
                "WXNOTIFY_RATE_LIMIT",
                "must be a number of sends a second between 0.01 and 100000",
            ));
        }
        Ok(())
    }

    /// The retry policy: attempts and backoff from the settings, the broker's delivery limit.
    fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        Ok(RetryPolicy {
            delivery_limit: self.amqp.delivery_limit,
            ..RetryPolicy::new(
                self.max_attempts,
                secs("WXNOTIFY_RETRY_BASE_SECS", self.retry_base_secs)?,
                secs("WXNOTIFY_RETRY_MAX_SECS", self.retry_max_secs)?,
            )
        })
    }
}

/// The default app, then each app of `[[apps]]` (its secret from its environment variable); every
/// template's app must be one of them.
fn all_apps(default_app: AppCredentials, catalog: &Catalog) -> Result<Vec<AppCredentials>, ConfigError> {
    let mut apps = vec![default_app];
    for app in &catalog.apps {
        if apps.iter().any(|a| a.app_id == app.app_id) {
            return Err(ConfigError::new(
                "WXNOTIFY_TEMPLATES",
                format!(
                    "[[apps]] lists {}, which is already the default app (WECHAT_APP_ID)",
                    app.app_id
                ),
            ));
        }
        apps.push(AppCredentials {
            app_id: app.app_id.clone(),
            secret: Arc::new(env_secret(&app.secret_env)?),
            rate_limit: app.rate_limit.or(apps[0].rate_limit),
        });
    }
    for t in catalog.templates() {
        if let Some(a) = &t.app_id
            && !apps.iter().any(|x| &x.app_id == a)
        {
            return Err(ConfigError::new(
                "WXNOTIFY_TEMPLATES",
                format!(
                    "template {} is for app {a}, which is neither WECHAT_APP_ID nor in [[apps]]",
                    t.label
                ),
            ));
        }
    }
    Ok(apps)
}

/// `host-pid-random`: readable in the ledger, unique across restarts.
pub fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let rand = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{rand}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(url: &str) -> Result<SecretString, ConfigError> {
        DbArgs {
            database_url: url.into(),
        }
        .url()
    }

    #[test]
    fn database_urls_are_checked_as_sqlx_reads_them() {
        assert!(db("postgres://u:p@h:5432/db?sslmode=require").is_ok());
        let e = db("postgres://u:secret@h:5432/db?sslmode=verify-fulll").unwrap_err();
        assert_eq!(e.setting, "DATABASE_URL");
        assert!(
            e.message.contains("verify-fulll") && !e.message.contains("secret"),
            "{e}"
        );
    }

    #[test]
    fn the_certificate_files_of_a_database_url_must_be_readable() {
        for key in ["sslrootcert", "ssl-root-cert", "sslcert", "sslkey"] {
            let e = db(&format!(
                "postgres://u:p@h/db?sslmode=verify-full&{key}=/nonexistent/x.pem"
            ))
            .unwrap_err();
            assert_eq!(e.setting, "DATABASE_URL");
            assert!(
                e.message.starts_with(&format!("{key}: cannot read /nonexistent/x.pem")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_cacertfile_must_be_readable_and_on_an_amqps_url() {
        let amqp = |url: &str| {
            AmqpArgs {
                amqp_url: url.into(),
                exchange: "x".into(),
                queue: "q".into(),
                delivery_limit: 20,
            }
            .url()
        };
        assert!(amqp("amqps://u:p@h/%2f").is_ok());
        let e = amqp("amqps://u:p@h/%2f?cacertfile=/nonexistent/ca.pem").unwrap_err();
        assert_eq!(e.setting, "AMQP_URL");
        assert!(
            e.message.starts_with("cacertfile: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let e = amqp("amqp://u:p@h/%2f?cacertfile=/nonexistent/ca.pem").unwrap_err();
        assert!(e.message.contains("needs an amqps:// URL"), "{e}");
        // A cluster: each node's URL is checked, and the message says which.
        let e = amqp("amqps://u:p@a/%2f,amqps://u:p@b/%2f?cacertfile=/nonexistent/ca.pem").unwrap_err();
        assert!(
            e.message
                .starts_with("URL 2 of 2: cacertfile: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
