//! `wxnotify dlq list` and `wxnotify dlq replay`: the dead-letter queue for people.
//!
//! Both read the DLQ with `basic.get` without acking, so a message leaves it only when we ack it:
//! `list` acks nothing (closing the channel hands every message back), `replay` records the
//! replay in Postgres, republishes the copy and acks the message only after the broker confirmed
//! the copy in the work queue (recorded first, so a copy never arrives without its record). A
//! crash anywhere leaves the message in the DLQ; replaying it twice is harmless, the ledger
//! absorbs the second copy.
//!
//! A dead letter that cannot be replayed for a reason of its own (Postgres refuses a value of its
//! record, the broker refuses its copy) is skipped, reported and left in the DLQ; the run goes on.
//! Losing the broker or the database stops the run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Channel, Connection};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;

use crate::event::BookingEvent;
use crate::ops::progress::Progress;
use crate::queue::{self, PublishError, Publisher, Topology, headers};

/// How long closing a reader waits for the DLQ to take back what it read.
const HAND_BACK_WAIT: Duration = Duration::from_secs(5);

/// How long any one broker call of `list` / `replay` may take: a broker that stops answering
/// (seen on an overloaded single node) is an error naming the call, not a command that hangs.
const BROKER_ANSWER: Duration = Duration::from_secs(30);

/// `call` with [`BROKER_ANSWER`] as its limit.
async fn answered<T, E: std::fmt::Display>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DlqError> {
    match tokio::time::timeout(BROKER_ANSWER, call).await {
        Ok(r) => r.map_err(|e| DlqError::Broker(format!("{what}: {e}"))),
        Err(_) => Err(DlqError::Broker(format!(
            "{what}: the broker did not answer in {} s",
            BROKER_ANSWER.as_secs()
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("the work queue {0} does not exist: start a worker once (it declares the topology)")]
    NoWorkQueue(String),
    /// The database failed (not because of this dead letter's values): the run stops, nothing
    /// was republished for it, it stays in the DLQ.
    #[error("event {event_id}: recording the replay failed: {error}; stopped, the dead letter stays in the DLQ")]
    Database { event_id: String, error: String },
}

fn broker(e: impl std::fmt::Display) -> DlqError {
    DlqError::Broker(e.to_string())
}

/// One dead letter as a person wants to see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// `wxnotify-reason`, or the broker's own (`delivery_limit`) for messages it dead-lettered.
    pub reason: String,
    pub errcode: Option<i64>,
    pub attempts: u32,
    pub dead_at: Option<DateTime<Utc>>,
    pub age_secs: Option<i64>,
    pub error: Option<String>,
}

/// An event id for a person to read: `?` when unknown, control characters escaped.
fn shown_id(id: Option<&str>) -> String {
    id.unwrap_or("?").escape_debug().to_string()
}

impl DeadLetterView {
    fn of(body: &[u8], props: &BasicProperties, now: DateTime<Utc>) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let event_type = json
            .as_ref()
            .and_then(|v| v.get("event_type")?.as_str().map(str::to_string));
        let dead_at = headers::text(props, headers::DEAD_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        Self {
            event_id: headers::text(props, headers::EVENT_ID).or_else(|| BookingEvent::sniff_event_id(body)),
            event_type,
            reason: headers::text(props, headers::REASON)
                .or_else(|| headers::text(props, "x-first-death-reason"))
                .unwrap_or_else(|| "unknown".into()),
            errcode: headers::int(props, headers::ERRCODE),
            attempts: headers::attempts(props),
            dead_at,
            age_secs: dead_at.map(|t| (now - t).num_seconds()),
            error: headers::text(props, headers::ERROR),
        }
    }
}

/// Which dead letters `replay` takes.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub all: bool,
    pub event_ids: Vec<String>,
    pub reason: Option<String>,
    pub errcode: Option<i64>,
}

impl ReplayFilter {
    fn matches(&self, v: &DeadLetterView) -> bool {
        self.all
            || v.event_id.as_ref().is_some_and(|id| self.event_ids.contains(id))
            || self.reason.as_ref().is_some_and(|r| *r == v.reason)
            || self.errcode.is_some_and(|c| Some(c) == v.errcode)
    }

    /// How the run is described in `dlq_replays.filter`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.all {
            parts.push("--all".to_string());
        }
        for id in &self.event_ids {
            parts.push(format!("--event-id {id}"));
        }
        if let Some(r) = &self.reason {
            parts.push(format!("--reason {r}"));
        }
        if let Some(c) = self.errcode {
            parts.push(format!("--errcode {c}"));
        }
        parts.join(" ")
    }
}

/// What a replay run did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub replay_id: String,
    /// Dead letters looked at.
    pub scanned: usize,
    /// Matched and republished (or, with `--dry-run`, would have been).
    pub replayed: Vec<DeadLetterView>,
    /// Matched but left in the DLQ: its replay could not be recorded, or the broker refused its copy.
    pub skipped: Vec<SkippedDeadLetter>,
    pub dry_run: bool,
}

impl ReplayReport {
    /// `3 replayed, 1 skipped`: the progress bar's note.
    fn so_far(&self) -> String {
        let done = self.replayed.len();
        match (self.dry_run, self.skipped.len()) {
            (true, _) => format!("{done} would be replayed"),
            (false, 0) => format!("{done} replayed"),
            (false, skipped) => format!("{done} replayed, {skipped} skipped"),
        }
    }
}

/// A dead letter `replay` left where it was, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedDeadLetter {
    pub event_id: Option<String>,
    pub reason: String,
}

/// A connection and a channel reading the DLQ; dropping the channel hands back what it holds.
struct DlqReader {
    conn: Connection,
    channel: Channel,
    queue: String,
    /// Messages in the DLQ when we started: we read at most this many, so handed-back ones are
    /// not read twice.
    count: u32,
    /// The DLQ's ready count when we opened, and how many of those we acked (moved for good).
    at_open: u32,
    acked: u32,
}

impl DlqReader {
    async fn open(amqp_url: &SecretString, topology: &Topology, name: &str) -> Result<Self, DlqError> {
        let conn = answered("connect", queue::connect(amqp_url, name)).await?;
        let channel = answered("open a channel", conn.create_channel()).await?;
        let count = answered(
            &format!("dead-letter queue {}", topology.dlq),
            queue::peek(&channel, &topology.dlq),
        )
        .await?
        .message_count();
        Ok(Self {
            conn,
            channel,
            queue: topology.dlq.clone(),
            count,
            at_open: count,
            acked: 0,
        })
    }

    async fn next(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        if self.count == 0 {
            return Ok(None);
        }
        self.count -= 1;
        answered(
            "read a dead letter",
            self.channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: false }),
        )
        .await
    }

    /// Acks a dead letter read: it leaves the DLQ for good.
    async fn ack(&mut self, msg: &BasicGetMessage) -> Result<(), DlqError> {
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker)?;
        self.acked += 1;
        Ok(())
    }

    /// Closes without acking what is left: the broker puts it back in the DLQ. A quorum queue
    /// takes it back a moment after the channel is gone, so this waits (at most
    /// [`HAND_BACK_WAIT`]) until the DLQ holds again what it held minus what we acked: a `list`
    /// run right after this one sees every dead letter (it saw none).
    async fn close(self) {
        // Bounded as a whole: what we did not ack goes back when the connection goes anyway.
        if tokio::time::timeout(BROKER_ANSWER, self.hand_back()).await.is_err() {
            tracing::warn!("the broker did not confirm the hand-back in time; closing");
        }
        let _ = tokio::time::timeout(BROKER_ANSWER, self.conn.close(200, "done".into())).await;
    }

    async fn hand_back(&self) {
        let _ = self.channel.close(200, "done".into()).await;
        let expected = self.at_open.saturating_sub(self.acked);
        if let Ok(check) = self.conn.create_channel().await {
            let deadline = tokio::time::Instant::now() + HAND_BACK_WAIT;
            while let Ok(q) = queue::peek(&check, &self.queue).await {
                if q.message_count() >= expected || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Up to `limit` dead letters, oldest first, left where they are.
pub async fn list(amqp_url: &SecretString, topology: &Topology, limit: usize) -> Result<Vec<DeadLetterView>, DlqError> {
    let mut reader = DlqReader::open(amqp_url, topology, "wxnotify-dlq-list").await?;
    let now = Utc::now();
    let result: Result<_, DlqError> = async {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(msg) = reader.next().await? else { break };
            out.push(DeadLetterView::of(&msg.delivery.data, &msg.delivery.properties, now));
        }
        Ok(out)
    }
    .await;
    reader.close().await;
    result
}

/// Moves matching dead letters (at most `limit`) back into the work queue with a fresh retry
/// budget and the `wxnotify-replay` header, which lets the copy reopen its `dead` delivery
/// because the run is recorded in `dlq_replays` first (a header alone, without the row, reopens
/// nothing).
/// Dead letters that cannot be replayed for a reason of their own are left and reported in
/// [`ReplayReport::skipped`]. When the broker goes away before confirming a copy, the run stops
/// and that replay's row stays: the copy may have arrived.
/// `progress` counts the dead letters looked at, out of those in the DLQ when the run started.
pub async fn replay(
    amqp_url: &SecretString,
    topology: &Topology,
    pool: &PgPool,
    filter: &ReplayFilter,
    limit: usize,
    dry_run: bool,
    progress: &Progress,
) -> Result<ReplayReport, DlqError> {
    let mut reader = DlqReader::open(amqp_url, topology, "wxnotify-dlq-replay").await?;
    progress.set_total(reader.at_open.into());
    let result: Result<_, DlqError> = async {
        let mut publisher = Publisher::open(&reader.conn).await.map_err(broker)?;
        check_work_queue(&reader.conn, &topology.queue).await?;
        let replay_id = uuid::Uuid::new_v4().to_string();
        let mut report = ReplayReport {
            replay_id: replay_id.clone(),
            dry_run,
            ..Default::default()
        };
        let recorder = Recorder {
            pool,
            replay_id: &replay_id,
            filter: &filter.describe(),
        };
        let now = Utc::now();
        while report.replayed.len() < limit {
            progress.note(report.so_far());
            let Some(msg) = reader.next().await? else { break };
            report.scanned += 1;
            progress.advance();
            let view = DeadLetterView::of(&msg.delivery.data, &msg.delivery.properties, now);
            if !filter.matches(&view) {
                continue; // stays unacked: handed back to the DLQ when we close
            }
            if dry_run {
                report.replayed.push(view);
                continue;
            }
            let copied = copy_to_work_queue(&recorder, &mut publisher, &reader.conn, &topology.queue, &msg, &view);
            if let Some(reason) = copied.await? {
                report.skipped.push(SkippedDeadLetter {
                    event_id: view.event_id.clone(),
                    reason,
                });
                continue; // stays unacked: handed back to the DLQ when we close
            }
            reader.ack(&msg).await?;
            report.replayed.push(view);
        }
        Ok(report)
    }
    .await;
    reader.close().await;
    result
}

/// The work queue exists, checked on a channel of its own: a failed passive declare closes the
/// channel.
async fn check_work_queue(conn: &Connection, work_queue: &str) -> Result<(), DlqError> {
    let check = conn.create_channel().await.map_err(broker)?;
    if queue::peek(&check, work_queue).await.is_err() {
        return Err(DlqError::NoWorkQueue(work_queue.to_string()));
    }
    let _ = check.close(200, "checked".into()).await;
    Ok(())
}

/// Where a replay run records its replays: the database, the run's id and its filter as given.
struct Recorder<'a> {
    pool: &'a PgPool,
    replay_id: &'a str,
    filter: &'a str,
}

/// Records the replay of one dead letter, then publishes its copy straight into the work queue
/// (with `publisher`, reopened on `conn` when the broker closed its channel). `Some(reason)`: not
/// replayed (nothing recorded, no copy), the dead letter is to stay in the DLQ.
async fn copy_to_work_queue(
    recorder: &Recorder<'_>,
    publisher: &mut Publisher,
    conn: &Connection,
    work_queue: &str,
    msg: &BasicGetMessage,
    view: &DeadLetterView,
) -> Result<Option<String>, DlqError> {
    let database = |e: sqlx::Error| DlqError::Database {
        event_id: shown_id(view.event_id.as_deref()),
        error: e.to_string(),
    };
    let row = match record(recorder.pool, recorder.replay_id, recorder.filter, view).await {
        Ok(row) => row,
        Err(e) if crate::db::is_data_error(&e) => return Ok(Some(format!("its replay cannot be recorded: {e}"))),
        Err(e) => return Err(database(e)),
    };
    let props = replayed_properties(&msg.delivery.properties, recorder.replay_id, view.event_id.as_deref());
    // The default exchange routes by queue name: straight into the work queue.
    match publisher.publish("", work_queue, &msg.delivery.data, props).await {
        Ok(()) => Ok(None),
        Err(e) if refused_copy(&e) => {
            // No copy: the row must not claim a replay.
            unrecord(recorder.pool, row).await.map_err(database)?;
            if !publisher.channel().status().connected() {
                *publisher = Publisher::open(conn).await.map_err(broker)?;
            }
            Ok(Some(format!("the broker refused its copy: {e}")))
        }
        Err(e) => Err(broker(e)),
    }
}

/// A replayed copy's properties: the dead letter's, its counts reset, marked with the replay.
fn replayed_properties(original: &BasicProperties, replay_id: &str, event_id: Option<&str>) -> BasicProperties {
    let (props, mut hdrs) = headers::republish(original);
    headers::set_int(&mut hdrs, headers::ATTEMPTS, 0);
    headers::set_int(&mut hdrs, headers::TOKEN_REQUEUES, 0);
    headers::set_text(&mut hdrs, headers::REPLAY, replay_id);
    if let Some(id) = event_id {
        headers::set_text(&mut hdrs, headers::EVENT_ID, id);
    }
    props.with_headers(hdrs)
}

/// The broker refused this one copy (a nack, or the channel closed over it, e.g. a message larger
/// than the broker takes): the dead letter's own problem, not the broker's or the connection's.
fn refused_copy(e: &PublishError) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e {
        PublishError::Nacked => true,
        PublishError::Amqp(e) => matches!(
            e.kind(),
            lapin::ErrorKind::ProtocolError(p) if matches!(
                p.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::CONTENTTOOLARGE)
            )
        ),
        _ => false,
    }
}

/// Records one replay; returns its row's id.
async fn record(pool: &PgPool, replay_id: &str, filter: &str, v: &DeadLetterView) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO dlq_replays (replay_id, filter, event_id, event_type, reason, errcode, dead_at, operator)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id",
    )
    .bind(replay_id)
    .bind(filter)
    .bind(&v.event_id)
    .bind(&v.event_type)
    .bind(&v.reason)
    .bind(v.errcode)
    .bind(v.dead_at)
    .bind(std::env::var("USER").ok())
    .fetch_one(pool)
    .await
}

/// Takes back a replay [`record`]ed for a copy the broker refused.
async fn unrecord(pool: &PgPool, row: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dlq_replays WHERE id = $1")
        .bind(row)
        .execute(pool)
        .await?;
    Ok(())
}

/// `3m12s`, `2h05m`, `4d03h`: an age at a glance.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The table `dlq list` and `dlq replay` print.
pub fn table(rows: &[DeadLetterView]) -> String {
    let mut out = format!(
        "{:<28} {:<20} {:<18} {:>7} {:>8} {:>8}  {}\n",
        "EVENT_ID", "TYPE", "REASON", "ERRCODE", "ATTEMPTS", "AGE", "ERROR"
    );
    for r in rows {
        let errcode = r.errcode.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let age = r.age_secs.map(human_age).unwrap_or_else(|| "-".into());
        let error = r.error.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "{:<28} {:<20} {:<18} {:>7} {:>8} {:>8}  {}\n",
            crate::event::truncate(r.event_id.as_deref().unwrap_or("?"), 28),
            crate::event::truncate(r.event_type.as_deref().unwrap_or("?"), 20),
            r.reason,
            errcode,
            r.attempts,
            age,
            crate::event::truncate(error, 100),
        ));
    }
    out
}

/// The dead letters `dlq replay` left in the DLQ, and why (nothing when none).
pub(crate) fn skipped_table(rows: &[SkippedDeadLetter]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!("{:<28}  {}\n", "SKIPPED EVENT_ID", "WHY (left in the DLQ)");
    for r in rows {
        let id = shown_id(r.event_id.as_deref());
        out.push_str(&format!("{id:<28}  {}\n", r.reason.escape_debug()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(192), "3m12s");
        assert_eq!(human_age(7500), "2h05m");
        assert_eq!(human_age(3 * 86400 + 7200), "3d02h");
    }

    #[test]
    fn only_the_brokers_refusal_of_one_copy_skips_it() {
        use lapin::protocol::{AMQPError, AMQPHardError, AMQPSoftError};
        let closed = |kind: lapin::protocol::AMQPErrorKind| {
            PublishError::Amqp(lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "closed".into())).into())
        };
        assert!(refused_copy(&PublishError::Nacked));
        assert!(refused_copy(&closed(AMQPSoftError::PRECONDITIONFAILED.into())));
        assert!(!refused_copy(&closed(AMQPSoftError::ACCESSREFUSED.into())));
        assert!(!refused_copy(&closed(AMQPHardError::CONNECTIONFORCED.into())));
        assert!(!refused_copy(&PublishError::Unroutable("q".into())));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!refused_copy(&PublishError::Amqp(io.into())));
    }

    #[test]
    fn skipped_dead_letters_are_listed_with_their_ids_escaped() {
        assert_eq!(skipped_table(&[]), "");
        let t = skipped_table(&[SkippedDeadLetter {
            event_id: Some("e\0x".into()),
            reason: "its replay cannot be recorded: 0x00".into(),
        }]);
        assert!(t.contains("e\\0x"), "{t}");
        assert!(!t.contains('\0'));
    }

    #[test]
    fn a_filter_matches_on_any_of_its_criteria() {
        let v = DeadLetterView {
            event_id: Some("e1".into()),
            event_type: None,
            reason: "permanent_error".into(),
            errcode: Some(43004),
            attempts: 1,
            dead_at: None,
            age_secs: None,
            error: None,
        };
        let by = |f: ReplayFilter| f.matches(&v);
        assert!(by(ReplayFilter {
            errcode: Some(43004),
            ..Default::default()
        }));
        assert!(!by(ReplayFilter {
            errcode: Some(40003),
            ..Default::default()
        }));
        assert!(by(ReplayFilter {
            reason: Some("permanent_error".into()),
            ..Default::default()
        }));
        assert!(by(ReplayFilter {
            event_ids: vec!["x".into(), "e1".into()],
            ..Default::default()
        }));
        assert!(!by(ReplayFilter::default()));
    }
}
