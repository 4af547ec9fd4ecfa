//! Extractors that turn every malformed input into an [`ApiError`] (a 4xx with the JSON
//! body), never axum's plain-text rejections.

use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use sessiond_axum::{ActiveSession, MaybeSession};
use sessiond_core::User;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body (`Content-Type: application/json` required).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

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
pub struct FormBody<T>(pub T);

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

/// Who is asking: client IP and user agent, kept with a new session for the session list.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The socket's peer, or what our trusted proxies say the client is
        // (docs/reference/security.md, "Proxies and the client address").
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| {
                crate::forwarded::client_ip(&state.config, a.ip(), &parts.headers).to_string()
            });
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
pub struct Presented(pub Option<ActiveSession>);

impl FromRequestParts<AppState> for Presented {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let MaybeSession(s) = MaybeSession::from_request_parts(parts, state).await?;
        Ok(Self(s))
    }
}

/// A valid session of an enabled user, or `401 unauthenticated`.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: std::sync::Arc<User>,
    pub session: ActiveSession,
}

impl CurrentUser {
    /// Resolves a verified session to its user. A session whose user is gone or disabled is
    /// no session (and is ended; disabling a user also revokes, this is the backstop).
    pub async fn resolve(
        state: &AppState,
        session: ActiveSession,
    ) -> Result<Option<Self>, ApiError> {
        let id = session.record().user_id;
        // Cached under the session cache's epoch, read before the store (see UserCache): the
        // one the session was verified under, read before the session record was.
        let epoch = session.cache_epoch();
        if let Some(user) = epoch.and_then(|e| state.user_cache.get(id, e)) {
            return Ok(Some(Self { user, session }));
        }
        match state.users.user_by_id(id).await? {
            Some(user) if !user.disabled => {
                let user = std::sync::Arc::new(user);
                if let Some(e) = epoch {
                    state.user_cache.put(e, std::sync::Arc::clone(&user));
                }
                Ok(Some(Self { user, session }))
            }
            _ => {
                state.sessions.end(&session).await?;
                Ok(None)
            }
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Presented(session) = Presented::from_request_parts(parts, state).await?;
        let session = session.ok_or(ApiError::Unauthenticated)?;
        Self::resolve(state, session)
            .await?
            .ok_or(ApiError::Unauthenticated)
    }
}
