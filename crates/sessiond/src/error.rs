//! The server's one error type. Every HTTP status the app chooses is chosen here, in
//! [`ApiError::status`]; causes go to the log, never to the client.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sessiond_axum::SessionRejection;
use sessiond_core::StoreError;

use sessiond_axum::auth::{AuthError, ChangeError};
use sessiond_axum::HashError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("authentication required")]
    Unauthenticated,
    /// Forward auth without a session: `302` to the login page for a browser navigation
    /// through forward-auth; `401` (with `Location` for a browser, for nginx to turn into a
    /// redirect) otherwise.
    #[error("authentication required")]
    LoginRequired {
        location: Option<HeaderValue>,
        redirect: bool,
    },
    #[error("forbidden")]
    Forbidden,
    #[error("cross-site request rejected")]
    CsrfRejected,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(&'static str),
    #[error("request URI too long")]
    UriTooLong,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("too many failed attempts; try again in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("server busy, try again shortly")]
    Overloaded { retry_after: u64 },
    /// Shared: a failed verification is kept for every extractor of the request.
    #[error("session store unavailable")]
    StoreUnavailable(#[source] Arc<StoreError>),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// The change conflicts with the account's current state (a password reset that landed
    /// meanwhile, the last enabled admin); the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// A TOTP code or recovery code that is wrong or already used.
    #[error("invalid second factor")]
    InvalidSecondFactor,
    /// A one-factor session of a user who has a second factor, for something that needs
    /// `two_factor` (managing factors, the admin pages): verify a factor first.
    #[error("this needs a second factor: verify one first")]
    SecondFactorRequired,
    /// `two_factor.required` applies to this user, who has no second factor yet: until one
    /// is enrolled, the session may only enrol one, read itself and log out.
    #[error("this account must enrol a second factor first (POST /api/2fa/totp/setup, or the account page)")]
    EnrolmentRequired,
    /// Second factors cannot be checked here: not configured (no encryption key), or the key
    /// does not open the stored secrets. The message says which and what to do.
    #[error("{0}")]
    SecondFactorUnavailable(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::InvalidCredentials | Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::LoginRequired { redirect: true, .. } => StatusCode::FOUND,
            Self::LoginRequired {
                redirect: false, ..
            } => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::CsrfRejected => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded { .. } | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::InvalidSecondFactor | Self::SecondFactorRequired | Self::EnrolmentRequired => {
                StatusCode::UNAUTHORIZED
            }
            Self::SecondFactorUnavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::Unauthenticated | Self::LoginRequired { .. } => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::CsrfRejected => "csrf_rejected",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest(_) => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::Throttled { .. } => "throttled",
            Self::Overloaded { .. } => "overloaded",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal",
            Self::Conflict(_) => "conflict",
            Self::InvalidSecondFactor => "invalid_second_factor",
            Self::SecondFactorRequired => "second_factor_required",
            Self::EnrolmentRequired => "second_factor_enrolment_required",
            Self::SecondFactorUnavailable(_) => "second_factor_unavailable",
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Overloaded { retry_after } | Self::Throttled { retry_after } => {
                Some(*retry_after)
            }
            Self::StoreUnavailable(_) => Some(1),
            _ => None,
        }
    }

    fn log(&self) {
        match self {
            Self::StoreUnavailable(e) => {
                tracing::error!(error = %e, cause = ?std::error::Error::source(&**e), "store unavailable")
            }
            Self::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::StoreUnavailable(Arc::new(e))
    }
}

impl From<HashError> for ApiError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded { retry_after: 1 },
            HashError::Failed(msg) => Self::Internal(anyhow::anyhow!(msg)),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => Self::InvalidCredentials,
            AuthError::Invalid(msg) => Self::BadRequest(msg),
            AuthError::SessionEnded => Self::Unauthenticated,
            AuthError::Conflict(msg) => Self::Conflict(msg),
            AuthError::Throttled { retry_after } => Self::Throttled { retry_after },
            AuthError::Hash(e) => e.into(),
            AuthError::Store(e) => e.into(),
            AuthError::Internal(msg) => Self::Internal(anyhow::anyhow!(msg)),
            AuthError::InvalidSecondFactor => Self::InvalidSecondFactor,
            AuthError::SecondFactorRequired => Self::SecondFactorRequired,
            AuthError::SecondFactorUnavailable(msg) => Self::SecondFactorUnavailable(msg),
            // A refusal added to the library later: a bug until it is mapped here.
            other => Self::Internal(anyhow::anyhow!(other.to_string())),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Store(e) => e.into(),
            e @ ChangeError::LastAdmin(_) => Self::Conflict(e.to_string()),
        }
    }
}

impl From<SessionRejection> for ApiError {
    fn from(r: SessionRejection) -> Self {
        match r {
            SessionRejection::Unauthenticated => Self::Unauthenticated,
            // The store's own error: logged here, once, with its cause (`log`).
            SessionRejection::StoreUnavailable(e) => Self::StoreUnavailable(e),
            _ => Self::Internal(anyhow::anyhow!("session extractor: {r:?}")),
        }
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let message = match &self {
            // Opaque: the cause is in the log only.
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let mut res = (
            self.status(),
            Json(Body {
                code: self.code(),
                message,
            }),
        )
            .into_response();
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Self::LoginRequired {
            location: Some(l), ..
        } = self
        {
            h.insert(header::LOCATION, l);
        }
        res
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// An [`ApiError`] on a browser route: the same status and message as an HTML page, except
/// that "not logged in" sends the browser to the login form. The second field is the page to
/// come back to (a path with its query, this server's), for the redirects that have one.
#[derive(Debug)]
pub(crate) struct HtmlError(pub ApiError, pub Option<String>);

impl<E: Into<ApiError>> From<E> for HtmlError {
    fn from(e: E) -> Self {
        Self(e.into(), None)
    }
}

impl IntoResponse for HtmlError {
    fn into_response(self) -> Response {
        let HtmlError(e, back) = self;
        // A browser is sent where it can do what is missing: log in, verify a second factor
        // (the portal's second-factor step), or enrol one (the account page).
        let to = match e {
            ApiError::Unauthenticated => Some("/login"),
            ApiError::SecondFactorRequired => Some("/login/2fa"),
            ApiError::EnrolmentRequired => Some("/#two-factor"),
            _ => None,
        };
        if let Some(to) = to {
            let location = match back.filter(|_| !to.contains('#')) {
                // `rd` percent-encoded whole: it stays one query value.
                Some(rd) => {
                    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
                    HeaderValue::try_from(format!("{to}?rd={rd}"))
                        .unwrap_or_else(|_| HeaderValue::from_static(to))
                }
                None => HeaderValue::from_static(to),
            };
            let mut res = StatusCode::SEE_OTHER.into_response();
            res.headers_mut().insert(header::LOCATION, location);
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return res;
        }
        e.log();
        let status = e.status();
        let message = match &e {
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        let ctx = serde_json::json!({ "status": status.as_u16(), "message": message });
        let mut res = match crate::templates::templates().render("error.html", ctx) {
            Ok(html) => (status, axum::response::Html(html)).into_response(),
            Err(err) => {
                tracing::error!(error = %err, "error page failed to render");
                (status, message).into_response()
            }
        };
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = e.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

pub(crate) type HtmlResult<T> = Result<T, HtmlError>;
