//! Second factors over the JSON API (docs/reference/endpoints.md, "Second factors"): TOTP
//! enrolment, verification of a TOTP or recovery code (raising the session to `two_factor`),
//! recovery codes, removal. The rules themselves are the library's
//! (`sessiond_axum::auth::second_factor`); this file is their HTTP form.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::FactorKind;
use utoipa::ToSchema;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, JsonBody};
use super::schema::{AuthenticationLevel, ErrorBody, TotpSetup};
use super::views::{no_store, raised_cookie, SecondFactorView, Whoami};
use crate::accounts;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordBody {
    /// The caller's password, checked again (under the login throttle).
    #[schema(format = Password)]
    password: String,
}

impl std::fmt::Debug for PasswordBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordBody(<redacted>)")
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CodeBody {
    /// A TOTP code (6 digits), or a recovery code (`XXXX-XXXX-XXXX-XXXX`; case, dashes and
    /// spaces do not matter).
    code: String,
}

impl std::fmt::Debug for CodeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeBody(<redacted>)")
    }
}

/// `GET /api/2fa`'s answer.
#[derive(Serialize, ToSchema)]
#[schema(as = SecondFactorSummary)]
pub(super) struct Summary {
    #[schema(value_type = AuthenticationLevel)]
    authentication_level: &'static str,
    /// Whether this server can check second factors (it has an encryption key).
    available: bool,
    #[serde(flatten)]
    factors: SecondFactorView,
}

/// `GET /api/2fa`: the caller's factors, the session's level and what is expected next.
#[utoipa::path(
    get,
    path = "/api/2fa",
    tag = "second factors",
    security(("session" = [])),
    responses(
        (status = 200, description = "The caller's factors (also for a session held to enrolment).", body = Summary,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 401, description = "`unauthenticated`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn summary(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
) -> ApiResult<Response> {
    let (summary, next) = me.second_factor(&state).await?;
    let body = Summary {
        authentication_level: me.session.record().level.as_str(),
        available: state.auth.second_factors().is_some(),
        factors: SecondFactorView::of(&summary, next),
    };
    Ok((no_store(), Json(body)).into_response())
}

/// `POST /api/2fa/totp/setup {"password"}` → `{"secret", "uri"}`: a pending secret, which
/// changes nothing until confirmed. Open to a session limited to enrolment (that is what it
/// is for); a user who has a factor already needs a `two_factor` session (the library's
/// `require_level_for`).
#[utoipa::path(
    post,
    path = "/api/2fa/totp/setup",
    tag = "second factors",
    request_body = PasswordBody,
    security(("session" = [])),
    responses(
        (status = 200, description = "A pending secret (15 minutes; nothing changes until confirmed).", body = TotpSetup,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`bad_request`: a malformed body or password.", body = ErrorBody),
        (status = 401, description = "`invalid_credentials` (wrong password, counted like a login), `unauthenticated`, or `second_factor_required` (the user has a factor: a `two_factor` session is needed).", body = ErrorBody),
        (status = 429, description = "`throttled`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`overloaded` (the hashing queue is full) or `store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn totp_setup(
    State(state): State<AppState>,
    client: ClientInfo,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<PasswordBody>,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let setup = state
        .auth
        .totp_setup(&me.session, &me.user, req.password, &client)
        .await?;
    // The answer holds a secret: never cached.
    Ok((no_store(), Json(setup)).into_response())
}

#[derive(Serialize, ToSchema)]
#[schema(as = TotpConfirmed)]
pub(super) struct Confirmed<'a> {
    /// Ten recovery codes, shown once; they replace any earlier set.
    #[schema(value_type = Vec<String>)]
    recovery_codes: &'a [String],
    #[schema(value_type = AuthenticationLevel)]
    authentication_level: &'static str,
}

/// `POST /api/2fa/totp/confirm {"code"}` → `{"recovery_codes": [...]}` and the raised
/// session's cookie (the old one is dead; the user's other sessions end).
#[utoipa::path(
    post,
    path = "/api/2fa/totp/confirm",
    tag = "second factors",
    request_body = CodeBody,
    security(("session" = [])),
    responses(
        (status = 200, description = "TOTP is on; this session was raised (rotated: the old cookie is dead) and the user's other sessions ended.", body = Confirmed,
            headers(
                ("Set-Cookie" = String, description = "The raised session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body; no setup pending, or it expired.", body = ErrorBody),
        (status = 401, description = "`invalid_second_factor` (a wrong code), `unauthenticated`, or `second_factor_required`.", body = ErrorBody),
        (status = 409, description = "`conflict`: the setup changed meanwhile; start it again.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn totp_confirm(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<CodeBody>,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let (raised, codes) = state
        .auth
        .totp_confirm(&me.session, &me.user, &req.code)
        .await?;
    let body = Confirmed {
        recovery_codes: &codes.0,
        authentication_level: raised.record.level.as_str(),
    };
    Ok((raised_cookie(&state, &raised), Json(body)).into_response())
}

/// `POST /api/2fa/totp {"code"}`: the second step of a login with a TOTP code.
#[utoipa::path(
    post,
    path = "/api/2fa/totp",
    tag = "second factors",
    request_body = CodeBody,
    security(("session" = [])),
    responses(
        (status = 200, description = "The session, raised to `two_factor` (rotated: the presented cookie is dead).", body = Whoami,
            headers(
                ("Set-Cookie" = String, description = "The raised session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body; no TOTP enrolled.", body = ErrorBody),
        (status = 401, description = "`invalid_second_factor` (a wrong or already used code; counted by the login throttle) or `unauthenticated`.", body = ErrorBody),
        (status = 429, description = "`throttled` (the login throttle's counters; the device cookie spares its owner).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn verify_totp(
    state: State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    me: AnyLevel,
    body: JsonBody<CodeBody>,
) -> ApiResult<Response> {
    verify(state, client, headers, me, body, FactorKind::Totp).await
}

/// `POST /api/2fa/recovery {"code"}`: the same with a recovery code, which is then spent.
#[utoipa::path(
    post,
    path = "/api/2fa/recovery",
    tag = "second factors",
    request_body = CodeBody,
    security(("session" = [])),
    responses(
        (status = 200, description = "The session, raised to `two_factor` (rotated); the code is spent.", body = Whoami,
            headers(
                ("Set-Cookie" = String, description = "The raised session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body.", body = ErrorBody),
        (status = 401, description = "`invalid_second_factor` (a wrong or already used code; counted by the login throttle) or `unauthenticated`.", body = ErrorBody),
        (status = 429, description = "`throttled`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn verify_recovery(
    state: State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    me: AnyLevel,
    body: JsonBody<CodeBody>,
) -> ApiResult<Response> {
    verify(state, client, headers, me, body, FactorKind::Recovery).await
}

/// Checks the code (under the login throttle, the owner's device cookie sparing them) and
/// answers like `GET /api/session` for the raised session, with its cookie.
async fn verify(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    AnyLevel(me): AnyLevel,
    JsonBody(req): JsonBody<CodeBody>,
    kind: FactorKind,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    let raised = state
        .auth
        .verify_second_factor(
            &me.session,
            &me.user,
            kind,
            &req.code,
            &client,
            state.auth.device_cookie(&headers),
        )
        .await?;
    let body = Whoami::of(&state, &me.user, &raised.record);
    Ok((raised_cookie(&state, &raised), Json(body)).into_response())
}

#[derive(Serialize, ToSchema)]
#[schema(as = RecoveryCodes)]
pub(super) struct Codes<'a> {
    /// Ten recovery codes, shown once.
    #[schema(value_type = Vec<String>)]
    recovery_codes: &'a [String],
}

/// `POST /api/2fa/recovery/regenerate` → `{"recovery_codes": [...]}`: a fresh set; the old
/// set is dead.
#[utoipa::path(
    post,
    path = "/api/2fa/recovery/regenerate",
    tag = "second factors",
    security(("session" = [])),
    responses(
        (status = 200, description = "A new set; the old set is dead.", body = Codes,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`bad_request`: the user has no second factor.", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `second_factor_required` or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn regenerate(
    State(state): State<AppState>,
    me: CurrentUser,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    if !state.auth.factors_of(me.user.id).await?.any() {
        // Recovery codes back up a factor; alone they would be a second password.
        return Err(ApiError::BadRequest(
            "enrol a second factor first: recovery codes come with it".into(),
        ));
    }
    let codes = state
        .auth
        .regenerate_recovery_codes(&me.session, &me.user)
        .await?;
    let body = Codes {
        recovery_codes: &codes.0,
    };
    Ok((no_store(), Json(body)).into_response())
}

/// `DELETE /api/2fa/totp` → `204`: removes the TOTP factor (the user's other sessions end);
/// `404` when there is none. Refused (`409`) when `two_factor.required` applies to the user
/// and it is their only factor: they would be locked into enrolment at their next login.
#[utoipa::path(
    delete,
    path = "/api/2fa/totp",
    tag = "second factors",
    security(("session" = [])),
    responses(
        (status = 204, description = "TOTP removed; the user's other sessions ended."),
        (status = 401, description = "`unauthenticated`, `second_factor_required` or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 404, description = "`not_found`: no TOTP enrolled.", body = ErrorBody),
        (status = 409, description = "`conflict`: `two_factor.required` applies and it is the user's only factor.", body = ErrorBody),
        (status = 500, description = "`second_factor_unavailable`: the server has no encryption key, or the key does not open the stored secret.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn totp_remove(
    State(state): State<AppState>,
    me: CurrentUser,
) -> ApiResult<Response> {
    accounts::second_factors_configured(&state)?;
    if !accounts::remove_totp(&state, &me).await? {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
