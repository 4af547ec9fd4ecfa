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
        tracing::info!(target: "sessiond::audit", event = "login_failed", user = %creds.user.username);
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
