//! The status vocabulary of deployments, runs, machines and commands, and which states allow
//! what. The backend stores and reports these; `nimctl` reads them back, so both sides share one
//! definition.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

        /// Decodes a stored status column (`#[sqlx(try_from = "String")]` in the backend).
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
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
        /// The first apply of a deployment (and a retry of a failed one).
        Apply = "apply",
        /// An apply of changed variables (`PATCH /infrastructure/{id}`, scaling included), or a
        /// retry of a failed update.
        Update = "update",
        /// An apply that destroys one machine and creates it again.
        Replace = "replace",
        Destroy = "destroy",
    }
}

impl RunKind {
    /// Whether the run applies the module (every kind but `destroy`).
    pub fn applies(self) -> bool {
        self != Self::Destroy
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

string_enum! {
    /// Where a command sent to a deployment's machines is, rolled up from its machines' results
    /// by [`CommandStatus::roll_up`].
    CommandStatus {
        /// Some machine has not finished yet.
        Running = "running",
        /// Every machine succeeded (exit 0).
        Succeeded = "succeeded",
        /// No machine succeeded, and not all of them timed out.
        Failed = "failed",
        /// Some machines succeeded and some did not (failed, timed out, unreachable, rejected or
        /// skipped).
        Partial = "partial",
        /// No machine succeeded because every one of them timed out.
        TimedOut = "timed_out",
        /// It was cancelled before every machine finished.
        Cancelled = "cancelled",
        /// The backend stopped while it ran; the results that had finished are kept.
        Interrupted = "interrupted",
    }
}

string_enum! {
    /// One machine's part of a command.
    ResultStatus {
        /// Not started yet (bounded by `max_concurrency`).
        Pending = "pending",
        /// Sent to the machine's agent; no answer yet.
        Running = "running",
        /// The command exited 0.
        Succeeded = "succeeded",
        /// The command exited non-zero or was killed, or the agent failed.
        Failed = "failed",
        /// The command ran past `timeout_s` and its process group was killed.
        TimedOut = "timed_out",
        /// The agent could not be reached (connection or TLS failure).
        Unreachable = "unreachable",
        /// The agent refused the request (wrong token, busy, invalid request).
        Rejected = "rejected",
        /// Never sent: `max_errors` machines had already failed.
        Skipped = "skipped",
        /// Never sent, or stopped while it ran, because the command was cancelled.
        Cancelled = "cancelled",
        /// The backend stopped before this machine's result arrived.
        Interrupted = "interrupted",
    }
}

/// A result row starts out `pending`. (Written out: the enum comes from `string_enum!`.)
#[allow(clippy::derivable_impls)]
impl Default for ResultStatus {
    fn default() -> Self {
        Self::Pending
    }
}

impl ResultStatus {
    /// Finished, one way or another.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// Counts towards `max_errors`.
    pub fn is_error(self) -> bool {
        matches!(self, Self::Failed | Self::TimedOut | Self::Unreachable | Self::Rejected)
    }
}

impl CommandStatus {
    /// The command's status from its machines' results, applied in this order:
    ///
    /// 1. a machine not finished yet → `running`;
    /// 2. a machine `interrupted` → `interrupted`;
    /// 3. a machine `cancelled` → `cancelled`;
    /// 4. every machine `succeeded` → `succeeded`;
    /// 5. none succeeded and every one `timed_out` → `timed_out`;
    /// 6. none succeeded → `failed`;
    /// 7. otherwise (some succeeded, some did not, `skipped` included) → `partial`.
    pub fn roll_up(results: &[ResultStatus]) -> Self {
        let any = |status: ResultStatus| results.contains(&status);
        let all = |status: ResultStatus| results.iter().all(|r| *r == status);
        if results.iter().any(|r| !r.is_final()) {
            Self::Running
        } else if any(ResultStatus::Interrupted) {
            Self::Interrupted
        } else if any(ResultStatus::Cancelled) {
            Self::Cancelled
        } else if all(ResultStatus::Succeeded) {
            Self::Succeeded
        } else if all(ResultStatus::TimedOut) {
            Self::TimedOut
        } else if !any(ResultStatus::Succeeded) {
            Self::Failed
        } else {
            Self::Partial
        }
    }
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

    #[test]
    fn a_commands_status_is_rolled_up_from_its_machines() {
        use CommandStatus as C;
        use ResultStatus as R;
        let cases: &[(&[R], C)] = &[
            (&[R::Succeeded, R::Succeeded], C::Succeeded),
            (&[R::Succeeded, R::Running], C::Running),
            (&[R::Succeeded, R::Pending], C::Running),
            (&[R::Succeeded, R::Failed], C::Partial),
            (&[R::Succeeded, R::Skipped], C::Partial),
            (&[R::Succeeded, R::Unreachable], C::Partial),
            (&[R::Succeeded, R::TimedOut], C::Partial),
            (&[R::Failed, R::Failed], C::Failed),
            (&[R::Failed, R::Skipped], C::Failed),
            (&[R::TimedOut, R::Failed], C::Failed),
            (&[R::TimedOut, R::TimedOut], C::TimedOut),
            (&[R::Succeeded, R::Cancelled], C::Cancelled),
            (&[R::Cancelled, R::Interrupted], C::Interrupted),
            (&[R::Succeeded, R::Interrupted], C::Interrupted),
        ];
        for (results, expected) in cases {
            assert_eq!(C::roll_up(results), *expected, "{results:?}");
        }
    }
}
