//! What `/providers`, `/provision` and `/infrastructure/*` answer: deployments, their machines,
//! runs and run events. The backend builds these from its rows; `nimctl` reads them back.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, value::RawValue};
use uuid::Uuid;

use crate::status::{DeploymentStatus, MachineStatus, RunKind, RunStatus};

/// `GET /providers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvidersResponse {
    pub providers: Vec<ProviderView>,
}

/// A provider module and the form a frontend should render for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderView {
    pub name: String,
    pub variables: Vec<VariableView>,
    pub outputs: Vec<String>,
}

impl ProviderView {
    /// The variables a caller may give (not the ones the backend fills in).
    pub fn settable(&self) -> impl Iterator<Item = &VariableView> {
        self.variables.iter().filter(|v| !v.backend_filled)
    }
}

/// One variable a module declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariableView {
    pub name: String,
    /// The Terraform type constraint, e.g. `string`, `list(number)`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The declared default: any JSON value (string, number, boolean, list, object), or null
    /// when the variable has none.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub default: Option<Value>,
    pub description: Option<String>,
    /// Stored sealed and never shown back.
    pub sensitive: bool,
    pub nullable: bool,
    /// The caller must give it.
    pub required: bool,
    /// Set by the backend (token, certificates, ids); the caller cannot give it.
    pub backend_filled: bool,
}

/// `POST /provision`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    /// 1-63 lowercase letters, digits and hyphens, starting with a letter.
    #[cfg_attr(feature = "openapi", schema(example = "gpu-fleet"))]
    pub name: String,
    /// A module from `GET /providers`.
    #[cfg_attr(feature = "openapi", schema(example = "local"))]
    pub provider: String,
    /// Values for the module's variables.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object, example = json!({"machine_count": 3})))]
    pub variables: Map<String, Value>,
}

/// What `POST /provision` and `DELETE /infrastructure/{id}` answer: the deployment and the run
/// they queued.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvisionResponse {
    pub deployment: DeploymentView,
    pub run: RunView,
}

/// What a dry run would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanSummary {
    pub add: u64,
    pub change: u64,
    pub destroy: u64,
    pub resources: Vec<PlannedResource>,
}

/// One resource a dry run would touch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedResource {
    pub address: String,
    /// `create`, `update`, `delete`, `replace`, ...
    pub action: String,
}

/// A deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    pub id: Uuid,
    pub name: String,
    pub provider: String,
    pub status: DeploymentStatus,
    /// Why it failed, when it did.
    pub status_reason: Option<String>,
    /// The non-sensitive variables it was provisioned with: a JSON object, passed through from
    /// storage as it is (the backend never parses it to answer a read).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub variables: Box<RawValue>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Present on `GET /infrastructure/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<MachineView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_run: Option<RunView>,
    /// Some machines' agents did not answer the last health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<bool>,
}

/// One machine of a deployment, as its module's `machines` output and the health checker
/// describe it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MachineView {
    pub name: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub agent_port: Option<i64>,
    /// Its Terraform resource address (what `…/machines/{name}/replace` replaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub status: MachineStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// The agent's `/v1/info` at its last health check.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub info: Option<Value>,
}

/// A Terraform run (`apply`, `update`, `replace` or `destroy`) of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunView {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub kind: RunKind,
    pub status: RunStatus,
    /// How many times this run is a re-queue of an interrupted one.
    pub attempt: i64,
    pub error: Option<String>,
    pub progress: Progress,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// What the run applies: absent on a destroy, and on runs recorded before runs kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<RunInputs>,
}

/// What an applying run applies, recorded when it is queued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunInputs {
    /// Every variable the caller set (a variable not listed has the module's default), sensitive
    /// ones as [`REDACTED`].
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub variables: Map<String, Value>,
    /// What differs from the variables before this run, by name (for the first apply: every
    /// variable set).
    #[serde(default)]
    pub changes: Vec<VariableChange>,
    /// The machine a `replace` run destroys and creates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<ReplaceTarget>,
}

/// What stands for a sensitive variable's value wherever a value would be shown.
pub const REDACTED: &str = "(sensitive)";

/// One variable a run changed. `null` on either side is the module's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariableChange {
    pub name: String,
    /// Any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub from: Option<Value>,
    /// Any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub to: Option<Value>,
}

impl fmt::Display for VariableChange {
    /// `machine_count: 2 → 5`, `default` for a side that is the module's default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |value: &Option<Value>| match value {
            None | Some(Value::Null) => "default".to_owned(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        };
        write!(f, "{}: {} → {}", self.name, side(&self.from), side(&self.to))
    }
}

/// A machine to replace, and its resource in the module (the `resource` of its entry in the
/// module's `machines` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplaceTarget {
    pub machine: String,
    pub resource: String,
}

/// `PATCH /infrastructure/{id}`: new values merged over the deployment's variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Values for the module's variables; `null` resets one to the module's default. Variables
    /// not named keep their values.
    #[cfg_attr(feature = "openapi", schema(value_type = Object, example = json!({"machine_count": 5})))]
    pub variables: Map<String, Value>,
}

/// What `PATCH /infrastructure/{id}` answers: the deployment and the update it queued, or no
/// run (200) when the values given are the ones it has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateResponse {
    pub deployment: DeploymentView,
    pub run: Option<RunView>,
}

/// Resources done out of those the plan touches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub done: i64,
    pub total: i64,
}

/// `GET /infrastructure/{id}/runs/{run_id}`: a run with its stored log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// The run's stored log, in order.
    pub events: Vec<EventView>,
}

/// One stored run event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventView {
    /// Orders every event of the deployment; the SSE event id.
    pub id: i64,
    pub run_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// `status`, `progress`, `log` or `run_finished`.
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Value,
}

/// `GET /infrastructure`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentPage {
    pub items: Vec<DeploymentView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<Uuid>,
}

/// `GET /infrastructure/{id}/runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunPage {
    pub items: Vec<RunView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<Uuid>,
}
