//! The policy, as data and in one place: what each WeChat errcode means for a delivery
//! ([`ErrorClass`]), how long a failed delivery waits, how often it may try, how long WeChat's
//! `client_msg_id` window is trusted. Only [`crate::delivery::judge`] reads it to decide.
//!
//! Delays come from `backon`'s exponential backoff with jitter (each delay in `[d, 2d)`, `d` doubling
//! from `base` up to `max`). Delayed messages wait in broker queues, so retries survive restarts:
//! one queue per power-of-two *tier* (`<queue>.retry.<secs>s`), the message's own `expiration` set to
//! its jittered delay. A queue only expires messages at its head, so a queue holds only delays of
//! one tier `(t/2, t]`: a message waits at most half a tier behind a longer one.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::wechat::errcode::{DAILY_QUOTA, MINUTE_QUOTA, SYSTEM_BUSY, TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MALFORMED};

/// The class of a refused send (WECHAT_API.md, "Error codes a sender meets"), matched on the
/// errcode only, never on `errmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// 40001, 40014, 42001: the token was rejected. Replace it if still current, requeue.
    Token,
    /// -1 (and transport failures): retry with backoff.
    Transient,
    /// 45011: the minute quota. Transient, but no sooner than the next minute.
    MinuteQuota,
    /// 45009: the daily quota. Defer until it resets; never hot-retry.
    DailyQuota,
    /// Everything else: dead-letter with the errcode.
    Permanent,
}

/// The class of a non-zero errcode from a send API.
pub(crate) fn classify_send(errcode: i64) -> ErrorClass {
    match errcode {
        TOKEN_INVALID | TOKEN_MALFORMED | TOKEN_EXPIRED => ErrorClass::Token,
        SYSTEM_BUSY => ErrorClass::Transient,
        MINUTE_QUOTA => ErrorClass::MinuteQuota,
        DAILY_QUOTA => ErrorClass::DailyQuota,
        _ => ErrorClass::Permanent,
    }
}

/// After a counted failure: wait this long, or give up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backoff {
    Wait(Duration),
    Exhausted,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_delay: Duration,
    /// 45009 (daily quota): how long a message waits before it asks again. Not counted.
    pub daily_quota_delay: Duration,
    /// 45011 (minute quota): at least this long.
    pub minute_quota_delay: Duration,
    /// A copy of a delivery another live worker is sending: look again after this. Not counted.
    pub hold_delay: Duration,
    /// WeChat drops a resend with the same `client_msg_id` for 10 minutes. We stay clear of the
    /// edge: a template delivery in doubt for longer than this is dead-lettered `ambiguous`.
    pub dedup_window: Duration,
    /// A message whose token was rejected goes straight back to the work queue this often; after
    /// that it waits like any transient failure, so a token WeChat keeps refusing does not spin.
    pub token_requeues: u32,
    /// The work queue's delivery limit: a message handed out this often without being settled
    /// (it crashed or stalled workers) is dead-lettered `delivery_limit` by us, ledger row included,
    /// one delivery before the broker would do it without telling the ledger.
    pub delivery_limit: u32,
    /// A tracked subscribe delivery finding no consent credit this soon after its event occurred
    /// looks again a second later instead of ending `suppressed`: the user's `accept`, pushed by
    /// WeChat, may still be on its way (docs/interface.md §12). Not counted.
    pub consent_wait: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32, base: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts,
            base,
            max_delay: max_delay.max(base),
            daily_quota_delay: Duration::from_secs(30 * 60),
            minute_quota_delay: Duration::from_secs(60),
            hold_delay: Duration::from_secs(5),
            dedup_window: Duration::from_secs(9 * 60 + 30),
            token_requeues: 2,
            delivery_limit: 20,
            consent_wait: Duration::from_secs(5),
        }
    }

    /// After a counted failure, when `failed_before` counted attempts already failed: how long
    /// to wait (at least `min`), or give up.
    pub(crate) fn after_failure(&self, failed_before: u32, min: Duration) -> Backoff {
        if failed_before + 1 >= self.max_attempts {
            Backoff::Exhausted
        } else {
            Backoff::Wait(self.backoff(failed_before).max(min))
        }
    }

    /// The jittered delay before retry number `n + 1` (n = failures so far).
    pub fn backoff(&self, n: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.base)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(n as usize)
            .unwrap_or(self.max_delay)
    }

    /// The delay tiers, one retry queue each: powers of two seconds, up to the longest delay needed.
    pub fn tiers(&self) -> Vec<Duration> {
        let longest = (self.max_delay * 2)
            .max(self.daily_quota_delay)
            .max(self.minute_quota_delay * 2);
        let mut tiers = vec![];
        let mut t = Duration::from_secs(1);
        loop {
            tiers.push(t);
            if t >= longest {
                break tiers;
            }
            t *= 2;
        }
    }

    /// The tier a delay waits in: the shortest one at least as long.
    pub fn tier_for(&self, delay: Duration) -> Duration {
        let tiers = self.tiers();
        tiers
            .iter()
            .copied()
            .find(|t| *t >= delay)
            .unwrap_or(*tiers.last().expect("at least one tier"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(8, Duration::from_secs(1), Duration::from_secs(300))
    }

    #[test]
    fn errcode_classes() {
        for c in [40001, 40014, 42001] {
            assert_eq!(classify_send(c), ErrorClass::Token);
        }
        assert_eq!(classify_send(-1), ErrorClass::Transient);
        assert_eq!(classify_send(45011), ErrorClass::MinuteQuota);
        assert_eq!(classify_send(45009), ErrorClass::DailyQuota);
        for c in [41001, 40003, 40037, 43004, 43101, 47001, 47003, 48001, 50001, 50002] {
            assert_eq!(classify_send(c), ErrorClass::Permanent, "{c}");
        }
    }

    #[test]
    fn counted_failures_run_out() {
        let p = policy();
        assert!(matches!(p.after_failure(0, Duration::ZERO), Backoff::Wait(_)));
        assert_eq!(p.after_failure(7, Duration::ZERO), Backoff::Exhausted);
        match p.after_failure(0, Duration::from_secs(60)) {
            Backoff::Wait(d) => assert!(d >= Duration::from_secs(60)),
            b => panic!("{b:?}"),
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = policy();
        for n in 0..12 {
            let d = p.backoff(n);
            let nominal = Duration::from_secs(1 << n.min(9)).min(Duration::from_secs(300));
            assert!(d >= nominal && d < nominal * 2, "n={n} d={d:?}");
        }
    }

    #[test]
    fn tiers_cover_every_delay() {
        let p = policy();
        let tiers = p.tiers();
        assert_eq!(tiers[0], Duration::from_secs(1));
        assert!(*tiers.last().unwrap() >= Duration::from_secs(1800));
        assert_eq!(p.tier_for(Duration::from_millis(5300)), Duration::from_secs(8));
        assert_eq!(p.tier_for(Duration::from_secs(8)), Duration::from_secs(8));
    }
}
