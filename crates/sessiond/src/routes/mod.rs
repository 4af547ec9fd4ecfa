//! The HTTP surface: one module per area, and the guards every request passes.

mod account;
mod admin;
mod api;
mod authz;
mod extract;
mod guards;
mod health;
mod metrics;
mod pages;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

pub use api::rfc3339;
pub use authz::IdentityCache;
pub use extract::{ClientInfo, CurrentUser};

/// Largest request body accepted (SPEC §6).
pub const MAX_BODY: usize = 64 * 1024;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(account::account))
        .route("/sessions/revoke-others", post(account::revoke_others))
        .route("/sessions/{id}/revoke", post(account::revoke_one))
        .route("/password", post(account::change_password))
        .route("/admin", get(admin::index))
        .route("/admin/users", post(admin::create_user))
        .route("/admin/users/{name}/{action}", post(admin::user_action))
        .route("/admin/sessions/revoke-all", post(admin::revoke_all))
        .route("/admin/sessions/{id}/revoke", post(admin::revoke_session))
        .route("/login", get(pages::login_form).post(pages::login_submit))
        .route("/logout", post(pages::logout))
        .route("/static/style.css", get(pages::style))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route(
            "/api/sessions",
            get(api::sessions).delete(api::revoke_sessions),
        )
        .route("/api/sessions/{id}", delete(api::revoke_session))
        .route("/api/password", post(api::password))
        .route("/api/authz/forward-auth", get(authz::forward_auth))
        .route("/api/verify", get(authz::forward_auth))
        .route("/api/authz/auth-request", get(authz::auth_request))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), guards::guard))
        .layer(state.sessions.layer())
        .with_state(state)
}
