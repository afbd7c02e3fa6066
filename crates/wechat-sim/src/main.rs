//! `wechat-sim`: the WeChat API simulator (the `wechat_sim` library) over HTTP, for the demo stack
//! and by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use wechat_sim::{Faults, PushConfig, Sim, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "wechat-sim",
    version,
    about = "A WeChat server API simulator (tokens, template/subscribe send, faults)."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "WECHAT_SIM_ADDR", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// The default app it knows (same variables the worker reads).
    #[arg(long, env = "WECHAT_APP_ID", default_value = "wx1111111111111111")]
    app_id: String,
    #[arg(
        long,
        env = "WECHAT_APP_SECRET",
        default_value = "sim-secret",
        hide_env_values = true
    )]
    app_secret: String,
    /// More apps, as APPID:SECRET (repeatable).
    #[arg(long = "app")]
    apps: Vec<String>,
    /// Token lifetime in seconds (WeChat: 7200).
    #[arg(long, default_value_t = 7200)]
    token_ttl_secs: u64,
    /// How long a replaced token keeps working, seconds (WeChat: about 300).
    #[arg(long, default_value_t = 300)]
    overlap_secs: u64,
    /// Known template ids, comma-separated; any id is accepted when absent (except INVALID*).
    #[arg(long, value_delimiter = ',')]
    templates: Option<Vec<String>>,
    /// Openids that do not follow the account (43004), comma-separated.
    #[arg(long, value_delimiter = ',')]
    unsubscribed: Vec<String>,
    /// /cgi-bin/token calls a day per app before 45009.
    #[arg(long, default_value_t = 2000)]
    token_daily_quota: u64,
    /// Share of sends answered -1 (system busy).
    #[arg(long, default_value_t = 0.0)]
    busy_rate: f64,
    /// Share of sends answered HTTP 502.
    #[arg(long, default_value_t = 0.0)]
    http_5xx_rate: f64,
    /// Delay of every send's answer, milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Revoke the tokens after every N accepted sends (0: never).
    #[arg(long, default_value_t = 0)]
    rotate_every: u64,
    /// Push results and follower events to this server URL (`{appid}` is replaced by the app's
    /// id, e.g. http://127.0.0.1:8080/wechat/{appid}); no pushes when absent.
    #[arg(long, env = "WECHAT_SIM_CALLBACK_URL")]
    callback_url: Option<String>,
    /// The token pushes are signed with (the receiver's variable).
    #[arg(long, env = "WECHAT_CALLBACK_TOKEN", default_value = "", hide_env_values = true)]
    callback_token: String,
    /// Encrypt pushes with this EncodingAESKey (safe mode; the receiver's variable).
    #[arg(long, env = "WECHAT_ENCODING_AES_KEY", hide_env_values = true)]
    encoding_aes_key: Option<String>,
    /// With an AES key: compatible mode (plain fields beside Encrypt) instead of safe mode.
    #[arg(long)]
    compatible: bool,
    /// Delay between accepting a message and pushing its result, milliseconds.
    #[arg(long, default_value_t = 1000)]
    push_delay_ms: u64,
    /// Share of results pushed as `failed:user block`.
    #[arg(long, default_value_t = 0.0)]
    push_user_block_rate: f64,
    /// Share of results pushed as `failed: system failed`.
    #[arg(long, default_value_t = 0.0)]
    push_system_failed_rate: f64,
    /// Pause before pushing again after an answer that was not `success`, milliseconds.
    #[arg(long, default_value_t = 5000)]
    push_retry_gap_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut apps = HashMap::from([(args.app_id.clone(), args.app_secret.clone())]);
    for a in &args.apps {
        match a.split_once(':') {
            Some((id, secret)) => {
                apps.insert(id.to_string(), secret.to_string());
            }
            None => {
                eprintln!("configuration error: --app {a:?}: expected APPID:SECRET");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let config = SimConfig {
        apps,
        token_ttl: Duration::from_secs(args.token_ttl_secs.max(1)),
        overlap: Duration::from_secs(args.overlap_secs),
        templates: args.templates.map(|t| t.into_iter().collect()),
        unsubscribed: args.unsubscribed.into_iter().collect(),
        refused: Default::default(),
        token_daily_quota: args.token_daily_quota,
        faults: Faults {
            busy_rate: args.busy_rate,
            http_5xx_rate: args.http_5xx_rate,
            latency_ms: args.latency_ms,
            rotate_every: args.rotate_every,
            push_delay_ms: args.push_delay_ms,
            push_user_block_rate: args.push_user_block_rate,
            push_system_failed_rate: args.push_system_failed_rate,
            ..Faults::default()
        },
        push: PushConfig {
            callback_url: args.callback_url,
            token: args.callback_token,
            aes_key: args.encoding_aes_key,
            compatible: args.compatible,
            retry_gap_ms: args.push_retry_gap_ms,
            ..PushConfig::default()
        },
    };
    if let Some(key) = &config.push.aes_key
        && wechat_sim::wire::aes_key(key).is_none()
    {
        eprintln!("configuration error: WECHAT_ENCODING_AES_KEY: must be 43 base64 characters");
        return std::process::ExitCode::from(2);
    }
    let sim = Sim::new(config);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "configuration error: WECHAT_SIM_ADDR: cannot listen on {}: {e}",
                args.listen
            );
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!("wechat-sim listening on http://{}", args.listen);
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    match axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
