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
use utoipa::ToSchema;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, JsonBody, Presented};
use super::schema::{AuthenticationLevel, ErrorBody, PasskeyChallenge, WebAuthnCredential};
use super::views::{login_headers, no_store, raised_cookie, SecondFactorView, Whoami};
use crate::accounts::{self, next_step};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Registration {
    /// The `ceremony` of the start's answer.
    ceremony: String,
    /// At most 64 characters; empty: "Passkey".
    #[serde(default)]
    name: String,
    /// `PublicKeyCredential.toJSON()` of `navigator.credentials.create()`.
    #[schema(value_type = WebAuthnCredential)]
    credential: RegisterPublicKeyCredential,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Assertion {
    /// The `ceremony` of the start's answer.
    ceremony: String,
    /// `PublicKeyCredential.toJSON()` of `navigator.credentials.get()`.
    #[schema(value_type = WebAuthnCredential)]
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

/// `GET /api/2fa/passkeys`'s answer.
#[derive(Serialize, ToSchema)]
#[schema(as = PasskeyList)]
pub(super) struct List {
    /// Oldest first.
    #[schema(value_type = Vec<super::schema::PasskeyInfo>)]
    passkeys: Vec<PasskeyInfo>,
}

/// `GET /api/2fa/passkeys` → `{"passkeys": [{id, name, created_at, last_used_at}]}`.
#[utoipa::path(
    get,
    path = "/api/2fa/passkeys",
    tag = "passkeys",
    security(("session" = [])),
    responses(
        (status = 200, description = "The caller's passkeys (none when the server has no encryption key).", body = List, headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 401, description = "`unauthenticated` or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn list(State(state): State<AppState>, me: CurrentUser) -> ApiResult<Response> {
    let passkeys = state.auth.passkeys_of(me.user.id).await?;
    Ok((no_store(), Json(List { passkeys })).into_response())
}

/// `POST /api/2fa/passkeys/register/start`. Open to a session held to enrolment (a passkey
/// is a way to enrol); a user who has a factor needs `two_factor`.
#[utoipa::path(
    post,
    path = "/api/2fa/passkeys/register/start",
    tag = "passkeys",
    security(("session" = [])),
    responses(
        (status = 200, description = "The creation options (a discoverable credential, user verification required, the user's passkeys excluded).", body = PasskeyChallenge, headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 401, description = "`unauthenticated` or `second_factor_required`.", body = ErrorBody),
        (status = 409, description = "`conflict`: the user has 20 passkeys.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
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

/// `POST /api/2fa/passkeys/register/finish`'s answer.
#[derive(Serialize, ToSchema)]
#[schema(as = PasskeyRegistered)]
pub(super) struct Registered {
    #[schema(value_type = super::schema::PasskeyInfo)]
    passkey: PasskeyInfo,
    #[schema(value_type = AuthenticationLevel)]
    authentication_level: &'static str,
}

/// `POST /api/2fa/passkeys/register/finish {"ceremony", "name", "credential"}` →
/// `{"passkey": {…}, "authentication_level": "two_factor"}` and the raised session's cookie
/// (the user's other sessions end).
#[utoipa::path(
    post,
    path = "/api/2fa/passkeys/register/finish",
    tag = "passkeys",
    request_body = Registration,
    security(("session" = [])),
    responses(
        (status = 200, description = "Stored; this session was raised (rotated) and the user's other sessions ended.", body = Registered, headers(
                ("Set-Cookie" = String, description = "The raised session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body; a stale, foreign or spent ceremony; the authenticator's answer was refused.", body = ErrorBody),
        (status = 401, description = "`unauthenticated` or `second_factor_required`.", body = ErrorBody),
        (status = 409, description = "`conflict`: registered already, or 20 passkeys.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn register_finish(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<Registration>,
) -> ApiResult<Response> {
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
#[utoipa::path(
    delete,
    path = "/api/2fa/passkeys/{id}",
    tag = "passkeys",
    params(("id" = String, Path, description = "The passkey's credential id (base64url)")),
    security(("session" = [])),
    responses(
        (status = 204, description = "Removed; the user's other sessions ended."),
        (status = 401, description = "`unauthenticated`, `second_factor_required` or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such passkey of the user's.", body = ErrorBody),
        (status = 409, description = "`conflict`: `two_factor.required` applies and it is the user's only factor.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/2fa/passkey/start",
    tag = "passkeys",
    security(("session" = [])),
    responses(
        (status = 200, description = "The request options for the user's passkeys.", body = PasskeyChallenge, headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`bad_request`: no passkey registered.", body = ErrorBody),
        (status = 401, description = "`unauthenticated`.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/2fa/passkey",
    tag = "passkeys",
    request_body = Assertion,
    security(("session" = [])),
    responses(
        (status = 200, description = "The session, raised to `two_factor` (rotated).", body = Whoami, headers(
                ("Set-Cookie" = String, description = "The raised session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body; a stale, foreign or spent ceremony.", body = ErrorBody),
        (status = 401, description = "`invalid_second_factor` (a refused assertion, counted by the login throttle) or `unauthenticated`.", body = ErrorBody),
        (status = 429, description = "`throttled`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/api/login/passkey/start",
    tag = "passkeys",
    responses(
        (status = 200, description = "Request options naming no credential: the browser offers the passkeys it holds for the site.", body = PasskeyChallenge, headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
    ),
)]
pub(super) async fn login_start(State(state): State<AppState>) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let challenge = state.auth.passkey_login_start().await?;
    Ok((no_store(), Json(challenge)).into_response())
}

/// `POST /api/login/passkey {"ceremony", "credential", "remember"}`: answers like
/// `POST /api/login`, at `two_factor`, with the session cookie.
#[utoipa::path(
    post,
    path = "/api/login/passkey",
    tag = "passkeys",
    request_body = Assertion,
    security((), ("session" = [])),
    responses(
        (status = 200, description = "Logged in at `two_factor` (a presented session is rotated), with `second_factor`.", body = Whoami,
            headers(
                ("Set-Cookie" = String, description = "The session cookie, and the device cookie for a client without one"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body; a stale or spent ceremony.", body = ErrorBody),
        (status = 401, description = "`invalid_credentials`: an unknown passkey, a user handle that is not its owner's, a refused signature or an inactive user (not throttled: a signature cannot be guessed).", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: no encryption key, or passkeys are not configured (a public URL without a host name).", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
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
