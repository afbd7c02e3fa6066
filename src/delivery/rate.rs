//! The fleet-wide send rate per app (`WXNOTIFY_RATE_LIMIT`, or an app's `rate_limit` in the
//! templates file, docs/interface.md §6): every live worker takes an equal share of the limit
//! (the limit divided by the workers whose heartbeat is fresh, counted at each heartbeat), so
//! bursts stay under WeChat's minute quota (45011) however many run.
//!
//! Each worker paces its own share per app with GCRA (virtual scheduling), twice: its scheduler
//! dispatches a delivery of a paced app only when a dispatch slot is free (after a quiet spell up
//! to [`BURST`] worth at once), and each send reserves the next send slot right before it goes,
//! with no burst at all: a stall between dispatch and send (a token wait, a slow claim, a database
//! retry) cannot bunch the sends up. A change of share takes effect from the next slot.
//!
//! Hand-written, twenty lines, rather than `governor`: we need a *reservation* (the slot is this
//! send's, whatever other tasks do while it waits) and a rate changed in place at each heartbeat;
//! governor offers neither (a check that does not reserve, a quota fixed at construction).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How far dispatching may run ahead of the rate after a quiet spell (in time at the share's
/// rate): a delivery is dispatched a claim and a token ahead of its send.
const BURST: Duration = Duration::from_millis(50);

/// The send pacer runs this much under the limit: what WeChat counts is when each send reaches
/// it, a few milliseconds of network and scheduling jitter after its slot, and spacing exactly at
/// the limit let that jitter fit the limit plus one into a second (measured: 51 at 50/s).
const SEND_MARGIN: f64 = 0.97;

/// The pacers of one worker, two per rate-limited app: one paces dispatching (which deliveries
/// start: the worker's scheduler asks it), one the sends themselves (asked right before each
/// send, with no burst: the limit holds at the moment of the send, whatever stalled before).
pub(crate) struct RateLimit {
    /// Live workers sharing each limit (this one included), from the last heartbeat.
    live: AtomicU64,
    pacers: HashMap<String, Pacers>,
}

struct Pacers {
    /// Sends a second for the whole fleet.
    limit: f64,
    dispatch: Mutex<Pacer>,
    send: Mutex<Pacer>,
}

impl RateLimit {
    /// `limits`: sends a second per app, each shared by the fleet; this worker alone until it
    /// counts others. Apps not listed are not limited. `None` when no app is.
    pub(crate) fn new(limits: &[(String, f64)]) -> Option<Self> {
        if limits.is_empty() {
            return None;
        }
        let now = Instant::now();
        let pacers = limits
            .iter()
            .map(|(app, limit)| {
                let p = Pacers {
                    limit: *limit,
                    dispatch: Mutex::new(Pacer::new(*limit, BURST, now)),
                    send: Mutex::new(Pacer::new(*limit * SEND_MARGIN, Duration::ZERO, now)),
                };
                (app.clone(), p)
            })
            .collect();
        let rate = Self {
            live: AtomicU64::new(1),
            pacers,
        };
        rate.publish_shares(1);
        Some(rate)
    }

    /// `live` workers share the limits now (this one included).
    pub(crate) fn set_workers(&self, live: u64) {
        let live = live.max(1);
        self.live.store(live, Ordering::Relaxed);
        for p in self.pacers.values() {
            p.dispatch.lock().expect("pacer lock").set_rate(p.limit / live as f64);
            p.send
                .lock()
                .expect("pacer lock")
                .set_rate(p.limit * SEND_MARGIN / live as f64);
        }
        self.publish_shares(live);
    }

    /// The live workers sharing the limits, as last counted.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// The fleet's limit for `app`, if it has one.
    #[cfg(test)]
    fn limit(&self, app: &str) -> Option<f64> {
        self.pacers.get(app).map(|p| p.limit)
    }

    /// Takes a dispatch slot for `app` if one is free now; otherwise when the next one is.
    pub(crate) fn try_dispatch(&self, app: &str, now: Instant) -> Result<(), Instant> {
        match self.pacers.get(app) {
            Some(p) => p.dispatch.lock().expect("pacer lock").try_take(now),
            None => Ok(()),
        }
    }

    /// How long the send about to go to `app` must wait; the slot is reserved for it.
    pub(crate) fn reserve_send(&self, app: &str) -> Duration {
        match self.pacers.get(app) {
            Some(p) => p.send.lock().expect("pacer lock").reserve(Instant::now()),
            None => Duration::ZERO,
        }
    }

    fn publish_shares(&self, live: u64) {
        for (app, p) in &self.pacers {
            metrics::gauge!("wxnotify_rate_share", "app" => app.clone()).set(p.limit / live as f64);
        }
    }
}

/// GCRA for one app: `next` is the earliest slot not yet reserved; `tolerance` how far before
/// its slot a caller may go after a quiet spell.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    tolerance: Duration,
    burst: Duration,
    next: Instant,
}

impl Pacer {
    fn new(rate: f64, burst: Duration, now: Instant) -> Self {
        let mut p = Self {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            burst,
            next: now,
        };
        p.set_rate(rate);
        p
    }

    fn set_rate(&mut self, rate: f64) {
        self.interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        self.tolerance = self.burst.saturating_sub(self.interval);
    }

    /// The slot the next caller at `now` gets.
    fn slot(&self, now: Instant) -> Instant {
        let earliest = now.checked_sub(self.tolerance).unwrap_or(now);
        self.next.max(earliest)
    }

    /// Reserves the next slot at or after `now` (less what a burst allows): the wait until it.
    fn reserve(&mut self, now: Instant) -> Duration {
        let slot = self.slot(now);
        self.next = slot + self.interval;
        slot.saturating_duration_since(now)
    }

    /// Reserves the next slot only if it is due by `now`; otherwise says when it is.
    fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let slot = self.slot(now);
        if slot > now {
            return Err(slot);
        }
        self.next = slot + self.interval;
        Ok(())
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
        let mut p = Pacer::new(10.0, BURST, t);
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
        let mut p = Pacer::new(1000.0, BURST, t);
        // Quiet for a second: the 50 ms burst (50 sends at 1000/s) goes without waiting.
        let later = t + Duration::from_secs(1);
        let w = waits(&mut p, later, 100);
        let immediate = w.iter().filter(|d| d.is_zero()).count();
        assert!((49..=51).contains(&immediate), "burst of ~50, got {immediate}");
        // The 100th waits about 50 ms: 100 sends in 100 ms of slots less the burst.
        let last = w.last().unwrap().as_secs_f64();
        assert!((0.045..=0.055).contains(&last), "{last}");
        // In any second of a backlog, at most rate + burst.
        let mut q = Pacer::new(1000.0, BURST, t);
        let all = waits(&mut q, later, 3000);
        let within_first_second = all.iter().filter(|d| **d < Duration::from_secs(1)).count();
        assert!(within_first_second <= 1051, "{within_first_second}");
    }

    #[test]
    fn sends_after_a_stall_keep_the_rate() {
        let t = Instant::now();
        let mut send = Pacer::new(50.0, Duration::ZERO, t);
        // Ten deliveries waited 7 s for a token, then all want to send at once: 20 ms apart.
        let later = t + Duration::from_secs(7);
        let ms: Vec<u128> = waits(&mut send, later, 10).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 20, 40, 60, 80, 100, 120, 140, 160, 180]);
    }

    #[test]
    fn dispatch_takes_a_slot_only_when_it_is_due() {
        let t = Instant::now();
        let mut p = Pacer::new(10.0, BURST, t);
        assert_eq!(p.try_take(t), Ok(()));
        // The next slot is 100 ms on: refused, and told when, without reserving it.
        assert_eq!(p.try_take(t), Err(t + Duration::from_millis(100)));
        assert_eq!(p.try_take(t), Err(t + Duration::from_millis(100)));
        assert_eq!(p.try_take(t + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn a_new_share_applies_from_the_next_slot() {
        let t = Instant::now();
        let mut p = Pacer::new(10.0, BURST, t);
        assert_eq!(p.reserve(t), Duration::ZERO);
        assert_eq!(p.reserve(t), Duration::from_millis(100));
        // A second worker joined: 5/s each.
        p.set_rate(5.0);
        assert_eq!(p.reserve(t), Duration::from_millis(200));
        assert_eq!(p.reserve(t), Duration::from_millis(400));
    }

    #[test]
    fn the_share_divides_the_limit_among_live_workers() {
        let r = RateLimit::new(&[("wxA".to_string(), 90.0)]).expect("a limit");
        r.set_workers(3);
        let waits: Vec<u128> = (0..3).map(|_| r.reserve_send("wxA").as_millis()).collect();
        // 30/s each, sent 3% under it: 34.4 ms apart (the first slot is now).
        assert_eq!((r.live(), r.limit("wxA"), r.limit("wxB")), (3, Some(90.0), None));
        assert_eq!(waits[0], 0);
        assert!((33..=35).contains(&waits[1]), "{waits:?}");
        assert!((68..=69).contains(&waits[2]), "{waits:?}");
        assert_eq!(r.reserve_send("not-configured"), Duration::ZERO);
        r.set_workers(0); // never divides by zero: this worker at least
        assert!(r.reserve_send("wxA") > Duration::ZERO);
        assert_eq!(r.live(), 1);
        assert!(RateLimit::new(&[]).is_none(), "no app limited: no pacing at all");
    }
}
