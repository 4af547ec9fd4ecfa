//! What the library counts and times, for an app to export (the sessiond server serves them
//! as Prometheus metrics on a listener of its own).
//!
//! Everything here is a plain atomic, updated on the request's path without a lock or an
//! allocation: a counter is one `fetch_add`, a [`Histogram`] observation three. Reading them
//! (a scrape) sums nothing up and blocks nobody. Where they are:
//!
//! * [`crate::Auth::counters`]: authentications by [`AuthMethod`] and [`AuthResult`]
//!   ([`crate::auth::AuthCounters::outcome`]);
//! * [`crate::SessionManager::counters`]: verifications, the verification cache's hits and
//!   misses, the epoch changes that propagate revocations ([`crate::Counters`]);
//! * [`crate::Hasher::metrics`]: the hashing pool's jobs in flight, its capacity, and how
//!   long each job took from submission to answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How an authentication was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A username and password ([`crate::Auth::log_in`]).
    Password,
    /// A TOTP code, the second step of a login.
    Totp,
    /// A recovery code, the second step of a login.
    Recovery,
    /// A passkey: passwordless login, or the second step of a login.
    Passkey,
}

impl AuthMethod {
    /// Every method.
    pub const ALL: [Self; 4] = [Self::Password, Self::Totp, Self::Recovery, Self::Passkey];

    /// The metric label value: `password`, `totp`, `recovery`, `passkey`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::Totp => "totp",
            Self::Recovery => "recovery",
            Self::Passkey => "passkey",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How an authentication ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// Accepted: a session began or was raised.
    Success,
    /// Refused for what was presented (a wrong password or code, an unknown or disabled user,
    /// a refused passkey).
    Failure,
    /// Refused by the login throttle before any check.
    Throttled,
    /// Refused because the hashing pool was full.
    Overloaded,
    /// No verdict: the input was not checkable (too long, no factor enrolled), a store failed,
    /// the session ended meanwhile.
    Error,
}

impl AuthResult {
    /// Every result.
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::Failure,
        Self::Throttled,
        Self::Overloaded,
        Self::Error,
    ];

    /// The metric label value: `success`, `failure`, `throttled`, `overloaded`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Throttled => "throttled",
            Self::Overloaded => "overloaded",
            Self::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The result an authentication's answer stands for.
    pub fn of<T>(r: &Result<T, crate::auth::AuthError>) -> Self {
        use crate::auth::AuthError as E;
        match r {
            Ok(_) => Self::Success,
            Err(E::InvalidCredentials | E::InvalidSecondFactor) => Self::Failure,
            Err(E::Throttled { .. }) => Self::Throttled,
            Err(E::Hash(crate::HashError::Overloaded)) => Self::Overloaded,
            Err(_) => Self::Error,
        }
    }
}

/// Authentications by method and result: one counter each.
#[derive(Debug, Default)]
pub struct AuthOutcomes([[AtomicU64; 5]; 4]);

impl AuthOutcomes {
    /// Counts one authentication.
    pub fn record(&self, method: AuthMethod, result: AuthResult) {
        self.0[method.index()][result.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many authentications by `method` ended with `result`.
    pub fn get(&self, method: AuthMethod, result: AuthResult) -> u64 {
        self.0[method.index()][result.index()].load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) for request and store latencies: 100 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

/// Bucket bounds (seconds) for password hashing jobs (argon2id takes tens of milliseconds; a
/// queue adds multiples of that).
pub const HASH_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A histogram of durations with fixed buckets, lock-free: an observation is a short scan of
/// the bounds and three relaxed atomic additions (its bucket, the count, the sum in
/// nanoseconds). A reader may see an observation in the count a moment before its bucket;
/// Prometheus tolerates that (and [`Histogram::snapshot`] keeps `+Inf` equal to the count).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative: `buckets[i]` counts observations in `(bounds[i-1], bounds[i]]`; the
    /// last one those above every bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment, in Prometheus's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// The sum of all observations, in seconds.
    pub sum: f64,
    /// How many observations.
    pub count: u64,
    /// `(upper bound in seconds, observations at most that)`, cumulative, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// An empty histogram over `bounds` (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The histogram now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            // The buckets were read after the count could have moved on: `+Inf` is the count
            // of what the buckets hold, so the two always agree.
            count: total,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 4)]);
        assert!((s.sum - 1.0065).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn outcomes_count_per_method_and_result() {
        let o = AuthOutcomes::default();
        o.record(AuthMethod::Totp, AuthResult::Throttled);
        o.record(AuthMethod::Totp, AuthResult::Throttled);
        o.record(AuthMethod::Passkey, AuthResult::Success);
        assert_eq!(o.get(AuthMethod::Totp, AuthResult::Throttled), 2);
        assert_eq!(o.get(AuthMethod::Passkey, AuthResult::Success), 1);
        assert_eq!(o.get(AuthMethod::Password, AuthResult::Success), 0);
        let throttled: Result<(), _> = Err(crate::auth::AuthError::Throttled { retry_after: 1 });
        assert_eq!(AuthResult::of(&throttled), AuthResult::Throttled);
        let overloaded: Result<(), _> = Err(crate::HashError::Overloaded.into());
        assert_eq!(AuthResult::of(&overloaded), AuthResult::Overloaded);
    }
}
