//! The fleet-wide send rate per app (`WXNOTIFY_RATE_LIMIT`, docs/interface.md §6): every live worker takes
//! an equal share of the limit (the limit divided by the workers whose heartbeat is fresh, counted
//! at each heartbeat), so bursts stay under WeChat's minute quota (45011) however many run.
//!
//! Each worker paces its own sends per app with GCRA (virtual scheduling): a send reserves the next
//! free slot, so waiters are served in order and none of them spins. After a quiet spell up to
//! [`BURST`] worth of sends may go at once. A change of share takes effect from the next slot.
//!
//! Hand-written, twenty lines, rather than `governor`: we need a *reservation* (the slot is this
//! send's, whatever other tasks do while it waits) and a rate changed in place at each heartbeat;
//! governor offers neither (a check that does not reserve, a quota fixed at construction).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much sending may bunch up after a quiet spell (in time at the share's rate).
const BURST: Duration = Duration::from_millis(50);

/// The pacers of one worker, one per configured app.
pub(crate) struct RateLimit {
    /// Sends a second per app for the whole fleet.
    limit: f64,
    pacers: HashMap<String, Mutex<Pacer>>,
}

impl RateLimit {
    /// `limit` sends a second per app, shared by the fleet; this worker alone until it counts others.
    pub(crate) fn new(limit: f64, apps: &[String]) -> Self {
        let pacers = apps
            .iter()
            .map(|a| (a.clone(), Mutex::new(Pacer::new(limit, Instant::now()))))
            .collect();
        let rate = Self { limit, pacers };
        rate.publish_share(1);
        rate
    }

    /// `live` workers share the limit now (this one included).
    pub(crate) fn set_workers(&self, live: u64) {
        let live = live.max(1);
        for p in self.pacers.values() {
            p.lock().expect("pacer lock").set_rate(self.limit / live as f64);
        }
        self.publish_share(live);
    }

    /// How long the next send to `app` must wait; the slot is reserved for it. An app without a
    /// pacer (not configured: the judge refuses it later) does not wait.
    pub(crate) fn reserve(&self, app: &str) -> Duration {
        match self.pacers.get(app) {
            Some(p) => p.lock().expect("pacer lock").reserve(Instant::now()),
            None => Duration::ZERO,
        }
    }

    fn publish_share(&self, live: u64) {
        metrics::gauge!("wxnotify_rate_share").set(self.limit / live as f64);
    }
}

/// GCRA for one app: `next` is the earliest slot not yet reserved.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64, now: Instant) -> Self {
        let mut p = Self {
            interval: Duration::ZERO,
            next: now,
        };
        p.set_rate(rate);
        p
    }

    fn set_rate(&mut self, rate: f64) {
        self.interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    }

    /// Reserves the next slot at or after `now` (less what a burst allows): the wait until it.
    fn reserve(&mut self, now: Instant) -> Duration {
        let tolerance = BURST.saturating_sub(self.interval);
        let earliest = now.checked_sub(tolerance).unwrap_or(now);
        let slot = self.next.max(earliest);
        self.next = slot + self.interval;
        slot.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves `n` slots at `now`; the waits.
    fn waits(p: &mut Pacer, now: Instant, n: usize) -> Vec<Duration> {
        (0..n).map(|_| p.reserve(now)).collect()
    }

    #[test]
    fn a_backlog_is_spaced_at_the_rate() {
        let t = Instant::now();
        let mut p = Pacer::new(10.0, t);
        let w = waits(&mut p, t, 5);
        let ms: Vec<u128> = w.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [0, 100, 200, 300, 400],
            "10/s: one slot each 100 ms, reserved in order"
        );
    }

    #[test]
    fn after_a_quiet_spell_a_burst_goes_at_once_then_the_rate_holds() {
        let t = Instant::now();
        let mut p = Pacer::new(1000.0, t);
        // Quiet for a second: the 50 ms burst (50 sends at 1000/s) goes without waiting.
        let later = t + Duration::from_secs(1);
        let w = waits(&mut p, later, 100);
        let immediate = w.iter().filter(|d| d.is_zero()).count();
        assert!((49..=51).contains(&immediate), "burst of ~50, got {immediate}");
        // The 100th waits about 50 ms: 100 sends in 100 ms of slots less the burst.
        let last = w.last().unwrap().as_secs_f64();
        assert!((0.045..=0.055).contains(&last), "{last}");
        // In any second of a backlog, at most rate + burst.
        let mut q = Pacer::new(1000.0, t);
        let all = waits(&mut q, later, 3000);
        let within_first_second = all.iter().filter(|d| **d < Duration::from_secs(1)).count();
        assert!(within_first_second <= 1051, "{within_first_second}");
    }

    #[test]
    fn a_new_share_applies_from_the_next_slot() {
        let t = Instant::now();
        let mut p = Pacer::new(10.0, t);
        assert_eq!(p.reserve(t), Duration::ZERO);
        assert_eq!(p.reserve(t), Duration::from_millis(100));
        // A second worker joined: 5/s each.
        p.set_rate(5.0);
        assert_eq!(p.reserve(t), Duration::from_millis(200));
        assert_eq!(p.reserve(t), Duration::from_millis(400));
    }

    #[test]
    fn the_share_divides_the_limit_among_live_workers() {
        let r = RateLimit::new(90.0, &["wxA".to_string()]);
        r.set_workers(3);
        let waits: Vec<u128> = (0..3).map(|_| r.reserve("wxA").as_millis()).collect();
        // 30/s each: 33 ms apart (the first slot is now; rounding may shave a millisecond).
        assert_eq!(waits[0], 0);
        assert!((32..=34).contains(&waits[1]), "{waits:?}");
        assert!((65..=67).contains(&waits[2]), "{waits:?}");
        assert_eq!(r.reserve("not-configured"), Duration::ZERO);
        r.set_workers(0); // never divides by zero: this worker at least
        assert!(r.reserve("wxA") > Duration::ZERO);
    }
}
