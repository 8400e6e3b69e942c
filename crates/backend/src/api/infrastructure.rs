//! The plan's `InfrastructureController`: `/provision`, `/providers` and `/infrastructure/*`.
//! Handlers validate the HTTP shape and leave the rest to the deployment service; everything
//! about another user's deployment is a 404.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use wire::{
    Problem,
    deployments::{
        DeploymentPage, DeploymentView, MachineView, PlanSummary, ProviderView, ProvidersResponse,
        ProvisionBody, ProvisionResponse, RunDetail, RunPage, RunView, UpdateBody, UpdateResponse,
        VariableView,
    },
};

use super::{ApiError, AppState, Json, Path, Query};
use crate::{
    domain::{DeploymentStatus, MachineStatus},
    services::{
        auth::AuthUser,
        deployments::{DeploymentService, ProvisionRequest},
        events::EventBus,
    },
    store::{DeploymentQuery, DeploymentRow, RunEventRow, RunRow},
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(provision))
        .routes(routes!(list_deployments))
        .routes(routes!(get_deployment, update_deployment, destroy_deployment))
        .routes(routes!(retry_deployment))
        .routes(routes!(replace_machine))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(stream_events))
}

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

// ---- wire shapes -------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ProvisionParams {
    /// Plan in a throwaway workspace and return what would change; create nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// Only deployments in this status.
    status: Option<DeploymentStatus>,
    /// Only deployments of this name.
    name: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Only items older than this id (the previous page's `next_before`).
    before: Option<Uuid>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Only items older than this id (the previous page's `next_before`).
    before: Option<Uuid>,
}

/// A page size from `?limit=` (default 20, at most 100); shared by every paginated listing.
pub(super) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        limit @ 1..=MAX_PAGE => Ok(limit),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        )),
    }
}

// ---- handlers ----------------------------------------------------------------------------

/// The provider modules and their variables.
#[utoipa::path(get, path = "/providers", tag = "infrastructure",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every module the backend found", body = ProvidersResponse),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_providers(
    State(deployments): State<Arc<DeploymentService>>,
    _user: AuthUser,
) -> Json<ProvidersResponse> {
    let providers = deployments
        .catalog()
        .modules()
        .map(|module| ProviderView {
            name: module.name.clone(),
            variables: module
                .variables
                .values()
                .map(|variable| VariableView {
                    name: variable.name.clone(),
                    ty: variable.ty.to_string(),
                    default: variable.default.clone(),
                    description: variable.description.clone(),
                    sensitive: variable.sensitive,
                    nullable: variable.nullable,
                    required: variable.required(),
                    backend_filled: variable.backend_filled(),
                })
                .collect(),
            outputs: module.outputs.keys().cloned().collect(),
        })
        .collect();
    Json(ProvidersResponse { providers })
}

/// Provision a deployment (or, with `dry_run=true`, plan one).
///
/// Everything is validated before anything runs. The deployment and its queued `apply` run are
/// created in one transaction; follow the run with `GET /infrastructure/{id}/events`. With an
/// `Idempotency-Key`, repeating the same request returns the original deployment.
#[utoipa::path(post, path = "/provision", tag = "infrastructure",
    security(("bearer" = [])),
    params(ProvisionParams, ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the original deployment")),
    request_body = ProvisionBody,
    responses(
        (status = 202, description = "Created; the apply is queued", body = ProvisionResponse),
        (status = 200, description = "Dry run: what would change", body = PlanSummary),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`local_machine_limit`: the user's local machines would exceed `NIM_LOCAL_MAX_MACHINES_PER_USER`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (name, provider, variables), `idempotency_key_reused`, or `plan_failed` (dry run)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`terraform_unavailable`, or `agent_download_unavailable` (a cloud provider without `NIM_PUBLIC_URL` or a servable agent binary)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn provision(
    State(deployments): State<Arc<DeploymentService>>,
    State(timeouts): State<RequestTimeout>,
    user: AuthUser,
    Query(params): Query<ProvisionParams>,
    headers: HeaderMap,
    Json(body): Json<ProvisionBody>,
) -> Result<Response, ApiError> {
    let request =
        ProvisionRequest { name: body.name, provider: body.provider, variables: body.variables };
    if params.dry_run {
        let summary = deployments.dry_run(request, timeouts.dry_run_deadline()).await?;
        return Ok(Json(summary).into_response());
    }
    let key = idempotency_key(&headers)?;
    let (deployment, run, replayed) = deployments.provision(user.id, request, key).await?;
    Ok(mark_replayed(queued(deployment, run).into_response(), replayed))
}

/// An `Idempotency-Key` replay says so in `Idempotent-Replayed: true`.
fn mark_replayed(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The request time limit, for work (dry runs) that must finish within it.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeout(pub Duration);

impl RequestTimeout {
    /// When a dry run must stop: a second before the request's limit, to leave time to answer.
    fn dry_run_deadline(self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.0.saturating_sub(Duration::from_secs(1))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
            ),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// The caller's deployments, newest first.
#[utoipa::path(get, path = "/infrastructure", tag = "infrastructure",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of deployments", body = DeploymentPage),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_deployments(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Json<DeploymentPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let query =
        DeploymentQuery { status: params.status, name: params.name, before: params.before, limit };
    let rows = deployments.list(user.id, &query).await?;
    let next_before = (rows.len() == limit as usize).then(|| rows.last().map(|d| d.id)).flatten();
    Ok(Json(DeploymentPage { items: rows.into_iter().map(Into::into).collect(), next_before }))
}

/// One deployment with its machines and latest run.
#[utoipa::path(get, path = "/infrastructure/{id}", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id")),
    responses(
        (status = 200, description = "The deployment", body = DeploymentView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_deployment(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<DeploymentView>, ApiError> {
    let detail = deployments.detail(user.id, id).await?;
    let machines: Vec<MachineView> = detail.machines.into_iter().map(Into::into).collect();
    let latest_run = detail.latest_run.map(Into::into);
    let degraded = machines.iter().any(|m| m.status == MachineStatus::Unreachable);
    let mut view = DeploymentView::from(detail.deployment);
    view.machines = Some(machines);
    view.latest_run = latest_run;
    view.degraded = Some(degraded);
    Ok(Json(view))
}

/// Destroy a deployment: queues a `destroy` run.
#[utoipa::path(delete, path = "/infrastructure/{id}", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "The destroy is queued", body = ProvisionResponse),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another run is active, or it is already destroyed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn destroy_deployment(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    let (deployment, run) = deployments.destroy(user.id, id).await?;
    Ok(queued(deployment, run))
}

/// Change a deployment's variables (scaling is a `machine_count` change), or with
/// `dry_run=true` plan the change.
///
/// The values given are merged over the deployment's (`null` resets one to the module's default)
/// and validated like a provision's; an `update` run is queued that applies them
/// (`ready|failed → updating → ready|failed`). On a scale, machines that stay are untouched; new
/// ones pass the readiness check; on a scale-down the highest-numbered machines go. Values equal
/// to the current ones answer 200 with no run. With an `Idempotency-Key`, repeating the same
/// request returns the original run.
#[utoipa::path(patch, path = "/infrastructure/{id}", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ProvisionParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the original run")),
    request_body = UpdateBody,
    responses(
        (status = 202, description = "The update is queued", body = UpdateResponse),
        (status = 200, description = "Nothing changes (`run` is null), or, for a dry run, what would change (a `PlanSummary`)", body = UpdateResponse),
        (status = 400, description = "Malformed JSON or `Idempotency-Key`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a run is queued or running, or it is destroyed; `local_machine_limit`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed` (variables), `idempotency_key_reused`, or `plan_failed` (dry run)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`terraform_unavailable` (dry run)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn update_deployment(
    State(deployments): State<Arc<DeploymentService>>,
    State(timeouts): State<RequestTimeout>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(params): Query<ProvisionParams>,
    headers: HeaderMap,
    Json(body): Json<UpdateBody>,
) -> Result<Response, ApiError> {
    if params.dry_run {
        let deadline = timeouts.dry_run_deadline();
        let summary = deployments.preview_update(user.id, id, body.variables, deadline).await?;
        return Ok(Json(summary).into_response());
    }
    let key = idempotency_key(&headers)?;
    let (deployment, run, replayed) = deployments.update(user.id, id, body.variables, key).await?;
    let status = match run {
        Some(_) => StatusCode::ACCEPTED,
        None => StatusCode::OK,
    };
    let body = UpdateResponse { deployment: deployment.into(), run: run.map(Into::into) };
    Ok(mark_replayed((status, Json(body)).into_response(), replayed))
}

/// Replace one machine: it is destroyed and created again, the others untouched.
///
/// Its resource (the `resource` of its machine) is planned with `terraform plan -replace`; the
/// new machine passes the readiness check with a new agent. Follow the run with
/// `GET /infrastructure/{id}/events`.
#[utoipa::path(post, path = "/infrastructure/{id}/machines/{name}/replace", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("name" = String, Path, description = "Machine name")),
    responses(
        (status = 202, description = "The replace is queued", body = ProvisionResponse),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours, or no such machine in it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: a run is queued or running, or it is destroyed", body = Problem, content_type = "application/problem+json"),
    ))]
async fn replace_machine(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path((id, name)): Path<(Uuid, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let (deployment, run) = deployments.replace(user.id, id, &name).await?;
    Ok(queued(deployment, run))
}

/// Retry a failed deployment: runs its last apply again from the state it has.
///
/// What the failed apply made stays; Terraform makes what is missing and the machines go
/// through the readiness check again. A failed first apply is retried as an `apply`, a failed
/// update or replace as an `update`. Follow the run with `GET /infrastructure/{id}/events`.
#[utoipa::path(post, path = "/infrastructure/{id}/retry", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "The apply is queued again", body = ProvisionResponse),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the deployment is not `failed`, its last run was a destroy, or another run was queued first", body = Problem, content_type = "application/problem+json"),
    ))]
async fn retry_deployment(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    let (deployment, run) = deployments.retry(user.id, id).await?;
    Ok(queued(deployment, run))
}

/// `202 {deployment, run}`: a run was queued.
fn queued(deployment: DeploymentRow, run: RunRow) -> impl IntoResponse {
    (
        StatusCode::ACCEPTED,
        Json(ProvisionResponse { deployment: deployment.into(), run: run.into() }),
    )
}

/// A deployment's runs, newest first.
#[utoipa::path(get, path = "/infrastructure/{id}/runs", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), PageParams),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_runs(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(params): Query<PageParams>,
) -> Result<Json<RunPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let rows = deployments.runs(user.id, id, params.before, limit).await?;
    let next_before = (rows.len() == limit as usize).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(RunPage { items: rows.into_iter().map(Into::into).collect(), next_before }))
}

/// One run with its stored log.
#[utoipa::path(get, path = "/infrastructure/{id}/runs/{run_id}", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("run_id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run and its events", body = RunDetail),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_run(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path((id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<RunDetail>, ApiError> {
    let (run, events) = deployments.run(user.id, id, run_id).await?;
    Ok(Json(RunDetail { run: run.into(), events: events.into_iter().map(Into::into).collect() }))
}

/// Cancel a queued or running run.
///
/// A queued run is cancelled at once; a running one gets SIGINT, a grace period, then SIGKILL.
/// Either way the deployment ends `failed` with the reason, and can still be destroyed.
#[utoipa::path(post, path = "/infrastructure/{id}/runs/{run_id}/cancel", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("run_id" = Uuid, Path, description = "Run id")),
    responses(
        (status = 202, description = "Cancelled, or cancellation requested", body = RunView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run already ended", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel_run(
    State(deployments): State<Arc<DeploymentService>>,
    user: AuthUser,
    Path((id, run_id)): Path<(Uuid, Uuid)>,
) -> Result<impl IntoResponse, ApiError> {
    let run = deployments.cancel(user.id, id, run_id).await?;
    Ok((StatusCode::ACCEPTED, Json(RunView::from(run))))
}

/// Live events of a deployment (Server-Sent Events).
///
/// First the latest run's stored events (or those after `Last-Event-ID`), then new ones as they
/// happen: `status`, `progress {done, total}`, `log {level, message, resource?}`,
/// `run_finished`. Each event's `id` resumes the stream after a reconnect.
#[utoipa::path(get, path = "/infrastructure/{id}/events", tag = "infrastructure",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn stream_events(
    State(deployments): State<Arc<DeploymentService>>,
    State(bus): State<EventBus>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = deployments.events(user.id, id).await?;
    let last_event_id = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(text) => Some(text.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event id")
        })?),
        None => None,
    };
    let events = feed.follow(last_event_id, bus).await?;
    let stream = events.map(|event| Ok(sse_event(event)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn sse_event(event: RunEventRow) -> Event {
    let mut data = match event.data.0 {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_owned(), other)]),
    };
    data.insert("run_id".into(), Value::String(event.run_id.to_string()));
    data.insert("at".into(), Value::String(event.at.to_rfc3339()));
    Event::default()
        .id(event.id.to_string())
        .event(event.kind)
        .data(Value::Object(data).to_string())
}
