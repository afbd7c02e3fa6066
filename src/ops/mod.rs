//! Operator commands besides the worker: [`publish`] (the booking side, for demos and ops),
//! [`dlq`] (list and replay dead letters) and [`report`] (the delivery summary).

pub mod dlq;
pub mod publish;
pub mod report;
