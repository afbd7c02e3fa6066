//! One integration test binary (fast to link): real RabbitMQ, real Postgres, the WeChat simulator.
//! Nothing to clean up by hand: a test's queues, exchanges and database go when its `TestEnv` is
//! dropped, pass or fail; what a killed run left, the next run's first `TestEnv` sweeps
//! (`tests/leftovers.sh` counts it).

mod broker;
#[path = "../common/mod.rs"]
mod common;
mod consent;
mod delivery;
mod delivery_edges;
mod dlq;
mod due_release;
mod fairness;
mod faults;
mod follow_clock;
mod helpers;
mod leftovers;
mod metrics;
mod migrate;
mod plans;
mod platform;
mod prometheus;
mod proxy;
mod prune;
mod publish;
mod rate;
mod receiver;
mod replay_cancelled;
mod report;
mod retire;
mod schedule;
mod secrets;
mod startup;
mod status;
mod tls;
mod tokens;
mod trace;
