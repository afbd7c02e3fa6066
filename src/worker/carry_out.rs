//! Carrying out a [`Plan`]: the order of writes is what keeps "nothing lost, nothing twice".
//!
//! - dead letter: publish to the DLX (confirmed) → record `dead` → ack. A crash in between can
//!   leave a second copy in the DLQ, never none. If the publish fails, the claim is handed back.
//! - everything else: record → publish the retry/requeue copy (confirmed) → ack. The ack is always
//!   last, after the outcome is committed in Postgres (CONTRACT §3).
//!
//! If the broker connection is gone, acks and publishes fail: the message stays unacked, the
//! broker redelivers it, and the ledger turns the redelivery into a no-op or a takeover.

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;

use super::Context;
use super::process::{Abandoned, Plan, with_db};
use crate::ledger::Finish;
use crate::outcome::Outcome;
use crate::queue::{Publisher, headers};

pub async fn carry_out(ctx: &Context, publisher: &Publisher, delivery: &Delivery, plan: Plan) -> Result<(), Abandoned> {
    let topo = &ctx.topology;
    let (mut props, mut hdrs) = headers::republish(&delivery.properties);
    if let Some(id) = &plan.event_id {
        headers::set_text(&mut hdrs, headers::EVENT_ID, id);
    }
    headers::set_int(&mut hdrs, headers::ATTEMPTS, i64::from(plan.attempts));

    if let Outcome::DeadLetter(d) = &plan.outcome {
        headers::set_text(&mut hdrs, headers::REASON, d.reason.as_str());
        if let Some(code) = d.errcode {
            headers::set_int(&mut hdrs, headers::ERRCODE, code);
        }
        headers::set_text(&mut hdrs, headers::ERROR, &d.error);
        headers::set_text(&mut hdrs, headers::DEAD_AT, &chrono::Utc::now().to_rfc3339());
        props = props.with_headers(hdrs.clone());
        if let Err(e) = publisher.publish(&topo.dlx, "", &delivery.data, props.clone()).await {
            tracing::warn!(error = %e, "dead-letter publish failed; leaving the message unacked");
            // Hand the claim back (keeping the attempt), or the redelivered copy would wait out
            // our whole lease: this process is alive, so its heartbeat says the claim is held.
            // The copy sends again; WeChat refuses it again (nothing was delivered) and it goes
            // to the DLQ then.
            if let Some(rec) = &plan.record {
                let release = Finish::retrying(d.errcode, d.error.clone());
                with_db(ctx, "release claim", || {
                    ctx.ledger.record(rec.delivery_id, rec.attempt.as_ref(), &release)
                })
                .await?;
            }
            return Err(Abandoned);
        }
        tracing::warn!(
            event_id = plan.event_id.as_deref().unwrap_or("?"),
            reason = d.reason.as_str(),
            errcode = d.errcode,
            error = %d.error,
            "dead-lettered"
        );
    }

    if let Some(rec) = &plan.record {
        let applied = with_db(ctx, "record outcome", || {
            ctx.ledger.record(rec.delivery_id, rec.attempt.as_ref(), &rec.finish)
        })
        .await?;
        if !applied {
            tracing::info!(
                delivery_id = rec.delivery_id,
                "another worker already recorded a final outcome for this delivery"
            );
        }
    }

    let republish = match &plan.outcome {
        Outcome::Requeue => {
            let n = headers::int(&delivery.properties, headers::TOKEN_REQUEUES).unwrap_or(0);
            headers::set_int(&mut hdrs, headers::TOKEN_REQUEUES, n + 1);
            Some((topo.queue.clone(), props.clone().with_headers(hdrs.clone())))
        }
        Outcome::RetryLater { delay, .. } => {
            let tier = ctx.retry.tier_for(*delay);
            let ms = delay.as_millis().clamp(1, tier.as_millis()).to_string();
            Some((
                topo.retry_queue(tier),
                props.clone().with_headers(hdrs.clone()).with_expiration(ms.into()),
            ))
        }
        Outcome::Ack | Outcome::DeadLetter(_) => None,
    };
    if let Some((queue, props)) = republish {
        // The default exchange routes by queue name.
        if let Err(e) = publisher.publish("", &queue, &delivery.data, props).await {
            tracing::warn!(error = %e, queue, "republish failed; leaving the message unacked");
            return Err(Abandoned);
        }
    }

    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel died after the outcome was recorded: the redelivery will find it.
        tracing::debug!(error = %e, "ack failed");
        return Err(Abandoned);
    }
    metrics::counter!("wxnotify_messages_total", "outcome" => plan.outcome.label()).increment(1);
    Ok(())
}
