//! Commands to a deployment's machines: what `POST /infrastructure/{id}/command` takes and what the
//! command endpoints answer.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de};
use serde_json::Value;
use uuid::Uuid;

use crate::status::{CommandStatus, ResultStatus};

/// A count of machines, or a percentage of the machines a command targets (`"25%"`), as SSM's
/// `MaxConcurrency` and `MaxErrors` are given: a JSON number, or a string holding either form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Count(u32),
    Percent(u32),
}

impl Scale {
    /// How many machines this means out of `total`: a percentage is rounded up, and is at least 1.
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Count(count) => count as usize,
            Self::Percent(percent) => (total * percent as usize).div_ceil(100).max(1),
        }
    }
}

/// What [`Scale`] accepts: a count as a JSON number, or a string holding a count or a
/// percentage (`"10"`, `"25%"`).
#[cfg(feature = "openapi")]
fn scale_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u32::MAX)),
        )
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{1,9}%?$")))
        .build();
    Schema::OneOf(one_of)
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(count) => write!(f, "{count}"),
            Self::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl Serialize for Scale {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(count) => serializer.serialize_u32(*count),
            Self::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Scale;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count of machines (like 10) or a percentage (like \"25%\")")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Scale, E> {
                u32::try_from(value).map(Scale::Count).map_err(|_| E::custom("count is too large"))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Scale, E> {
                u64::try_from(value)
                    .map_err(|_| E::custom("must not be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            /// `3.0` is the integer 3 in JSON (and to JSON Schema), so a count may come so.
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Scale, E> {
                if value.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&value) {
                    return Err(E::invalid_type(de::Unexpected::Float(value), &self));
                }
                self.visit_u64(value as u64)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Scale, E> {
                let value = value.trim();
                let parsed = match value.strip_suffix('%') {
                    Some(percent) => percent.trim().parse().map(Scale::Percent),
                    None => value.parse().map(Scale::Count),
                };
                parsed.map_err(|_| {
                    E::custom(format!(
                        "\"{value}\" is neither a count (like 10) nor a percentage (like \"25%\")"
                    ))
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A command as `POST /infrastructure/{id}/command` takes it, and as it is stored (with the
/// defaults filled in).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The program and its arguments, run without a shell. Give this or `shell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(example = json!(["uname", "-a"])))]
    pub argv: Option<Vec<String>>,
    /// A script for `/bin/sh -c`. Give this or `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Environment variables added for the command. Each machine also gets `NIM_MACHINE` (its
    /// name) and `NIM_COMMAND_ID`. Stored with the command: do not pass secrets here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory on the machines; must exist there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Written to the command's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds each machine's command may run before its process group is killed: 1-3600,
    /// default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Names of the machines to run on; default: every machine of the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<Vec<String>>,
    /// Machines running the command at once: a count (1-1000) or a percentage of the targeted
    /// machines (`"25%"`, rounded up). Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = scale_schema, example = "25%"))]
    pub max_concurrency: Option<Scale>,
    /// Once this many machines (a count, or a percentage of the targeted machines) have failed,
    /// timed out, been unreachable or rejected the command, no further machine is started; those
    /// are reported `skipped`. Machines already running finish. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = scale_schema, example = "1"))]
    pub max_errors: Option<Scale>,
}

/// Counts of machines by result status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandSummary {
    pub total: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub unreachable: usize,
    pub rejected: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub interrupted: usize,
    /// Not started yet.
    pub pending: usize,
    /// Started, no answer yet.
    pub running: usize,
}

impl CommandSummary {
    /// Counts `statuses`.
    pub fn of(statuses: impl IntoIterator<Item = ResultStatus>) -> Self {
        let mut summary = Self::default();
        for status in statuses {
            summary.total += 1;
            *match status {
                ResultStatus::Pending => &mut summary.pending,
                ResultStatus::Running => &mut summary.running,
                ResultStatus::Succeeded => &mut summary.succeeded,
                ResultStatus::Failed => &mut summary.failed,
                ResultStatus::TimedOut => &mut summary.timed_out,
                ResultStatus::Unreachable => &mut summary.unreachable,
                ResultStatus::Rejected => &mut summary.rejected,
                ResultStatus::Skipped => &mut summary.skipped,
                ResultStatus::Cancelled => &mut summary.cancelled,
                ResultStatus::Interrupted => &mut summary.interrupted,
            } += 1;
        }
        summary
    }
}

/// One machine's part of a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultView {
    pub machine: String,
    /// Where its agent was called, `host:port`.
    pub address: Option<String>,
    pub status: ResultStatus,
    pub exit_code: Option<i64>,
    /// The signal that ended the command (9 after a timeout).
    pub signal: Option<i64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Output past the agent's cap was discarded.
    pub truncated: bool,
    /// The command's run time on the machine (the call's when the agent did not answer).
    pub duration_ms: Option<i64>,
    /// Why it did not succeed when there is no exit code to say it.
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A command and, on everything but the list, its per-machine results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandView {
    pub id: Uuid,
    pub deployment_id: Uuid,
    /// The command as accepted, defaults filled in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub request: Value,
    /// Rolled up from the results; see `ARCHITECTURE.md` (commands).
    pub status: CommandStatus,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub summary: CommandSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ResultView>>,
}

/// `GET /infrastructure/{id}/commands`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommandPage {
    pub items: Vec<CommandView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_counts_or_percentages() {
        let parse = |v: serde_json::Value| serde_json::from_value::<Scale>(v);
        assert_eq!(parse(serde_json::json!(3)).unwrap(), Scale::Count(3));
        assert_eq!(parse(serde_json::json!("3")).unwrap(), Scale::Count(3));
        assert_eq!(parse(serde_json::json!(3.0)).unwrap(), Scale::Count(3));
        assert!(parse(serde_json::json!(2.5)).is_err());
        assert!(parse(serde_json::json!(-1.0)).is_err());
        assert_eq!(parse(serde_json::json!("25%")).unwrap(), Scale::Percent(25));
        assert!(parse(serde_json::json!(-1)).is_err());
        assert!(parse(serde_json::json!("many")).unwrap_err().to_string().contains("\"many\""));
        assert!(parse(serde_json::json!(1.5)).is_err());
        assert_eq!(Scale::Percent(25).of(5), 2);
        assert_eq!(Scale::Percent(1).of(5), 1);
        assert_eq!(Scale::Percent(100).of(5), 5);
        assert_eq!(serde_json::to_value(Scale::Percent(40)).unwrap(), "40%");
        assert_eq!(serde_json::to_value(Scale::Count(4)).unwrap(), 4);
    }
}
