//! `wxnotify receiver`'s settings (docs/interface.md §6, §9): the apps it serves, each with its callback
//! token and optional AES key from the environment, kept as secrets (`Debug` masks them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use secrecy::SecretString;

use super::crypto::AesKey;
use crate::config::{AmqpArgs, ConfigError, DbArgs, env_secret};
use crate::template::{AppSpec, Catalog, PlatformSpec};

#[derive(Debug, Clone, Args)]
pub struct ReceiverArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The default app's id.
    #[arg(long, env = "WECHAT_APP_ID")]
    pub wechat_app_id: Option<String>,
    /// The default app's callback token (server configuration), 3–32 characters.
    #[arg(long, env = "WECHAT_CALLBACK_TOKEN", hide_env_values = true)]
    pub wechat_callback_token: Option<String>,
    /// The default app's EncodingAESKey (43 characters); needed for safe and compatible modes.
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY", hide_env_values = true)]
    pub wechat_encoding_aes_key: Option<String>,
    /// The templates file: its `[[apps]]` are served too (`callback_token_env`, `aes_key_env`).
    #[arg(long, env = "WXNOTIFY_TEMPLATES", default_value = "templates.toml")]
    pub templates: PathBuf,
    /// Where WeChat's pushes arrive: `POST /wechat/{app_id}` (and the `GET` URL check).
    #[arg(long, env = "WXNOTIFY_RECEIVER_ADDR", default_value = "0.0.0.0:8080")]
    pub receiver_addr: SocketAddr,
    /// Most connections open at once on WXNOTIFY_RECEIVER_ADDR; the next one waits until one
    /// closes. Allow as many open files (`ulimit -n`), and more.
    #[arg(long, env = "WXNOTIFY_RECEIVER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub receiver_max_connections: usize,
    /// Health and metrics endpoint (use another port than a worker's on the same host).
    #[arg(long, env = "WXNOTIFY_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,
    /// RabbitMQ: when given, a push Postgres cannot take within 3 s is queued durably in
    /// `<WXNOTIFY_QUEUE>.pushes` and answered `success`, and stored from there later; without it,
    /// such a push is answered 503 and WeChat tries again.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// The work queue's name; the pushes queue is named after it.
    #[arg(long, env = "WXNOTIFY_QUEUE", default_value = "wxnotify.deliveries")]
    pub queue: String,
    /// Postgres connections of the receiver.
    #[arg(long, env = "WXNOTIFY_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Base URL of WeChat's API: a third-party platform's authorization codes are exchanged there
    /// as soon as their push is stored.
    #[arg(long, env = "WECHAT_API_BASE", default_value = "https://api.weixin.qq.com")]
    pub wechat_api_base: String,
}

/// One app the receiver serves.
pub(crate) struct CallbackApp {
    pub token: SecretString,
    /// Safe and compatible modes; `None`: plaintext pushes only.
    pub aes_key: Option<AesKey>,
}

impl std::fmt::Debug for CallbackApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackApp")
            .field("token", &"[REDACTED]")
            .field("aes_key", &self.aes_key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// Everything the receiver needs, validated.
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub database_url: SecretString,
    pub db_pool: u32,
    pub receiver_addr: SocketAddr,
    /// Most connections open at once on `receiver_addr`.
    pub max_connections: usize,
    pub admin_addr: SocketAddr,
    /// The broker and work queue for pushes Postgres cannot take in time; `None`: answer 503.
    pub spill: Option<(SecretString, String)>,
    /// app id → its callback secrets.
    pub(crate) apps: Arc<HashMap<String, CallbackApp>>,
    /// component appid → the platform's token and key (docs/interface.md §10).
    pub(crate) platforms: Arc<HashMap<String, CallbackApp>>,
    /// The platforms' AppSecrets, and where WeChat's component APIs are, for the code exchange.
    pub(crate) platform_secrets: Arc<HashMap<String, SecretString>>,
    pub(crate) wechat_api_base: String,
}

/// A callback token: WeChat's console takes 3–32 letters and digits.
fn token(setting: &str, value: SecretString) -> Result<SecretString, ConfigError> {
    use secrecy::ExposeSecret;
    let len = value.expose_secret().chars().count();
    if !(3..=32).contains(&len) {
        return Err(ConfigError::new(setting, format!("must be 3–32 characters, has {len}")));
    }
    Ok(value)
}

fn aes_key(setting: &str, value: &SecretString) -> Result<AesKey, ConfigError> {
    use secrecy::ExposeSecret;
    AesKey::parse(value.expose_secret()).map_err(|e| ConfigError::new(setting, e.to_string()))
}

fn present(value: Option<String>) -> Option<SecretString> {
    value
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

impl ReceiverArgs {
    pub fn into_settings(self) -> Result<ReceiverSettings, ConfigError> {
        let (app_id, default_app) = self.default_app()?;
        let mut apps = HashMap::new();
        apps.insert(app_id, default_app);
        let catalog =
            Catalog::load(&self.templates).map_err(|e| ConfigError::new("WXNOTIFY_TEMPLATES", e.to_string()))?;
        for app in &catalog.apps {
            if apps.contains_key(&app.app_id) {
                return Err(ConfigError::new(
                    "WXNOTIFY_TEMPLATES",
                    format!(
                        "[[apps]] lists {}, which is already the default app (WECHAT_APP_ID)",
                        app.app_id
                    ),
                ));
            }
            apps.insert(app.app_id.clone(), listed_app(app)?);
        }
        if !(1..=200).contains(&self.db_pool) {
            return Err(ConfigError::new("WXNOTIFY_DB_POOL", "must be between 1 and 200"));
        }
        if !(1..=1_000_000).contains(&self.receiver_max_connections) {
            return Err(ConfigError::new(
                "WXNOTIFY_RECEIVER_MAX_CONNECTIONS",
                "must be between 1 and 1000000",
            ));
        }
        let mut platforms = HashMap::new();
        let mut platform_secrets = HashMap::new();
        for p in &catalog.platforms {
            let id = p.component_appid.trim().to_string();
            platform_secrets.insert(id.clone(), env_secret(&p.secret_env)?);
            platforms.insert(id, listed_platform(p)?);
        }
        if !platforms.is_empty() {
            crate::platform::client::ComponentApi::new(&self.wechat_api_base, std::time::Duration::from_secs(1))
                .map_err(|e| ConfigError::new("WECHAT_API_BASE", e))?;
        }
        Ok(ReceiverSettings {
            platforms: Arc::new(platforms),
            platform_secrets: Arc::new(platform_secrets),
            wechat_api_base: self.wechat_api_base.clone(),
            spill: self.spill()?,
            database_url: self.db.url()?,
            db_pool: self.db_pool,
            receiver_addr: self.receiver_addr,
            max_connections: self.receiver_max_connections,
            admin_addr: self.admin_addr,
            apps: Arc::new(apps),
        })
    }

    /// The default app's id and callback settings: `WECHAT_APP_ID`, `WECHAT_CALLBACK_TOKEN` (both
    /// required) and `WECHAT_ENCODING_AES_KEY`.
    fn default_app(&self) -> Result<(String, CallbackApp), ConfigError> {
        let app_id = self
            .wechat_app_id
            .as_deref()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConfigError::new("WECHAT_APP_ID", "is not set (the default WeChat app's id)"))?;
        let default_token = present(self.wechat_callback_token.clone()).ok_or_else(|| {
            ConfigError::new(
                "WECHAT_CALLBACK_TOKEN",
                "is not set (the default app's server-configuration token)",
            )
        })?;
        let callback = CallbackApp {
            token: token("WECHAT_CALLBACK_TOKEN", default_token)?,
            aes_key: present(self.wechat_encoding_aes_key.clone())
                .map(|k| aes_key("WECHAT_ENCODING_AES_KEY", &k))
                .transpose()?,
        };
        Ok((app_id, callback))
    }

    /// Where pushes spill to when the database is away: the broker URL and the work queue, checked
    /// as the worker checks them; `None` without `AMQP_URL`.
    fn spill(&self) -> Result<Option<(SecretString, String)>, ConfigError> {
        let Some(url) = self.amqp_url.clone().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        // Checked as the worker checks them (the exchange is the worker's business).
        let amqp = AmqpArgs {
            amqp_url: url,
            exchange: "booking.events".into(),
            queue: self.queue.clone(),
            delivery_limit: 2,
        };
        amqp.topology()?;
        Ok(Some((amqp.url()?, self.queue.clone())))
    }
}

/// The callback settings of an app of `[[apps]]`: its token (required) and AES key from the
/// environment variables it names.
fn listed_app(app: &AppSpec) -> Result<CallbackApp, ConfigError> {
    let token_env = app.callback_token_env.as_deref().ok_or_else(|| {
        ConfigError::new(
            "WXNOTIFY_TEMPLATES",
            format!(
                "[[apps]] {}: no callback_token_env (the receiver checks the pushes of every app)",
                app.app_id
            ),
        )
    })?;
    Ok(CallbackApp {
        token: token(token_env, env_secret(token_env)?)?,
        aes_key: app
            .aes_key_env
            .as_deref()
            .map(|name| aes_key(name, &env_secret(name)?))
            .transpose()?,
    })
}

/// A platform's callback settings: its token and key (its pushes are always encrypted), from the
/// environment variables it names.
fn listed_platform(p: &PlatformSpec) -> Result<CallbackApp, ConfigError> {
    Ok(CallbackApp {
        token: token(&p.callback_token_env, env_secret(&p.callback_token_env)?)?,
        aes_key: Some(aes_key(&p.aes_key_env, &env_secret(&p.aes_key_env)?)?),
    })
}
