//! Structured logs to stderr: `RUST_LOG` filters (default `info`), `WXNOTIFY_LOG_FORMAT` picks
//! `text` or `json`. Command output (reports, listings) goes to stdout, logs never do.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn,lapin=off";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        // sqlx logs Postgres notices ("relation … already exists, skipping") at info. lapin logs
        // every channel the broker closes at ERROR, including the passive declares `status` and
        // the gauges make on purpose; what matters of its errors reaches our code, which logs it
        // with its context (a session ended, a publish failed). `RUST_LOG=lapin=debug` shows them.
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for files and log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
