//! # wxnotify
//!
//! Turns booking events from RabbitMQ into WeChat notifications, exactly once in effect.
//!
//! Data flows one way; each step lives in its own module:
//!
//! ```text
//! queue (consume) → event (parse) → template (render) → ledger (claim)
//!   → token (shared access token) → wechat (send) → outcome → ledger (record)
//!   → queue (ack / retry tier / dead-letter)
//! ```
//!
//! - [`event`]: `BookingEvent::parse`, the delivery key and its `client_msg_id`.
//! - [`template`]: the templates file, MiniJinja with our `datetime`/`yuan` filters, start-up checks.
//! - [`wechat`]: the HTTP client, WeChat's keyword rules and the errcode → [`wechat::ErrorClass`] map.
//! - [`token`]: one access token per app for every process, single-flight refresh through Postgres.
//! - [`ledger`]: claims with leases, attempts and outcomes in Postgres.
//! - [`retry`]: the retry policy as data: which error goes where, after how long.
//! - [`outcome`]: the one enum that decides a message's fate; [`worker`] only carries it out.
//! - [`queue`]: topology, our headers, a publisher with confirms.
//! - [`ops`]: the `publish`, `dlq` and `report` commands.
//! - [`config`], [`telemetry`], [`admin`], [`db`], [`shutdown`]: the service around it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod db;
pub(crate) mod delivery;
pub mod event;
pub mod ledger;
pub mod ops;
pub mod outcome;
pub mod queue;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod template;
pub mod token;
pub mod wechat;
pub mod worker;
