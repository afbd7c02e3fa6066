//! One integration test binary (fast to link): real RabbitMQ, real Postgres, the WeChat simulator.

mod broker;
#[path = "../common/mod.rs"]
mod common;
mod delivery;
mod delivery_edges;
mod dlq;
mod faults;
mod helpers;
mod leftovers;
mod metrics;
mod prometheus;
mod proxy;
mod prune;
mod publish;
mod rate;
mod receiver;
mod report;
mod schedule;
mod secrets;
mod status;
mod tls;
mod tokens;
