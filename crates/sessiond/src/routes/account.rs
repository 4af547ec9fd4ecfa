//! The account page: who you are, your sessions with revoke buttons, "log out other
//! sessions", change password, logout.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::{AuthError, PasswordChanged};
use sessiond_axum::csrf::form_token;
use sessiond_core::SessionId;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, FormBody};
use super::html::{check_form_token, page, see_other, sentence, TokenForm};
use super::views::{cookie_headers, list_own, rfc3339, PageQuery, SessionListItem, UserView};
use crate::error::{ApiError, HtmlResult};
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub(super) struct Done {
    done: Option<String>,
}

#[derive(Serialize)]
struct AccountPage<'a> {
    user: UserView<'a>,
    session: ThisSession,
    sessions: Vec<SessionListItem>,
    /// The next page's cursor (`/?after=…`), if there are more sessions.
    next: Option<String>,
    csrf_token: String,
    notice: Option<&'static str>,
    error: Option<String>,
}

#[derive(Serialize)]
struct ThisSession {
    created_at: String,
    expires_at: String,
    remember: bool,
}

/// Messages after a redirect, chosen from a fixed list (never echoed from the URL).
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "password" => Some("Password changed. Your other sessions were logged out."),
        "revoked" => Some("Session logged out."),
        "others" => Some("All your other sessions were logged out."),
        _ => None,
    }
}

async fn render(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
) -> HtmlResult<Response> {
    render_page(state, me, status, notice, error, &PageQuery::default()).await
}

async fn render_page(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    q: &PageQuery,
) -> HtmlResult<Response> {
    let rec = me.session.record();
    let (sessions, next) = list_own(state, me, q).await?;
    let ctx = AccountPage {
        user: UserView::of(&me.user),
        session: ThisSession {
            created_at: rfc3339(rec.created_at),
            expires_at: rfc3339(state.sessions.policy().deadline(rec, rec.last_seen_at)),
            remember: rec.remember,
        },
        sessions,
        next,
        csrf_token: form_token(&me.session),
        notice,
        error,
    };
    page(status, "account.html", ctx)
}

/// The account page. Open to a session held to enrolment by `two_factor.required`.
pub(super) async fn account(
    State(state): State<AppState>,
    me: Result<AnyLevel, ApiError>,
    Query(q): Query<Done>,
    page: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> HtmlResult<Response> {
    let AnyLevel(me) = me?;
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let done = notice(q.done.as_deref());
    render_page(&state, &me, StatusCode::OK, done, None, &page).await
}

pub(super) async fn revoke_one(
    State(state): State<AppState>,
    me: Result<CurrentUser, ApiError>,
    Path(id): Path<String>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    if !state.auth.revoke(me.user.id, &id).await? {
        return Err(ApiError::NotFound.into());
    }
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, session = %id);
    if id == me.session.record().id {
        let mut res = see_other("/login");
        res.headers_mut()
            .extend(cookie_headers(state.sessions.removal_cookie()));
        return Ok(res);
    }
    Ok(see_other("/?done=revoked"))
}

pub(super) async fn revoke_others(
    State(state): State<AppState>,
    me: Result<CurrentUser, ApiError>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    let n = state.auth.log_out_others(&me.session).await?;
    tracing::info!(target: "sessiond::audit", event = "revoke", user = %me.user.username, others_only = true, count = n);
    Ok(see_other("/?done=others"))
}

#[derive(Deserialize)]
pub(super) struct PasswordForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm_password: String,
}

pub(super) async fn change_password(
    State(state): State<AppState>,
    client: ClientInfo,
    me: Result<CurrentUser, ApiError>,
    form: Result<FormBody<PasswordForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    if form.new_password != form.confirm_password {
        let msg = Some("The new passwords do not match.".to_owned());
        return render(&state, &me, StatusCode::BAD_REQUEST, None, msg).await;
    }
    let change = state.auth.change_password(
        &me.session,
        &me.user,
        form.current_password,
        form.new_password,
        client,
    );
    match change.await {
        Ok(PasswordChanged { token, record }) => {
            let mut res = see_other("/?done=password");
            res.headers_mut().extend(cookie_headers(
                state.sessions.session_cookie(&token, &record),
            ));
            Ok(res)
        }
        Err(AuthError::InvalidCredentials) => {
            let msg = Some("The current password is not right.".to_owned());
            render(&state, &me, StatusCode::UNAUTHORIZED, None, msg).await
        }
        Err(e @ AuthError::Invalid(_)) => {
            let msg = Some(sentence(&e.to_string()));
            render(&state, &me, ApiError::from(e).status(), None, msg).await
        }
        Err(e) => Err(e.into()),
    }
}
