//! The JSON error body the library's own refusals carry, the same as the server's
//! (docs/reference/errors.md, "The error body").

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(serde::Serialize)]
struct Body {
    code: &'static str,
    message: &'static str,
}

/// `{"code": …, "message": …}` with `Cache-Control: no-store`: a refusal depends on the
/// request's cookies and headers, so no cache may keep it for another request.
pub(crate) fn json_error(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
) -> Response {
    let mut res = (status, Json(Body { code, message })).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
