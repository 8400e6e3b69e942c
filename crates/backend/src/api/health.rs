//! Liveness and readiness probes.

use std::time::Duration;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::Problem;

use super::{ApiError, AppState, extract::Json};
use crate::store::Store;

/// How long `/readyz` waits for the database.
const DB_PING_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(check_health)).routes(routes!(check_readiness))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HealthResponse {
    #[schema(example = "ok")]
    status: &'static str,
    version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReadinessResponse {
    #[schema(example = "ok")]
    status: &'static str,
    #[schema(example = "ok")]
    database: &'static str,
}

/// Liveness: the process is up and serving.
/// The liveness probe's path.
pub(super) const LIVENESS_PATH: &str = "/healthz";

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = HealthResponse)))]
async fn check_health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok", version: env!("CARGO_PKG_VERSION") })
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = ReadinessResponse),
        (status = 503, description = "The database does not answer (`database_unavailable`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn check_readiness(State(store): State<Store>) -> Result<Json<ReadinessResponse>, ApiError> {
    store.ping(DB_PING_TIMEOUT).await.map_err(|err| {
        tracing::warn!(error = %err, "readiness check failed");
        ApiError::Unavailable {
            code: "database_unavailable",
            detail: "the database does not answer".into(),
        }
    })?;
    Ok(Json(ReadinessResponse { status: "ok", database: "ok" }))
}
