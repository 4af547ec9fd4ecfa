//! Authentication and account changes, shared by the HTTP routes and the CLI.
//!
//! Every change that must end sessions (password, disable, delete) does it here, so no entry
//! point can forget.

use sessiond_core::{Password, SessionStore, StoreError, User, UserId, UserStore, Username};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Checks a username and password. Unknown users, disabled users and wrong passwords all
/// cost one argon2 verification and give the same [`ApiError::InvalidCredentials`], so
/// neither the answer nor its timing tells an attacker which usernames exist.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn authenticate(state: &AppState, username: &str, password: String) -> ApiResult<User> {
    // Refused, not truncated: a prefix would make different passwords equal. Checked before
    // any lookup, so it reveals nothing about the account.
    let password =
        Password::presented(password).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if username.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "username must not contain control characters".into(),
        ));
    }
    let creds = match Username::parse(username) {
        Ok(name) => state.users.user_by_name(&name).await?,
        Err(_) => None,
    };
    let Some(creds) = creds else {
        state.hasher.verify_dummy(password).await?;
        return Err(ApiError::InvalidCredentials);
    };
    let verified = state
        .hasher
        .verify(password.clone(), creds.password_hash)
        .await?;
    // The disabled check comes after the verification so a disabled account costs the same.
    if !verified.matches || creds.user.disabled {
        return Err(ApiError::InvalidCredentials);
    }
    if verified.needs_rehash {
        // Outdated parameters: upgrade while we hold the password. Off the response path; a
        // failure just means we try again at the next login.
        let state = state.clone();
        let id = creds.user.id;
        tokio::spawn(async move {
            match state.hasher.hash(password).await {
                Ok(phc) => {
                    if let Err(e) = state.users.set_password_hash(id, &phc).await {
                        tracing::warn!(error = %e, "password rehash not stored");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "password rehash failed"),
            }
        });
    }
    Ok(creds.user)
}

/// Replaces a user's password hash and ends all their sessions.
pub async fn set_password(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
    phc: &str,
) -> Result<u64, StoreError> {
    if !users.set_password_hash(id, phc).await? {
        return Ok(0);
    }
    sessions.delete_for_user(id, None).await
}

/// Disables a user and ends all their sessions.
pub async fn disable(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
) -> Result<u64, StoreError> {
    users.set_disabled(id, true).await?;
    sessions.delete_for_user(id, None).await
}

/// Ends a user's sessions, then deletes the user.
pub async fn delete(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
) -> Result<u64, StoreError> {
    let n = sessions.delete_for_user(id, None).await?;
    users.delete_user(id).await?;
    Ok(n)
}

/// Changes the caller's own password (SPEC §4 `POST /api/password`).
///
/// Order matters: the new hash is computed first (pure work), then stored, so from that
/// instant the old password logs nobody in; then every other session of the user ends, and
/// finally the caller's session is rotated (a new secret, the old one ended atomically). A
/// crash part-way leaves at worst sessions that an admin can still revoke, never an old
/// password that works.
pub async fn change_password(
    state: &AppState,
    me: &crate::routes::CurrentUser,
    current: String,
    new: String,
    client: crate::routes::ClientInfo,
) -> ApiResult<(sessiond_core::SessionToken, sessiond_core::SessionRecord)> {
    let new = Password::new(new).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let current = Password::presented(current).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let creds = state
        .users
        .user_by_name(&me.user.username)
        .await?
        .filter(|c| c.user.id == me.user.id)
        .ok_or(ApiError::Unauthenticated)?;
    if !state
        .hasher
        .verify(current, creds.password_hash)
        .await?
        .matches
    {
        tracing::info!(target: "sessiond::audit", event = "password_change_failed", user = %me.user.username);
        return Err(ApiError::InvalidCredentials);
    }
    let phc = state.hasher.hash(new).await?;
    state.users.set_password_hash(me.user.id, &phc).await?;
    let store = state.sessions.store();
    store
        .delete_for_user(me.user.id, Some(&me.session.record().id))
        .await?;
    let rec = me.session.record();
    let fresh = sessiond_core::NewSession {
        user_id: me.user.id,
        remember: rec.remember,
        ip: client.ip,
        user_agent: client.user_agent,
    };
    let (token, record) = state.sessions.begin(fresh, Some(&me.session)).await?;
    tracing::info!(target: "sessiond::audit", event = "password_changed", user = %me.user.username, session = %record.id);
    Ok((token, record))
}
