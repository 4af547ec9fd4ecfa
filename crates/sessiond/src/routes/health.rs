//! `/healthz` (the process answers) and `/readyz` (its stores answer).

use axum::extract::State;
use axum::Json;
use sessiond_core::UserId;

use crate::error::ApiResult;
use crate::state::AppState;

/// No store access, no session work: the floor the benchmark compares verification against.
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Ready when both the session store and the user store answer (a lookup of a user id that
/// never exists is the user store's ping).
pub(super) async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state.sessions.store().ping().await?;
    state.users.user_by_id(UserId(0)).await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}
