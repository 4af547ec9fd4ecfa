//! Login throttling (docs/reference/security.md, "Login throttling"), on counters in the
//! session store so every instance shares them. The rules themselves are pure and live in
//! `sessiond_core::Counter`; this module names the counters of an attempt, checks them and
//! reserves the attempt atomically before any password work, and settles the reservation by
//! the outcome. Logins and the current password of a password change share the same counters:
//! a guess is a guess wherever it is made.

use std::time::Duration;

use sessiond_core::{
    retry_after, Counter, SessionToken, ThrottleChange, ThrottleExpect, Timestamp, TokenHash,
};

use super::error::AuthError;
use super::Core;
use crate::password::{with_owners, Owners};

/// How long a device cookie (and its registration) lasts.
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(365 * 86400);
/// New device registrations one account may get per `DEVICE_WINDOW` (else every cookie-less
/// login would register another year-long device key). Beyond it a login
/// still succeeds but registers no device: the client is throttled like any client without
/// a device cookie (the account ceiling). An account so holds at most
/// `MAX_NEW_DEVICES × (DEVICE_LIFETIME / DEVICE_WINDOW)` registrations (3,650).
pub const MAX_NEW_DEVICES: u64 = 10;
/// The window of [`MAX_NEW_DEVICES`].
pub(crate) const DEVICE_WINDOW: Duration = Duration::from_secs(86400);

/// Who is trying to log in, as far as throttling is concerned.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The case-folded username as typed (counted even when no such user exists, so
    /// unknown and known accounts are throttled alike). Capped in length.
    account: String,
    ip: String,
    /// Whether the client's address is known. Without it, the address counters (the
    /// address's, and the account+address pair's) are not applied: every client would share
    /// one, and 20 failures by anyone would lock everyone out (an app serving without
    /// `ConnectInfo`). The account ceiling (or the device's budget) still applies.
    ip_known: bool,
    /// The device cookie the client presented, if well-formed.
    device: Option<TokenHash>,
}

/// The address a per-IP counter is kept for: an IPv4 address as it is, an IPv6 address as its
/// /64 network (`2001:db8:1:2::/64`). One IPv6 subscriber usually gets a whole /64 (often
/// more), so counting single addresses would hand a guesser 2^64 fresh budgets.
pub fn ip_bucket(ip: &str) -> String {
    match ip.parse::<std::net::IpAddr>().map(|a| a.to_canonical()) {
        Ok(std::net::IpAddr::V6(v6)) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            format!("{}/64", std::net::Ipv6Addr::from(net))
        }
        Ok(v4) => v4.to_string(),
        Err(_) => ip.to_owned(),
    }
}

fn hex(h: &TokenHash) -> String {
    h.to_hex()
}

impl Attempt {
    pub(crate) fn new(username: &str, ip: Option<&str>, device_cookie: Option<&str>) -> Self {
        let account: String = username
            .to_ascii_lowercase()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        Self {
            account,
            ip: ip.map_or_else(|| "unknown".to_owned(), ip_bucket),
            ip_known: ip.is_some(),
            device: device_cookie
                .and_then(SessionToken::parse)
                .map(|t| t.hash()),
        }
    }

    /// The attempt's owners for the hashing pool's fairness: its account and address, and
    /// the session making it when there is one.
    pub(crate) fn owners(&self, session: Option<&str>) -> Owners {
        let mut keys = vec![format!("a:{}", self.account), format!("i:{}", self.ip)];
        if let Some(s) = session {
            keys.push(format!("s:{s}"));
        }
        Owners::new(keys)
    }

    /// The account as counted (what the client typed, case-folded, control characters out).
    pub(crate) fn account(&self) -> &str {
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
    fn new_devices_key(&self) -> String {
        format!("dn:{}", self.account)
    }
}

/// How many times a reservation is tried again when another attempt changed the counters
/// between our read and our reservation. Only a burst on the same counters loses races; one
/// that loses this many is refused like a throttled attempt (fail closed).
const RESERVE_TRIES: usize = 24;

/// An attempt reserved on its counters: counted as a failure before any password work. It
/// stays counted unless the attempt turns out right ([`succeeded`], [`settled`]) or never
/// got to check a password ([`release`]).
#[derive(Debug)]
pub(crate) struct Reserved {
    counters: Vec<(Counter, String)>,
}

/// Refuses the attempt with `429 throttled` while any of its counters holds; otherwise
/// reserves it, before any password work (so a locked-out guesser costs us nothing, and
/// learns nothing: right and wrong passwords get the same answer).
///
/// Check and act are one atomic step: the counters are read, judged by the pure
/// rules of [`Counter`], and the attempt is counted as a failure on every counter that applies
/// with [`sessiond_core::ThrottleStore::throttle_reserve`], which succeeds only if every one of
/// them still gives the verdict it was judged on. Of a burst of parallel attempts that all
/// read "one attempt left", exactly one gets it; the others read again and are refused. The
/// counters that apply: the device's own budget when the client presents a device cookie
/// registered for this account, else the account ceiling; the (account, address) pair and the
/// address always.
pub(crate) async fn check(core: &Core, a: &Attempt) -> Result<Reserved, AuthError> {
    let store = &core.throttle;
    // Every counter that may apply, and the device's registration, in one store call (one
    // round trip on PostgreSQL instead of four or five).
    let mut keys = vec![a.pair_key(), a.ip_key(), a.account_key()];
    if let Some(h) = &a.device {
        keys.push(Attempt::device_registration_key(h, &a.account));
        keys.push(Attempt::device_failures_key(h));
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for _ in 0..RESERVE_TRIES {
        let now = core.sessions.now();
        let records = store.throttle_get_many(&refs, now).await?;
        if records.len() != keys.len() {
            return Err(AuthError::Internal(format!(
                "throttle store answered {} of {} counters",
                records.len(),
                keys.len()
            )));
        }
        // Indices into `keys`: 0 pair, 1 ip, 2 account, 3 device registration, 4 device
        // failures.
        let known_device = records.get(3).is_some_and(Option::is_some);
        let third = if known_device {
            (Counter::Device, 4)
        } else {
            (Counter::Account, 2)
        };
        let all = [(Counter::Pair, 0), (Counter::Ip, 1), third];
        let applying: Vec<(Counter, usize)> = all
            .into_iter()
            .filter(|(c, _)| a.ip_known || !matches!(c, Counter::Pair | Counter::Ip))
            .collect();
        let mut until: Option<Timestamp> = None;
        for &(counter, i) in &applying {
            if let Some(u) = records[i]
                .as_ref()
                .and_then(|r| counter.locked_until(r, now))
            {
                until = Some(until.map_or(u, |x| x.max(u)));
            }
        }
        if let Some(u) = until {
            tracing::warn!(target: "sessiond::audit", event = "throttled", account = %a.account, ip = %a.ip);
            return Err(AuthError::Throttled {
                retry_after: retry_after(u, now),
            });
        }
        // What we judged on, and the reservation: one failure on each counter that applies.
        // A counter below its threshold cannot hold an attempt back whatever its count below
        // it, so it is expected only to stay below (attempts far from a limit, such as many
        // logins of one account at once, never conflict); one at or past it is expected
        // exactly (its back-off depends on every field). Either way no more than the
        // threshold's worth of attempts are reserved before the back-off applies.
        let expected: Vec<(&str, ThrottleExpect)> = applying
            .iter()
            .map(|&(counter, i)| {
                let expect = match records[i] {
                    Some(r) if r.count >= counter.threshold() => ThrottleExpect::Exactly(Some(r)),
                    _ => ThrottleExpect::Below(counter.threshold()),
                };
                (refs[i], expect)
            })
            .collect();
        let changes: Vec<ThrottleChange<'_>> = applying
            .iter()
            .map(|&(counter, i)| ThrottleChange::Hit {
                key: refs[i],
                window: counter.window(),
            })
            .collect();
        if store.throttle_reserve(&expected, &changes, now).await? {
            return Ok(Reserved {
                counters: applying
                    .iter()
                    .map(|&(counter, i)| (counter, keys[i].clone()))
                    .collect(),
            });
        }
        // Another attempt changed these counters since our read: judge again. A short
        // pause spreads a burst out.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tracing::warn!(target: "sessiond::audit", event = "throttled", account = %a.account, ip = %a.ip, reason = "contention");
    Err(AuthError::Throttled { retry_after: 1 })
}

/// The attempt never got to a verdict on its password (a bad request, an overloaded pool, a
/// store error): its reservation is given back.
pub(crate) async fn release(core: &Core, reserved: &Reserved) -> Result<(), AuthError> {
    let changes: Vec<ThrottleChange<'_>> = reserved
        .counters
        .iter()
        .map(|(_, key)| ThrottleChange::Refund { key })
        .collect();
    core.throttle
        .throttle_apply(&changes, core.sessions.now())
        .await?;
    Ok(())
}

/// The reservation's bookkeeping after a right password: the pair's counter (and the
/// device's) start over, the address and account counters get their event back.
fn settle_changes(reserved: &Reserved) -> Vec<ThrottleChange<'_>> {
    reserved
        .counters
        .iter()
        .map(|(counter, key)| match counter {
            Counter::Pair | Counter::Device => ThrottleChange::Delete { key },
            Counter::Ip | Counter::Account => ThrottleChange::Refund { key },
        })
        .collect()
}

/// A right password outside a login (the current password of a password change): as
/// after a successful login, without device cookies.
pub(crate) async fn settled(core: &Core, reserved: &Reserved) -> Result<(), AuthError> {
    core.throttle
        .throttle_apply(&settle_changes(reserved), core.sessions.now())
        .await?;
    Ok(())
}

/// Runs `work`, a check of `a`'s password (and what follows it), under the throttle: refused
/// while a counter holds, reserved before `work` starts, and settled by its outcome
/// ([`AuthError::InvalidCredentials`] or [`AuthError::InvalidSecondFactor`]: stays counted; success: [`settled`]; any other
/// error: [`release`]d). Its password work is tagged with the attempt's account and address
/// for the hashing queue's fairness ([`Owners`]).
pub(crate) async fn guarded<T>(
    core: &Core,
    a: &Attempt,
    owners: Owners,
    work: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    let reserved = check(core, a).await?;
    match with_owners(owners, work).await {
        // A wrong guess stays counted, be it a password or a second factor.
        Err(e @ (AuthError::InvalidCredentials | AuthError::InvalidSecondFactor)) => Err(e),
        Err(e) => {
            if let Err(r) = release(core, &reserved).await {
                tracing::warn!(error = %r, "throttle reservation not released");
            }
            Err(e)
        }
        Ok(v) => {
            // The work is done (a password changed): a failure to settle must not turn it
            // into an error. The reservation then stays counted as one failure, the safe side.
            if let Err(e) = settled(core, &reserved).await {
                tracing::warn!(error = %e, "throttle reservation not settled");
            }
            Ok(v)
        }
    }
}

/// After a successful login: the pair's and the device's counters start over, the address
/// and account counters get the reservation's event back, and the client gets (or keeps) a
/// device cookie registered for this account. Returns the secret of a new device cookie to
/// set.
pub(crate) async fn succeeded(
    core: &Core,
    a: &Attempt,
    reserved: &Reserved,
    presented: Option<&str>,
) -> Result<Option<SessionToken>, AuthError> {
    let (token, fresh) = match presented.and_then(SessionToken::parse) {
        Some(t) => (t, false),
        None => (SessionToken::generate(), true),
    };
    let h = token.hash();
    let (failures, registration) = (
        Attempt::device_failures_key(&h),
        Attempt::device_registration_key(&h, &a.account),
    );
    let store = &core.throttle;
    let now = core.sessions.now();
    let mut changes = settle_changes(reserved);
    changes.push(ThrottleChange::Delete { key: &failures });
    // A registration this account does not hold yet counts against its bound (a presented
    // cookie may be junk or another account's: it counts too).
    let known = !fresh && store.throttle_get(&registration, now).await?.is_some();
    if !known {
        let new_devices = a.new_devices_key();
        let r = store.throttle_hit(&new_devices, now, DEVICE_WINDOW).await?;
        if r.count > MAX_NEW_DEVICES {
            store.throttle_apply(&changes, now).await?;
            return Ok(None);
        }
    }
    changes.push(ThrottleChange::Hit {
        key: &registration,
        window: DEVICE_LIFETIME,
    });
    store.throttle_apply(&changes, now).await?;
    Ok(fresh.then_some(token))
}

/// One counter as an operator sees it (`sessiond throttle list`).
#[derive(Debug, serde::Serialize)]
pub struct Listed {
    /// `account+ip`, `ip`, `account` or `device`.
    pub kind: &'static str,
    /// The account counted (case-folded as typed), for account counters.
    pub account: Option<String>,
    /// The address counted (an IPv6 address as its /64), for address counters.
    pub ip: Option<String>,
    /// Failures counted in the current window.
    pub failures: u64,
    /// RFC 3339 end of the back-off, while one holds.
    pub locked_until: Option<String>,
    /// RFC 3339 end of the counting window.
    pub window_ends: String,
    /// The counter's key in the throttle store.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        for (ip, bucket) in [
            ("198.51.100.7", "198.51.100.7"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
            ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::ffff:198.51.100.7", "198.51.100.7"),
            ("::1", "::/64"),
            ("unknown", "unknown"),
        ] {
            assert_eq!(ip_bucket(ip), bucket, "{ip}");
        }
        let a = Attempt::new("max", Some("2001:db8:1:2::1"), None);
        let b = Attempt::new("max", Some("2001:db8:1:2:ffff::9"), None);
        assert_eq!(a.ip_key(), b.ip_key());
        assert_eq!(a.pair_key(), b.pair_key());
        assert_ne!(
            a.ip_key(),
            Attempt::new("max", Some("2001:db8:1:3::1"), None).ip_key()
        );
    }
}
