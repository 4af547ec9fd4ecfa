use std::time::Duration;

use crate::session::MAX_USER_AGENT;
use crate::{NewSession, SessionId, SessionRecord, Timestamp, TokenHash};

/// The timeouts of docs/reference/sessions.md, "Expiry", and the pure decisions made from
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Sliding: a browser-session login ends after this long without activity.
    pub idle: Duration,
    /// Hard: a browser-session login ends this long after it began, however active.
    pub absolute: Duration,
    /// "Stay logged in": the session lasts this long from login; replaces both limits above.
    pub remember: Duration,
}

/// Why a session is no longer valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// More than `idle` without activity (not for remember-me sessions).
    Idle,
    /// Past `absolute_expires_at`.
    Absolute,
}

/// The outcome of [`ExpiryPolicy::evaluate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid. `touch` says whether the activity timestamp is due for a (coalesced) write.
    Valid {
        /// Whether an activity write is due now.
        touch: bool,
    },
    /// No longer valid, and why.
    Expired(Expired),
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            remember: Duration::from_secs(30 * 86400),
        }
    }
}

impl ExpiryPolicy {
    /// At most one activity write per this interval and session.
    ///
    /// Half the idle timeout is the largest interval that keeps the promise of
    /// docs/reference/sessions.md, "Activity writes": if the last write was at `w` and
    /// requests come at most `idle/2` apart, the first request at or past `w + idle/2` comes
    /// before `w + idle`, so it is still valid and writes again. Capped at one minute so "last
    /// seen" in session lists stays accurate.
    pub fn touch_interval(&self) -> Duration {
        (self.idle / 2).min(Duration::from_secs(60))
    }

    /// The record for a session that begins at `now`.
    pub fn start(&self, new: NewSession, token_hash: TokenHash, now: Timestamp) -> SessionRecord {
        let lifetime = if new.remember {
            self.remember
        } else {
            self.absolute
        };
        let absolute_expires_at = now.plus(lifetime);
        let mut user_agent = new.user_agent;
        if let Some(ua) = &mut user_agent {
            if ua.len() > MAX_USER_AGENT {
                let mut cut = MAX_USER_AGENT;
                while !ua.is_char_boundary(cut) {
                    cut -= 1;
                }
                ua.truncate(cut);
            }
        }
        let mut record = SessionRecord {
            // Derived from the hash, not random: see `SessionId::bytes_for_hash`.
            id: SessionId::for_hash(&token_hash),
            token_hash,
            user_id: new.user_id,
            created_at: now,
            last_seen_at: now,
            absolute_expires_at,
            expires_at: absolute_expires_at,
            remember: new.remember,
            ip: new.ip,
            user_agent,
            level: new.level,
        };
        record.expires_at = self.deadline(&record, now);
        record
    }

    /// When `session` ends if its last activity is `last_seen`. Never past the absolute limit:
    /// activity slides the idle deadline only, so no amount of use extends a session beyond it.
    pub fn deadline(&self, session: &SessionRecord, last_seen: Timestamp) -> Timestamp {
        if session.remember {
            session.absolute_expires_at
        } else {
            session.absolute_expires_at.min(last_seen.plus(self.idle))
        }
    }

    /// Is `session` valid at `now`, and is its activity write due?
    pub fn evaluate(&self, session: &SessionRecord, now: Timestamp) -> Verdict {
        if now >= session.absolute_expires_at {
            return Verdict::Expired(Expired::Absolute);
        }
        if !session.remember && now >= session.last_seen_at.plus(self.idle) {
            return Verdict::Expired(Expired::Idle);
        }
        Verdict::Valid {
            touch: now.since(session.last_seen_at) >= self.touch_interval(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SessionToken, UserId};

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn policy() -> ExpiryPolicy {
        ExpiryPolicy {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            remember: Duration::from_secs(30 * 86400),
        }
    }

    fn session(remember: bool, last_seen_min: i64) -> SessionRecord {
        let mut s = policy().start(
            NewSession {
                user_id: UserId(1),
                remember,
                ip: None,
                user_agent: None,
                level: Default::default(),
            },
            SessionToken::generate().hash(),
            Timestamp::from_millis(0),
        );
        s.last_seen_at = Timestamp::from_millis(last_seen_min * MIN);
        s
    }

    /// One row per decision: (remember, last seen [min], now [ms], expected verdict).
    fn check(rows: &[(bool, i64, i64, Verdict)]) {
        for (i, &(remember, last_seen, now, expected)) in rows.iter().enumerate() {
            let got = policy().evaluate(&session(remember, last_seen), Timestamp::from_millis(now));
            assert_eq!(
                got, expected,
                "row {i}: remember={remember} last_seen={last_seen}m now={now}ms"
            );
        }
    }

    #[test]
    fn expiry_table() {
        use Verdict::*;
        let valid = Valid { touch: false };
        let touch = Valid { touch: true };
        check(&[
            // fresh session
            (false, 0, 0, valid),
            (false, 0, 59_999, valid),
            // activity write due after the touch interval (1 min)
            (false, 0, MIN, touch),
            // idle: valid up to just before 30 min without activity, expired at 30 min
            (false, 0, 30 * MIN - 1, touch),
            (false, 0, 30 * MIN, Expired(super::Expired::Idle)),
            // activity slides the idle deadline
            (false, 100, 129 * MIN, touch),
            (false, 100, 130 * MIN, Expired(super::Expired::Idle)),
            // but never past the absolute limit
            (false, 12 * 60 - 1, 12 * HOUR - 1, valid),
            (
                false,
                12 * 60 - 1,
                12 * HOUR,
                Expired(super::Expired::Absolute),
            ),
            // remember-me: no idle limit, one lifetime of 30 days from login
            (true, 0, 29 * 24 * HOUR, touch),
            (true, 0, 30 * 24 * HOUR - 1, touch),
            (true, 0, 30 * 24 * HOUR, Expired(super::Expired::Absolute)),
            // a clock that went backwards neither expires nor touches
            (false, 10, 5 * MIN, valid),
        ]);
    }

    #[test]
    fn deadlines() {
        let p = policy();
        let s = session(false, 0);
        assert_eq!(s.expires_at, Timestamp::from_millis(30 * MIN));
        assert_eq!(
            p.deadline(&s, Timestamp::from_millis(700 * MIN)),
            Timestamp::from_millis(12 * HOUR)
        );
        let r = session(true, 0);
        assert_eq!(r.expires_at, Timestamp::from_millis(30 * 24 * HOUR));
    }

    #[test]
    fn touch_interval_is_at_most_half_idle() {
        let mut p = policy();
        assert_eq!(p.touch_interval(), Duration::from_secs(60));
        p.idle = Duration::from_secs(10);
        assert_eq!(p.touch_interval(), Duration::from_secs(5));
    }

    #[test]
    fn a_session_used_every_half_idle_never_idles_out() {
        let p = ExpiryPolicy {
            idle: Duration::from_secs(10),
            ..policy()
        };
        let mut s = session(false, 0);
        // Requests every 5 s (half idle), writes only when the policy asks for one.
        let mut writes = 0;
        for step in 1..=1000i64 {
            let now = Timestamp::from_millis(step * 5_000);
            match p.evaluate(&s, now) {
                Verdict::Valid { touch: true } => {
                    s.last_seen_at = now;
                    writes += 1;
                }
                Verdict::Valid { touch: false } => {}
                Verdict::Expired(e) => {
                    assert_eq!(e, super::Expired::Absolute, "idled out at step {step}");
                    break;
                }
            }
        }
        assert!(writes > 0);
    }

    #[test]
    fn long_user_agents_are_cut_on_a_char_boundary() {
        let s = policy().start(
            NewSession {
                user_id: UserId(1),
                remember: false,
                ip: None,
                user_agent: Some("é".repeat(400)),
                level: Default::default(),
            },
            SessionToken::generate().hash(),
            Timestamp::from_millis(0),
        );
        assert!(s.user_agent.unwrap().len() <= MAX_USER_AGENT);
    }
}
