//! The vocabulary shared by store, services and API: deployment and run states and what
//! transitions between them are allowed (the design brief's state machine).

use std::{fmt, str::FromStr};

use chrono::{DateTime, SubsecRound, Utc};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The current time at the precision every database keeps (microseconds), so a value reads back
/// exactly as it was written whichever database is configured.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }
    };
}

string_enum! {
    /// Where a deployment is in its lifecycle.
    DeploymentStatus {
        /// Created; its first run has not started.
        Pending = "pending",
        /// Its first apply is running.
        Provisioning = "provisioning",
        /// Applied and every agent answered.
        Ready = "ready",
        /// A later apply is running.
        Updating = "updating",
        /// Its destroy is queued or running.
        Destroying = "destroying",
        /// Everything it created is gone.
        Destroyed = "destroyed",
        /// A run failed, was cancelled or timed out; `status_reason` says why.
        Failed = "failed",
    }
}

string_enum! {
    /// Where a Terraform run is.
    RunStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        /// Its backend process died mid-run; it was re-queued (once) as a new run.
        Interrupted = "interrupted",
    }
}

string_enum! {
    /// What a run does.
    RunKind {
        Apply = "apply",
        Destroy = "destroy",
    }
}

string_enum! {
    /// What the health checker last saw of a machine's agent.
    MachineStatus {
        Unknown = "unknown",
        Healthy = "healthy",
        Unreachable = "unreachable",
    }
}

impl DeploymentStatus {
    /// States a destroy may start from: any live state without a run in progress. The store
    /// refuses a second active run separately.
    pub const DESTROYABLE: &'static [Self] =
        &[Self::Pending, Self::Provisioning, Self::Ready, Self::Updating, Self::Failed];
}

impl RunStatus {
    pub fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for status in DeploymentStatus::ALL {
            assert_eq!(status.as_str().parse::<DeploymentStatus>().unwrap(), *status);
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), *status);
        }
        assert!("bogus".parse::<RunKind>().unwrap_err().contains("RunKind"));
    }
}
