//! Carrying out a [`Plan`]: the only code that touches the broker for a message. The order of
//! writes is what keeps "nothing lost, nothing twice":
//!
//! - replace the rejected token (if the plan says so), for every task and process;
//! - dead letter: publish to the DLX (confirmed) → record → ack. A crash in between can leave a
//!   second copy in the DLQ, never none;
//! - otherwise: record → publish the retry/requeue copy (confirmed) → ack. The ack is always last,
//!   after the outcome is committed in Postgres (docs/interface.md §3);
//! - a 43004 marks the recipient unfollowed only after the delivery's dead letter is published and
//!   its outcome recorded;
//! - a consent credit the send did not spend is given back before the outcome is recorded: a
//!   crash in between leaves the delivery open, and its next copy takes a credit again.
//!
//! When one of its own steps fails, carry-out does not decide: it asks the judge again with what
//! failed. A failed publish also marks the session broken, so the worker rebuilds its channels
//! instead of publishing into a dead one.

use lapin::BasicProperties;
use std::time::Instant;

use lapin::types::FieldTable;

use super::intake::Meta;
use super::judge::{self, Facts, Step};
use super::{Abandoned, Context, Sent, Trip, stage};
use crate::fate::{Doubt, Finish, Outcome, Plan};
use crate::ledger::consent::ConsentKey;
use crate::queue::headers;
use crate::queue::{Message, Session};

pub(crate) async fn carry_out(
    ctx: &Context,
    session: &Session,
    msg: &Message,
    meta: &Meta,
    plan: Plan,
    trip: Trip,
) -> Result<(), Abandoned> {
    let c = Carrier {
        ctx,
        session,
        msg,
        meta,
        trip,
    };
    // The rare steps are boxed and taken only when the plan needs them: every message in flight
    // carries this future, sized by its largest step.
    let plan = match plan.replace_token {
        Some(_) => Box::pin(c.replace_token(plan)).await,
        None => plan,
    };
    // Only a copy (dead letter, requeue, retry) needs the headers.
    let copy = (!matches!(plan.outcome, Outcome::Ack | Outcome::Release)).then(|| c.headers(&plan));
    let plan = match (&plan.outcome, &copy) {
        (Outcome::DeadLetter(_), Some((props, hdrs))) => Box::pin(c.dead_letter(plan, props, hdrs.clone())).await,
        _ => plan,
    };
    if c.trip.delivery.as_ref().is_some_and(|d| d.credit.is_some()) {
        Box::pin(c.give_back_credit(&plan)).await?;
    }
    c.record(&plan).await?;
    if c.sent().is_some_and(|s| s.left_the_account.is_some()) {
        Box::pin(c.note_unfollowed(&plan)).await;
    }
    let released = plan.outcome == Outcome::Release
        || match copy {
            Some((props, hdrs)) => !Box::pin(c.republish(&plan, props, hdrs)).await,
            None => false,
        };
    c.settle(&plan, released).await
}

/// One message being carried out, and what its trip gathered.
struct Carrier<'a> {
    ctx: &'a Context,
    session: &'a Session,
    msg: &'a Message,
    meta: &'a Meta,
    trip: Trip,
}

impl Carrier<'_> {
    /// What the judge knew (or, for a message rejected at intake, what its headers say).
    fn facts(&self) -> Facts {
        match &self.trip.delivery {
            Some(d) => d.facts.clone(),
            None => Facts::new(crate::wechat::Api::Template, self.meta, chrono::Utc::now()),
        }
    }

    /// The send this trip made, if any.
    fn sent(&self) -> Option<&Sent> {
        self.trip.delivery.as_ref().and_then(|d| d.sent.as_ref())
    }

    /// Replaces a rejected token if it is still current; if that fails, the judge decides again.
    async fn replace_token(&self, plan: Plan) -> Plan {
        let (Some(generation), Some(Sent { token, .. })) = (plan.replace_token, self.sent()) else {
            return plan;
        };
        tracing::info!(app = %token.app_id, generation, "token rejected; replacing it if still current");
        match self.ctx.tokens.invalidate(token).await {
            Ok(()) => plan,
            Err(e) => {
                tracing::warn!(error = %e, "could not replace the rejected token; the message waits");
                judge::judge(&self.facts(), Step::NoToken(&e), &self.ctx.policy)
            }
        }
    }

    /// The copy's properties and headers: the original's, with our verdict so far.
    fn headers(&self, plan: &Plan) -> (BasicProperties, FieldTable) {
        let (props, mut hdrs) = headers::republish(&self.msg.properties);
        if let Some(id) = &self.trip.event_id {
            headers::set_text(&mut hdrs, headers::EVENT_ID, id);
        }
        // A copy of this delivery makes this delivery only, not every delivery of its event.
        if let Some(d) = &self.trip.delivery {
            headers::set_text(&mut hdrs, headers::TEMPLATE, &d.template_id);
        }
        headers::set_int(&mut hdrs, headers::ATTEMPTS, i64::from(plan.attempts));
        (props, hdrs)
    }

    /// A dead letter is published to the DLX (confirmed). If that fails, the judge's new plan
    /// replaces it (hand the message back, keep the attempt and the doubt).
    async fn dead_letter(&self, plan: Plan, props: &BasicProperties, mut hdrs: FieldTable) -> Plan {
        let Outcome::DeadLetter(d) = &plan.outcome else {
            return plan;
        };
        headers::set_text(&mut hdrs, headers::REASON, d.reason.as_str());
        if let Some(code) = d.errcode {
            headers::set_int(&mut hdrs, headers::ERRCODE, code);
        }
        headers::set_text(&mut hdrs, headers::ERROR, &d.error);
        headers::set_text(&mut hdrs, headers::DEAD_AT, &chrono::Utc::now().to_rfc3339());
        let props = props.clone().with_headers(hdrs);
        let dlx = &self.ctx.topology.dlx;
        match self.session.publisher.publish(dlx, "", &self.msg.data, props).await {
            Ok(()) => {
                tracing::warn!(reason = d.reason.as_str(), errcode = d.errcode, error = %d.error, "dead-lettered");
                plan
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter publish failed; handing the message back");
                self.session.broken.cancel();
                judge::judge(&self.facts(), Step::DeadLetterFailed(&plan), &self.ctx.policy)
            }
        }
    }

    /// The delivery's consent credit goes back unless the send spent it: sent, or maybe sent
    /// (no answer). A 43101 says the user has none at all: the credits reset.
    async fn give_back_credit(&self, plan: &Plan) -> Result<(), Abandoned> {
        let Some(d) = &self.trip.delivery else {
            return Ok(());
        };
        let (Some((app_id, openid)), Some(delivery_id)) = (&d.credit, d.delivery_id) else {
            return Ok(());
        };
        let spent = match &plan.finish {
            Some(Finish::Sent { .. }) => true,
            Some(f) => f.doubt() == Doubt::MayHaveArrived,
            None => false,
        };
        if spent {
            return Ok(());
        }
        let refused = plan.finish.as_ref().and_then(Finish::errcode) == Some(wechat_rules::errcode::USER_REFUSED);
        let key = ConsentKey {
            app_id,
            openid,
            template_id: &d.template_id,
            delivery_id,
        };
        let ctx = self.ctx;
        ctx.db
            .retry("give back a consent credit", || {
                ctx.ledger.give_back_credit(key, refused)
            })
            .await
    }

    /// The plan's ledger write, for the claimed delivery.
    async fn record(&self, plan: &Plan) -> Result<(), Abandoned> {
        let delivery_id = self.trip.delivery.as_ref().and_then(|d| d.delivery_id);
        let (Some(finish), Some(id)) = (&plan.finish, delivery_id) else {
            return Ok(());
        };
        let ctx = self.ctx;
        let started = Instant::now();
        let applied = ctx
            .db
            .retry("record outcome", || {
                ctx.ledger.record(id, self.sent().map(|s| &s.attempt), finish)
            })
            .await?;
        ctx.ledger.sent(id);
        stage("record", started);
        if !applied {
            tracing::info!(
                delivery_id = id,
                "not recorded: another worker holds or finished this delivery"
            );
        }
        Ok(())
    }

    /// After the outcome is recorded: the recipient left the account (43004), so later template
    /// messages to them end `suppressed`. Only once this delivery's dead letter is out: when its
    /// publish failed, the message goes back and its next delivery must meet WeChat's 43004 again,
    /// not a suppression. Best effort: this delivery's fate does not depend on it.
    async fn note_unfollowed(&self, plan: &Plan) {
        let Some(sent) = self.sent() else {
            return;
        };
        let Some((app_id, openid)) = &sent.left_the_account else {
            return;
        };
        if !matches!(plan.outcome, Outcome::DeadLetter(_)) {
            return;
        }
        if let Err(e) = self
            .ctx
            .ledger
            .mark_unfollowed(app_id, openid, sent.attempt.started_at)
            .await
        {
            tracing::warn!(error = %e, "could not record that the recipient left the account");
        }
    }

    /// Publishes the requeue or retry copy (confirmed). `false`: it failed; the message is handed
    /// back and the session rebuilt.
    async fn republish(&self, plan: &Plan, props: BasicProperties, mut hdrs: FieldTable) -> bool {
        let ctx = self.ctx;
        let (queue, props) = match &plan.outcome {
            Outcome::Requeue => {
                headers::set_int(
                    &mut hdrs,
                    headers::TOKEN_REQUEUES,
                    i64::from(self.meta.token_requeues) + 1,
                );
                (ctx.topology.queue.clone(), props.with_headers(hdrs))
            }
            Outcome::RetryLater { delay } => {
                let tier = ctx.policy.tier_for(*delay);
                let ms = delay.as_millis().clamp(1, tier.as_millis()).to_string();
                (
                    ctx.topology.retry_queue(tier),
                    props.with_headers(hdrs).with_expiration(ms.into()),
                )
            }
            Outcome::Ack | Outcome::DeadLetter(_) | Outcome::Release => return true,
        };
        // The default exchange routes by queue name.
        match self.session.publisher.publish("", &queue, &self.msg.data, props).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, queue, "republish failed; handing the message back");
                self.session.broken.cancel();
                false
            }
        }
    }

    /// Acks, or hands the message back to the broker as it is ([`Message::hand_back`]).
    async fn settle(&self, plan: &Plan, released: bool) -> Result<(), Abandoned> {
        let started = Instant::now();
        let settled = if released {
            self.msg.hand_back().await
        } else {
            self.msg.ack().await
        };
        stage("ack", started);
        if let Err(e) = settled {
            // The channel died after the outcome was recorded: the redelivery will find it.
            tracing::debug!(error = %e, "ack failed");
            return Err(Abandoned);
        }
        let label = if released { "release" } else { plan.outcome.label() };
        metrics::counter!("wxnotify_messages_total", "outcome" => label).increment(1);
        Ok(())
    }
}
