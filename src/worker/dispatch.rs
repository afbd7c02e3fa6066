//! The worker's intake loop: takes messages from the work queue and the apps' lanes, asks the
//! scheduler ([`super::lanes`]) where each goes and which starts next, and carries that out:
//! a delivery task per started message (holding a permit), and [`super::park`] for the messages
//! that wait in their lane.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{BoxStream, SelectAll};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::lanes::{Lanes, Next, Route, Source};
use super::park::{self, Parking};
use super::{SessionEnd, Worker};
use crate::delivery::{self, Context};
use crate::queue::{Message, Session};

/// How often the lines' backlogs are published as gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// What the broker hands this session: the work queue's consumer and the lanes' (each message
/// with its app's line).
pub(super) struct Intake {
    pub work: lapin::Consumer,
    pub lanes: SelectAll<BoxStream<'static, (Option<usize>, lapin::Result<Delivery>)>>,
}

/// A delivery task's word back to the loop: its line, and where its message came from.
struct Delivered(usize, Source);

/// The loop of one session, until shutdown (`Ok`) or the session ends.
pub(super) async fn run(
    worker: &Worker,
    lanes: &mut Lanes<Message>,
    intake: &mut Intake,
    session: &Session,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (mut parking, mut parked) = Parking::new();
    let mut gauges = tokio::time::interval(GAUGES_EVERY);
    let default_app = worker.ctx.rules.default_app.as_str().to_string();
    loop {
        if let Some(rate) = &worker.ctx.rate {
            lanes.set_live(rate.live());
        }
        let wake = start_ready(&worker.ctx, lanes, session, permits, &done_tx);
        // `biased`: a stop or a broken session wins over a ready message, so a message handed
        // back by a broken session is not taken again by it (each time costs a delivery).
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = session.broken.cancelled() => return Err(SessionEnd::PublishFailed),
            Some(Delivered(line, source)) = done_rx.recv() => lanes.finished(line, source),
            Some(n) = parked.recv() => lanes.parked(n),
            next = intake.work.next() => {
                let msg = next.ok_or(SessionEnd::ConsumerCancelled)??;
                let app = crate::event::peek_app_id(&msg.data).unwrap_or_else(|| default_app.clone());
                let line = lanes.line_of(&app);
                match lanes.route(line) {
                    Route::Line => lanes.push(line, Message::from(msg), Source::Work),
                    Route::Park => parking.park(&worker.ctx, session, &app, lanes.batch_size(line), msg),
                }
            }
            Some((line, next)) = intake.lanes.next() => {
                for msg in park::unpark(session, next?) {
                    let line = line.unwrap_or_else(|| {
                        let app = crate::event::peek_app_id(&msg.data).unwrap_or_else(|| default_app.clone());
                        lanes.line_of(&app)
                    });
                    lanes.push(line, msg, Source::Lane);
                }
            }
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = sleep_until(parking.due()), if parking.due().is_some() => parking.flush(session),
            _ = gauges.tick() => publish_backlog(lanes),
        }
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Starts deliveries while permits are free and the scheduler has some; when it has none to
/// start now, the instant to ask again (a paced app's next slot).
fn start_ready(
    ctx: &Arc<Context>,
    lanes: &mut Lanes<Message>,
    session: &Session,
    permits: &Arc<Semaphore>,
    done: &mpsc::UnboundedSender<Delivered>,
) -> Option<std::time::Instant> {
    loop {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            return None;
        };
        let next = lanes.next(|app| match &ctx.rate {
            Some(rate) => rate.try_dispatch(app, std::time::Instant::now()),
            None => Ok(()),
        });
        match next {
            Next::Start { app, msg, source } => spawn_delivery(ctx, session, permit, (app, source), msg, done.clone()),
            Next::Wait(at) => return at,
        }
    }
}

fn spawn_delivery(
    ctx: &Arc<Context>,
    session: &Session,
    permit: OwnedSemaphorePermit,
    (line, source): (usize, Source),
    msg: Message,
    done: mpsc::UnboundedSender<Delivered>,
) {
    let (ctx, session) = (ctx.clone(), session.clone());
    metrics::gauge!("wxnotify_in_flight").increment(1.0);
    tokio::spawn(async move {
        // Boxed: passed by value into `guarded`, the trip's future would be stored twice in
        // this task (measured: 11,056 bytes a task, for every message in flight).
        if guarded(Box::pin(delivery::deliver(&ctx, &session, &msg)))
            .await
            .is_err()
        {
            // A bug, not a verdict: the broker hands the message out again, and its delivery
            // limit dead-letters it (`delivery_limit`) if it keeps failing this way.
            tracing::error!(
                event_bytes = msg.data.len(),
                "a delivery panicked; its message goes back to the queue"
            );
            let _ = msg.spoil().await;
        }
        metrics::gauge!("wxnotify_in_flight").decrement(1.0);
        drop(permit);
        let _ = done.send(Delivered(line, source));
    });
}

/// A delivery task's panic, caught so that its message is handed back and its permit freed.
#[derive(Debug)]
pub(super) struct Panicked;

/// Runs `trip`, catching a panic in it.
pub(super) async fn guarded(trip: impl Future<Output = ()>) -> Result<(), Panicked> {
    AssertUnwindSafe(trip).catch_unwind().await.map_err(|_| Panicked)
}

/// This worker's lines, as gauges: messages waiting for a permit, and those waiting for their
/// app's rate.
fn publish_backlog(lanes: &Lanes<Message>) {
    for (app, waiting, for_rate) in lanes.backlog() {
        let for_permit = (waiting - for_rate) as f64;
        metrics::gauge!("wxnotify_waiting", "app" => app.to_string(), "for" => "permit").set(for_permit);
        metrics::gauge!("wxnotify_waiting", "app" => app.to_string(), "for" => "rate").set(for_rate as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_delivery_is_caught() {
        assert!(guarded(async {}).await.is_ok());
        let panics = async { panic!("a bug in a delivery") };
        assert!(guarded(panics).await.is_err(), "the panic does not escape the task");
    }
}
