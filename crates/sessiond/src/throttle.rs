//! Login throttling (SPEC §6), on counters in the session store so every instance shares
//! them. The rules themselves are pure and live in `sessiond_core::Counter`; this module
//! names the counters of an attempt, checks them before any password work, and counts the
//! outcome.

use std::time::Duration;

use sessiond_core::{retry_after, Counter, SessionToken, ThrottleChange, Timestamp, TokenHash};

use crate::error::ApiError;
use crate::state::AppState;

/// How long a device cookie (and its registration) lasts.
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(365 * 86400);

/// Who is trying to log in, as far as throttling is concerned.
#[derive(Debug)]
pub struct Attempt {
    /// The case-folded username as typed (counted even when no such user exists, so
    /// unknown and known accounts are throttled alike). Capped in length.
    account: String,
    ip: String,
    /// The device cookie the client presented, if well-formed.
    device: Option<TokenHash>,
}

fn hex(h: &TokenHash) -> String {
    h.to_hex()
}

impl Attempt {
    pub fn new(username: &str, ip: Option<&str>, device_cookie: Option<&str>) -> Self {
        let account: String = username
            .to_ascii_lowercase()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        Self {
            account,
            ip: ip.unwrap_or("unknown").to_owned(),
            device: device_cookie
                .and_then(SessionToken::parse)
                .map(|t| t.hash()),
        }
    }

    /// The account as counted (what the client typed, case-folded, control characters out).
    pub fn account(&self) -> &str {
        &self.account
    }

    fn pair_key(&self) -> String {
        format!("p:{}|{}", self.account, self.ip)
    }
    fn ip_key(&self) -> String {
        format!("i:{}", self.ip)
    }
    fn account_key(&self) -> String {
        format!("a:{}", self.account)
    }
    fn device_failures_key(h: &TokenHash) -> String {
        format!("df:{}", hex(h))
    }
    fn device_registration_key(h: &TokenHash, account: &str) -> String {
        format!("dv:{}|{account}", hex(h))
    }
}

/// The counters that apply to `a`: the device's own budget when it presents a device cookie
/// registered for this account, else the account ceiling.
async fn counters(state: &AppState, a: &Attempt) -> Result<Vec<(Counter, String)>, ApiError> {
    let store = state.sessions.store();
    let now = state.sessions.now();
    let mut v = vec![(Counter::Pair, a.pair_key()), (Counter::Ip, a.ip_key())];
    let known_device = match &a.device {
        Some(h) => store
            .throttle_get(&Attempt::device_registration_key(h, &a.account), now)
            .await?
            .is_some(),
        None => false,
    };
    match (&a.device, known_device) {
        (Some(h), true) => v.push((Counter::Device, Attempt::device_failures_key(h))),
        _ => v.push((Counter::Account, a.account_key())),
    }
    Ok(v)
}

/// Refuses the attempt with `429 throttled` while any of its counters holds, before any
/// password work (so a locked-out guesser costs us nothing, and learns nothing: right and
/// wrong passwords get the same answer).
pub async fn check(state: &AppState, a: &Attempt) -> Result<Vec<(Counter, String)>, ApiError> {
    let store = state.sessions.store();
    let now = state.sessions.now();
    let counters = counters(state, a).await?;
    let mut until: Option<Timestamp> = None;
    for (counter, key) in &counters {
        if let Some(rec) = store.throttle_get(key, now).await? {
            if let Some(u) = counter.locked_until(&rec, now) {
                until = Some(until.map_or(u, |x| x.max(u)));
            }
        }
    }
    match until {
        Some(u) => {
            tracing::warn!(target: "sessiond::audit", event = "throttled", account = %a.account, ip = %a.ip);
            Err(ApiError::Throttled {
                retry_after: retry_after(u, now),
            })
        }
        None => Ok(counters),
    }
}

/// Counts a failed attempt on every counter that applies.
pub async fn failed(state: &AppState, counters: &[(Counter, String)]) -> Result<(), ApiError> {
    let changes: Vec<ThrottleChange<'_>> = counters
        .iter()
        .map(|(counter, key)| ThrottleChange::Hit {
            key,
            window: counter.window(),
        })
        .collect();
    state
        .sessions
        .store()
        .throttle_apply(&changes, state.sessions.now())
        .await?;
    Ok(())
}

/// After a successful login: the pair's and the device's counters start over, and the client
/// gets (or keeps) a device cookie registered for this account. Returns the secret of a new
/// device cookie to set.
pub async fn succeeded(
    state: &AppState,
    a: &Attempt,
    presented: Option<&str>,
) -> Result<Option<SessionToken>, ApiError> {
    let (token, fresh) = match presented.and_then(SessionToken::parse) {
        Some(t) => (t, false),
        None => (SessionToken::generate(), true),
    };
    let h = token.hash();
    let (pair, failures, registration) = (
        a.pair_key(),
        Attempt::device_failures_key(&h),
        Attempt::device_registration_key(&h, &a.account),
    );
    state
        .sessions
        .store()
        .throttle_apply(
            &[
                ThrottleChange::Delete { key: &pair },
                ThrottleChange::Delete { key: &failures },
                ThrottleChange::Hit {
                    key: &registration,
                    window: DEVICE_LIFETIME,
                },
            ],
            state.sessions.now(),
        )
        .await?;
    Ok(fresh.then_some(token))
}

/// One counter, for `sessiond throttle list`.
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    pub kind: &'static str,
    pub account: Option<String>,
    pub ip: Option<String>,
    pub failures: u64,
    pub locked_until: Option<String>,
    pub window_ends: String,
    #[serde(skip)]
    pub key: String,
}

/// Parses a counter key; device registrations are not counters and are skipped.
pub fn describe(key: &str, rec: &sessiond_core::ThrottleRecord, now: Timestamp) -> Option<Listed> {
    let (kind, counter, account, ip) = if let Some(rest) = key.strip_prefix("p:") {
        let (acct, ip) = rest.rsplit_once('|')?;
        (
            "account+ip",
            Counter::Pair,
            Some(acct.to_owned()),
            Some(ip.to_owned()),
        )
    } else if let Some(ip) = key.strip_prefix("i:") {
        ("ip", Counter::Ip, None, Some(ip.to_owned()))
    } else if let Some(acct) = key.strip_prefix("a:") {
        ("account", Counter::Account, Some(acct.to_owned()), None)
    } else if key.starts_with("df:") {
        ("device", Counter::Device, None, None)
    } else {
        return None;
    };
    let fmt = |t: Timestamp| humantime::format_rfc3339_seconds(t.to_system_time()).to_string();
    Some(Listed {
        kind,
        account,
        ip,
        failures: rec.count,
        locked_until: counter.locked_until(rec, now).map(fmt),
        window_ends: fmt(rec.expires_at),
        key: key.to_owned(),
    })
}
