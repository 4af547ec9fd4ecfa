//! The HTTP surface: one module per area, and the guards every request passes.

mod account;
mod admin;
mod api;
mod authz;
mod extract;
mod guards;
mod health;
mod html;
mod login;
mod metrics;
mod openapi;
mod passkeys;
mod request_id;
mod schema;
mod two_factor;
mod views;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use tower::{Service, ServiceBuilder};

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (docs/reference/security.md, "Request limits").
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The whole application: the router inside the layers every request passes (outermost
/// first): the request id (carried to every log line of the request), the session layer,
/// the guard (limits, the body limit, CSRF, security headers).
///
/// The layers wrap the router once rather than each route (`Router::layer`): a per-route
/// layer boxes and clones every layered route on every request (docs/performance.md, "Layers
/// around the whole router").
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    ServiceBuilder::new()
        .layer(request_id::RequestIdLayer::new(state.clone()))
        .layer(state.sessions.layer())
        .layer(guards::GuardLayer::new(state.clone()))
        .service(router(state))
}

/// The metrics listener's app (`metrics_listen`): `GET /metrics` only. The public listener
/// never serves metrics (its `/metrics` is a `404` like any unknown path).
pub(crate) fn metrics_app(state: AppState) -> Router {
    metrics::router(state)
}

/// The routes, without the layers of [`app`].
fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(account::account))
        .route("/sessions/revoke-others", post(account::revoke_others))
        .route("/sessions/{id}/revoke", post(account::revoke_one))
        .route("/password", post(account::change_password))
        .route("/2fa/totp/setup", post(account::totp_setup))
        .route("/2fa/totp/confirm", post(account::totp_confirm))
        .route("/2fa/totp/remove", post(account::totp_remove))
        .route("/2fa/passkeys/{id}/remove", post(account::passkey_remove))
        .route(
            "/2fa/recovery/regenerate",
            post(account::regenerate_recovery),
        )
        .route("/admin", get(admin::index))
        .route("/admin/users", post(admin::create_user))
        .route("/admin/users/{name}/{action}", post(admin::user_action))
        .route("/admin/sessions/revoke-all", post(admin::revoke_all))
        .route("/admin/sessions/{id}/revoke", post(admin::revoke_session))
        .route("/login", get(login::login_form).post(login::login_submit))
        .route(
            "/login/2fa",
            get(login::second_factor_form).post(login::second_factor_submit),
        )
        .route("/logout", post(login::logout))
        .route("/static/style.css", get(html::style))
        .route("/static/passkeys.js", get(html::passkeys_script))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route(
            "/api/sessions",
            get(api::sessions).delete(api::revoke_sessions),
        )
        .route("/api/sessions/{id}", delete(api::revoke_session))
        .route("/api/password", post(api::password))
        .route("/api/2fa", get(two_factor::summary))
        .route("/api/2fa/totp/setup", post(two_factor::totp_setup))
        .route("/api/2fa/totp/confirm", post(two_factor::totp_confirm))
        .route(
            "/api/2fa/totp",
            post(two_factor::verify_totp).delete(two_factor::totp_remove),
        )
        .route("/api/2fa/recovery", post(two_factor::verify_recovery))
        .route("/api/2fa/recovery/regenerate", post(two_factor::regenerate))
        .route("/api/2fa/passkeys", get(passkeys::list))
        .route(
            "/api/2fa/passkeys/register/start",
            post(passkeys::register_start),
        )
        .route(
            "/api/2fa/passkeys/register/finish",
            post(passkeys::register_finish),
        )
        .route("/api/2fa/passkeys/{id}", delete(passkeys::remove))
        .route(
            "/api/2fa/passkey/start",
            post(passkeys::second_factor_start),
        )
        .route("/api/2fa/passkey", post(passkeys::second_factor_finish))
        .route("/api/login/passkey/start", post(passkeys::login_start))
        .route("/api/login/passkey", post(passkeys::login_finish))
        .route("/api/authz/forward-auth", get(authz::forward_auth))
        .route("/api/verify", get(authz::forward_auth))
        .route("/api/authz/auth-request", get(authz::auth_request))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
