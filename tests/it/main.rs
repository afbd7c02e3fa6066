//! One integration test binary (fast to link): real RabbitMQ, real Postgres, the WeChat simulator.

mod delivery;
mod helpers;
mod secrets;
mod tokens;
