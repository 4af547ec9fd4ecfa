//! Server-rendered login and logout. Usable without JavaScript. The login form carries the
//! library's double-submit CSRF token (`sessiond_axum::csrf::DoubleSubmit`; `html.rs` says
//! which token the other forms carry).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::{AuthError, LoginAttempt};
use sessiond_axum::redirect::safe_redirect;

use super::extract::{ClientInfo, FormBody, Presented};
use super::html::{check_form_token, page, see_other, sentence, TokenForm};
use super::views::{cookie_headers, login_headers};
use crate::error::{ApiError, HtmlResult};
use crate::state::AppState;

#[derive(Deserialize, Default)]
pub(super) struct LoginQuery {
    rd: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    remember: Option<String>,
    rd: Option<String>,
    #[serde(default)]
    csrf_token: String,
}

#[derive(Serialize)]
struct LoginPage<'a> {
    csrf_token: &'a str,
    rd: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

fn render_login(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    username: &str,
    error: Option<&str>,
) -> HtmlResult<Response> {
    // The browser's token if it has one (other tabs keep working), else a fresh one.
    let csrf = state.login_csrf.issue(headers);
    let mut res = page(
        status,
        "login.html",
        LoginPage {
            csrf_token: csrf.value(),
            rd,
            username,
            error,
        },
    )?;
    if let Some(c) = csrf.set_cookie() {
        res.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    Ok(res)
}

pub(super) async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> HtmlResult<Response> {
    let Query(q) = query.map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    let rd = q.rd.or(q.next).unwrap_or_default();
    render_login(&state, &headers, StatusCode::OK, &rd, "", None)
}

pub(super) async fn login_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    presented: Result<Presented, ApiError>,
    form: Result<FormBody<LoginForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(form) = form?;
    let rd = form.rd.as_deref().unwrap_or("");
    let token_ok = state.login_csrf.check(&headers, &form.csrf_token).is_ok();
    if !token_ok {
        let msg = "This form expired. Please sign in again.";
        return render_login(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            rd,
            &form.username,
            Some(msg),
        );
    }
    let Presented(presented) = presented?;
    let remember = form.remember.is_some_and(|v| !v.is_empty());
    let login = state.auth.log_in(LoginAttempt {
        username: &form.username,
        password: form.password,
        remember,
        client,
        device_cookie: state.auth.device_cookie(&headers),
        presented: presented.as_ref(),
    });
    match login.await {
        Ok(done) => {
            let target = safe_redirect(rd, &state.config.public_url, state.config.cookie.domain())
                .unwrap_or_else(|| "/".to_owned());
            let mut res = see_other(&target);
            for (name, value) in &login_headers(&state, &done) {
                res.headers_mut().append(name, value.clone());
            }
            Ok(res)
        }
        Err(AuthError::Throttled { retry_after }) => {
            let msg = format!("Too many failed attempts. Try again in {retry_after} seconds.");
            let status = StatusCode::TOO_MANY_REQUESTS;
            let mut res = render_login(&state, &headers, status, rd, &form.username, Some(&msg))?;
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(res)
        }
        Err(e @ (AuthError::InvalidCredentials | AuthError::Invalid(_))) => {
            let msg = match &e {
                AuthError::InvalidCredentials => "Invalid username or password.".to_owned(),
                other => sentence(&other.to_string()),
            };
            let status = ApiError::from(e).status();
            render_login(&state, &headers, status, rd, &form.username, Some(&msg))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn logout(
    State(state): State<AppState>,
    presented: Result<Presented, ApiError>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(form) = form?;
    let Presented(session) = presented?;
    if let Some(s) = session {
        check_form_token(&s, &form.csrf_token)?;
        state.auth.log_out(&s).await?;
        tracing::info!(target: "sessiond::audit", event = "logout", session = %s.record().id);
    }
    let mut res = see_other("/login");
    res.headers_mut()
        .extend(cookie_headers(state.sessions.removal_cookie()));
    Ok(res)
}
