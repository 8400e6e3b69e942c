//! Commands to a deployment's machines (the plan's "Sending Command to Existing Deployment"):
//! checking a command, storing it with one pending result per machine before anything is sent,
//! fanning it out through `CloudClientService` with AWS SSM Run Command's rollout controls
//! (`max_concurrency`, `max_errors`), recording each machine's result as it arrives, cancelling,
//! and marking commands a dead backend left running as `interrupted`.
//!
//! A command runs in a task of its own, not in the request that created it: a client that hangs
//! up does not stop it (cancelling does), and `?wait=false` is the same code path.

//!
//! `request.rs` checks a request, `service.rs` is `CommandService` (start, read, cancel, leases,
//! recovery), `rollout.rs` the task that sends a command to its machines and records the results.

mod request;
mod rollout;
mod service;

use std::time::Duration;

use wire::FieldError;

pub use self::service::{CommandService, Started};
use crate::{
    domain::{CommandStatus, DeploymentStatus},
    services::deployments::DeploymentError,
    store::StoreError,
};

/// `timeout_s` when the request has none.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Largest `timeout_s`: a waiting call lasts as long as its command, so it must stay bounded.
pub const MAX_TIMEOUT_S: u64 = 3600;
/// `max_concurrency` when the request has none (SSM's default is 50; the agent fan-out's is 64).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
/// Largest `max_concurrency` count: each machine in flight holds a connection and a task.
pub const MAX_CONCURRENCY: u32 = 1000;

/// How often a replica running commands looks for cancels asked of another replica.
const CANCEL_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("no such deployment or command")]
    NotFound,
    #[error("the deployment is {0}; commands can only be sent to a ready deployment")]
    NotReady(DeploymentStatus),
    #[error("the command already finished ({0}); only running commands can be cancelled")]
    NotRunning(CommandStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<DeploymentError> for CommandError {
    /// The deployment service's lookup answers for commands too: its "no such deployment" is
    /// this one's.
    fn from(err: DeploymentError) -> Self {
        match err {
            DeploymentError::NotFound => Self::NotFound,
            DeploymentError::Store(err) => Self::Store(err),
            DeploymentError::Internal(err) => Self::Internal(err),
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}
