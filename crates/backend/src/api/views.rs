//! The API's answers built from the store's rows: each wire view from its row, in one place.

use wire::deployments::{DeploymentView, EventView, MachineView, Progress, RunView};

use crate::store::{DeploymentRow, DeploymentSummary, MachineRow, RunEventRow, RunRow};

impl From<DeploymentRow> for DeploymentView {
    fn from(row: DeploymentRow) -> Self {
        DeploymentSummary::from(row).into()
    }
}

impl From<DeploymentSummary> for DeploymentView {
    fn from(row: DeploymentSummary) -> Self {
        Self {
            id: row.id,
            status: row.status(),
            name: row.name,
            provider: row.provider,
            status_reason: row.status_reason,
            variables: row.variables.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
            machines: None,
            latest_run: None,
            degraded: None,
        }
    }
}

impl From<MachineRow> for MachineView {
    fn from(row: MachineRow) -> Self {
        Self {
            name: row.name,
            public_ip: row.public_ip,
            private_ip: row.private_ip,
            agent_port: row.agent_port,
            resource: row.resource,
            status: row.status,
            last_seen_at: row.last_seen_at,
            info: row.info.map(|info| info.0),
        }
    }
}

impl From<RunRow> for RunView {
    fn from(row: RunRow) -> Self {
        Self {
            id: row.id,
            deployment_id: row.deployment_id,
            kind: row.kind(),
            status: row.status(),
            attempt: row.attempt,
            progress: Progress { done: row.progress_done, total: row.progress_total },
            error: row.error,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            cancel_requested_at: row.cancel_requested_at,
            inputs: row.inputs.map(|inputs| inputs.0),
        }
    }
}

impl From<RunEventRow> for EventView {
    fn from(row: RunEventRow) -> Self {
        Self {
            id: row.id,
            run_id: row.run_id,
            seq: row.seq,
            at: row.at,
            kind: row.kind,
            data: row.data.0,
        }
    }
}
