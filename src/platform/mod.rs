//! The third-party platform (docs/interface.md §10): wxnotify sends for the merchants who
//! authorize a platform, with Postgres as the source of truth for tickets, merchants and their
//! tokens. Built so far: what the platform's pushes say, stored ([`pushes`]); WeChat's component
//! APIs ([`client`]); the component and merchant tokens, fleet-wide ([`tokens`]); the merchants
//! synced with WeChat's list and listed ([`sync`]).

pub mod client;
pub(crate) mod pushes;
pub mod sync;
pub(crate) mod templates;
pub mod tokens;
