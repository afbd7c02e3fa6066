//! A platform's component verify tickets (`WECHAT_API.md`, "Third-party platform"): WeChat pushes
//! a new one every 10 minutes (or on `api_start_push_ticket`), each valid 12 h. The simulator
//! accepts the latest and the one before it (a receiver may not have stored the newest yet);
//! a ticket older than its lifetime (or expired by a test) is 61005, one never pushed or
//! superseded by two newer ones is 61006.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wechat_rules::errcode::{VERIFY_TICKET_EXPIRED, VERIFY_TICKET_INVALID};

use super::lease::random_value;

/// A ticket's lifetime (WeChat: 12 h).
pub(crate) const TICKET_TTL: Duration = Duration::from_secs(12 * 3600);

/// How many past tickets are remembered to tell "expired" (61005) from "never pushed" (61006).
const HISTORY: usize = 64;

/// One pushed ticket.
#[derive(Debug, Clone)]
struct Ticket {
    value: String,
    issued: Instant,
    /// Expired by a test (`Sim::expire_tickets`), whatever its age.
    expired: bool,
}

/// A platform's tickets, newest last.
#[derive(Debug, Default)]
pub(crate) struct Tickets {
    issued: VecDeque<Ticket>,
}

impl Tickets {
    /// A new ticket (`ticket@@@…`), now the latest.
    pub(crate) fn issue(&mut self, now: Instant) -> String {
        let value = format!("ticket@@@{}", random_value(86));
        self.issued.push_back(Ticket {
            value: value.clone(),
            issued: now,
            expired: false,
        });
        if self.issued.len() > HISTORY {
            self.issued.pop_front();
        }
        value
    }

    /// Every ticket pushed so far expires at once (61005 from now on).
    pub(crate) fn expire_all(&mut self) {
        for t in &mut self.issued {
            t.expired = true;
        }
    }

    /// `Ok` when `value` may get a component token at `now` (lifetime `ttl`), else the errcode.
    pub(crate) fn check(&self, value: &str, ttl: Duration, now: Instant) -> Result<(), i64> {
        let Some(pos) = self.issued.iter().position(|t| t.value == value) else {
            return Err(VERIFY_TICKET_INVALID);
        };
        let t = &self.issued[pos];
        if t.expired || now.duration_since(t.issued) >= ttl {
            return Err(VERIFY_TICKET_EXPIRED);
        }
        if self.issued.len() - pos > 2 {
            return Err(VERIFY_TICKET_INVALID);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_and_the_one_before_are_accepted_older_ones_are_invalid() {
        let mut tickets = Tickets::default();
        let now = Instant::now();
        let first = tickets.issue(now);
        assert!(first.starts_with("ticket@@@"));
        assert_eq!(tickets.check(&first, TICKET_TTL, now), Ok(()));
        let second = tickets.issue(now);
        assert_eq!(tickets.check(&first, TICKET_TTL, now), Ok(()), "the one before");
        let third = tickets.issue(now);
        assert_eq!(tickets.check(&first, TICKET_TTL, now), Err(VERIFY_TICKET_INVALID));
        assert_eq!(tickets.check(&second, TICKET_TTL, now), Ok(()));
        assert_eq!(tickets.check(&third, TICKET_TTL, now), Ok(()));
        assert_eq!(
            tickets.check("ticket@@@forged", TICKET_TTL, now),
            Err(VERIFY_TICKET_INVALID)
        );
    }

    #[test]
    fn a_ticket_past_twelve_hours_or_expired_by_a_test_is_61005() {
        let mut tickets = Tickets::default();
        let t0 = Instant::now();
        let ticket = tickets.issue(t0);
        assert_eq!(
            tickets.check(&ticket, TICKET_TTL, t0 + TICKET_TTL),
            Err(VERIFY_TICKET_EXPIRED)
        );
        assert_eq!(tickets.check(&ticket, TICKET_TTL, t0 + TICKET_TTL / 2), Ok(()));
        tickets.expire_all();
        assert_eq!(tickets.check(&ticket, TICKET_TTL, t0), Err(VERIFY_TICKET_EXPIRED));
        let fresh = tickets.issue(t0);
        assert_eq!(tickets.check(&fresh, TICKET_TTL, t0), Ok(()), "a new push mends it");
    }
}
