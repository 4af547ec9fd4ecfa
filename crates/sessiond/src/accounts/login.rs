//! Logging in: the throttle, the password check, the new session, and the checks that keep
//! a change made meanwhile from being outrun.

use sessiond_axum::ActiveSession;
use sessiond_core::{NewSession, Password, SessionRecord, SessionToken, User, Username};

use super::caller::ClientInfo;
use super::error::AuthError;
use super::throttle;
use crate::password::HashError;
use crate::state::AppState;

/// Checks a username and password. Unknown users, disabled users and wrong passwords all
/// cost one argon2 verification and give the same [`AuthError::InvalidCredentials`], so
/// neither the answer nor its timing tells an attacker which usernames exist. Also gives
/// the password hash the password was verified against, so the caller can check that it is
/// still the user's once the session exists (see [`still_current`]).
#[tracing::instrument(level = "debug", skip_all)]
pub(crate) async fn authenticate_verified(
    state: &AppState,
    username: &str,
    password: String,
) -> Result<(User, String), AuthError> {
    // Refused, not truncated: a prefix would make different passwords equal. Checked before
    // any lookup, so it reveals nothing about the account.
    let password = Password::presented(password).map_err(|e| AuthError::Invalid(e.to_string()))?;
    if username.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "username must not contain control characters".into(),
        ));
    }
    let creds = match Username::parse(username) {
        Ok(name) => state.users.user_by_name(&name).await?,
        Err(_) => None,
    };
    let Some(creds) = creds else {
        state.hasher.verify_dummy(password).await?;
        return Err(AuthError::InvalidCredentials);
    };
    let verified = state
        .hasher
        .verify(password.clone(), creds.password_hash.clone())
        .await?;
    // The disabled check comes after the verification so a disabled account costs the same.
    if !verified.matches || creds.user.disabled {
        return Err(AuthError::InvalidCredentials);
    }
    if verified.needs_rehash {
        // Outdated parameters: upgrade while we hold the password. Off the response path; a
        // failure just means we try again at the next login.
        // Written only over the hash just verified: a reset that landed meanwhile wins.
        let state = state.clone();
        let id = creds.user.id;
        let verified_phc = creds.password_hash.clone();
        tokio::spawn(async move {
            match state.hasher.hash(password).await {
                Ok(phc) => match state
                    .users
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
    Ok((creds.user, creds.password_hash))
}

/// Whether `user` still has the password hash `verified` and is enabled. A login checks this
/// once its session exists: a password change or disable that landed while its password was
/// being verified (argon2 takes a while) ends the sessions it can see *after* writing, so
/// either it sees this login's session or this check sees the change.
pub(crate) async fn still_current(
    state: &AppState,
    user: &User,
    verified: &str,
) -> Result<bool, AuthError> {
    Ok(state
        .users
        .user_by_name(&user.username)
        .await?
        .is_some_and(|c| c.user.id == user.id && !c.user.disabled && c.password_hash == verified))
}

/// A successful login: the user, the new session with its secret, and a new device cookie
/// secret when the browser had none.
pub(crate) struct LoggedIn {
    pub(crate) user: User,
    pub(crate) token: SessionToken,
    pub(crate) record: SessionRecord,
    pub(crate) device: Option<SessionToken>,
}

/// Checks the throttles, then the credentials, and starts a session with a fresh secret. A
/// valid session the request presented ends in the same atomic step (rotation), whoever it
/// belonged to.
pub(crate) async fn log_in(
    state: &AppState,
    client: ClientInfo,
    device_cookie: Option<&str>,
    presented: Option<ActiveSession>,
    username: &str,
    password: String,
    remember: bool,
) -> Result<LoggedIn, AuthError> {
    // A full hashing pool refuses at once, before the throttle reads: under a login flood
    // each refusal must cost as little as possible, so verification keeps its CPU.
    if state.hasher.saturated() {
        state
            .metrics
            .hash_overloaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(HashError::Overloaded.into());
    }
    let attempt = throttle::Attempt::new(username, client.ip.as_deref(), device_cookie);
    // Reserved atomically before any password work.
    let reserved = throttle::check(state, &attempt).await?;
    let authenticated = crate::password::with_owners(
        attempt.owners(None),
        authenticate_verified(state, username, password),
    );
    let (user, verified_phc) = match authenticated.await {
        Ok(u) => u,
        Err(e) => {
            if !matches!(e, AuthError::InvalidCredentials) {
                // No verdict on the password: the attempt is given back.
                throttle::release(state, &reserved).await?;
            }
            let counter = match e {
                AuthError::InvalidCredentials => {
                    // The attempt stays counted: it was reserved as a failure.
                    tracing::info!(target: "sessiond::audit", event = "login_failed", user = %attempt.account(), ip = ?client.ip);
                    &state.metrics.logins_failed
                }
                AuthError::Hash(HashError::Overloaded) => &state.metrics.hash_overloaded,
                _ => return Err(e),
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(e);
        }
    };
    state
        .metrics
        .logins_succeeded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let device = throttle::succeeded(state, &attempt, &reserved, device_cookie).await?;
    let new = NewSession {
        user_id: user.id,
        remember,
        ip: client.ip,
        user_agent: client.user_agent,
    };
    let (token, record) = state.sessions.begin(new, presented.as_ref()).await?;
    // A password change, reset or disable that landed while this password was being
    // verified must not leave this session behind it: checked now that the
    // session exists, so either the change's sweep ends it or this sees the change.
    if !still_current(state, &user, &verified_phc).await? {
        state.sessions.store().delete(&record.token_hash).await?;
        tracing::info!(target: "sessiond::audit", event = "login_failed", reason = "changed_meanwhile", user = %user.username, ip = ?record.ip);
        return Err(AuthError::InvalidCredentials);
    }
    if let Some(cap) = state.config.max_sessions_per_user {
        // The per-user cap: the oldest sessions end first.
        let ended = state
            .sessions
            .store()
            .delete_oldest_for_user(user.id, cap)
            .await?;
        if ended > 0 {
            tracing::info!(target: "sessiond::audit", event = "sessions_capped", user = %user.username, count = ended);
        }
    }
    tracing::info!(target: "sessiond::audit", event = "login", user = %user.username, session = %record.id, ip = ?record.ip);
    Ok(LoggedIn {
        user,
        token,
        record,
        device,
    })
}
