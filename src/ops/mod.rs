//! Operator commands besides the worker: [`publish`] (the booking side, for demos and ops),
//! [`dlq`] (list and replay dead letters), [`report`] (the delivery summary) and [`scheduled`]
//! (deliveries waiting for their time).

pub mod dlq;
pub mod publish;
pub mod report;
pub mod scheduled;
