//! Checks every request passes before (and headers every response gets after) the handlers.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// All request headers together.
pub const MAX_HEADERS: usize = 16 * 1024;
/// All `Cookie` headers together.
pub const MAX_COOKIE: usize = 8 * 1024;
/// Request target.
pub const MAX_URI: usize = 8 * 1024;

/// SPEC §6 limits: oversized header blocks, cookies and URIs are refused before any handler
/// parses them.
pub async fn limits(req: Request, next: Next) -> Response {
    // Measured without re-serialising the URI (this runs on every request).
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > MAX_URI {
        return ApiError::UriTooLong.into_response();
    }
    let mut total = 0;
    let mut cookies = 0;
    for (name, value) in req.headers() {
        let n = name.as_str().len() + value.len() + 4;
        total += n;
        if name == header::COOKIE {
            cookies += value.len();
        }
    }
    if total > MAX_HEADERS || cookies > MAX_COOKIE {
        return ApiError::HeadersTooLarge.into_response();
    }
    next.run(req).await
}

/// Refuses cross-site unsafe requests (SPEC §6) with `403 csrf_rejected`.
///
/// `Sec-Fetch-Site: cross-site` is the browser telling us outright; otherwise an `Origin`
/// that is not ours (or `null`, as sandboxed frames send). Requests with neither header come
/// from non-browser clients (curl, scripts), which carry no ambient cookies an attacker could
/// ride on, so they pass. This applies to login too: login CSRF (logging the victim into the
/// attacker's account) is refused the same way. Forms carry a token as well (see `pages`).
pub async fn csrf_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return next.run(req).await;
    }
    let h = req.headers();
    if h.get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return ApiError::CsrfRejected.into_response();
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        if !origin_allowed(&state, origin) {
            return ApiError::CsrfRejected.into_response();
        }
    }
    next.run(req).await
}

fn origin_allowed(state: &AppState, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origin == state.public_origin {
        return true;
    }
    // With SSO across subdomains, pages of sibling apps may post to us (e.g. a logout
    // button); they are ours by configuration. Only over https.
    let Some(domain) = state.config.cookie.domain() else {
        return false;
    };
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    url.scheme() == "https"
        && (host == domain || host.strip_suffix(domain).is_some_and(|p| p.ends_with('.')))
}

/// Headers every response carries. On HTML a strict CSP: no script at all, nothing framed.
/// With an https public URL, HSTS: browsers never try plain HTTP again (a downgrade would
/// expose the cookie's first request to a network attacker).
pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if state.config.public_url.scheme() == "https" {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if is_html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    res
}
