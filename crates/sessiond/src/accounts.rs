//! Authentication and account changes, shared by the HTTP routes and the CLI.
//!
//! Every change that must end sessions (password, disable, delete) does it here, so no entry
//! point can forget.

use sessiond_core::{
    Password, SessionId, SessionStore, StoreError, User, UserId, UserStore, Username,
};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Checks a username and password. Unknown users, disabled users and wrong passwords all
/// cost one argon2 verification and give the same [`ApiError::InvalidCredentials`], so
/// neither the answer nor its timing tells an attacker which usernames exist.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn authenticate(state: &AppState, username: &str, password: String) -> ApiResult<User> {
    authenticate_verified(state, username, password)
        .await
        .map(|(user, _)| user)
}

/// [`authenticate`], also giving the password hash the password was verified against, so
/// the caller can check that it is still the user's once the session exists (see
/// [`still_current`]).
pub async fn authenticate_verified(
    state: &AppState,
    username: &str,
    password: String,
) -> ApiResult<(User, String)> {
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
        .verify(password.clone(), creds.password_hash.clone())
        .await?;
    // The disabled check comes after the verification so a disabled account costs the same.
    if !verified.matches || creds.user.disabled {
        return Err(ApiError::InvalidCredentials);
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
pub async fn still_current(state: &AppState, user: &User, verified: &str) -> ApiResult<bool> {
    Ok(state
        .users
        .user_by_name(&user.username)
        .await?
        .is_some_and(|c| c.user.id == user.id && !c.user.disabled && c.password_hash == verified))
}

/// How many times a step that ends sessions is tried before the change is reported failed.
const END_SESSIONS_TRIES: u32 = 3;
/// Retries start only this soon after the first try: a store that hangs (each call bounded at
/// 1.5 s) is reported at once, within the two seconds of docs/reference/security.md, "Store
/// failures"; one that fails fast (a dropped connection being re-established) gets its
/// retries.
const END_SESSIONS_RETRY_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Ends `id`'s sessions (but `keep`), retrying a store that failed fast a few times (after
/// 50 ms, then 100 ms): a transient error must not leave an account change half done.
pub async fn end_sessions(
    sessions: &dyn SessionStore,
    id: UserId,
    keep: Option<&SessionId>,
) -> Result<u64, StoreError> {
    let start = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        match sessions.delete_for_user(id, keep).await {
            Ok(n) => return Ok(n),
            Err(e)
                if attempt + 1 >= END_SESSIONS_TRIES
                    || start.elapsed() > END_SESSIONS_RETRY_WITHIN =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "ending sessions failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Replaces a user's password hash and ends all their sessions (admin reset, CLI `user
/// passwd`).
///
/// Fail-safe order (issue 15 #12): the sessions end *first*, so if the store fails there the
/// password is unchanged and the error is reported: nobody believes an attacker was locked
/// out while their session lives. Then the hash is written, and the sessions end once more:
/// a login with the old password that was verified in between is ended too (and
/// [`still_current`] refuses one that creates its session later). A failure of that second
/// sweep is reported as an error; running the change again is safe.
pub async fn set_password(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
    phc: &str,
) -> Result<u64, StoreError> {
    let mut n = end_sessions(sessions, id, None).await?;
    if !users.set_password_hash(id, phc).await? {
        return Ok(n);
    }
    n += end_sessions(sessions, id, None).await?;
    Ok(n)
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change would leave no enabled admin: nobody could administer the server any more
    /// (short of editing the database).
    #[error("refused: {0} is the last enabled admin (make another user an admin first)")]
    LastAdmin(Username),
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Store(e) => e.into(),
            e @ ChangeError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

/// Sets the disabled flag, refusing to disable the last enabled admin. The flag is written
/// first and the admins counted after: of two admins disabling each other at once, at
/// least one sees the other's write and puts its own back, so the server never ends up
/// without an enabled admin (a check made before the write could not promise that).
async fn disable_guarded(users: &dyn UserStore, id: UserId) -> Result<(), ChangeError> {
    let Some(user) = users.user_by_id(id).await? else {
        return Ok(());
    };
    users.set_disabled(id, true).await?;
    if user.admin && !user.disabled {
        let admins = users
            .list_users()
            .await?
            .iter()
            .filter(|u| u.admin && !u.disabled)
            .count();
        if admins == 0 {
            users.set_disabled(id, false).await?;
            return Err(ChangeError::LastAdmin(user.username));
        }
    }
    Ok(())
}

/// Disables a user and ends all their sessions; refused for the last enabled admin.
///
/// The flag comes first: from that instant no login succeeds and verification refuses
/// every session of the user (a disabled user means no session), so even if ending the
/// sessions then fails (reported as an error), none of them works.
pub async fn disable(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
) -> Result<u64, ChangeError> {
    disable_guarded(users, id).await?;
    Ok(end_sessions(sessions, id, None).await?)
}

/// Deletes a user and ends their sessions; refused for the last enabled admin (the user is
/// disabled first, with the same guard as [`disable`], so two deletes racing cannot remove
/// the last two admins). If ending the sessions fails the user stays, disabled (the error is
/// reported); once the user is gone, verification refuses any session left.
pub async fn delete(
    users: &dyn UserStore,
    sessions: &dyn SessionStore,
    id: UserId,
) -> Result<u64, ChangeError> {
    disable_guarded(users, id).await?;
    let n = end_sessions(sessions, id, None).await?;
    users.delete_user(id).await?;
    Ok(n + end_sessions(sessions, id, None).await?)
}

/// Re-enables a user (audited like every account change).
pub async fn enable(users: &dyn UserStore, id: UserId) -> Result<bool, StoreError> {
    users.set_disabled(id, false).await
}

/// Changes the caller's own password (`POST /api/password`, docs/reference/endpoints.md).
///
/// Order matters (issue 15 #12 and #15):
/// 1. the current password is verified against the stored hash `H`; the new hash is computed
///    (pure work);
/// 2. the caller's session is rotated, only while it still exists: a session revoked
///    meanwhile (by its owner elsewhere, an admin, a reset) changes nothing and gets `401`;
/// 3. every other session of the user ends, before the password changes, so a store failure
///    leaves the old password and no promise broken (`503`, the new session is ended too);
/// 4. the hash is written only if it is still `H` (compare-and-set): a reset that landed
///    since step 1 wins, and the change gets `409 conflict` (the new session is ended);
/// 5. the other sessions end once more (logins verified with the old password meanwhile).
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
    let verified_phc = creds.password_hash.clone();
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
    let rec = me.session.record();
    let fresh = sessiond_core::NewSession {
        user_id: me.user.id,
        remember: rec.remember,
        ip: client.ip,
        user_agent: client.user_agent,
    };
    let Some((token, record)) = state.sessions.rotate(fresh, &me.session).await? else {
        tracing::info!(target: "sessiond::audit", event = "password_change_refused", reason = "session_ended", user = %me.user.username);
        return Err(ApiError::Unauthenticated);
    };
    let store = state.sessions.store();
    // Undoes step 2 when a later step refuses: the caller ends up logged out, never with a
    // session that outlived a failed or overruled change.
    let abandon = || async {
        if let Err(e) = store.delete(&record.token_hash).await {
            tracing::warn!(error = %e, "ending the rotated session failed");
        }
    };
    if let Err(e) = end_sessions(store.as_ref(), me.user.id, Some(&record.id)).await {
        abandon().await;
        return Err(e.into());
    }
    match state
        .users
        .set_password_hash_if(me.user.id, &verified_phc, &phc)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            abandon().await;
            tracing::info!(target: "sessiond::audit", event = "password_change_refused", reason = "changed_meanwhile", user = %me.user.username);
            return Err(ApiError::Conflict(
                "the password was changed meanwhile (e.g. reset by an admin); log in again".into(),
            ));
        }
        Err(e) => {
            abandon().await;
            return Err(e.into());
        }
    }
    end_sessions(store.as_ref(), me.user.id, Some(&record.id)).await?;
    tracing::info!(target: "sessiond::audit", event = "password_changed", user = %me.user.username, session = %record.id);
    Ok((token, record))
}
