//! The account page: who you are, your sessions with revoke buttons, "log out other
//! sessions", change password, second factors (TOTP enrolment with a QR code, recovery codes,
//! removal), logout.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sessiond_axum::auth::{AuthError, PasskeyInfo, PasswordChanged};
use sessiond_axum::csrf::form_token;
use sessiond_core::SessionId;

use super::extract::{AnyLevel, ClientInfo, CurrentUser, FormBody};
use super::html::{check_form_token, page, see_other, sentence, TokenForm};
use super::views::{cookie_headers, list_own, rfc3339, PageQuery, SessionListItem, UserView};
use crate::accounts::{self, NextStep};
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
    /// Second factors: what the user has and may do.
    two_factor: TwoFactorPart,
    /// A TOTP setup awaiting its confirmation code.
    setup: Option<SetupPart>,
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
    /// `one_factor` or `two_factor`.
    level: &'static str,
}

#[derive(Serialize)]
struct TwoFactorPart {
    /// The server can check second factors (it has an encryption key).
    available: bool,
    totp: bool,
    recovery_codes: u32,
    /// A one-factor session of a user with a factor: managing factors (and the admin pages)
    /// needs the second-factor step first.
    verify_first: bool,
    /// `two_factor.required` holds this session to enrolment: the page shows nothing else.
    must_enrol: bool,
    /// Passkeys are on (the public URL's host can be a relying party).
    passkeys_available: bool,
    /// The user's passkeys.
    passkeys: Vec<PasskeyInfo>,
}

/// The enrolment's second step: the secret as text and as a QR code, and the confirm form.
#[derive(Serialize)]
struct SetupPart {
    secret: String,
    uri: String,
    /// An inline SVG of `uri`, rendered here (no external service sees the secret).
    qr_svg: String,
}

impl SetupPart {
    fn new(secret: String, uri: String) -> Self {
        let qr_svg = qr_svg(&uri);
        Self {
            secret,
            uri,
            qr_svg,
        }
    }
}

/// `uri` as a QR code in SVG, for inline use (no XML declaration); empty if the text does not
/// fit in a QR code (the secret is shown as text anyway).
fn qr_svg(uri: &str) -> String {
    let Ok(code) = qrcode::QrCode::new(uri.as_bytes()) else {
        return String::new();
    };
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    match svg.find("<svg") {
        Some(i) => svg[i..].to_owned(),
        None => String::new(),
    }
}

/// Messages after a redirect, chosen from a fixed list (never echoed from the URL).
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "password" => Some("Password changed. Your other sessions were logged out."),
        "revoked" => Some("Session logged out."),
        "others" => Some("All your other sessions were logged out."),
        "totp_removed" => Some("Authenticator app removed. Your other sessions were logged out."),
        "passkey_removed" => Some("Passkey removed. Your other sessions were logged out."),
        "passkey_added" => Some("Passkey added. Your other sessions were logged out."),
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
    render_page(
        state,
        me,
        status,
        notice,
        error,
        &PageQuery::default(),
        None,
    )
    .await
}

async fn render_page(
    state: &AppState,
    me: &CurrentUser,
    status: StatusCode,
    notice: Option<&'static str>,
    error: Option<String>,
    q: &PageQuery,
    setup: Option<SetupPart>,
) -> HtmlResult<Response> {
    let rec = me.session.record();
    let (summary, next) = me.second_factor(state).await?;
    let must_enrol = next == Some(NextStep::Enrol);
    // A session held to enrolment sees only the enrolment (its other forms would be refused).
    let (sessions, next_page) = if must_enrol {
        (Vec::new(), None)
    } else {
        list_own(state, me, q).await?
    };
    let ctx = AccountPage {
        user: UserView::of(&me.user),
        session: ThisSession {
            created_at: rfc3339(rec.created_at),
            expires_at: rfc3339(state.sessions.policy().deadline(rec, rec.last_seen_at)),
            remember: rec.remember,
            level: rec.level.as_str(),
        },
        two_factor: TwoFactorPart {
            available: state.auth.second_factors().is_some(),
            totp: summary.totp,
            recovery_codes: summary.recovery_codes,
            verify_first: next == Some(NextStep::Verify),
            must_enrol,
            passkeys_available: state
                .auth
                .second_factors()
                .is_some_and(|f| f.passkeys_enabled()),
            passkeys: state.auth.passkeys_of(me.user.id).await?,
        },
        setup,
        sessions,
        next: next_page,
        csrf_token: form_token(&me.session),
        notice,
        error,
    };
    page(status, "account.html", ctx)
}

/// The account page. Open to a session held to enrolment by `two_factor.required`: it then
/// shows the enrolment alone.
pub(super) async fn account(
    State(state): State<AppState>,
    me: Result<AnyLevel, ApiError>,
    Query(q): Query<Done>,
    page: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> HtmlResult<Response> {
    let AnyLevel(me) = me?;
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let done = notice(q.done.as_deref());
    render_page(&state, &me, StatusCode::OK, done, None, &page, None).await
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

#[derive(Deserialize)]
pub(super) struct TotpSetupForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    password: String,
}

/// The enrolment's first step: the password again, then the page shows the new secret, its
/// QR code and the confirm form. Nothing changes for the user until the confirmation.
pub(super) async fn totp_setup(
    State(state): State<AppState>,
    client: ClientInfo,
    me: Result<AnyLevel, ApiError>,
    form: Result<FormBody<TotpSetupForm>, ApiError>,
) -> HtmlResult<Response> {
    let AnyLevel(me) = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    accounts::second_factors_configured(&state)?;
    match state
        .auth
        .totp_setup(&me.session, &me.user, form.password, &client)
        .await
    {
        Ok(setup) => {
            let part = SetupPart::new(setup.secret, setup.uri);
            let q = PageQuery::default();
            render_page(&state, &me, StatusCode::OK, None, None, &q, Some(part)).await
        }
        Err(AuthError::InvalidCredentials) => {
            let msg = Some("The password is not right.".to_owned());
            render(&state, &me, StatusCode::UNAUTHORIZED, None, msg).await
        }
        Err(e @ AuthError::Invalid(_)) => {
            let msg = Some(sentence(&e.to_string()));
            render(&state, &me, ApiError::from(e).status(), None, msg).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct TotpConfirmForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    code: String,
    /// The setup's secret and URI, posted back only to show them again after a mistyped
    /// code; the code is checked against the pending secret in the store, never these.
    #[serde(default)]
    secret: String,
    #[serde(default)]
    uri: String,
}

#[derive(Serialize)]
struct CodesPage<'a> {
    recovery_codes: &'a [String],
    /// Enrolment just finished (else: a new set replaced the old one).
    enrolled: bool,
}

/// The enrolment's second step: a code from the app. Success raises this session to
/// `two_factor` (a new cookie; the user's other sessions end) and shows the recovery codes,
/// once, on a page of their own (it carries no form: the raised session's form token belongs
/// to its new secret, and a link back to the account page renders it).
pub(super) async fn totp_confirm(
    State(state): State<AppState>,
    me: Result<AnyLevel, ApiError>,
    form: Result<FormBody<TotpConfirmForm>, ApiError>,
) -> HtmlResult<Response> {
    let AnyLevel(me) = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    accounts::second_factors_configured(&state)?;
    match state
        .auth
        .totp_confirm(&me.session, &me.user, &form.code)
        .await
    {
        Ok((raised, codes)) => {
            let ctx = CodesPage {
                recovery_codes: &codes.0,
                enrolled: true,
            };
            let mut res = page(StatusCode::OK, "recovery_codes.html", ctx)?;
            res.headers_mut().extend(cookie_headers(
                state.sessions.session_cookie(&raised.token, &raised.record),
            ));
            Ok(res)
        }
        Err(AuthError::InvalidSecondFactor) => {
            let msg = "That code is not right. Check the app's clock and try the next code.";
            let setup = shown_again(form.secret, form.uri);
            let (q, status) = (PageQuery::default(), ApiError::InvalidSecondFactor.status());
            render_page(&state, &me, status, None, Some(msg.into()), &q, setup).await
        }
        // No setup pending, or it expired: the page says to start again.
        Err(e @ AuthError::Invalid(_)) => {
            let e = ApiError::from(e);
            let msg = Some(sentence(&e.to_string()));
            render(&state, &me, e.status(), None, msg).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The setup posted back by the confirm form, if it looks like one (it is the user's own, sent
/// by their browser with the form token; it is only displayed).
fn shown_again(secret: String, uri: String) -> Option<SetupPart> {
    let plausible = !secret.is_empty()
        && secret.len() <= 128
        && secret.bytes().all(|b| b.is_ascii_alphanumeric())
        && uri.starts_with("otpauth://totp/")
        && uri.len() <= 1024;
    plausible.then(|| SetupPart::new(secret, uri))
}

/// A fresh set of recovery codes (the old set dies), shown once.
pub(super) async fn regenerate_recovery(
    State(state): State<AppState>,
    me: Result<CurrentUser, ApiError>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    accounts::second_factors_configured(&state)?;
    // The level first, so a one-factor session is sent to the second-factor step.
    state.auth.require_level_for(&me.session).await?;
    if !state.auth.factors_of(me.user.id).await?.any() {
        let msg = Some("Set up an authenticator app first: recovery codes come with it.".into());
        return render(&state, &me, StatusCode::BAD_REQUEST, None, msg).await;
    }
    let codes = state
        .auth
        .regenerate_recovery_codes(&me.session, &me.user)
        .await?;
    let ctx = CodesPage {
        recovery_codes: &codes.0,
        enrolled: false,
    };
    page(StatusCode::OK, "recovery_codes.html", ctx)
}

/// Removes one passkey (the user's other sessions end).
pub(super) async fn passkey_remove(
    State(state): State<AppState>,
    me: Result<CurrentUser, ApiError>,
    Path(id): Path<String>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    accounts::second_factors_configured(&state)?;
    let removed = accounts::remove_passkey(&state, &me, &id).await;
    after_removal(&state, &me, removed, "/?done=passkey_removed").await
}

/// The answer to a factor's removal: `done` when it was removed, `404` when there was none,
/// the page with the reason when the removal was refused.
async fn after_removal(
    state: &AppState,
    me: &CurrentUser,
    removed: Result<bool, AuthError>,
    done: &str,
) -> HtmlResult<Response> {
    match removed {
        Ok(true) => Ok(see_other(done)),
        Ok(false) => Err(ApiError::NotFound.into()),
        Err(e @ AuthError::Conflict(_)) => {
            let e = ApiError::from(e);
            let msg = Some(sentence(&e.to_string()));
            render(state, me, e.status(), None, msg).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Removes the authenticator app (the user's other sessions end).
pub(super) async fn totp_remove(
    State(state): State<AppState>,
    me: Result<CurrentUser, ApiError>,
    form: Result<FormBody<TokenForm>, ApiError>,
) -> HtmlResult<Response> {
    let me = me?;
    let FormBody(form) = form?;
    check_form_token(&me.session, &form.csrf_token)?;
    accounts::second_factors_configured(&state)?;
    let removed = accounts::remove_totp(&state, &me).await;
    after_removal(&state, &me, removed, "/?done=totp_removed").await
}
