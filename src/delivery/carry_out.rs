//! Carrying out a [`Plan`]: the only code that touches the broker for a message. The order of
//! writes is what keeps "nothing lost, nothing twice":
//!
//! - replace the rejected token (if the plan says so), for every task and process;
//! - dead letter: publish to the DLX (confirmed) → record → ack. A crash in between can leave a
//!   second copy in the DLQ, never none;
//! - otherwise: record → publish the retry/requeue copy (confirmed) → ack. The ack is always last,
//!   after the outcome is committed in Postgres (CONTRACT §3).
//!
//! When one of its own steps fails, carry-out does not decide: it asks the judge again with what
//! failed. A failed publish also marks the session broken, so the worker rebuilds its channels
//! instead of publishing into a dead one.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::intake::Meta;
use super::judge::{self, Step};
use super::{Abandoned, Context, Session, Trip, with_db};
use crate::outcome::{Outcome, Plan};
use crate::queue::headers;

pub(crate) async fn carry_out(
    ctx: &Context,
    session: &Session,
    msg: &Delivery,
    meta: &Meta,
    mut plan: Plan,
    trip: Trip,
) -> Result<(), Abandoned> {
    if let (Some(generation), Some(token)) = (plan.replace_token, &trip.token) {
        tracing::info!(app = %token.app_id, generation, "token rejected; replacing it if still current");
        if let Err(e) = ctx.tokens.invalidate(token).await {
            tracing::warn!(error = %e, "could not replace the rejected token; the message waits");
            if let Some(facts) = &trip.facts {
                plan = judge::judge(facts, Step::NoToken(&e), &ctx.policy);
            }
        }
    }

    let (mut props, mut hdrs) = headers::republish(&msg.properties);
    if let Some(id) = &trip.event_id {
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
        let dead_props = props.clone().with_headers(hdrs.clone());
        match session
            .publisher
            .publish(&ctx.topology.dlx, "", &msg.data, dead_props)
            .await
        {
            Ok(()) => tracing::warn!(
                reason = d.reason.as_str(),
                errcode = d.errcode,
                error = %d.error,
                "dead-lettered"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter publish failed; handing the message back");
                session.broken.cancel();
                let facts = trip.facts.clone().unwrap_or_else(|| early_facts(meta));
                plan = judge::judge(&facts, Step::DeadLetterFailed(&plan), &ctx.policy);
            }
        }
    }

    if let (Some(finish), Some(id)) = (&plan.finish, trip.delivery_id) {
        let applied = with_db(ctx, "record outcome", || {
            ctx.ledger.record(id, trip.attempt.as_ref(), finish)
        })
        .await?;
        if !applied {
            tracing::info!(
                delivery_id = id,
                "not recorded: another worker holds or finished this delivery"
            );
        }
    }

    let republish = match &plan.outcome {
        Outcome::Requeue => {
            headers::set_int(&mut hdrs, headers::TOKEN_REQUEUES, i64::from(meta.token_requeues) + 1);
            Some((ctx.topology.queue.clone(), props.clone().with_headers(hdrs)))
        }
        Outcome::RetryLater { delay } => {
            let tier = ctx.policy.tier_for(*delay);
            let ms = delay.as_millis().clamp(1, tier.as_millis()).to_string();
            props = props.with_headers(hdrs).with_expiration(ms.into());
            Some((ctx.topology.retry_queue(tier), props))
        }
        Outcome::Ack | Outcome::DeadLetter(_) | Outcome::Release => None,
    };
    let mut release = plan.outcome == Outcome::Release;
    if let Some((queue, props)) = republish {
        // The default exchange routes by queue name.
        if let Err(e) = session.publisher.publish("", &queue, &msg.data, props).await {
            tracing::warn!(error = %e, queue, "republish failed; handing the message back");
            session.broken.cancel();
            release = true;
        }
    }

    let settled = if release {
        msg.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
    } else {
        msg.acker.ack(BasicAckOptions::default()).await
    };
    if let Err(e) = settled {
        // The channel died after the outcome was recorded: the redelivery will find it.
        tracing::debug!(error = %e, "ack failed");
        return Err(Abandoned);
    }
    let label = if release { "release" } else { plan.outcome.label() };
    metrics::counter!("wxnotify_messages_total", "outcome" => label).increment(1);
    Ok(())
}

/// What the judge knows of a message rejected at intake (no delivery, no claim).
fn early_facts(meta: &Meta) -> judge::Facts {
    judge::Facts {
        api: crate::wechat::Api::Template,
        failed_before: meta.failed_before,
        token_requeues: meta.token_requeues,
        redeliveries: meta.redeliveries,
        in_doubt_for: None,
        render_error: None,
        now: chrono::Utc::now(),
    }
}
