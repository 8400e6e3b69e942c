//! The vocabulary shared by store, services and API: deployment, run, machine and command states,
//! and (in [`lifecycle`]) which moves between them are allowed — the design brief's state
//! machines, written once as data. The enums live in the `wire` crate because `nimctl` reads them
//! back from the API; the transition tables live here because only the backend moves states.

mod lifecycle;

use chrono::{DateTime, SubsecRound, Utc};

pub use lifecycle::{IllegalMove, Lifecycle};
pub use wire::status::{
    CommandStatus, DeploymentStatus, MachineStatus, ResultStatus, RunKind, RunStatus,
};

/// The current time at the precision every database keeps (microseconds), so a value reads back
/// exactly as it was written whichever database is configured.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
