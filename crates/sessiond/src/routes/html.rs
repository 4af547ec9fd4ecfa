//! What every HTML page shares: rendering a template, redirects after a form, the form
//! tokens, and the stylesheet.
//!
//! Forms carry a CSRF token on top of the origin check in `guards`, both from
//! `sessiond_axum::csrf`: before login its double-submit token (`login.rs`), after login its
//! `form_token`, derived from the session secret.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sessiond_axum::{csrf, ActiveSession};

use crate::error::{ApiError, HtmlResult};
use crate::templates::{templates, PASSKEYS_JS, STYLE_CSS};

/// Checks a posted form token against the session's (`csrf::check_form_token`).
pub(crate) fn check_form_token(session: &ActiveSession, sent: &str) -> Result<(), ApiError> {
    csrf::check_form_token(session, sent).map_err(|_| ApiError::CsrfRejected)
}

/// A form whose only field is the CSRF token.
#[derive(Deserialize)]
pub(crate) struct TokenForm {
    #[serde(default)]
    pub(crate) csrf_token: String,
}

pub(crate) fn see_other(location: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let value = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/"));
    res.headers_mut().insert(header::LOCATION, value);
    res
}

/// A rendered page, never cached (pages show session state).
pub(crate) fn page(status: StatusCode, name: &str, ctx: impl Serialize) -> HtmlResult<Response> {
    let html = templates()
        .render(name, ctx)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut res = (status, Html(html)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// "password must be …" → "Password must be …."
pub(crate) fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let first: String = c
        .next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default();
    format!("{first}.")
}

/// The pages' only script: the passkey ceremonies (`navigator.credentials`), which cannot be
/// done without one. Served from here so the pages' CSP allows scripts from `'self'` only.
pub(crate) async fn passkeys_script() -> Response {
    let mut res = (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PASSKEYS_JS,
    )
        .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

pub(crate) async fn style() -> Response {
    let mut res = (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
        .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}
