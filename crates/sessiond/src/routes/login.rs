//! Server-rendered login, the second-factor step and logout. Usable without JavaScript. The
//! login form carries the library's double-submit CSRF token
//! (`sessiond_axum::csrf::DoubleSubmit`); the second-factor form, shown only to a signed-in
//! (one-factor) session, carries the session-bound form token, like every form after login
//! (`html.rs`).
//!
//! Where the browser goes next is the same rule at every step: `rd` (or `next`) through
//! `safe_redirect`, else `/`. A user who has a second factor goes from the password to the
//! second-factor step (`/login/2fa?rd=…`), and from there to `rd`.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::{AuthError, FactorKind, LoginAttempt};
use sessiond_axum::csrf::form_token;
use sessiond_axum::redirect::safe_redirect;
use sessiond_axum::AuthLevel;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, FormBody, Presented};
use super::html::{check_form_token, page, see_other, sentence, TokenForm};
use super::views::{cookie_headers, login_headers};
use crate::accounts::{next_step, NextStep};
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
    /// Where a passwordless passkey login goes (the safe `rd`, else `/`); `None` when
    /// passkeys are off.
    passkey_next: Option<String>,
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
            passkey_next: passkeys_on(state).then(|| after_login(state, rd)),
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
            let safe = safe_redirect(rd, &state.config.public_url, state.config.cookie.domain());
            // A user who has a second factor gives it next, `rd` going along (already
            // checked); one whom `two_factor.required` holds to enrolment enrols first.
            let summary = state.auth.factors_of(done.user.id).await?;
            let target = match next_step(&state, &done.user, done.record.level, &summary) {
                Some(NextStep::Verify) => portal_step("/login/2fa", safe.as_deref().unwrap_or("")),
                Some(NextStep::Enrol) => ENROL.to_owned(),
                None => safe.unwrap_or_else(|| "/".to_owned()),
            };
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

/// Where the browser goes once signed in: `rd` if it is safe (`safe_redirect`: a path here,
/// or a URL of a host the cookie belongs to), else `/`.
fn after_login(state: &AppState, rd: &str) -> String {
    safe_redirect(rd, &state.config.public_url, state.config.cookie.domain())
        .unwrap_or_else(|| "/".to_owned())
}

/// `path` of the portal with `rd` (left out when empty).
fn portal_step(path: &str, rd: &str) -> String {
    if rd.is_empty() {
        return path.to_owned();
    }
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    format!("{path}?rd={rd}")
}

/// Where a one-factor user without any second factor is sent from the second-factor step (and
/// from the login, when `two_factor.required` holds them to enrolment): the account page,
/// where one is enrolled (enrolment raises the session to `two_factor`). The step itself could
/// never be completed.
const ENROL: &str = "/#two-factor";

#[derive(Deserialize)]
pub(super) struct SecondFactorForm {
    #[serde(default)]
    code: String,
    /// `totp` (the default) or `recovery`.
    kind: Option<String>,
    rd: Option<String>,
    #[serde(default)]
    csrf_token: String,
}

#[derive(Serialize)]
struct SecondFactorPage<'a> {
    csrf_token: &'a str,
    rd: &'a str,
    username: &'a str,
    recovery: bool,
    error: Option<&'a str>,
    /// Where the passkey step goes once done (the safe `rd`, else `/`); `None` when the user
    /// has no passkey or passkeys are off.
    passkey_next: Option<String>,
}

/// Whether this server offers passkeys.
fn passkeys_on(state: &AppState) -> bool {
    state
        .auth
        .second_factors()
        .is_some_and(|f| f.passkeys_enabled())
}

async fn render_second_factor(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    rd: &str,
    recovery: bool,
    error: Option<&str>,
) -> HtmlResult<Response> {
    let has_passkey = passkeys_on(state) && state.auth.factors_of(me.user.id).await?.passkeys > 0;
    page(
        status,
        "login_2fa.html",
        SecondFactorPage {
            csrf_token: &form_token(&me.session),
            rd,
            username: me.user.username.as_str(),
            recovery,
            error,
            passkey_next: has_passkey.then(|| after_login(state, rd)),
        },
    )
}

/// What the second-factor step does with a request, before any code is looked at.
enum Before {
    /// Ask for a code.
    Ask(CurrentUser),
    /// Go elsewhere: sign in first, go to `rd` (already `two_factor`), or enrol.
    Redirect(Response),
}

/// The signed-in session decides: none (or an ended one) → the login page, keeping `rd`;
/// `two_factor` already → `rd`; a user without any second factor → enrolment. Any session
/// level is taken ([`AnyLevel`]): a session that `two_factor.required` holds to enrolment is
/// sent there from here too.
async fn before_second_factor(
    state: &AppState,
    me: Result<AnyLevel, ApiError>,
    rd: &str,
) -> HtmlResult<Before> {
    let me = match me {
        Ok(AnyLevel(me)) => me,
        Err(ApiError::Unauthenticated) => {
            return Ok(Before::Redirect(see_other(&portal_step("/login", rd))))
        }
        Err(e) => return Err(e.into()),
    };
    if me.session.record().level >= AuthLevel::TwoFactor {
        return Ok(Before::Redirect(see_other(&after_login(state, rd))));
    }
    if !state.auth.factors_of(me.user.id).await?.any() {
        return Ok(Before::Redirect(see_other(ENROL)));
    }
    Ok(Before::Ask(me))
}

pub(super) async fn second_factor_form(
    State(state): State<AppState>,
    me: Result<AnyLevel, ApiError>,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> HtmlResult<Response> {
    let Query(q) = query.map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    let rd = q.rd.or(q.next).unwrap_or_default();
    match before_second_factor(&state, me, &rd).await? {
        Before::Redirect(res) => Ok(res),
        Before::Ask(me) => {
            render_second_factor(&state, &me, StatusCode::OK, &rd, false, None).await
        }
    }
}

pub(super) async fn second_factor_submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    me: Result<AnyLevel, ApiError>,
    form: Result<FormBody<SecondFactorForm>, ApiError>,
) -> HtmlResult<Response> {
    let FormBody(form) = form?;
    let rd = form.rd.as_deref().unwrap_or("");
    let me = match before_second_factor(&state, me, rd).await? {
        Before::Redirect(res) => return Ok(res),
        Before::Ask(me) => me,
    };
    let kind = match form.kind.as_deref() {
        None | Some("" | "totp") => FactorKind::Totp,
        Some("recovery") => FactorKind::Recovery,
        Some(_) => return Err(ApiError::BadRequest("kind must be totp or recovery".into()).into()),
    };
    let recovery = kind == FactorKind::Recovery;
    // The session-bound token: a page of this session, not another site, posted the code.
    if check_form_token(&me.session, &form.csrf_token).is_err() {
        let msg = "This form expired. Please enter a new code.";
        return render_second_factor(&state, &me, StatusCode::FORBIDDEN, rd, recovery, Some(msg))
            .await;
    }
    let verified = state.auth.verify_second_factor(
        &me.session,
        &me.user,
        kind,
        &form.code,
        &client,
        state.auth.device_cookie(&headers),
    );
    match verified.await {
        Ok(raised) => {
            // The session was rotated: the old cookie is dead, the new one is set here.
            let mut res = see_other(&after_login(&state, rd));
            let cookie = state.sessions.session_cookie(&raised.token, &raised.record);
            res.headers_mut().extend(cookie_headers(cookie));
            Ok(res)
        }
        Err(AuthError::Throttled { retry_after }) => {
            let msg = format!("Too many failed attempts. Try again in {retry_after} seconds.");
            let status = StatusCode::TOO_MANY_REQUESTS;
            let mut res =
                render_second_factor(&state, &me, status, rd, recovery, Some(&msg)).await?;
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            Ok(res)
        }
        Err(e @ (AuthError::InvalidSecondFactor | AuthError::Invalid(_))) => {
            let msg = match &e {
                AuthError::InvalidSecondFactor if recovery => {
                    "Invalid or already used recovery code.".to_owned()
                }
                AuthError::InvalidSecondFactor => {
                    "Invalid code. Enter the current code from your authenticator app.".to_owned()
                }
                other => sentence(&other.to_string()),
            };
            let status = ApiError::from(e).status();
            render_second_factor(&state, &me, status, rd, recovery, Some(&msg)).await
        }
        // Ended meanwhile (revoked, or raised by another tab): sign in again.
        Err(AuthError::SessionEnded) => Ok(see_other(&portal_step("/login", rd))),
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
