//! The vocabulary shared by store, services and API: deployment and run states and what
//! transitions between them are allowed (the design brief's state machine). The enums live in the
//! `wire` crate because `nimctl` reads them back from the API.

use chrono::{DateTime, SubsecRound, Utc};

pub use wire::status::{
    CommandStatus, DeploymentStatus, MachineStatus, ResultStatus, RunKind, RunStatus,
};

/// The current time at the precision every database keeps (microseconds), so a value reads back
/// exactly as it was written whichever database is configured.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
