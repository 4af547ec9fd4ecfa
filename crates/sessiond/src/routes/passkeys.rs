//! Passkeys over the JSON API (docs/reference/endpoints.md, "Passkeys"): registration, the
//! list and removal, a passkey as the second step of a login, and passwordless login. Each
//! ceremony is a `…/start` that answers `{"options", "ceremony"}` (the options for
//! `navigator.credentials.create()` / `.get()`) and a finish that takes the `ceremony` back
//! with the browser's answer (`credential`, as `PublicKeyCredential.toJSON()` writes it). The
//! rules are the library's (`sessiond_axum::auth::passkeys`); the pages use these routes from
//! `/static/passkeys.js`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::webauthn::{PublicKeyCredential, RegisterPublicKeyCredential};
use sessiond_axum::auth::PasskeyInfo;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, JsonBody, Presented};
use super::views::{login_headers, no_store, raised_cookie, SecondFactorView, Whoami};
use crate::accounts::{self, next_step};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    ceremony: String,
    #[serde(default)]
    name: String,
    credential: RegisterPublicKeyCredential,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Assertion {
    ceremony: String,
    credential: PublicKeyCredential,
    /// Passwordless login only: "stay logged in".
    #[serde(default)]
    remember: bool,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("remember", &self.remember)
            .finish_non_exhaustive()
    }
}

/// `GET /api/2fa/passkeys` → `{"passkeys": [{id, name, created_at, last_used_at}]}`.
pub(super) async fn list(State(state): State<AppState>, me: CurrentUser) -> ApiResult<Response> {
    #[derive(Serialize)]
    struct List {
        passkeys: Vec<PasskeyInfo>,
    }
    let passkeys = state.auth.passkeys_of(me.user.id).await?;
    Ok((no_store(), Json(List { passkeys })).into_response())
}

/// `POST /api/2fa/passkeys/register/start`. Open to a session held to enrolment (a passkey
/// is a way to enrol); a user who has a factor needs `two_factor`.
pub(super) async fn register_start(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let challenge = state
        .auth
        .passkey_register_start(&me.session, &me.user)
        .await?;
    Ok((no_store(), Json(challenge)).into_response())
}

/// `POST /api/2fa/passkeys/register/finish {"ceremony", "name", "credential"}` →
/// `{"passkey": {…}, "authentication_level": "two_factor"}` and the raised session's cookie
/// (the user's other sessions end).
pub(super) async fn register_finish(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<Registration>,
) -> ApiResult<Response> {
    #[derive(Serialize)]
    struct Registered {
        passkey: PasskeyInfo,
        authentication_level: &'static str,
    }
    accounts::second_factors_configured(&state)?;
    let (raised, passkey) = state
        .auth
        .passkey_register_finish(
            &me.session,
            &me.user,
            &req.ceremony,
            &req.credential,
            &req.name,
        )
        .await?;
    let body = Registered {
        passkey,
        authentication_level: raised.record.level.as_str(),
    };
    Ok((raised_cookie(&state, &raised), Json(body)).into_response())
}

/// `DELETE /api/2fa/passkeys/{id}` → `204`; `404` when the user has no such passkey; `409`
/// when `two_factor.required` applies and it is the user's only factor.
pub(super) async fn remove(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    if !accounts::remove_passkey(&state, &me, &id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/2fa/passkey/start`: the passkey step of a login, for a `one_factor` session.
pub(super) async fn second_factor_start(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let challenge = state
        .auth
        .passkey_second_factor_start(&me.session, &me.user)
        .await?;
    Ok((no_store(), Json(challenge)).into_response())
}

/// `POST /api/2fa/passkey {"ceremony", "credential"}`: answers like `GET /api/session` for
/// the raised session, with its cookie.
pub(super) async fn second_factor_finish(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<Assertion>,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let raised = state
        .auth
        .passkey_second_factor_finish(
            &me.session,
            &me.user,
            &req.ceremony,
            &req.credential,
            &client,
            state.auth.device_cookie(&headers),
        )
        .await?;
    let body = Whoami::of(&state, &me.user, &raised.record);
    Ok((raised_cookie(&state, &raised), Json(body)).into_response())
}

/// `POST /api/login/passkey/start`: a passwordless login, no session needed.
pub(super) async fn login_start(State(state): State<AppState>) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let challenge = state.auth.passkey_login_start().await?;
    Ok((no_store(), Json(challenge)).into_response())
}

/// `POST /api/login/passkey {"ceremony", "credential", "remember"}`: answers like
/// `POST /api/login`, at `two_factor`, with the session cookie.
pub(super) async fn login_finish(
    State(state): State<AppState>,
    client: ClientInfo,
    Presented(presented): Presented,
    JsonBody(req): JsonBody<Assertion>,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let done = state
        .auth
        .passkey_login_finish(
            &req.ceremony,
            &req.credential,
            req.remember,
            client,
            presented.as_ref(),
        )
        .await?;
    let summary = state.auth.factors_of(done.user.id).await?;
    let next = next_step(&state, &done.user, done.record.level, &summary);
    let body = Whoami {
        second_factor: Some(SecondFactorView::of(&summary, next)),
        ..Whoami::of(&state, &done.user, &done.record)
    };
    Ok((login_headers(&state, &done), Json(body)).into_response())
}
