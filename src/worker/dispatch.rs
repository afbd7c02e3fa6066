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

/// The loop of one session, until shutdown (`Ok`) or the session ends. Messages still gathering
/// for a batch then go back to the work queue.
pub(super) async fn run(
    worker: &Worker,
    lanes: &mut Lanes<Message>,
    intake: &mut Intake,
    session: &Session,
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let (mut parking, parked) = Parking::new();
    let end = intake_loop(
        worker,
        lanes,
        intake,
        (session, &mut parking, parked),
        permits,
        shutdown,
    )
    .await;
    parking.hand_back();
    end
}

async fn intake_loop(
    worker: &Worker,
    lanes: &mut Lanes<Message>,
    intake: &mut Intake,
    (session, parking, mut parked): (&Session, &mut Parking, mpsc::UnboundedReceiver<usize>),
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut gauges = tokio::time::interval(GAUGES_EVERY);
    let default_app = worker.ctx.rules.default_app.as_str();
    loop {
        if let Some(rate) = &worker.ctx.rate {
            lanes.set_live(rate.live());
        }
        let wake = start_ready(&worker.ctx, lanes, session, permits, &done_tx);
        // `biased`: a stop or a broken session wins over a ready message, so a message handed
        // back by a broken session is not taken again by it (each time costs a delivery). A
        // batch's deadline comes before new messages, which would otherwise starve it.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = session.broken.cancelled() => return Err(SessionEnd::PublishFailed),
            Some(Delivered(line, source)) = done_rx.recv() => lanes.finished(line, source),
            Some(n) = parked.recv() => lanes.parked(n),
            _ = sleep_until(parking.due()), if parking.due().is_some() => parking.flush(session),
            next = intake.work.next() => {
                let msg = next.ok_or(SessionEnd::ConsumerCancelled)??;
                if crate::queue::batch::count(&msg.properties).is_some() {
                    // A batch replayed from the dead-letter queue: its members go as a lane's.
                    line_up(lanes, park::unpark(session, msg), None, default_app);
                    continue;
                }
                let app = crate::event::peek_app_id(&msg.data).unwrap_or_else(|| default_app.to_string());
                let line = lanes.line_of(&app);
                match lanes.route(line) {
                    Route::Line => lanes.push(line, Message::from(msg), Source::Work),
                    Route::Park => parking.park(&worker.ctx, session, &app, lanes.batching(line), msg),
                }
            }
            Some((line, next)) = intake.lanes.next() => line_up(lanes, park::unpark(session, next?), line, default_app),
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = gauges.tick() => publish_backlog(lanes),
        }
    }
}

/// Puts messages taken from a lane in their lines: `line` if the lane is one app's, otherwise
/// each by its `app_id`.
fn line_up(lanes: &mut Lanes<Message>, msgs: Vec<Message>, line: Option<usize>, default_app: &str) {
    for msg in msgs {
        let line = line.unwrap_or_else(|| {
            let app = crate::event::peek_app_id(&msg.data);
            lanes.line_of(app.as_deref().unwrap_or(default_app))
        });
        lanes.push(line, msg, Source::Lane);
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
