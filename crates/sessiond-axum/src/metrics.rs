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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// the bounds and two relaxed atomic additions (its bucket, the sum in nanoseconds), in the
/// recording thread's own shard.
///
/// Sharded because it is written on every request from every worker thread: with one set of
/// counters each observation could find their cache line on the other core (under `perf`, the
/// request histogram was the largest sessiond symbol on `/healthz`, most of it on one locked
/// addition; half that sharded: docs/performance.md, "A connection's side events, and
/// histograms in shards"). Each shard has cache lines of its own; a reader adds the shards
/// up. The count is the buckets' sum, so `+Inf` and the count always agree.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// [`SHARDS`] runs of `per_shard` lines; in each run, the buckets (non-cumulative:
    /// bucket `i` counts observations in `(bounds[i-1], bounds[i]]`, the last one those above
    /// every bound), then the sum in nanoseconds.
    lines: Box<[Line]>,
    per_shard: usize,
}

/// Shards of a [`Histogram`]: threads are spread over them in the order they first record.
/// More than the worker threads of the machines this usually runs on; beyond, threads share.
const SHARDS: usize = 8;

/// Counters on cache lines of their own (128 bytes: some CPUs fetch lines in pairs).
#[derive(Debug)]
#[repr(align(128))]
struct Line([AtomicU64; 16]);

impl Line {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// This thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
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
        // The buckets (one more than the bounds) and the sum.
        let per_shard = (bounds.len() + 2).div_ceil(16);
        Self {
            bounds,
            lines: (0..SHARDS * per_shard).map(|_| Line::new()).collect(),
            per_shard,
        }
    }

    /// Counter `i` of `shard` (`0..=bounds.len()` the buckets, then the sum).
    fn slot(&self, shard: usize, i: usize) -> &AtomicU64 {
        let j = shard * self.per_shard * 16 + i;
        &self.lines[j / 16].0[j % 16]
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        let shard = shard();
        self.slot(shard, i).fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.slot(shard, self.bounds.len() + 1)
            .fetch_add(nanos, Ordering::Relaxed);
    }

    /// Bucket `i` (non-cumulative) over every shard.
    fn total(&self, i: usize) -> u64 {
        (0..SHARDS)
            .map(|s| self.slot(s, i).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        (0..=self.bounds.len()).map(|i| self.total(i)).sum()
    }

    /// The histogram now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(self.bounds.len() + 1);
        for i in 0..=self.bounds.len() {
            total += self.total(i);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            sum: self.total(self.bounds.len() + 1) as f64 / 1e9,
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

    /// Threads record into shards of their own (more threads than shards share them): every
    /// observation counted once, and no two shards' counters on one 128-byte line.
    #[test]
    fn observations_from_many_threads_all_count_and_shards_do_not_share_lines() {
        let h = Histogram::new(LATENCY_BUCKETS);
        std::thread::scope(|scope| {
            for t in 0..(SHARDS as u64 + 4) {
                let h = &h;
                scope.spawn(move || {
                    for _ in 0..1000 {
                        h.observe(Duration::from_micros(50 * (t + 1)));
                    }
                });
            }
        });
        let s = h.snapshot();
        assert_eq!(s.count, 12_000);
        assert_eq!(h.count(), 12_000);
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 12_000)));
        // 50 µs · (1 + 2 + … + 12) · 1000.
        assert!((s.sum - 3.9).abs() < 1e-6, "{}", s.sum);
        // 100 µs holds threads 0 and 1 (50 and 100 µs).
        assert_eq!(s.buckets[0], (0.000_1, 2_000));
        let addr = |shard, i| std::ptr::from_ref(h.slot(shard, i)) as usize;
        let last = LATENCY_BUCKETS.len() + 1;
        for shard in 0..SHARDS - 1 {
            assert!(addr(shard, last) / 128 < addr(shard + 1, 0) / 128);
        }
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
