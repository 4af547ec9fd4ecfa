//! Account changes that must end sessions (password change and reset, disable, delete),
//! shared by every entry point (HTTP routes, a CLI): each does it here, so none can forget.
//! The password change works over any [`UserBackend`]; reset, disable, delete and enable are
//! the built-in user store's ([`UserStore`]).

use sessiond_core::{
    NewSession, Password, SessionId, SessionRecord, SessionStore, SessionToken, StoreError, UserId,
    UserStore,
};

use super::client::ClientInfo;
use super::error::{AuthError, ChangeError};
use super::{throttle, Auth, AuthUser, UserBackend};
use crate::ActiveSession;

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
/// Fail-safe order: the sessions end *first*, so if the store fails there the
/// password is unchanged and the error is reported: nobody believes an attacker was locked
/// out while their session lives. Then the hash is written, and the sessions end once more:
/// a login with the old password that was verified in between is ended too (and
/// `login::still_current` refuses one that creates its session later). A failure of that second
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

/// A password change that went through: the caller's session, rotated (its new secret goes
/// in the cookie; the old one no longer works).
#[derive(Debug)]
pub struct PasswordChanged {
    /// The rotated session's secret.
    pub token: SessionToken,
    /// The rotated session.
    pub record: SessionRecord,
}

impl<B: UserBackend> Auth<B> {
    /// Changes the password of `session`'s user, who proves it with `current` (Django's
    /// `set_password` + `update_session_auth_hash`): the current password is checked under
    /// the login throttle (a guess is a guess wherever it is made), every other session of
    /// the user ends, and this one is rotated, so the caller stays logged in here only.
    ///
    /// Order matters:
    /// 0. a backend that writes no password hashes
    ///    ([`UserBackend::writes_password_hashes`]) is refused at once with
    ///    [`AuthError::Conflict`], nothing changed;
    /// 1. the current password is verified against the stored hash `H`; the new hash is
    ///    computed (pure work);
    /// 2. the caller's session is rotated, only while it still exists: a session revoked
    ///    meanwhile changes nothing ([`AuthError::SessionEnded`]);
    /// 3. every other session of the user ends, before the password changes, so a store
    ///    failure leaves the old password and no promise broken (the new session is ended
    ///    too);
    /// 4. the hash is written only if it is still `H` (compare-and-set): a reset that landed
    ///    since step 1 wins, and the change gets [`AuthError::Conflict`] (the new session is
    ///    ended);
    /// 5. the other sessions end once more (logins verified with the old password meanwhile).
    pub async fn change_password(
        &self,
        session: &ActiveSession,
        user: &B::User,
        current: String,
        new: String,
        client: ClientInfo,
    ) -> Result<PasswordChanged, AuthError> {
        // Refused before anything happens: the steps below end sessions before the write,
        // which a backend that cannot write would turn into a logout everywhere.
        if !self.backend().writes_password_hashes() {
            return Err(AuthError::Conflict(
                "passwords cannot be changed here (the user backend does not write them)".into(),
            ));
        }
        let attempt = throttle::Attempt::new(user.username(), client.ip.as_deref(), None);
        let owners = attempt.owners(Some(session.record().id.as_str()));
        let change = change_password_checked(self, session, user, current, new, client);
        throttle::guarded(self.core(), &attempt, owners, change).await
    }
}

/// The password change itself, once the throttle let it through (see
/// [`Auth::change_password`]).
async fn change_password_checked<B: UserBackend>(
    auth: &Auth<B>,
    session: &ActiveSession,
    user: &B::User,
    current: String,
    new: String,
    client: ClientInfo,
) -> Result<PasswordChanged, AuthError> {
    let new = Password::new(new).map_err(|e| AuthError::Invalid(e.to_string()))?;
    let current = Password::presented(current).map_err(|e| AuthError::Invalid(e.to_string()))?;
    let (id, name) = (user.id(), user.username());
    let (_, verified_phc) = auth
        .backend()
        .by_username(name)
        .await?
        .filter(|(u, _)| u.id() == id)
        .ok_or(AuthError::SessionEnded)?;
    let hasher = auth.hasher();
    if !hasher.verify(current, verified_phc.clone()).await?.matches {
        tracing::info!(target: "sessiond::audit", event = "password_change_failed", user = %name);
        return Err(AuthError::InvalidCredentials);
    }
    let phc = hasher.hash(new).await?;
    let rec = session.record();
    let fresh = NewSession {
        user_id: id,
        remember: rec.remember,
        ip: client.ip,
        user_agent: client.user_agent,
        // The new password does not lower how this session was authenticated.
        level: rec.level,
    };
    let Some((token, record)) = auth.sessions().rotate(fresh, session).await? else {
        tracing::info!(target: "sessiond::audit", event = "password_change_refused", reason = "session_ended", user = %name);
        return Err(AuthError::SessionEnded);
    };
    let store = auth.sessions().store();
    // Undoes step 2 when a later step refuses: the caller ends up logged out, never with a
    // session that outlived a failed or overruled change.
    let abandon = || async {
        if let Err(e) = store.delete(&record.token_hash).await {
            tracing::warn!(error = %e, "ending the rotated session failed");
        }
    };
    if let Err(e) = end_sessions(store.as_ref(), id, Some(&record.id)).await {
        abandon().await;
        return Err(e.into());
    }
    match auth
        .backend()
        .set_password_hash_if(id, &verified_phc, &phc)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            abandon().await;
            tracing::info!(target: "sessiond::audit", event = "password_change_refused", reason = "changed_meanwhile", user = %name);
            return Err(AuthError::Conflict(
                "the password was changed meanwhile (e.g. reset by an admin); log in again".into(),
            ));
        }
        Err(e) => {
            abandon().await;
            return Err(e.into());
        }
    }
    end_sessions(store.as_ref(), id, Some(&record.id)).await?;
    tracing::info!(target: "sessiond::audit", event = "password_changed", user = %name, session = %record.id);
    Ok(PasswordChanged { token, record })
}
