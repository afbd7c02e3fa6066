//! Which message starts next, and which one waits in its app's lane (docs/interface.md §11): the
//! worker's scheduler, pure. The worker's loop ([`super::dispatch`]) feeds it what the broker
//! hands over and carries out what it answers.
//!
//! - Every app has its own line of messages waiting for a permit. A free permit goes to the app
//!   with the fewest deliveries in flight (ties in turn): apps with backlogs get equal shares, and
//!   an app that cannot use its share (its rate limit, sends that hang) leaves it to the others.
//! - A message taken from the work queue waits in its app's line only while that line is short
//!   (and the work queue's prefetch half free); otherwise it is parked in the app's lane queue, so
//!   the work queue keeps moving and another app's message behind a campaign is seen at once.
//!   The lanes are consumed like the work queue and feed the same lines.
//! - A rate-limited app starts deliveries only at its rate (a dispatch slot), keeps about a
//!   second's worth in flight and in line, and parks the rest: a message waiting for its rate
//!   waits in the lane, holding no permit and no prefetch slot of the work queue.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many messages from the work queue one app may have waiting for a permit before the next
/// one is parked in its lane (apps that share the worker; a lone app is never parked).
const DIRECT_LINE: usize = 16;

/// How many parked messages share one lane message at most (a batch, `src/queue/batch.rs`): the
/// broker writes and hands out one message instead of each.
pub(crate) const BATCH: usize = 64;

/// How a lane's batches are gathered: their size, and the longest a message waits for its batch
/// to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batching {
    pub size: usize,
    pub gather: Duration,
}

/// The label of the platforms' merchants, counted together in the metrics.
pub(crate) const MERCHANTS: &str = "merchants";

/// Where a message just taken from the work queue goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Into its app's line, to start when a permit is free.
    Line,
    /// Published to its app's lane (confirmed), then acked.
    Park,
}

/// Where a message in a line came from: the work queue holds a prefetch slot for it until acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Work,
    Lane,
}

/// What the scheduler says when asked for the next delivery.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<M> {
    /// Start this message now (in its app's line `app`).
    Start { app: usize, msg: M, source: Source },
    /// Nothing can start now; ask again at this instant (a rate slot), or when something changes.
    Wait(Option<Instant>),
}

/// One app's line.
#[derive(Debug)]
struct Line<M> {
    app: String,
    /// It has a lane to park in (a configured app, or a merchant); others are never parked.
    lane: bool,
    /// A platform's merchant (not configured): its backlog is counted with the other merchants'.
    merchant: bool,
    /// Its fleet-wide rate limit, if it has one.
    limit: Option<f64>,
    waiting: VecDeque<(M, Source)>,
    in_flight: usize,
}

/// The scheduler of one worker session.
#[derive(Debug)]
pub(crate) struct Lanes<M> {
    lines: Vec<Line<M>>,
    index: HashMap<String, usize>,
    /// Where the next tie is broken (round robin).
    turn: usize,
    /// Messages of the work queue not yet acked: in a line, in flight or being parked.
    work_held: usize,
    work_prefetch: usize,
    /// Live workers sharing the rate limits (this one included).
    live: u64,
    /// Apps met that are not configured are a platform's merchants, parked in the merchant
    /// lanes (with platforms configured; otherwise intake refuses them).
    merchants: bool,
}

/// The prefetch of a lane whose messages are batches: enough for twice `concurrency` messages,
/// and at least 4 (a lane's single messages: handed back, split, or parked by an older version).
pub(crate) fn batched_prefetch(concurrency: usize) -> usize {
    (2 * concurrency).div_ceil(BATCH).max(4)
}

impl<M> Lanes<M> {
    /// `apps`: the configured apps that have a lane, each with its rate limit if it has one;
    /// `merchants`: other apps are merchants, which have lanes too.
    pub(crate) fn new(apps: &[(String, Option<f64>)], work_prefetch: usize, merchants: bool) -> Self {
        let mut lanes = Self {
            lines: Vec::new(),
            index: HashMap::new(),
            turn: 0,
            work_held: 0,
            work_prefetch,
            live: 1,
            merchants,
        };
        for (app, limit) in apps {
            lanes.add(app, true, *limit);
        }
        lanes
    }

    fn add(&mut self, app: &str, lane: bool, limit: Option<f64>) -> usize {
        let i = self.lines.len();
        self.lines.push(Line {
            app: app.to_string(),
            lane,
            merchant: false,
            limit,
            waiting: VecDeque::new(),
            in_flight: 0,
        });
        self.index.insert(app.to_string(), i);
        i
    }

    /// The line of `app`. An app not configured is a merchant (with a lane) when platforms are
    /// served; otherwise it gets a line without a lane (intake refuses it).
    pub(crate) fn line_of(&mut self, app: &str) -> usize {
        match self.index.get(app) {
            Some(&i) => i,
            None => {
                let i = self.add(app, self.merchants, None);
                self.lines[i].merchant = self.merchants;
                i
            }
        }
    }

    #[cfg(test)]
    fn app(&self, line: usize) -> &str {
        &self.lines[line].app
    }

    /// How many workers share the rate limits now.
    pub(crate) fn set_live(&mut self, live: u64) {
        self.live = live.max(1);
    }

    /// This worker's sends a second for `line`, if its app is rate-limited.
    fn share(&self, line: usize) -> Option<f64> {
        self.lines[line].limit.map(|l| l / self.live as f64)
    }

    /// A paced app's second's worth (at least one): how many it keeps in line and in flight.
    fn paced_cap(&self, line: usize) -> usize {
        self.share(line).map_or(usize::MAX, |s| (s.ceil() as usize).max(1))
    }

    /// How many the lane consumer of `line` may hold: for a paced app two seconds' worth in
    /// batches of [`Lanes::batching`] (at least two), so that none of its messages waits long
    /// unacked; for others enough batches for twice `concurrency` messages ([`batched_prefetch`]).
    pub(crate) fn lane_prefetch(&self, line: usize, concurrency: usize) -> usize {
        match self.share(line) {
            Some(s) => ((2.0 * s) / self.batching(line).size as f64)
                .ceil()
                .clamp(2.0, concurrency.max(2) as f64) as usize,
            None => batched_prefetch(concurrency),
        }
    }

    /// How `line`'s parked messages are batched: [`BATCH`] to a lane message, gathered for at
    /// most 5 ms; a paced app's, a second's worth gathered for at most a second (they are parked
    /// because a second's worth already waits in its line, so gathering delays none of them).
    pub(crate) fn batching(&self, line: usize) -> Batching {
        match self.share(line) {
            Some(_) => Batching {
                size: self.paced_cap(line).min(BATCH),
                gather: Duration::from_secs(1),
            },
            None => Batching {
                size: BATCH,
                gather: Duration::from_millis(5),
            },
        }
    }

    /// A message of `line` was taken from the work queue: where it goes. It is held (a prefetch
    /// slot) until [`Lanes::parked`] or [`Lanes::finished`] says it was acked.
    pub(crate) fn route(&mut self, line: usize) -> Route {
        self.work_held += 1;
        let l = &self.lines[line];
        let lone = self.lines.iter().filter(|l| l.lane).count() <= 1;
        let keep = if !l.lane {
            true
        } else if l.limit.is_some() {
            l.waiting.len() < self.paced_cap(line)
        } else {
            // Past half the prefetch held, only an app with nothing waiting still lines up: its
            // message starts within a round of the permits, and parking it would only cost a
            // second trip through the broker.
            lone || (l.waiting.len() < DIRECT_LINE
                && (l.waiting.is_empty() || 2 * self.work_held <= self.work_prefetch))
        };
        if keep { Route::Line } else { Route::Park }
    }

    /// `n` parked messages were published to their lane and acked (or handed back).
    pub(crate) fn parked(&mut self, n: usize) {
        self.work_held = self.work_held.saturating_sub(n);
    }

    /// Puts a message in its app's line.
    pub(crate) fn push(&mut self, line: usize, msg: M, source: Source) {
        self.lines[line].waiting.push_back((msg, source));
    }

    /// The next message to start, given a free permit. `dispatch` takes a paced app's dispatch
    /// slot (or says when the next is free); it is asked only for the app about to start.
    pub(crate) fn next(&mut self, mut dispatch: impl FnMut(&str) -> Result<(), Instant>) -> Next<M> {
        let mut wake: Option<Instant> = None;
        // Paced apps that have no slot now: passed over on this call.
        let mut refused: Vec<usize> = Vec::new();
        while let Some(i) = self.fewest_in_flight(&refused) {
            if self.lines[i].limit.is_some()
                && let Err(at) = dispatch(&self.lines[i].app)
            {
                wake = Some(wake.map_or(at, |w| w.min(at)));
                refused.push(i);
                continue;
            }
            let n = self.lines.len();
            let l = &mut self.lines[i];
            let (msg, source) = l.waiting.pop_front().expect("a candidate has a message waiting");
            l.in_flight += 1;
            self.turn = (i + 1) % n;
            return Next::Start { app: i, msg, source };
        }
        Next::Wait(wake)
    }

    /// The line that may start a message with the fewest in flight; among equals, the first in
    /// the round robin's order from `turn`. One pass, no allocation: a platform's worker has a
    /// line per merchant.
    fn fewest_in_flight(&self, refused: &[usize]) -> Option<usize> {
        let n = self.lines.len();
        (0..n)
            .map(|k| (self.turn + k) % n)
            .filter(|&i| {
                let l = &self.lines[i];
                !l.waiting.is_empty() && l.in_flight < self.paced_cap(i) && !refused.contains(&i)
            })
            .min_by_key(|&i| self.lines[i].in_flight)
    }

    /// A delivery of `line` finished (its message acked or handed back).
    pub(crate) fn finished(&mut self, line: usize, source: Source) {
        let l = &mut self.lines[line];
        l.in_flight = l.in_flight.saturating_sub(1);
        if source == Source::Work {
            self.work_held = self.work_held.saturating_sub(1);
        }
    }

    /// Per configured app: messages waiting in this worker's line, and how many of them wait for
    /// the rate; the platforms' merchants together as `merchants` (one series, however many).
    pub(crate) fn backlog(&self) -> Vec<(&str, usize, usize)> {
        let mut out: Vec<(&str, usize, usize)> = self
            .lines
            .iter()
            .filter(|l| !l.merchant)
            .map(|l| {
                let for_rate = if l.limit.is_some() { l.waiting.len() } else { 0 };
                (l.app.as_str(), l.waiting.len(), for_rate)
            })
            .collect();
        if self.merchants {
            let waiting = self.lines.iter().filter(|l| l.merchant).map(|l| l.waiting.len()).sum();
            out.push((MERCHANTS, waiting, 0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn apps(names: &[&str]) -> Vec<(String, Option<f64>)> {
        names.iter().map(|s| (s.to_string(), None)).collect()
    }

    /// Starts up to `permits` messages; which apps they were for.
    fn start(lanes: &mut Lanes<u32>, permits: usize) -> Vec<String> {
        let mut started = Vec::new();
        for _ in 0..permits {
            match lanes.next(|_| Ok(())) {
                Next::Start { app, .. } => started.push(lanes.app(app).to_string()),
                Next::Wait(_) => break,
            }
        }
        started
    }

    #[test]
    fn a_lone_app_is_never_parked() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA"]), 100, false);
        let a = lanes.line_of("wxA");
        for i in 0..1000 {
            assert_eq!(lanes.route(a), Route::Line);
            lanes.push(a, i, Source::Work);
        }
    }

    #[test]
    fn a_backlog_is_parked_and_another_apps_message_is_not() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA", "wxB"]), 1000, false);
        let (a, b) = (lanes.line_of("wxA"), lanes.line_of("wxB"));
        let routes: Vec<Route> = (0..100)
            .map(|i| {
                let r = lanes.route(a);
                if r == Route::Line {
                    lanes.push(a, i, Source::Work);
                } else {
                    lanes.parked(1);
                }
                r
            })
            .collect();
        assert_eq!(routes.iter().filter(|r| **r == Route::Line).count(), DIRECT_LINE);
        assert_eq!(lanes.route(b), Route::Line, "B's line is empty");
        lanes.push(b, 999, Source::Work);
        // A has 16 waiting and none in flight; B one: the first permit is A's or B's in turn,
        // the second B's at the latest.
        let started = start(&mut lanes, 2);
        assert!(started.contains(&"wxB".to_string()), "{started:?}");
    }

    #[test]
    fn the_work_queue_keeps_half_its_prefetch_for_parking() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA", "wxB", "wxC"]), 8, false);
        let lines: Vec<usize> = ["wxA", "wxB", "wxC"].iter().map(|a| lanes.line_of(a)).collect();
        let mut kept = 0;
        for i in 0..8 {
            if lanes.route(lines[i % 3]) == Route::Line {
                lanes.push(lines[i % 3], i as u32, Source::Work);
                kept += 1;
            }
        }
        assert_eq!(
            kept, 4,
            "four of eight prefetch slots for messages in line or in flight"
        );
        // An app with nothing waiting still lines up its message.
        let d = lanes.line_of("wxD");
        assert_eq!(lanes.route(d), Route::Line);
    }

    #[test]
    fn apps_with_backlogs_get_equal_shares_of_the_permits() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA", "wxB", "wxC"]), 1000, false);
        for app in ["wxA", "wxB", "wxC"] {
            let l = lanes.line_of(app);
            for i in 0..1000 {
                lanes.push(l, i, Source::Lane);
            }
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        // 30 permits; each finished delivery frees one for the next start.
        for app in start(&mut lanes, 30) {
            *counts.entry(app).or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
        for _ in 0..300 {
            // B's sends are the quickest: it finishes most often, yet gets no more than its turn.
            let b = lanes.line_of("wxB");
            lanes.finished(b, Source::Lane);
            let started = start(&mut lanes, 1);
            assert_eq!(started, ["wxB"], "the app with fewest in flight");
        }
    }

    #[test]
    fn an_app_that_cannot_start_leaves_the_permits_to_the_others() {
        let limited = [("wxA".to_string(), Some(10.0)), ("wxB".to_string(), Some(10.0))];
        let mut lanes: Lanes<u32> = Lanes::new(&limited, 1000, false);
        let (a, b) = (lanes.line_of("wxA"), lanes.line_of("wxB"));
        let later = Instant::now() + Duration::from_millis(100);
        for i in 0..5 {
            lanes.push(a, i, Source::Lane);
            lanes.push(b, i, Source::Lane);
        }
        // A's rate slot is not due: B's messages start; the scheduler says when to ask for A.
        let mut started = Vec::new();
        loop {
            match lanes.next(|app| if app == "wxA" { Err(later) } else { Ok(()) }) {
                Next::Start { app, .. } => started.push(lanes.app(app).to_string()),
                Next::Wait(at) => {
                    assert_eq!(at, Some(later));
                    break;
                }
            }
        }
        assert_eq!(started, ["wxB"; 5]);
    }

    #[test]
    fn a_paced_app_keeps_about_a_seconds_worth_in_line_and_in_flight() {
        // 10/s for the fleet, two workers: 5/s for this one.
        let mut lanes: Lanes<u32> = Lanes::new(&[("wxA".to_string(), Some(10.0))], 1000, false);
        lanes.set_live(2);
        let a = lanes.line_of("wxA");
        let kept = (0..20)
            .filter(|&i| {
                let r = lanes.route(a);
                if r == Route::Line {
                    lanes.push(a, i, Source::Work);
                }
                r == Route::Line
            })
            .count();
        assert_eq!(kept, 5, "a lone paced app parks past a second's worth too");
        assert_eq!(start(&mut lanes, 100).len(), 5, "at most 5 in flight");
        assert_eq!(lanes.batching(a).size, 5, "parked a second's worth to a batch");
        assert_eq!(lanes.lane_prefetch(a, 1000), 2, "two batches: two seconds' worth");
        let waiting: Vec<_> = lanes.backlog();
        assert_eq!(waiting, [("wxA", 0, 0)]);
        let b = lanes.line_of("wxB");
        assert_eq!(lanes.batching(b).size, BATCH, "an app without a limit");
    }

    #[test]
    fn an_unknown_app_is_never_parked() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA", "wxB"]), 4, false);
        let x = lanes.line_of("wxUnknown");
        for i in 0..10 {
            assert_eq!(lanes.route(x), Route::Line);
            lanes.push(x, i, Source::Work);
        }
    }

    #[test]
    fn a_merchants_backlog_is_parked_and_another_merchants_message_is_not() {
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA"]), 1000, true);
        let m1 = lanes.line_of("wxMERCHANT1");
        let parked = (0..100)
            .filter(|&i| match lanes.route(m1) {
                Route::Line => {
                    lanes.push(m1, i, Source::Work);
                    false
                }
                Route::Park => {
                    lanes.parked(1);
                    true
                }
            })
            .count();
        assert_eq!(parked, 100 - DIRECT_LINE);
        let m2 = lanes.line_of("wxMERCHANT2");
        assert_eq!(
            lanes.route(m2),
            Route::Line,
            "another merchant's first message waits in no lane"
        );
        lanes.push(m2, 999, Source::Work);
        let started = start(&mut lanes, 2);
        assert!(started.contains(&"wxMERCHANT2".to_string()), "{started:?}");
        // The metrics count the merchants together: one series however many there are.
        let waiting: usize = lanes.lines.iter().map(|l| l.waiting.len()).sum();
        assert_eq!(lanes.backlog(), vec![("wxA", 0, 0), (MERCHANTS, waiting, 0)]);
        // Without platforms an unknown app is never parked (intake refuses it).
        let mut lanes: Lanes<u32> = Lanes::new(&apps(&["wxA", "wxB"]), 1000, false);
        let x = lanes.line_of("wxUNKNOWN");
        assert!((0..100).all(|_| lanes.route(x) == Route::Line));
    }
}
