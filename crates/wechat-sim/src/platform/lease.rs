//! Tokens that WeChat issues and later checks, for the third-party platform's component tokens and
//! its merchants' access tokens: each issue replaces the owner's current token, which keeps working
//! for the overlap (as `/cgi-bin/token`'s do); a rotation revokes every token of an owner at once;
//! a token past its lifetime is expired (42001), one never issued or revoked is invalid (40001).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distr::Alphanumeric;

/// How long a dead token is still told apart as expired (42001) rather than unknown (40001).
const HORIZON: Duration = Duration::from_secs(3600);

/// One issued token.
#[derive(Debug, Clone)]
struct Lease<O> {
    owner: O,
    expires: Instant,
    /// Replaced by a newer token at this instant: valid for the overlap after it.
    retired: Option<Instant>,
    /// Revoked by a rotation: invalid at once.
    revoked: bool,
}

/// What a presented token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check<O> {
    /// Valid, issued to this owner.
    Valid(O),
    /// Past its lifetime (42001).
    Expired,
    /// Never issued, revoked, or retired past the overlap (40001).
    Invalid,
}

/// Every token issued to every owner.
#[derive(Debug)]
pub(crate) struct Leases<O> {
    leases: HashMap<String, Lease<O>>,
    /// Each owner's token values, oldest first.
    by_owner: HashMap<O, Vec<String>>,
}

impl<O> Default for Leases<O> {
    fn default() -> Self {
        Self {
            leases: HashMap::new(),
            by_owner: HashMap::new(),
        }
    }
}

/// A fresh random token value, as long as WeChat's.
pub(crate) fn random_value(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

impl<O: Clone + Eq + Hash> Leases<O> {
    /// A new token for `owner`, valid `ttl`; the owner's current one is retired (it keeps working
    /// for the overlap the checks are given).
    pub(crate) fn issue(&mut self, owner: &O, ttl: Duration, now: Instant) -> String {
        self.forget_dead(owner, now);
        let value = random_value(136);
        let values = self.by_owner.entry(owner.clone()).or_default();
        for old in values.iter() {
            if let Some(l) = self.leases.get_mut(old) {
                l.retired.get_or_insert(now);
            }
        }
        values.push(value.clone());
        self.leases.insert(
            value.clone(),
            Lease {
                owner: owner.clone(),
                expires: now + ttl,
                retired: None,
                revoked: false,
            },
        );
        value
    }

    /// Drops `owner`'s tokens that died more than [`HORIZON`] ago.
    fn forget_dead(&mut self, owner: &O, now: Instant) {
        let Some(values) = self.by_owner.get_mut(owner) else {
            return;
        };
        let leases = &mut self.leases;
        values.retain(|v| {
            let alive = leases.get(v).is_some_and(|l| l.expires + HORIZON > now);
            if !alive {
                leases.remove(v);
            }
            alive
        });
    }

    /// Revokes every token of `owner` at once (no overlap).
    pub(crate) fn revoke(&mut self, owner: &O) {
        for v in self.by_owner.get(owner).into_iter().flatten() {
            if let Some(l) = self.leases.get_mut(v) {
                l.revoked = true;
            }
        }
    }

    /// What `value` is at `now`, a retired token staying valid for `overlap`.
    pub(crate) fn check(&self, value: &str, overlap: Duration, now: Instant) -> Check<O> {
        match self.leases.get(value) {
            Some(l) if l.revoked => Check::Invalid,
            Some(l) if now >= l.expires => Check::Expired,
            Some(l) if l.retired.is_some_and(|r| now >= r + overlap) => Check::Invalid,
            Some(l) => Check::Valid(l.owner.clone()),
            None => Check::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(7200);
    const OVERLAP: Duration = Duration::from_secs(300);

    #[test]
    fn a_new_token_retires_the_last_which_keeps_working_for_the_overlap() {
        let mut leases = Leases::default();
        let t0 = Instant::now();
        let first = leases.issue(&"A", TTL, t0);
        assert_eq!(leases.check(&first, OVERLAP, t0), Check::Valid("A"));
        let second = leases.issue(&"A", TTL, t0 + Duration::from_secs(10));
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            leases.check(&first, OVERLAP, later),
            Check::Valid("A"),
            "in the overlap"
        );
        assert_eq!(leases.check(&second, OVERLAP, later), Check::Valid("A"));
        let past = t0 + Duration::from_secs(311);
        assert_eq!(leases.check(&first, OVERLAP, past), Check::Invalid, "past the overlap");
        assert_eq!(leases.check(&second, OVERLAP, past), Check::Valid("A"));
        assert_eq!(leases.check("never", OVERLAP, past), Check::Invalid);
    }

    #[test]
    fn owners_are_apart_and_a_revocation_is_immediate() {
        let mut leases = Leases::default();
        let now = Instant::now();
        let a = leases.issue(&"A", TTL, now);
        let b = leases.issue(&"B", TTL, now);
        leases.revoke(&"A");
        assert_eq!(leases.check(&a, OVERLAP, now), Check::Invalid);
        assert_eq!(leases.check(&b, OVERLAP, now), Check::Valid("B"), "another owner's");
        let c = leases.issue(&"A", TTL, now);
        assert_eq!(leases.check(&c, OVERLAP, now), Check::Valid("A"), "a new one works");
    }

    #[test]
    fn a_token_past_its_lifetime_is_expired_then_forgotten() {
        let mut leases = Leases::default();
        let t0 = Instant::now();
        let short = Duration::from_secs(60);
        let old = leases.issue(&"A", short, t0);
        assert_eq!(leases.check(&old, OVERLAP, t0 + short), Check::Expired);
        let much_later = t0 + short + HORIZON + Duration::from_secs(1);
        leases.issue(&"A", short, much_later);
        assert_eq!(leases.check(&old, OVERLAP, much_later), Check::Invalid, "forgotten");
        assert_eq!(leases.by_owner[&"A"].len(), 1);
    }
}
