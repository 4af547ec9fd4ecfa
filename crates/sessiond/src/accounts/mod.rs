//! Who is asking: the signed-in user of a request (`CurrentUser`). The account use cases
//! themselves (logging in, the throttle, password checks and changes, disabling and deleting
//! users) are the library's (`sessiond_axum::auth`): the server calls them like any app, and
//! re-exports the ones its tests and CLI name.

use std::sync::Arc;

use sessiond_axum::auth::AuthError;
use sessiond_axum::ActiveSession;
use sessiond_core::{AuthLevel, FactorSummary, StoreError, User};

pub use sessiond_axum::auth::{delete, disable, set_password, ChangeError, MAX_NEW_DEVICES};

use crate::state::AppState;

/// A valid session of an enabled user.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) user: Arc<User>,
    pub(crate) session: ActiveSession,
}

impl CurrentUser {
    /// Resolves a verified session to its user ([`sessiond_axum::Auth::user_of`]: a session
    /// whose user is gone or disabled is no session, and ends).
    pub(crate) async fn resolve(
        state: &AppState,
        session: ActiveSession,
    ) -> Result<Option<Self>, StoreError> {
        Ok(state
            .auth
            .user_of(&session)
            .await?
            .map(|user| Self { user, session }))
    }
}

/// What a session's user is expected to do about second factors next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NextStep {
    /// Verify a factor (`POST /api/2fa/totp` or `/api/2fa/recovery`): the session is
    /// `one_factor` and the user has a second factor.
    Verify,
    /// Enrol one (`POST /api/2fa/totp/setup`): `two_factor.required` applies to the user, who
    /// has none; until then the session may only enrol, read itself and log out.
    Enrol,
}

impl CurrentUser {
    /// The user's factors and what is expected next, if anything (one factor-store read).
    pub(crate) async fn second_factor(
        &self,
        state: &AppState,
    ) -> Result<(FactorSummary, Option<NextStep>), AuthError> {
        let summary = state.auth.factors_of(self.user.id).await?;
        let next = next_step(state, &self.user, self.session.record().level, &summary);
        Ok((summary, next))
    }

    /// Whether `two_factor.required` limits this session to enrolment: the requirement
    /// applies to the user, the session is `one_factor` and the user has no second factor.
    /// Costs nothing unless the requirement applies and the session is `one_factor`.
    pub(crate) async fn must_enrol(&self, state: &AppState) -> Result<bool, AuthError> {
        if self.session.record().level >= AuthLevel::TwoFactor
            || !state.config.two_factor.required.applies_to(self.user.admin)
        {
            return Ok(false);
        }
        Ok(!state.auth.factors_of(self.user.id).await?.any())
    }
}

/// What `user`, with a session at `level` and these factors, is expected to do next.
pub(crate) fn next_step(
    state: &AppState,
    user: &User,
    level: AuthLevel,
    summary: &FactorSummary,
) -> Option<NextStep> {
    if level >= AuthLevel::TwoFactor {
        None
    } else if summary.any() {
        Some(NextStep::Verify)
    } else if state.config.two_factor.required.applies_to(user.admin) {
        Some(NextStep::Enrol)
    } else {
        None
    }
}

/// What `second_factor_unavailable` says when the server has no encryption key.
pub(crate) const NOT_CONFIGURED: &str = "second factors are off on this server: it has no \
     encryption key (set SESSIOND_ENCRYPTION_KEY or two_factor.encryption_key_file; see \
     docs/reference/second-factor.md)";

/// Refuses at once, saying what to configure, when second factors are off (PostgreSQL without
/// an encryption key).
pub(crate) fn second_factors_configured(state: &AppState) -> Result<(), AuthError> {
    match state.auth.second_factors() {
        Some(_) => Ok(()),
        None => Err(AuthError::SecondFactorUnavailable(NOT_CONFIGURED.into())),
    }
}

/// Removes one of the caller's passkeys (base64url id; the library ends their other
/// sessions); `false` when they have no such passkey. Refused ([`AuthError::Conflict`]) when
/// `two_factor.required` applies to the user and it is their only factor.
pub(crate) async fn remove_passkey(
    state: &AppState,
    me: &CurrentUser,
    id: &str,
) -> Result<bool, AuthError> {
    let summary = state.auth.factors_of(me.user.id).await?;
    if summary.passkeys == 0 {
        return Ok(false);
    }
    // The level first: a one-factor session learns nothing more than "verify first".
    state.auth.require_level_for(&me.session).await?;
    let only = !summary.totp && summary.passkeys == 1;
    if only && state.config.two_factor.required.applies_to(me.user.admin) {
        return Err(AuthError::Conflict(
            "two_factor.required: this is your only second factor, so it cannot be removed".into(),
        ));
    }
    state.auth.passkey_remove(&me.session, &me.user, id).await
}

/// Removes the caller's TOTP factor (the library ends their other sessions); `false` when
/// there is none. Refused ([`AuthError::Conflict`]) when `two_factor.required` applies to the
/// user and it is their only factor: they would be held to enrolment at their next login.
pub(crate) async fn remove_totp(state: &AppState, me: &CurrentUser) -> Result<bool, AuthError> {
    let summary = state.auth.factors_of(me.user.id).await?;
    if !summary.totp {
        return Ok(false);
    }
    // The level first: a one-factor session learns nothing more than "verify first".
    state.auth.require_level_for(&me.session).await?;
    if state.config.two_factor.required.applies_to(me.user.admin) && summary.passkeys == 0 {
        return Err(AuthError::Conflict(
            "two_factor.required: this is your only second factor, so it cannot be removed".into(),
        ));
    }
    state.auth.totp_remove(&me.session, &me.user).await
}
