//! Operator commands besides the worker: [`publish`] (the booking side, for demos and ops).

pub mod publish;
