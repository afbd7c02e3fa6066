//! Operator commands besides the worker: [`publish`] (the booking side, for demos and ops),
//! [`dlq`] (list and replay dead letters), [`report`] (the delivery summary), [`scheduled`]
//! (deliveries waiting for their time), [`status`] (tokens, queues, ledger, workers) and [`prune`]
//! (retention).

pub mod dlq;
pub mod prune;
pub mod publish;
pub mod report;
pub mod scheduled;
pub mod status;
