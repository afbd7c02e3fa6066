//! The retry policy, as data and in one place: what each [`ErrorClass`] leads to, after how long.
//!
//! Delays come from `backon`'s exponential backoff with jitter (each delay in `[d, 2d)`, `d` doubling
//! from `base` up to `max`). Delayed messages wait in broker queues, so retries survive restarts:
//! one queue per power-of-two *tier* (`<queue>.retry.<secs>s`), the message's own `expiration` set to
//! its jittered delay. A queue only expires messages at its head, so a queue holds only delays of
//! one tier `(t/2, t]`: a message waits at most half a tier behind a longer one.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::wechat::ErrorClass;

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Token rejected: back to the work queue at once, the budget untouched.
    Requeue,
    /// Wait, then try again. `counted`: this failure uses up one attempt of the budget.
    RetryLater { delay: Duration, counted: bool },
    /// The budget is used up.
    Exhausted,
    /// It will never work: dead-letter.
    Permanent,
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
        }
    }

    /// The decision after a failure of `class`, when `failed_before` counted attempts already failed.
    pub fn decide(&self, class: ErrorClass, failed_before: u32) -> Decision {
        let counted = |min: Duration| {
            if failed_before + 1 >= self.max_attempts {
                Decision::Exhausted
            } else {
                Decision::RetryLater {
                    delay: self.backoff(failed_before).max(min),
                    counted: true,
                }
            }
        };
        match class {
            ErrorClass::Token => Decision::Requeue,
            ErrorClass::Transient => counted(Duration::ZERO),
            ErrorClass::MinuteQuota => counted(self.minute_quota_delay),
            ErrorClass::DailyQuota => Decision::RetryLater {
                delay: self.daily_quota_delay,
                counted: false,
            },
            ErrorClass::Permanent => Decision::Permanent,
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
    fn each_class_has_its_reaction() {
        let p = policy();
        assert_eq!(p.decide(ErrorClass::Token, 7), Decision::Requeue);
        assert_eq!(p.decide(ErrorClass::Permanent, 0), Decision::Permanent);
        assert!(matches!(
            p.decide(ErrorClass::Transient, 0),
            Decision::RetryLater { counted: true, .. }
        ));
        assert_eq!(p.decide(ErrorClass::Transient, 7), Decision::Exhausted);
        assert!(matches!(
            p.decide(ErrorClass::DailyQuota, 7),
            Decision::RetryLater { counted: false, .. }
        ));
        match p.decide(ErrorClass::MinuteQuota, 0) {
            Decision::RetryLater { delay, .. } => assert!(delay >= Duration::from_secs(60)),
            d => panic!("{d:?}"),
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
