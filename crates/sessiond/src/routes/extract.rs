//! Extractors that turn every malformed input into an [`ApiError`] (a 4xx with the JSON
//! body), never axum's plain-text rejections.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sessiond_axum::{ActiveSession, MaybeSession};

pub(crate) use crate::accounts::CurrentUser;
use crate::error::ApiError;
use crate::forward_auth::client_ip;
use crate::state::AppState;
pub(crate) use sessiond_axum::ClientInfo;

/// A JSON body (`Content-Type: application/json` required).
#[derive(Debug)]
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::UnsupportedMediaType("expected application/json"))
            }
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge),
            Err(r) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                r.body_text()
            ))),
        }
    }
}

/// A form body (`application/x-www-form-urlencoded` required).
#[derive(Debug)]
pub(super) struct FormBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for FormBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(Self(v)),
            Err(FormRejection::InvalidFormContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "expected application/x-www-form-urlencoded",
            )),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::PayloadTooLarge),
            Err(r) => Err(ApiError::BadRequest(format!(
                "malformed form: {}",
                r.body_text()
            ))),
        }
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The socket's peer, or what our trusted proxies say the client is
        // (docs/reference/security.md, "Proxies and the client address").
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| client_ip(&state.config, a.ip(), &parts.headers).to_string());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self { ip, user_agent })
    }
}

/// The session the request presented, if valid (store errors fail closed).
#[derive(Debug, Clone)]
pub(super) struct Presented(pub Option<ActiveSession>);

impl FromRequestParts<AppState> for Presented {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let MaybeSession(s) = MaybeSession::from_request_parts(parts, state).await?;
        Ok(Self(s))
    }
}

/// A valid session of an enabled user, or `401 unauthenticated`; and, when
/// `two_factor.required` limits the session to enrolment, `401
/// second_factor_enrolment_required`. Every route that takes a `CurrentUser` is closed to such
/// a session; the few it may use (reading itself, enrolling, the account page that shows the
/// enrolment) take [`AnyLevel`] instead, so a route added later is closed by default.
impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AnyLevel(me) = AnyLevel::from_request_parts(parts, state).await?;
        if me.must_enrol(state).await? {
            return Err(ApiError::EnrolmentRequired);
        }
        Ok(me)
    }
}

/// A valid session of an enabled user, or `401 unauthenticated`, whatever
/// `two_factor.required` says (see [`CurrentUser`]'s extractor).
#[derive(Debug, Clone)]
pub(super) struct AnyLevel(pub CurrentUser);

impl FromRequestParts<AppState> for AnyLevel {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Presented(session) = Presented::from_request_parts(parts, state).await?;
        let session = session.ok_or(ApiError::Unauthenticated)?;
        CurrentUser::resolve(state, session)
            .await?
            .map(Self)
            .ok_or(ApiError::Unauthenticated)
    }
}
