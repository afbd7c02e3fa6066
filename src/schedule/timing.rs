//! When a delivery may go (docs/interface.md §8): the instants a template renders for one event
//! ([`Timing`]) and quiet hours ([`QuietHours`], Beijing time, possibly wrapping midnight).

use std::str::FromStr;

use chrono::{DateTime, Days, FixedOffset, NaiveTime, Utc};

/// A template's `send_at`, `not_after` and `cancel_key`, rendered over one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timing {
    /// Hold until then (`None`: no `send_at`).
    pub send_at: Option<DateTime<Utc>>,
    /// Never send after then: the delivery ends `expired`.
    pub not_after: Option<DateTime<Utc>>,
    /// What cancelling events refer to.
    pub cancel_key: Option<String>,
}

/// `"22:00-08:00"`: from the first time (inclusive) to the second (exclusive), Beijing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    start: NaiveTime,
    end: NaiveTime,
}

/// Beijing time: UTC+8 all year (no daylight saving).
fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

impl FromStr for QuietHours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a window like \"22:00-08:00\" (HH:MM-HH:MM, Beijing time)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let parse = |t: &str| NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad());
        let (start, end) = (parse(a)?, parse(b)?);
        if start == end {
            return Err(format!("{s:?} is an empty window (start equals end)"));
        }
        Ok(Self { start, end })
    }
}

impl QuietHours {
    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let t = at.with_timezone(&beijing()).time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// When a delivery due at `at` may go: `at` itself outside the window, else the window's end.
    pub fn release(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        if !self.contains(at) {
            return at;
        }
        let local = at.with_timezone(&beijing());
        let mut end = local
            .date_naive()
            .and_time(self.end)
            .and_local_timezone(beijing())
            .single()
            .expect("a fixed offset has no gaps");
        if end <= local {
            end = end + Days::new(1);
        }
        end.with_timezone(&Utc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bj(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("{s}+08:00"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_window_wrapping_midnight() {
        let q: QuietHours = "22:00-08:00".parse().unwrap();
        assert!(q.contains(bj("2026-11-22T23:00:00")));
        assert!(q.contains(bj("2026-11-22T22:00:00")));
        assert!(q.contains(bj("2026-11-23T07:59:59")));
        assert!(!q.contains(bj("2026-11-23T08:00:00")));
        assert!(!q.contains(bj("2026-11-22T21:59:59")));
        assert_eq!(q.release(bj("2026-11-22T23:00:00")), bj("2026-11-23T08:00:00"));
        assert_eq!(q.release(bj("2026-11-23T03:00:00")), bj("2026-11-23T08:00:00"));
        assert_eq!(q.release(bj("2026-11-22T12:00:00")), bj("2026-11-22T12:00:00"));
    }

    #[test]
    fn a_window_within_a_day() {
        let q: QuietHours = "12:00-13:30".parse().unwrap();
        assert!(q.contains(bj("2026-11-22T12:45:00")));
        assert!(!q.contains(bj("2026-11-22T23:00:00")));
        assert_eq!(q.release(bj("2026-11-22T12:45:00")), bj("2026-11-22T13:30:00"));
    }

    #[test]
    fn bad_windows_are_refused() {
        for bad in ["22:00", "25:00-08:00", "22:00-08", "08:00-08:00", ""] {
            assert!(bad.parse::<QuietHours>().is_err(), "{bad}");
        }
    }
}
