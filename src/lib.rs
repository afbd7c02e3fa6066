//! # wxnotify
//!
//! Turns booking events from RabbitMQ into WeChat notifications, exactly once in effect.
//!
//! Data flows one way; each step lives in its own module:
//!
//! ```text
//! queue (consume) → delivery::intake (event, template, render; pure) → ledger (claim)
//!   → token (shared access token) → wechat (send) → delivery::judge (pure: the plan)
//!   → delivery::carry_out (ledger record → ack / retry tier / dead-letter)
//! ```
//!
//! - `delivery`: one message's trip. `intake` and `judge` are pure functions that unit tests
//!   call over the whole fate table; `carry_out` is the only code that touches the broker for a
//!   message; `db_retry` waits out the database; `mod.rs` is the pipeline.
//! - `fate`: the vocabulary of fates, owned here only: `Plan`, `Outcome`, `Finish`, `Status`,
//!   `DeadReason`, `DueFate`, `Reopen`. The judge speaks it, the ledger flattens it.
//! - [`retry`]: all policy as data: errcode classes, backoff tiers, the dedup window, caps.
//! - `schedule`: deliveries that wait: timing rules, `due()`, the hold store, the release loop.
//! - [`event`], [`ids`]: `BookingEvent::parse` (every docs/interface.md §1 limit), the delivery
//!   key, `client_msg_id`; `AppId`, `OpenId`.
//! - `template`: the templates file, MiniJinja with our `datetime`/`yuan` filters, start-up checks.
//! - [`wechat`]: the HTTP client; WeChat's keyword rules and errcodes come from `wechat-rules`.
//! - [`token`]: one access token per app for every process, single-flight refresh through Postgres.
//! - `ledger`: claims with leases, attempts and outcomes in Postgres, batched.
//! - [`queue`]: topology, our headers, a publisher with bounded confirms, the session.
//! - `worker`: the broker session only: consume, permits, reconnect, drain, sampled gauges.
//! - [`app`]: the one start-up path (admin endpoint, database, migrations, worker).
//! - [`ops`]: the commands for people (`publish`, `dlq`, `report`, `trace`, `status`, …).
//! - [`receiver`]: `wxnotify receiver`, WeChat's event push (receipts, followers, consent, a
//!   third-party platform's tickets and authorizations) into the ledger.
//! - [`platform`]: the third-party platform's state and tokens in Postgres (docs/interface.md §10).
//! - [`config`], [`redact`], [`telemetry`], `admin`, [`db`], [`tls`], `shutdown`, `error_text`:
//!   the service around it.
//!
//! - [`allocations`]: the allocation count the benchmarks read.
//!
//! The WeChat API simulator is a crate of its own (`crates/wechat-sim`).

pub(crate) mod admin;
#[allow(unsafe_code)]
pub mod allocations;
pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub(crate) mod delivery;
pub(crate) mod error_text;
pub mod event;
pub(crate) mod fate;
pub(crate) mod flights;
pub mod ids;
pub(crate) mod ledger;
pub(crate) mod metrics;
pub mod ops;
pub mod platform;
pub mod queue;
pub mod receiver;
pub mod redact;
pub mod retry;
pub(crate) mod schedule;
pub(crate) mod shutdown;
pub mod telemetry;
pub(crate) mod template;
pub mod tls;
pub mod token;
pub mod wechat;
pub(crate) mod worker;
