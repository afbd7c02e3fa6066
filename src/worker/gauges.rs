//! Gauges sampled every few seconds while a broker session lives: the queues' depths (passive
//! declares of the queues this worker declared, and of the lanes it consumes), and from the
//! ledger the shared tokens (expiry, calls today, blocks), deliveries in doubt / scheduled / due,
//! the scheduler's lag, the live workers and the third-party platforms. Every worker samples; dashboards take the max. The ledger's counts stop at
//! [`crate::ops::status::SAMPLE_CAP`] (beyond it: at least that many; the scheduled count, the
//! planner's estimate), so a sample costs milliseconds with millions of rows waiting.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use tokio_util::sync::CancellationToken;

use crate::delivery::Context;
use crate::queue::peek;

const EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(ctx: Arc<Context>, channel: Channel, lane_apps: Vec<String>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = queues(&ctx, &channel, &lane_apps).await {
            tracing::debug!(error = %e, "sampling queue depths failed; stopping until the next session");
            return;
        }
        ledger(&ctx).await;
    }
}

/// The ledger's gauges, from a bounded sample ([`crate::ops::status::sample`]): every worker
/// takes it every few seconds, so it must not count millions of rows.
async fn ledger(ctx: &Context) {
    let pool = ctx.ledger.pool();
    match crate::ops::status::apps(pool).await {
        Ok(apps) => {
            for a in &apps {
                let app = a.app_id.clone();
                let expires = a.token_expires_in_secs.unwrap_or(0) as f64;
                metrics::gauge!("wxnotify_token_expires_in_seconds", "app" => app.clone()).set(expires);
                metrics::gauge!("wxnotify_token_calls_today", "app" => app.clone()).set(a.token_calls_today as f64);
                let blocked = f64::from(u8::from(a.blocked_until.is_some()));
                metrics::gauge!("wxnotify_token_blocked", "app" => app).set(blocked);
            }
        }
        Err(e) => tracing::debug!(error = %e, "sampling the tokens failed"),
    }
    if !ctx.rules.catalog.platforms.is_empty() {
        platforms(pool).await;
    }
    match crate::ops::status::sample(pool).await {
        Ok(s) => {
            metrics::gauge!("wxnotify_deliveries", "state" => "in_doubt").set(s.in_doubt as f64);
            metrics::gauge!("wxnotify_deliveries", "state" => "scheduled").set(s.scheduled as f64);
            metrics::gauge!("wxnotify_deliveries", "state" => "due").set(s.due as f64);
            metrics::gauge!("wxnotify_scheduler_lag_seconds").set(s.oldest_due_secs.unwrap_or(0.0));
            metrics::gauge!("wxnotify_live_workers").set(s.live_workers as f64);
        }
        Err(e) => tracing::debug!(error = %e, "sampling the ledger failed"),
    }
}

/// The third-party platforms' merchants by state and their tickets' age.
async fn platforms(pool: &sqlx::PgPool) {
    match crate::ops::status::platforms(pool).await {
        Ok(platforms) => {
            for p in platforms {
                let id = p.component_appid;
                for (state, n) in [
                    ("active", p.merchants_active),
                    ("revoked", p.merchants_revoked),
                    ("needs_reauthorization", p.merchants_needs_reauthorization),
                ] {
                    metrics::gauge!("wxnotify_platform_merchants", "platform" => id.clone(), "state" => state)
                        .set(n as f64);
                }
                let age = p.ticket_age_secs.unwrap_or(0) as f64;
                metrics::gauge!("wxnotify_platform_ticket_age_seconds", "platform" => id).set(age);
            }
        }
        Err(e) => tracing::debug!(error = %e, "sampling the platforms failed"),
    }
}

async fn queues(ctx: &Context, channel: &Channel, lane_apps: &[String]) -> lapin::Result<()> {
    let topology = &ctx.topology;
    let work = peek(channel, &topology.queue).await?;
    metrics::gauge!("wxnotify_queue_messages", "queue" => "work").set(f64::from(work.message_count()));
    metrics::gauge!("wxnotify_queue_consumers").set(f64::from(work.consumer_count()));
    let dlq = peek(channel, &topology.dlq).await?;
    metrics::gauge!("wxnotify_queue_messages", "queue" => "dlq").set(f64::from(dlq.message_count()));
    let mut retrying = 0;
    for tier in ctx.policy.tiers() {
        retrying += peek(channel, &topology.retry_queue(tier)).await?.message_count();
    }
    metrics::gauge!("wxnotify_queue_messages", "queue" => "retry").set(f64::from(retrying));
    for app in lane_apps {
        let lane = peek(channel, &topology.lane(app)).await?;
        metrics::gauge!("wxnotify_lane_messages", "app" => app.clone()).set(f64::from(lane.message_count()));
    }
    Ok(())
}
