//! `/healthz` (the process answers) and `/readyz` (its stores answer).

use axum::extract::State;
use axum::Json;

use crate::error::ApiResult;
use crate::state::AppState;

/// No store access, no session work: the floor the benchmark compares verification against.
pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    state.sessions.store().ping().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}
