//! `wechat-sim`: the WeChat API simulator (the `wechat_sim` library) over HTTP, for the demo stack
//! and by hand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use wechat_sim::{Faults, PlatformConfig, PlatformPushConfig, PushConfig, PushFormat, Sim, SimConfig};

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
    /// Share of template message results pushed as `failed:freq limit`.
    #[arg(long, default_value_t = 0.0)]
    push_freq_limit_rate: f64,
    /// Pause before pushing again after an answer that was not `success`, milliseconds.
    #[arg(long, default_value_t = 5000)]
    push_retry_gap_ms: u64,
    /// The pushes' format: `xml`, or `json` (a mini program set to JSON).
    #[arg(long, default_value = "xml", value_parser = ["xml", "json"])]
    push_format: String,
    /// Subscribe sends need a consent credit (one per pop-up `accept`, see `POST /sim/events`);
    /// without one they are answered 43101.
    #[arg(long)]
    enforce_consent: bool,
    /// Third-party platforms, as COMPONENT_APPID:SECRET:TOKEN:AESKEY (repeatable; the key is the
    /// platform's 43-character EncodingAESKey). Merchants authorize them through
    /// `POST /sim/platform/authorize`.
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// Push the platforms' authorization events (verify tickets, authorized, updateauthorized,
    /// unauthorized) to this URL, `{component_appid}` replaced by the platform's id (e.g.
    /// http://127.0.0.1:8080/wechat/platform/{component_appid}); none when absent.
    #[arg(long, env = "WECHAT_SIM_PLATFORM_CALLBACK_URL")]
    platform_callback_url: Option<String>,
    /// Push a verify ticket to every platform every N milliseconds (WeChat: 600000); when absent,
    /// only when asked (`api_start_push_ticket`).
    #[arg(long)]
    ticket_every_ms: Option<u64>,
}

/// `--platform COMPONENT_APPID:SECRET:TOKEN:AESKEY` (the secret may hold colons), or what is
/// wrong with it.
fn platform(spec: &str) -> Result<(String, PlatformConfig), String> {
    let wrong = || format!("--platform {spec:?}: expected COMPONENT_APPID:SECRET:TOKEN:AESKEY");
    let (appid, rest) = spec.split_once(':').ok_or_else(wrong)?;
    let (rest, aes_key) = rest.rsplit_once(':').ok_or_else(wrong)?;
    let (secret, token) = rest.rsplit_once(':').ok_or_else(wrong)?;
    if [appid, secret, token].iter().any(|p| p.is_empty()) {
        return Err(wrong());
    }
    if wechat_sim::wire::aes_key(aes_key).is_none() {
        return Err(format!("--platform {appid}: the AES key must be 43 base64 characters"));
    }
    let config = PlatformConfig {
        secret: secret.to_string(),
        token: token.to_string(),
        aes_key: aes_key.to_string(),
    };
    Ok((appid.to_string(), config))
}

/// The simulator's configuration from the flags, or what is wrong with them.
fn sim_config(args: Args) -> Result<SimConfig, String> {
    let mut apps = HashMap::from([(args.app_id.clone(), args.app_secret.clone())]);
    for a in &args.apps {
        let (id, secret) = a
            .split_once(':')
            .ok_or_else(|| format!("--app {a:?}: expected APPID:SECRET"))?;
        apps.insert(id.to_string(), secret.to_string());
    }
    let platforms = args
        .platforms
        .iter()
        .map(|p| platform(p))
        .collect::<Result<HashMap<_, _>, _>>()?;
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
            push_freq_limit_rate: args.push_freq_limit_rate,
            ..Faults::default()
        },
        push: PushConfig {
            callback_url: args.callback_url,
            token: args.callback_token,
            aes_key: args.encoding_aes_key,
            compatible: args.compatible,
            retry_gap_ms: args.push_retry_gap_ms,
            format: if args.push_format == "json" {
                PushFormat::Json
            } else {
                PushFormat::Xml
            },
            ..PushConfig::default()
        },
        enforce_consent: args.enforce_consent,
        platforms,
        platform_push: PlatformPushConfig {
            callback_url: args.platform_callback_url,
            ticket_every_ms: args.ticket_every_ms,
            retry_gap_ms: args.push_retry_gap_ms,
            ..PlatformPushConfig::default()
        },
    };
    if let Some(key) = &config.push.aes_key
        && wechat_sim::wire::aes_key(key).is_none()
    {
        return Err("WECHAT_ENCODING_AES_KEY: must be 43 base64 characters".into());
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let listen = args.listen;
    let config = match sim_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let sim = Sim::new(config);
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("configuration error: WECHAT_SIM_ADDR: cannot listen on {}: {e}", listen);
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!("wechat-sim listening on http://{}", listen);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str]) -> Result<SimConfig, String> {
        sim_config(Args::try_parse_from(std::iter::once("wechat-sim").chain(flags.iter().copied())).unwrap())
    }

    #[test]
    fn consent_json_pushes_and_freq_limit_are_flags() {
        let c = config(&[]).unwrap();
        assert!(!c.enforce_consent);
        assert_eq!(c.push.format, PushFormat::Xml);
        assert_eq!(c.faults.push_freq_limit_rate, 0.0);
        let c = config(&[
            "--enforce-consent",
            "--push-format",
            "json",
            "--push-freq-limit-rate",
            "0.25",
        ])
        .unwrap();
        assert!(c.enforce_consent);
        assert_eq!(c.push.format, PushFormat::Json);
        assert_eq!(c.faults.push_freq_limit_rate, 0.25);
        assert!(Args::try_parse_from(["wechat-sim", "--push-format", "yaml"]).is_err());
    }

    #[test]
    fn a_bad_app_or_key_is_a_configuration_error() {
        assert!(config(&["--app", "wxNoSecret"]).unwrap_err().contains("APPID:SECRET"));
        assert!(config(&["--encoding-aes-key", "short"]).unwrap_err().contains("43"));
        let c = config(&["--app", "wxMini:s2"]).unwrap();
        assert_eq!(c.apps.get("wxMini").map(String::as_str), Some("s2"));
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn platforms_their_callback_url_and_ticket_period_are_flags() {
        let c = config(&[]).unwrap();
        assert!(c.platforms.is_empty());
        assert_eq!(
            c.platform_push,
            PlatformPushConfig {
                retry_gap_ms: 5000,
                ..PlatformPushConfig::default()
            }
        );
        let first = format!("wxC1:s:e:cret:tok:{KEY}");
        let c = config(&[
            "--platform",
            &first,
            "--platform",
            &format!("wxC2:s2:t2:{KEY}"),
            "--platform-callback-url",
            "http://127.0.0.1:8080/wechat/platform/{component_appid}",
            "--ticket-every-ms",
            "600000",
        ])
        .unwrap();
        let p = &c.platforms["wxC1"];
        assert_eq!(
            (p.secret.as_str(), p.token.as_str(), p.aes_key.as_str()),
            ("s:e:cret", "tok", KEY)
        );
        assert_eq!(c.platforms["wxC2"].token, "t2");
        assert_eq!(c.platform_push.ticket_every_ms, Some(600_000));
        assert_eq!(
            c.platform_push.callback_url.as_deref(),
            Some("http://127.0.0.1:8080/wechat/platform/{component_appid}")
        );
    }

    #[test]
    fn a_bad_platform_is_a_configuration_error() {
        assert!(
            config(&["--platform", "wxC:secret"])
                .unwrap_err()
                .contains("COMPONENT_APPID:SECRET:TOKEN:AESKEY")
        );
        assert!(
            config(&["--platform", &format!("wxC::tok:{KEY}")]).is_err(),
            "no secret"
        );
        assert!(config(&["--platform", "wxC:s:t:short"]).unwrap_err().contains("43"));
    }
}
