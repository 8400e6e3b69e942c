//! Commands to a deployment's machines: `POST /infrastructure/{id}/command`, the command history,
//! and cancel. The waiting form of the POST lasts as long as its command, so the router exempts
//! it from the request time limit (see `router::UNTIMED_ROUTES`); the command itself is bounded
//! by `timeout_s` per machine.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use wire::{
    Problem,
    commands::{CommandPage, CommandRequest, CommandSummary, CommandView, ResultView},
};

use super::{ApiError, AppState, Json, Path, Query, infrastructure::page_limit};
use crate::{
    domain::ResultStatus,
    services::{auth::AuthUser, commands::CommandService},
    store::{CommandResultRow, CommandRow},
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_command))
        .routes(routes!(list_commands))
        .routes(routes!(get_command))
        .routes(routes!(cancel_command))
}

/// The path of the waiting POST, which the request time limit must not cut.
pub(super) const SEND_COMMAND_PATH: &str = "/infrastructure/{id}/command";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SendParams {
    /// `false`: answer 202 at once with the command (status `running`); fetch it later.
    /// Default `true`: answer when every machine has finished.
    wait: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// Page size, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Only commands older than this id (the previous page's `next_before`).
    before: Option<Uuid>,
}

impl From<CommandResultRow> for ResultView {
    fn from(row: CommandResultRow) -> Self {
        Self {
            status: row.status(),
            machine: row.machine,
            address: row.address,
            exit_code: row.exit_code,
            signal: row.signal,
            stdout: row.stdout,
            stderr: row.stderr,
            truncated: row.truncated,
            duration_ms: row.duration_ms,
            error: row.error,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

/// A command's view from its row and its machines' statuses (the list shows no results).
fn command_view(
    row: CommandRow,
    statuses: Vec<ResultStatus>,
    results: Option<Vec<ResultView>>,
) -> CommandView {
    CommandView {
        id: row.id,
        deployment_id: row.deployment_id,
        status: row.status(),
        request: row.request.0,
        created_at: row.created_at,
        finished_at: row.finished_at,
        cancel_requested_at: row.cancel_requested_at,
        summary: CommandSummary::of(statuses),
        results,
    }
}

/// A command's view with every machine's result.
fn with_results(row: CommandRow, results: Vec<CommandResultRow>) -> CommandView {
    let statuses = results.iter().map(CommandResultRow::status).collect();
    command_view(row, statuses, Some(results.into_iter().map(Into::into).collect()))
}
/// Run a command on a ready deployment's machines.
///
/// The command and a pending result per machine are stored before anything is sent. At most
/// `max_concurrency` machines run it at once; once `max_errors` machines have not succeeded, no
/// further machine is started (those are `skipped`). By default the call answers when every
/// machine has finished (it is exempt from the request time limit), with HTTP 200 even when
/// machines failed: each result's `status` says how it went, and the command's `status` is rolled
/// up from them. With `wait=false` it answers 202 at once. A client that hangs up does not stop
/// the command; cancel it instead.
#[utoipa::path(post, path = "/infrastructure/{id}/command", tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), SendParams),
    request_body = CommandRequest,
    responses(
        (status = 200, description = "Every machine finished", body = CommandView),
        (status = 202, description = "Started (`wait=false`)", body = CommandView),
        (status = 400, description = "Malformed JSON or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`deployment_not_ready`: the deployment is not `ready`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad field, or machines the deployment does not have", body = Problem, content_type = "application/problem+json"),
    ))]
async fn send_command(
    State(commands): State<CommandService>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(params): Query<SendParams>,
    Json(request): Json<CommandRequest>,
) -> Result<Response, ApiError> {
    let started = commands.start(user.id, id, request).await?;
    let command_id = started.command.id;
    if params.wait == Some(false) {
        let view = with_results(started.command.clone(), started.results.clone());
        let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
        if let Ok(location) =
            HeaderValue::try_from(format!("/infrastructure/{id}/commands/{command_id}"))
        {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Ok(response);
    }
    started.finished().await;
    let (command, results) = commands.get(user.id, id, command_id).await?;
    Ok(Json(with_results(command, results)).into_response())
}

/// A deployment's commands, newest first, with their summaries (without per-machine output).
#[utoipa::path(get, path = "/infrastructure/{id}/commands", tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), PageParams),
    responses(
        (status = 200, description = "A page of commands", body = CommandPage),
        (status = 400, description = "A bad query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such deployment of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_commands(
    State(commands): State<CommandService>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(params): Query<PageParams>,
) -> Result<Json<CommandPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let rows = commands.list(user.id, id, params.before, limit).await?;
    let next_before =
        (rows.len() == limit as usize).then(|| rows.last().map(|(c, _)| c.id)).flatten();
    let items = rows.into_iter().map(|(row, statuses)| command_view(row, statuses, None)).collect();
    Ok(Json(CommandPage { items, next_before }))
}

/// One command with every machine's result.
#[utoipa::path(get, path = "/infrastructure/{id}/commands/{command_id}", tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("command_id" = Uuid, Path, description = "Command id")),
    responses(
        (status = 200, description = "The command", body = CommandView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command of yours", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_command(
    State(commands): State<CommandService>,
    user: AuthUser,
    Path((id, command_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<CommandView>, ApiError> {
    let (command, results) = commands.get(user.id, id, command_id).await?;
    Ok(Json(with_results(command, results)))
}

/// Cancel a running command.
///
/// Machines not started yet end `cancelled`; the backend hangs up on machines running it, and
/// their agents kill the command's whole process group (those end `cancelled` too). Answers with
/// the command as it is right after the request; poll it for the final state.
#[utoipa::path(post, path = "/infrastructure/{id}/commands/{command_id}/cancel", tag = "commands",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Deployment id"), ("command_id" = Uuid, Path, description = "Command id")),
    responses(
        (status = 202, description = "Cancellation requested", body = CommandView),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such command of yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`command_not_running`: it already finished", body = Problem, content_type = "application/problem+json"),
    ))]
async fn cancel_command(
    State(commands): State<CommandService>,
    user: AuthUser,
    Path((id, command_id)): Path<(Uuid, Uuid)>,
) -> Result<impl IntoResponse, ApiError> {
    let (command, results) = commands.cancel(user.id, id, command_id).await?;
    Ok((StatusCode::ACCEPTED, Json(with_results(command, results))))
}
