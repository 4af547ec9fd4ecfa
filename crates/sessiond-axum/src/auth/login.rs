//! Logging in: the throttle, the password check, the new session, and the checks that keep
//! a change made meanwhile from being outrun.

use std::sync::atomic::Ordering;

use sessiond_core::{NewSession, Password, SessionRecord, SessionToken};

use super::client::ClientInfo;
use super::error::AuthError;
use super::{throttle, Auth, AuthUser, UserBackend};
use crate::metrics::{AuthMethod, AuthResult};
use crate::password::HashError;
use crate::ActiveSession;

/// How long a login the hashing pool refuses (`503 overloaded`) waits before its answer.
///
/// A refusal costs next to nothing, and a client that sends the next attempt as soon as
/// the answer comes (a guessing tool on a few connections; the benchmark's login flood)
/// then makes them as fast as the server can answer: 190,000 refusals a second here, whose
/// handling took the cores from verification (its p99 in the flood rose from about 1× idle
/// to 10×) and from hashing itself, which runs below requests (logins hashed fell by four
/// fifths; docs/performance.md, "Refusals in a login flood"). Waiting costs a sleeping task,
/// not CPU, and bounds such a client to one attempt per pause per connection. A client that
/// honours `Retry-After: 1` waits longer anyway; one that ignores it gets no faster turn.
const OVERLOADED_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Checks a username and password. Unknown users, disabled users and wrong passwords all
/// cost one argon2 verification and give the same [`AuthError::InvalidCredentials`], so
/// neither the answer nor its timing tells an attacker which usernames exist. Also gives
/// the password hash the password was verified against, so the caller can check that it is
/// still the user's once the session exists (see [`still_current`]).
#[tracing::instrument(level = "debug", skip_all)]
async fn authenticate_verified<B: UserBackend>(
    auth: &Auth<B>,
    username: &str,
    password: String,
) -> Result<(B::User, String), AuthError> {
    // Refused, not truncated: a prefix would make different passwords equal. Checked before
    // any lookup, so it reveals nothing about the account.
    let password = Password::presented(password).map_err(|e| AuthError::Invalid(e.to_string()))?;
    if username.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "username must not contain control characters".into(),
        ));
    }
    let hasher = auth.hasher();
    let Some((user, phc)) = auth.backend().by_username(username).await? else {
        hasher.verify_dummy(password).await?;
        return Err(AuthError::InvalidCredentials);
    };
    let verified = hasher.verify(password.clone(), phc.clone()).await?;
    // The active check comes after the verification so a disabled account costs the same.
    if !verified.matches || !user.is_active() {
        return Err(AuthError::InvalidCredentials);
    }
    if verified.needs_rehash && auth.backend().writes_password_hashes() {
        // Outdated parameters: upgrade while we hold the password. Off the response path; a
        // failure just means we try again at the next login.
        // Written only over the hash just verified: a reset that landed meanwhile wins.
        let auth = auth.clone();
        let id = user.id();
        let verified_phc = phc.clone();
        tokio::spawn(async move {
            match auth.hasher().hash(password).await {
                Ok(phc) => match auth
                    .backend()
                    .set_password_hash_if(id, &verified_phc, &phc)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("password rehash skipped: the password changed"),
                    Err(e) => tracing::warn!(error = %e, "password rehash not stored"),
                },
                Err(e) => tracing::warn!(error = %e, "password rehash failed"),
            }
        });
    }
    Ok((user, phc))
}

/// Whether `user` still has the password hash `verified` and is enabled. A login checks this
/// once its session exists: a password change or disable that landed while its password was
/// being verified (argon2 takes a while) ends the sessions it can see *after* writing, so
/// either it sees this login's session or this check sees the change.
async fn still_current<B: UserBackend>(
    auth: &Auth<B>,
    user: &B::User,
    verified: &str,
) -> Result<bool, AuthError> {
    Ok(auth
        .backend()
        .by_username(user.username())
        .await?
        .is_some_and(|(now, phc)| now.id() == user.id() && now.is_active() && phc == verified))
}

/// What a login presents: the credentials, and what the request brings along.
pub struct LoginAttempt<'a> {
    /// The username as typed.
    pub username: &'a str,
    /// The password as typed (redacted in `Debug`).
    pub password: String,
    /// "Remember me": a persistent cookie and the longer lifetime of the expiry policy.
    pub remember: bool,
    /// The client's address (throttled) and user agent (kept with the session).
    pub client: ClientInfo,
    /// The device cookie the browser presented (see [`throttle`]): a browser that logged in
    /// to this account before keeps its own failure budget when the account is under attack.
    pub device_cookie: Option<&'a str>,
    /// The valid session the request presented, if any: it ends in the same atomic step as
    /// the new one begins (rotation), whoever it belonged to.
    pub presented: Option<&'a ActiveSession>,
}

impl std::fmt::Debug for LoginAttempt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAttempt")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("remember", &self.remember)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// A successful login: the user, the new session with its secret, and a new device cookie
/// secret when the browser had none.
#[derive(Debug)]
pub struct LoggedIn<U> {
    /// Who logged in.
    pub user: U,
    /// The new session's secret: the session cookie's value (see
    /// [`crate::SessionManager::session_cookie`]).
    pub token: SessionToken,
    /// The new session.
    pub record: SessionRecord,
    /// A new device cookie's secret to set (see [`throttle::DEVICE_LIFETIME`]), when the
    /// browser presented none.
    pub device: Option<SessionToken>,
}

impl<B: UserBackend> Auth<B> {
    /// The per-user cap, after a login: the user's oldest sessions beyond it end.
    pub(crate) async fn cap_sessions(&self, user: &B::User) -> Result<(), AuthError> {
        let core = self.core();
        if let Some(cap) = core.max_sessions_per_user {
            let ended = core
                .sessions
                .store()
                .delete_oldest_for_user(user.id(), cap)
                .await?;
            if ended > 0 {
                tracing::info!(target: "sessiond::audit", event = "sessions_capped", user = %user.username(), count = ended);
            }
        }
        Ok(())
    }

    /// Logs in: checks the throttles, then the credentials, and starts a session with a fresh
    /// secret (rotating the presented one).
    ///
    /// 1. A login the hashing pool would refuse (full, or its account or address holding
    ///    all the places its fair share allows) is refused before anything else
    ///    ([`HashError::Overloaded`], answered after a pause of 50 ms: `OVERLOADED_PAUSE`).
    /// 2. The throttle's counters are read and the attempt reserved atomically, before any
    ///    password work ([`AuthError::Throttled`] while a back-off holds).
    /// 3. The password is verified on the pool, tagged with the attempt's account and address
    ///    for the pool's fair shares; unknown and inactive users cost one dummy verification
    ///    and get the same [`AuthError::InvalidCredentials`].
    /// 4. The session begins (rotating the presented one), then the user is checked once
    ///    more: a password change or disable that landed during the hash ends it.
    /// 5. The user's oldest sessions beyond the cap end.
    pub async fn log_in(&self, attempt: LoginAttempt<'_>) -> Result<LoggedIn<B::User>, AuthError> {
        let LoginAttempt {
            username,
            password,
            remember,
            client,
            device_cookie,
            presented,
        } = attempt;
        let r = log_in(
            self,
            client,
            device_cookie,
            presented,
            username,
            password,
            remember,
        )
        .await;
        self.core()
            .counters
            .outcome
            .record(AuthMethod::Password, AuthResult::of(&r));
        if matches!(r, Err(AuthError::Hash(HashError::Overloaded))) {
            // See `OVERLOADED_PAUSE`.
            tokio::time::sleep(OVERLOADED_PAUSE).await;
        }
        r
    }
}

/// Checks the throttles, then the credentials, and starts a session with a fresh secret. A
/// valid session the request presented ends in the same atomic step (rotation), whoever it
/// belonged to.
async fn log_in<B: UserBackend>(
    auth: &Auth<B>,
    client: ClientInfo,
    device_cookie: Option<&str>,
    presented: Option<&ActiveSession>,
    username: &str,
    password: String,
    remember: bool,
) -> Result<LoggedIn<B::User>, AuthError> {
    let core = auth.core();
    let counters = &core.counters;
    let attempt = throttle::Attempt::new(username, client.ip.as_deref(), device_cookie);
    let owners = attempt.owners(None);
    // What the hashing pool would refuse (full, or this account or address holding all the
    // places its fairness allows) is refused here, before the throttle's read, its
    // reservation and, once the pool said no, its release (a read and two writes in the
    // store): under a login flood a refusal must cost as little as possible, so verification
    // keeps its CPU. The counters are not touched, as before: the attempt never reached the
    // password. (Its answer still waits: see `OVERLOADED_PAUSE`.)
    if core.hasher.would_refuse(&owners) {
        counters.hash_overloaded.fetch_add(1, Ordering::Relaxed);
        return Err(HashError::Overloaded.into());
    }
    // Reserved atomically before any password work.
    let reserved = throttle::check(core, &attempt).await?;
    let authenticated =
        crate::password::with_owners(owners, authenticate_verified(auth, username, password));
    let (user, verified_phc) = match authenticated.await {
        Ok(u) => u,
        Err(e) => {
            if !matches!(e, AuthError::InvalidCredentials) {
                // No verdict on the password: the attempt is given back.
                throttle::release(core, &reserved).await?;
            }
            let counter = match e {
                AuthError::InvalidCredentials => {
                    // The attempt stays counted: it was reserved as a failure.
                    tracing::info!(target: "sessiond::audit", event = "login_failed", user = %attempt.account(), ip = ?client.ip);
                    &counters.logins_failed
                }
                AuthError::Hash(HashError::Overloaded) => &counters.hash_overloaded,
                _ => return Err(e),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    counters.logins_succeeded.fetch_add(1, Ordering::Relaxed);
    let device = throttle::succeeded(core, &attempt, &reserved, device_cookie).await?;
    let new = NewSession {
        user_id: user.id(),
        remember,
        ip: client.ip,
        user_agent: client.user_agent,
        level: Default::default(),
    };
    let (token, record) = core.sessions.begin(new, presented).await?;
    // A password change, reset or disable that landed while this password was being
    // verified must not leave this session behind it: checked now that the
    // session exists, so either the change's sweep ends it or this sees the change.
    if !still_current(auth, &user, &verified_phc).await? {
        core.sessions.store().delete(&record.token_hash).await?;
        tracing::info!(target: "sessiond::audit", event = "login_failed", reason = "changed_meanwhile", user = %user.username(), ip = ?record.ip);
        return Err(AuthError::InvalidCredentials);
    }
    auth.cap_sessions(&user).await?;
    tracing::info!(target: "sessiond::audit", event = "login", user = %user.username(), session = %record.id, ip = ?record.ip);
    Ok(LoggedIn {
        user,
        token,
        record,
        device,
    })
}
