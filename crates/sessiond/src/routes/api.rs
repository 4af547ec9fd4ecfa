//! The JSON API (docs/reference/endpoints.md, "JSON API").

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sessiond_axum::auth::{LoginAttempt, PasswordChanged};
use utoipa::{IntoParams, ToSchema};

use super::extract::{AnyLevel, ClientInfo, CurrentUser, JsonBody, Presented};
use super::schema::ErrorBody;
use super::views::{
    cookie_headers, list_own, login_headers, PageQuery, SecondFactorView, SessionListItem, Whoami,
};
use crate::accounts::next_step;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    /// At most 1,024 bytes, no NUL.
    #[schema(format = Password)]
    password: String,
    /// "Stay logged in": a persistent cookie, the remember-me lifetime.
    #[serde(default)]
    remember: bool,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Logs in with a username and password.
///
/// A password login is always `one_factor`; `second_factor.next` says whether a second step
/// is expected. A valid session cookie sent with the request ends in the same step (it is
/// rotated).
#[utoipa::path(
    post,
    path = "/api/login",
    tag = "sessions",
    request_body = LoginRequest,
    security((), ("session" = [])),
    responses(
        (status = 200, description = "Logged in: the new session, with `second_factor`.", body = Whoami,
            headers(
                ("Set-Cookie" = String, description = "The session cookie (persistent when `remember`), and the device cookie for a client without one"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body, a password over 1,024 bytes or with a NUL, a username with control characters.", body = ErrorBody),
        (status = 401, description = "`invalid_credentials`: unknown user, disabled user or wrong password, alike.", body = ErrorBody),
        (status = 429, description = "`throttled` (docs/reference/security.md, \"Login throttling\").", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 503, description = "`overloaded` (the hashing queue is full) or `store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Presented(presented): Presented,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    let login = state.auth.log_in(LoginAttempt {
        username: &req.username,
        password: req.password,
        remember: req.remember,
        client,
        device_cookie: state.auth.device_cookie(&headers),
        presented: presented.as_ref(),
    });
    let done = login.await?;
    // Whether a second step is expected: the client shows the code prompt (or enrolment)
    // next. Only a hint: the server enforces every level itself.
    let summary = state.auth.factors_of(done.user.id).await?;
    let next = next_step(&state, &done.user, done.record.level, &summary);
    let body = Whoami {
        second_factor: Some(SecondFactorView::of(&summary, next)),
        ..Whoami::of(&state, &done.user, &done.record)
    };
    Ok((login_headers(&state, &done), Json(body)).into_response())
}

/// Ends the presented session, if any; clears the cookie either way.
#[utoipa::path(
    post,
    path = "/api/logout",
    tag = "sessions",
    security((), ("session" = [])),
    responses(
        (status = 204, description = "Logged out (or there was no session).",
            headers(
                ("Set-Cookie" = String, description = "Clears the session cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn logout(
    State(state): State<AppState>,
    Presented(presented): Presented,
) -> ApiResult<Response> {
    if let Some(s) = presented {
        state.auth.log_out(&s).await?;
        tracing::info!(target: "sessiond::audit", event = "logout", session = %s.record().id);
    }
    Ok((
        StatusCode::NO_CONTENT,
        cookie_headers(state.sessions.removal_cookie()),
    )
        .into_response())
}

/// `GET /api/session`: open to a session limited to enrolment (`two_factor.required`), which
/// reads its level here.
///
/// The plain "verify" request: who the session belongs to, and its level.
#[utoipa::path(
    get,
    path = "/api/session",
    tag = "sessions",
    security(("session" = [])),
    responses(
        (status = 200, description = "A valid session (also one held to enrolment by `two_factor.required`).", body = Whoami,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 401, description = "`unauthenticated`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn session(
    State(state): State<AppState>,
    AnyLevel(me): AnyLevel,
) -> ApiResult<Response> {
    let body = state
        .session_bodies
        .get_or_render(me.session.shared_record(), &me.user, || {
            let view = Whoami::of(&state, &me.user, me.session.record());
            // Serialised into one right-sized `Vec` rather than through `Json`'s `BytesMut`
            // writer.
            let mut buf = Vec::with_capacity(512);
            serde_json::to_writer(&mut buf, &view).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("cannot serialise the session: {e}"))
            })?;
            Ok::<_, ApiError>(buf)
        })?;
    let mut res = Response::new(axum::body::Body::from(body));
    let h = res.headers_mut();
    // Room for these and what the guard and hyper add, allocated once.
    h.reserve(6);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// A page of `GET /api/sessions`.
#[derive(serde::Serialize, ToSchema)]
pub(super) struct SessionList {
    sessions: Vec<SessionListItem>,
    /// The cursor of the next page (pass it as `after`), `null` on the last page.
    #[schema(required = true)]
    next: Option<String>,
}

/// `GET /api/sessions[?limit=N&after=CURSOR]` → `{"sessions": [...], "next": CURSOR|null}`.
///
/// The caller's own sessions, oldest first (by creation time, then id), expired ones left
/// out; every session appears once across the pages.
#[utoipa::path(
    get,
    path = "/api/sessions",
    tag = "sessions",
    params(super::views::PageQuery),
    security(("session" = [])),
    responses(
        (status = 200, description = "One page of the caller's sessions.", body = SessionList,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "`bad_request`: a `limit` out of range, a malformed cursor or query.", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn sessions(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (sessions, next) = list_own(&state, &me, &q).await?;
    let mut res = Json(SessionList { sessions, next }).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Ends one of the caller's sessions. Someone else's id is `404`, exactly like an unknown
/// one: the API never confirms that another user's session exists.
#[utoipa::path(
    delete,
    path = "/api/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "A session id (22 URL-safe characters)", pattern = r"^[A-Za-z0-9_-]{22}$")),
    security(("session" = [])),
    responses(
        (status = 204, description = "Ended (a clearing `Set-Cookie` when it was the caller's own).",
            headers(("Set-Cookie" = String, description = "Clears the session cookie, when the session was this one"))),
        (status = 401, description = "`unauthenticated`, or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 404, description = "`not_found`: not one of the caller's sessions, whether or not it exists for someone else.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn revoke_session(
    State(state): State<AppState>,
    me: CurrentUser,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    let id = sessiond_core::SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    if !state.auth.revoke(me.user.id, &id).await? {
        return Err(ApiError::NotFound);
    }
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, session = %id);
    if id == me.session.record().id {
        return Ok((
            StatusCode::NO_CONTENT,
            cookie_headers(state.sessions.removal_cookie()),
        )
            .into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RevokeQuery {
    /// `true`: every session but this one; `false` (the default): all of them, this one
    /// included.
    #[serde(default)]
    others: bool,
}

/// `?others=true`: every session of the caller but this one. Without it: all of them,
/// this one included (and the cookie is cleared).
#[utoipa::path(
    delete,
    path = "/api/sessions",
    tag = "sessions",
    params(RevokeQuery),
    security(("session" = [])),
    responses(
        (status = 204, description = "Ended (with a clearing `Set-Cookie` unless `others=true`).",
            headers(("Set-Cookie" = String, description = "Clears the session cookie, unless `others=true`"))),
        (status = 400, description = "`bad_request`: a malformed query.", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn revoke_sessions(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<axum::extract::Query<RevokeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let n = if q.others {
        state.auth.log_out_others(&me.session).await?
    } else {
        state.auth.log_out_everywhere(&me.session).await?
    };
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, others_only = q.others, count = n);
    if q.others {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok((
            StatusCode::NO_CONTENT,
            cookie_headers(state.sessions.removal_cookie()),
        )
            .into_response())
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordRequest {
    #[schema(format = Password)]
    current_password: String,
    /// Must follow the rules of docs/reference/accounts.md, "Usernames and passwords".
    #[schema(format = Password)]
    new_password: String,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRequest(<redacted>)")
    }
}

/// Changes the caller's password: rotates their session, ends all their others.
#[utoipa::path(
    post,
    path = "/api/password",
    tag = "sessions",
    request_body = PasswordRequest,
    security(("session" = [])),
    responses(
        (status = 200, description = "Changed: the caller's session was rotated (keeping its level) and every other session of the user ended.", body = Whoami,
            headers(
                ("Set-Cookie" = String, description = "The rotated session's cookie"),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
        (status = 400, description = "`bad_request`: a malformed body, or a new password that breaks the rules.", body = ErrorBody),
        (status = 401, description = "`invalid_credentials` (the current password is wrong; counted like a failed login), `unauthenticated` (no session, or it ended while the change ran), or `second_factor_enrolment_required`.", body = ErrorBody),
        (status = 409, description = "`conflict`: the password was reset meanwhile; the reset stands.", body = ErrorBody),
        (status = 429, description = "`throttled`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait (at least 1)"))),
        (status = 503, description = "`overloaded` or `store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn password(
    State(state): State<AppState>,
    client: ClientInfo,
    me: CurrentUser,
    JsonBody(req): JsonBody<PasswordRequest>,
) -> ApiResult<Response> {
    let change = state.auth.change_password(
        &me.session,
        &me.user,
        req.current_password,
        req.new_password,
        client,
    );
    let PasswordChanged { token, record } = change.await?;
    let body = Whoami::of(&state, &me.user, &record);
    Ok((
        cookie_headers(state.sessions.session_cookie(&token, &record)),
        Json(body),
    )
        .into_response())
}
