//! The JSON API (docs/reference/endpoints.md, "JSON API").

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sessiond_axum::auth::{LoginAttempt, PasswordChanged};

use super::extract::{AnyLevel, ClientInfo, CurrentUser, JsonBody, Presented};
use super::views::{cookie_headers, list_own, login_headers, PageQuery, SecondFactorView, Whoami};
use crate::accounts::next_step;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
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

/// `GET /api/sessions[?limit=N&after=CURSOR]` → `{"sessions": [...], "next": CURSOR|null}`.
pub(super) async fn sessions(
    State(state): State<AppState>,
    me: CurrentUser,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (list, next) = list_own(&state, &me, &q).await?;
    let mut res = Json(serde_json::json!({ "sessions": list, "next": next })).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Ends one of the caller's sessions. Someone else's id is `404`, exactly like an unknown
/// one: the API never confirms that another user's session exists.
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

#[derive(Deserialize)]
pub(super) struct RevokeQuery {
    #[serde(default)]
    others: bool,
}

/// `?others=true`: every session of the caller but this one. Without it: all of them,
/// this one included (and the cookie is cleared).
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordRequest {
    current_password: String,
    new_password: String,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRequest(<redacted>)")
    }
}

/// Changes the caller's password: rotates their session, ends all their others.
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
