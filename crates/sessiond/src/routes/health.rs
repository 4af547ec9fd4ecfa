//! `/healthz` (the process answers) and `/readyz` (its stores answer).

use axum::extract::State;
use axum::Json;
use sessiond_core::UserId;

use super::schema::ErrorBody;
use crate::error::ApiResult;
use crate::state::AppState;

/// No store access, no session work: the floor the benchmark compares verification against.
///
/// The process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Ready {
    /// `ready`.
    status: &'static str,
}

/// Ready when both the session store and the user store answer (a lookup of a user id that
/// never exists is the user store's ping).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "The session store and the user store both answer.", body = Ready),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "`1`"))),
    ),
)]
pub(super) async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Ready>> {
    state.sessions.store().ping().await?;
    state.users.user_by_id(UserId(0)).await?;
    Ok(Json(Ready { status: "ready" }))
}
