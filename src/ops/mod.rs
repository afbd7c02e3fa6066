//! Operator commands besides the worker: [`publish`] (the booking side, for demos and ops),
//! [`dlq`] (list and replay dead letters), [`report`] (the delivery summary), [`scheduled`]
//! (deliveries waiting for their time), [`status`] (tokens, queues, ledger, workers) and [`prune`]
//! (retention), [`trace`] (one delivery's whole story). The long ones (`publish`, `dlq replay`) show their [`progress`] at a terminal.

pub mod dlq;
pub mod progress;
pub mod prune;
pub mod publish;
pub mod report;
pub mod scheduled;
pub mod status;
pub mod trace;

/// A duration written like `7d`, `24h`, `90m` or `30s`, in seconds; `None` when it is not one
/// (or does not fit). Shared by `report --since`, `prune --older-than` and `scheduled --due-before`.
pub(crate) fn duration_secs(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    match unit {
        "d" => n.checked_mul(86400),
        "h" => n.checked_mul(3600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
}
