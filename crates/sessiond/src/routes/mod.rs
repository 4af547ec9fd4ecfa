//! The HTTP surface: one module per area, and the guards every request passes.

mod api;
mod extract;
mod guards;
mod health;
mod pages;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

pub use api::rfc3339;
pub use extract::{ClientInfo, CurrentUser};

/// Largest request body accepted (SPEC §6).
pub const MAX_BODY: usize = 64 * 1024;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::account))
        .route("/login", get(pages::login_form).post(pages::login_submit))
        .route("/logout", post(pages::logout))
        .route("/static/style.css", get(pages::style))
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guards::csrf_origin,
        ))
        .layer(middleware::from_fn(guards::limits))
        .layer(middleware::from_fn(guards::security_headers))
        .layer(state.sessions.layer())
        .with_state(state)
}
