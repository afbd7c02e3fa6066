//! The due-delivery loop, which every worker session runs beside its consumer (docs/interface.md
//! §8): when a waiting delivery falls due, take it (`FOR UPDATE SKIP LOCKED`: never two workers on
//! one row), ask the judge ([`super::due`]: go, wait out quiet hours, or expire), republish the ones that go to the work
//! queue as their own message (header `wxnotify-template`, confirmed by the broker), and only then
//! mark them `pending` and commit. From there the ordinary trip sends each with every guarantee
//! of docs/interface.md §3: claim, doubt, retries, dead letters.
//!
//! A crash between the publish and the commit leaves the row `scheduled`: it is released again
//! and the second copy finds the delivery claimed or final (the ledger makes it harmless).
//!
//! It sleeps until the earliest `due_at` (by the database's clock), and wakes early when any
//! worker stores a delivery (`LISTEN wxnotify_due`); without the listener it looks every second.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::store::Due;
use super::timing::QuietHours;
use crate::fate::DueFate;
use crate::ledger::Ledger;
use crate::queue::{Session, headers};

/// Most rows one release transaction takes.
const BATCH: usize = 500;
/// Longest sleep when the listener works: every loop wakes this often and reads the earliest due
/// time, so a delivery stored due later than that needs no notification (and notifications are
/// not durable: this is also the safety net).
pub(super) const IDLE: Duration = Duration::from_secs(10);
/// Longest sleep without it.
const POLL: Duration = Duration::from_secs(1);
/// Sleep when rows are due but another worker holds them (it releases them, or dies and its
/// locks go with its connection).
const HELD: Duration = Duration::from_millis(250);

/// A template's quiet hours, by (app, event type, template id); `None` also when the template is
/// gone (the released copy is then dead-lettered `no_template` by the ordinary trip).
pub(crate) type QuietHoursOf = Arc<dyn Fn(&str, &str, &str) -> Option<QuietHours> + Send + Sync>;

/// What the loop needs, fixed for the worker's life.
#[derive(Clone)]
pub(crate) struct Releaser {
    pub ledger: Ledger,
    /// The work queue released deliveries go to.
    pub queue: String,
    pub quiet_hours: QuietHoursOf,
}

/// Runs until `stop` fires. Publish failures mark the session broken (it is rebuilt, and this
/// loop with it); database errors are retried.
pub(crate) async fn run(ctx: Releaser, session: Session, stop: CancellationToken) {
    let mut listener = None;
    loop {
        if listener.is_none() {
            listener = ctx.ledger.listen_due().await.ok();
        }
        let wait = match crate::db::bounded(release_all(&ctx, &session)).await {
            Ok(taken) => match ctx.ledger.next_due_in().await {
                Ok(Some(secs)) if secs <= 0.0 && taken == 0 => HELD,
                Ok(Some(secs)) => Duration::from_secs_f64(secs.clamp(0.0, 3600.0)),
                Ok(None) => IDLE,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the next due time");
                    POLL
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "releasing due deliveries failed; trying again");
                POLL
            }
        };
        if session.broken.is_cancelled() {
            return;
        }
        let wait = wait.min(if listener.is_some() { IDLE } else { POLL });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            } => {
                if n.is_err() {
                    listener = None;
                }
            }
        }
    }
}

/// Releases batches until nothing is due (that nobody else holds); returns how many rows it took.
async fn release_all(ctx: &Releaser, session: &Session) -> Result<usize, sqlx::Error> {
    let mut taken = 0;
    loop {
        let batch = ctx.ledger.take_due(BATCH as i64).await?;
        let full = batch.rows.len() == BATCH;
        taken += batch.rows.len();
        if batch.rows.is_empty() {
            batch.finish(&[]).await?;
            return Ok(taken);
        }
        let now = batch.now;
        let fates: Vec<DueFate> = batch.rows.iter().map(|row| fate(ctx, row, now)).collect();
        let published = join_all(batch.rows.iter().zip(&fates).map(|(row, fate)| async move {
            match fate {
                DueFate::Released => publish(ctx, session, row).await,
                DueFate::Deferred(_) | DueFate::Expired => true,
            }
        }))
        .await;
        let mut done = Vec::with_capacity(fates.len());
        for ((row, fate), ok) in batch.rows.iter().zip(fates).zip(published) {
            // A row whose publish failed stays `scheduled` and due: taken again.
            if !ok {
                continue;
            }
            metrics::counter!("wxnotify_due_total", "fate" => fate.label()).increment(1);
            if let Ok(late) = (now - row.due_at).to_std() {
                metrics::histogram!("wxnotify_due_lateness_seconds").record(late.as_secs_f64());
            }
            done.push((row.id, fate));
        }
        let fates = done;
        batch.finish(&fates).await?;
        if !full || session.broken.is_cancelled() {
            return Ok(taken);
        }
    }
}

/// The judge's word on a due row, with its template's quiet hours.
fn fate(ctx: &Releaser, row: &Due, now: chrono::DateTime<chrono::Utc>) -> DueFate {
    if row.payload.is_none() {
        tracing::error!(
            delivery_id = row.id,
            "a scheduled delivery without its event cannot be sent; expired"
        );
        return DueFate::Expired;
    }
    let quiet = (ctx.quiet_hours)(&row.app_id, &row.event_type, &row.template_id);
    super::due(row.not_after, quiet, now)
}

/// Republishes a due delivery's event to the work queue as that delivery alone.
async fn publish(ctx: &Releaser, session: &Session, row: &Due) -> bool {
    let Some(payload) = &row.payload else {
        return false;
    };
    let mut hdrs = FieldTable::default();
    headers::set_text(&mut hdrs, headers::EVENT_ID, &row.event_id);
    headers::set_text(&mut hdrs, headers::TEMPLATE, &row.template_id);
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(hdrs);
    let queue = &ctx.queue;
    match session.publisher.publish("", queue, payload.as_bytes(), props).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, delivery_id = row.id, "releasing a due delivery failed; it stays scheduled");
            session.broken.cancel();
            false
        }
    }
}
