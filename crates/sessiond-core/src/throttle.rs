//! Login throttling decisions (docs/reference/security.md, "Login throttling"), pure
//! functions of counters and `now`.
//!
//! The counters live in the session store's backend (shared by every instance, through
//! [`crate::ThrottleStore`]) as [`ThrottleRecord`]s: failures counted in a fixed window that starts at the first failure.
//! What they mean is decided here:
//!
//! * **(account, client IP)**: from the 5th failure in 15 minutes, a back-off of 1 s that
//!   doubles with each further failure, up to 15 minutes.
//! * **client IP** (any accounts): the same from the 20th failure, against one address
//!   spraying many accounts.
//! * **account** (any address, clients without a device cookie): at most 100 failures an
//!   hour, then locked until the hour is over, against distributed guessing.
//! * **device** (a client presenting the account's device cookie, OWASP's device-cookie
//!   scheme): its own budget, like a pair; the account ceiling does not apply to it, so an
//!   attacker can never lock the real user out.
//!
//! While a back-off holds, every attempt it covers, right or wrong, is refused.

use std::time::Duration;

use crate::Timestamp;

/// A failure counter as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleRecord {
    /// Failures in the current window.
    pub count: u64,
    /// The latest failure.
    pub last_at: Timestamp,
    /// End of the window (the counter is gone after it).
    pub expires_at: Timestamp,
}

/// The kinds of counter, with their rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// One account from one address.
    Pair,
    /// One address (an IPv6 /64), across accounts.
    Ip,
    /// One account, across addresses (its ceiling).
    Account,
    /// One account from one device (a browser that logged in before).
    Device,
}

impl Counter {
    /// How long a window lasts from its first failure.
    pub fn window(self) -> Duration {
        match self {
            Counter::Pair | Counter::Ip | Counter::Device => Duration::from_secs(15 * 60),
            Counter::Account => Duration::from_secs(3600),
        }
    }

    /// Failures before the first back-off.
    pub fn threshold(self) -> u64 {
        match self {
            Counter::Pair | Counter::Device => 5,
            Counter::Ip => 20,
            Counter::Account => 100,
        }
    }

    /// Until when `record` holds attempts back, if it does at `now`.
    pub fn locked_until(self, record: &ThrottleRecord, now: Timestamp) -> Option<Timestamp> {
        if record.count < self.threshold() || now >= record.expires_at {
            return None;
        }
        let until = match self {
            // A ceiling: shut until the window ends.
            Counter::Account => record.expires_at,
            // A back-off that doubles with each failure past the threshold, capped.
            _ => {
                let doublings = (record.count - self.threshold()).min(20) as u32;
                let secs = 1u64
                    .checked_shl(doublings)
                    .unwrap_or(u64::MAX)
                    .min(MAX_BACKOFF.as_secs());
                record.last_at.plus(Duration::from_secs(secs))
            }
        };
        (until > now).then_some(until)
    }
}

/// Longest single back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// Whole seconds to put in `Retry-After` (at least 1).
pub fn retry_after(until: Timestamp, now: Timestamp) -> u64 {
    until.since(now).as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(count: u64, last_s: i64, expires_s: i64) -> ThrottleRecord {
        ThrottleRecord {
            count,
            last_at: Timestamp::from_millis(last_s * 1000),
            expires_at: Timestamp::from_millis(expires_s * 1000),
        }
    }

    fn check(rows: &[(Counter, ThrottleRecord, i64, Option<i64>)]) {
        for (i, (c, r, now, until)) in rows.iter().enumerate() {
            let got = c.locked_until(r, Timestamp::from_millis(now * 1000));
            assert_eq!(
                got,
                until.map(|s| Timestamp::from_millis(s * 1000)),
                "row {i}: {c:?} {r:?} now={now}"
            );
        }
    }

    #[test]
    fn table() {
        use Counter::*;
        check(&[
            // below the threshold: never
            (Pair, rec(4, 100, 900), 100, None),
            // 5th failure: 1 s from the last failure
            (Pair, rec(5, 100, 900), 100, Some(101)),
            (Pair, rec(5, 100, 900), 101, None),
            // doubling: 6th → 2 s, 8th → 8 s
            (Pair, rec(6, 100, 900), 101, Some(102)),
            (Pair, rec(8, 100, 900), 107, Some(108)),
            // capped at 15 minutes
            (Pair, rec(60, 100, 900), 200, Some(1000)),
            // the window is over: the counter no longer holds
            (Pair, rec(60, 100, 900), 900, None),
            (Device, rec(5, 100, 900), 100, Some(101)),
            (Ip, rec(19, 100, 900), 100, None),
            (Ip, rec(20, 100, 900), 100, Some(101)),
            // account ceiling: until the hour is over
            (Account, rec(99, 100, 3600), 100, None),
            (Account, rec(100, 100, 3600), 100, Some(3600)),
            (Account, rec(100, 100, 3600), 3599, Some(3600)),
            (Account, rec(100, 100, 3600), 3600, None),
        ]);
    }

    #[test]
    fn retry_after_rounds_up() {
        let t = |ms| Timestamp::from_millis(ms);
        assert_eq!(retry_after(t(1_001), t(0)), 2);
        assert_eq!(retry_after(t(1_000), t(0)), 1);
        assert_eq!(retry_after(t(10), t(0)), 1);
        assert_eq!(retry_after(t(0), t(10)), 1);
    }
}
