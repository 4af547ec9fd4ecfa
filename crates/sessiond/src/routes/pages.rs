//! Server-rendered pages: login, account, logout. Usable without JavaScript.
//!
//! Forms carry a CSRF token on top of the origin check in `guards`: before login a
//! double-submit token (a random value in an HttpOnly cookie and in the form, compared in
//! constant time), after login a token derived from the session secret (bound to the session,
//! and not derivable from a database dump, which holds only the secret's hash).

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sessiond_axum::{find_cookie, CookieLookup};
use sessiond_core::SessionToken;

use super::api::{cookie_headers, log_in, rfc3339};
use super::extract::{ClientInfo, CurrentUser, FormBody, Presented};
use crate::error::ApiError;
use crate::redirect::safe_redirect;
use crate::state::AppState;

const CSRF_PURPOSE: &str = "csrf-form";

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    rd: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    remember: Option<String>,
    rd: Option<String>,
    #[serde(default)]
    csrf_token: String,
}

#[derive(Deserialize)]
pub struct LogoutForm {
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

fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    match HeaderValue::from_str(location) {
        Ok(v) => res.headers_mut().insert(header::LOCATION, v),
        Err(_) => res
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/")),
    };
    res
}

fn page(state: &AppState, status: StatusCode, name: &str, ctx: impl Serialize) -> Response {
    match state.templates.render(name, ctx) {
        Ok(html) => {
            let mut res = (status, Html(html)).into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => ApiError::Internal(e.into()).into_html(&state.templates),
    }
}

/// The login form's double-submit token: the one in the browser's cookie if it has a
/// well-formed one (several tabs keep working), else a fresh one to set.
fn csrf_for_form(state: &AppState, headers: &HeaderMap) -> (SessionToken, Option<HeaderValue>) {
    if let CookieLookup::One(v) = find_cookie(headers, state.config.csrf_cookie.name()) {
        if let Some(t) = SessionToken::parse(v) {
            return (t, None);
        }
    }
    let t = SessionToken::generate();
    let csrf = &state.config.csrf_cookie;
    let cookie = csrf.build(csrf.name(), t.expose(), None);
    (t, Some(cookie))
}

fn render_login(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    rd: &str,
    username: &str,
    error: Option<&str>,
) -> Response {
    let (csrf, set) = csrf_for_form(state, headers);
    let mut res = page(
        state,
        status,
        "login.html",
        LoginPage {
            csrf_token: csrf.expose(),
            rd,
            username,
            error,
        },
    );
    if let Some(c) = set {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return ApiError::BadRequest("malformed query string".into()).into_html(&state.templates);
    };
    let rd = q.rd.or(q.next).unwrap_or_default();
    render_login(&state, &headers, StatusCode::OK, &rd, "", None)
}

pub async fn login_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    presented: Result<Presented, ApiError>,
    form: Result<FormBody<LoginForm>, ApiError>,
) -> Response {
    let form = match form {
        Ok(FormBody(f)) => f,
        Err(e) => return e.into_html(&state.templates),
    };
    let rd = form.rd.as_deref().unwrap_or("");
    let token_ok = match (
        find_cookie(&headers, state.config.csrf_cookie.name()),
        SessionToken::parse(&form.csrf_token),
    ) {
        // `==` on tokens is constant-time.
        (CookieLookup::One(c), Some(sent)) => SessionToken::parse(c).is_some_and(|c| c == sent),
        _ => false,
    };
    if !token_ok {
        return render_login(
            &state,
            &headers,
            StatusCode::FORBIDDEN,
            rd,
            &form.username,
            Some("This form expired. Please sign in again."),
        );
    }
    let presented = match presented {
        Ok(Presented(p)) => p,
        Err(e) => return e.into_html(&state.templates),
    };
    let remember = form.remember.is_some_and(|v| !v.is_empty());
    match log_in(
        &state,
        client,
        presented,
        &form.username,
        form.password,
        remember,
    )
    .await
    {
        Ok(done) => {
            let target = safe_redirect(rd, &state.config.public_url, state.config.cookie.domain())
                .unwrap_or_else(|| "/".to_owned());
            let mut res = see_other(&target);
            res.headers_mut().extend(cookie_headers(
                state.sessions.session_cookie(&done.token, &done.record),
            ));
            res
        }
        Err(e @ (ApiError::InvalidCredentials | ApiError::BadRequest(_))) => {
            let msg = match &e {
                ApiError::InvalidCredentials => "Invalid username or password.".to_owned(),
                other => format!("{}.", capitalise(&other.to_string())),
            };
            render_login(&state, &headers, e.status(), rd, &form.username, Some(&msg))
        }
        Err(e) => e.into_html(&state.templates),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct AccountPage<'a> {
    user: super::api::UserView<'a>,
    session: AccountSession,
    csrf_token: String,
}

#[derive(Serialize)]
struct AccountSession {
    created_at: String,
    expires_at: String,
    remember: bool,
}

pub async fn account(State(state): State<AppState>, me: Result<CurrentUser, ApiError>) -> Response {
    let me = match me {
        Ok(me) => me,
        Err(ApiError::Unauthenticated) => return see_other("/login"),
        Err(e) => return e.into_html(&state.templates),
    };
    let rec = me.session.record();
    let ctx = AccountPage {
        user: super::api::UserView::of(&me.user),
        session: AccountSession {
            created_at: rfc3339(rec.created_at),
            expires_at: rfc3339(state.sessions.policy().deadline(rec, rec.last_seen_at)),
            remember: rec.remember,
        },
        csrf_token: me.session.token().derive(CSRF_PURPOSE),
    };
    page(&state, StatusCode::OK, "account.html", ctx)
}

pub async fn logout(
    State(state): State<AppState>,
    presented: Result<Presented, ApiError>,
    form: Result<FormBody<LogoutForm>, ApiError>,
) -> Response {
    let form = match form {
        Ok(FormBody(f)) => f,
        Err(e) => return e.into_html(&state.templates),
    };
    let session = match presented {
        Ok(Presented(s)) => s,
        Err(e) => return e.into_html(&state.templates),
    };
    if let Some(s) = session {
        let expected = SessionToken::parse(&s.token().derive(CSRF_PURPOSE));
        if expected.is_none() || expected != SessionToken::parse(&form.csrf_token) {
            return ApiError::CsrfRejected.into_html(&state.templates);
        }
        if let Err(e) = state.sessions.end(&s).await {
            return ApiError::from(e).into_html(&state.templates);
        }
        tracing::info!(target: "sessiond::audit", event = "logout", session = %s.record().id);
    }
    let mut res = see_other("/login");
    res.headers_mut()
        .extend(cookie_headers(state.sessions.removal_cookie()));
    res
}

pub async fn style() -> Response {
    let mut res = (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        crate::templates::STYLE_CSS,
    )
        .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}
