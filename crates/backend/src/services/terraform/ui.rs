//! Terraform's machine-readable UI (`-json`): one JSON object per stdout line. We keep what the
//! run log and progress need and tolerate everything else (unknown types, non-JSON lines), as
//! the reference notes advise.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;
use wire::events::LogEvent;

/// One line of `terraform plan|apply -json` output.
#[derive(Debug, Clone, Deserialize)]
pub struct UiMessage {
    #[serde(rename = "@level", default)]
    pub level: String,
    #[serde(rename = "@message", default)]
    pub message: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub hook: Option<Hook>,
    #[serde(default)]
    pub change: Option<Change>,
    #[serde(default)]
    pub changes: Option<ChangeSummary>,
    #[serde(default)]
    pub diagnostic: Option<Diagnostic>,
    /// `outputs` after an apply: `{name: {sensitive, type, value}}`, the shape of `terraform
    /// output -json`, except that sensitive values are left out.
    #[serde(default)]
    pub outputs: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Resource {
    pub addr: String,
    #[serde(default)]
    pub resource_type: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    pub resource: Option<Resource>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    pub resource: Resource,
    pub action: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct ChangeSummary {
    #[serde(default)]
    pub add: u64,
    #[serde(default)]
    pub change: u64,
    #[serde(default)]
    pub remove: u64,
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Plan,
    Apply,
    Destroy,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Diagnostic {
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub address: Option<String>,
}

impl UiMessage {
    /// Parses a stdout line; a line that is not a JSON UI message becomes an `info` log line.
    pub fn parse(line: &str) -> Self {
        serde_json::from_str(line).unwrap_or_else(|_| Self {
            level: "info".to_owned(),
            message: line.to_owned(),
            kind: "text".to_owned(),
            hook: None,
            change: None,
            changes: None,
            diagnostic: None,
            outputs: None,
        })
    }

    /// The resource this message is about, if any.
    pub fn resource(&self) -> Option<&str> {
        self.hook
            .as_ref()
            .and_then(|hook| hook.resource.as_ref())
            .or(self.change.as_ref().map(|change| &change.resource))
            .map(|resource| resource.addr.as_str())
            .or(self.diagnostic.as_ref().and_then(|d| d.address.as_deref()))
    }

    /// The event stored in the run log for this line (`log {level, message, type, resource?}`).
    pub fn log_event(&self) -> LogEvent {
        let mut message = self.message.clone();
        if let Some(diagnostic) = &self.diagnostic {
            if !diagnostic.detail.is_empty() && !message.contains(&diagnostic.detail) {
                message = format!("{message}: {}", diagnostic.detail);
            }
        }
        let level = match self.level.as_str() {
            "" => "info",
            other => other,
        };
        LogEvent {
            level: level.to_owned(),
            message,
            terraform_type: Some(self.kind.clone()),
            resource: self.resource().map(str::to_owned),
        }
    }
}

/// Counts resources done of planned over a whole run, following the reference notes (§1.5):
/// total from `planned_change` (a replace counts twice), done from `apply_complete`/`apply_errored`
/// seen after the planning phase, each (address, action) once. `apply PLANFILE` announces the
/// saved plan's changes again: they are counted once, so the total set by the plan holds through
/// the apply instead of starting again from zero.
#[derive(Debug, Default)]
pub struct Progress {
    planned: HashSet<(String, String)>,
    total: u64,
    planning_over: bool,
    done: HashSet<(String, String)>,
}

impl Progress {
    /// Feeds one message; returns `(done, total)` when either changed.
    pub fn observe(&mut self, message: &UiMessage) -> Option<(u64, u64)> {
        match message.kind.as_str() {
            "planned_change" => {
                let change = message.change.as_ref()?;
                let weight = match change.action.as_str() {
                    "create" | "update" | "delete" | "read" => 1,
                    "replace" => 2,
                    _ => 0,
                };
                let key = (change.resource.addr.clone(), change.action.clone());
                if weight == 0 || !self.planned.insert(key) {
                    return None;
                }
                self.total += weight;
                Some((self.done(), self.total))
            }
            "change_summary" => {
                self.planning_over = true;
                None
            }
            "apply_start" => {
                // `apply PLANFILE` prints no plan summary: the first hook ends planning.
                self.planning_over = true;
                None
            }
            "apply_complete" | "apply_errored" if self.planning_over => {
                let hook = message.hook.as_ref()?;
                let action = hook.action.clone().unwrap_or_default();
                if action == "noop" {
                    return None;
                }
                let addr = hook.resource.as_ref()?.addr.clone();
                self.done.insert((addr, action)).then_some((self.done(), self.total))
            }
            _ => None,
        }
    }

    pub fn done(&self) -> u64 {
        self.done.len() as u64
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(value: Value) -> UiMessage {
        serde_json::from_value(value).unwrap()
    }

    fn planned(addr: &str, action: &str) -> UiMessage {
        msg(
            json!({"type": "planned_change", "@message": "", "change": {"resource": {"addr": addr}, "action": action}}),
        )
    }

    fn hook(kind: &str, addr: &str, action: &str) -> UiMessage {
        msg(
            json!({"type": kind, "@message": "", "hook": {"resource": {"addr": addr}, "action": action}}),
        )
    }

    #[test]
    fn progress_counts_planned_work_and_completed_hooks_once() {
        let mut progress = Progress::default();
        // A plan-time data source read must not count as done.
        assert_eq!(progress.observe(&hook("apply_complete", "data.x.y", "read")), None);
        assert_eq!(progress.observe(&planned("a.one", "create")), Some((0, 1)));
        assert_eq!(progress.observe(&planned("a.two", "replace")), Some((0, 3)));
        assert_eq!(progress.observe(&planned("a.three", "no-op")), None);
        progress.observe(&msg(json!({"type": "change_summary", "changes": {"add": 2, "change": 0, "remove": 1, "operation": "plan"}})));
        assert_eq!(progress.observe(&hook("apply_complete", "a.one", "create")), Some((1, 3)));
        assert_eq!(
            progress.observe(&hook("apply_complete", "a.one", "create")),
            None,
            "counted once"
        );
        assert_eq!(progress.observe(&hook("apply_complete", "a.two", "delete")), Some((2, 3)));
        assert_eq!(progress.observe(&hook("apply_errored", "a.two", "create")), Some((3, 3)));
    }

    #[test]
    fn non_json_lines_become_info_logs_and_diagnostics_carry_their_detail() {
        let text = UiMessage::parse("Error: something plain");
        assert_eq!(text.log_event().level, "info");
        assert_eq!(text.log_event().message, "Error: something plain");
        assert_eq!(text.log_event().terraform_type.as_deref(), Some("text"));

        let diagnostic = UiMessage::parse(
            r#"{"@level":"error","@message":"Error: local-exec provisioner error","type":"diagnostic","diagnostic":{"severity":"error","summary":"local-exec provisioner error","detail":"exit status 3","address":"terraform_data.m[0]"}}"#,
        );
        let event = diagnostic.log_event();
        assert_eq!(event.level, "error");
        assert_eq!(event.resource.as_deref(), Some("terraform_data.m[0]"));
        assert!(event.message.ends_with("exit status 3"));
    }

    #[test]
    fn the_total_is_the_plans_and_holds_through_the_apply() {
        // One Progress per run: the plan step's messages, then the apply step's, which announce
        // the saved plan's changes again before applying them.
        let mut progress = Progress::default();
        let mut seen = Vec::new();
        let plan =
            [planned("a.net", "create"), planned("a.m[0]", "create"), planned("a.m[1]", "create")];
        seen.extend(plan.iter().filter_map(|m| progress.observe(m)));
        progress.observe(&msg(json!({"type": "change_summary", "changes": {"add": 3, "change": 0, "remove": 0, "operation": "plan"}})));
        seen.extend(plan.iter().filter_map(|m| progress.observe(m)));
        for addr in ["a.net", "a.m[0]", "a.m[1]"] {
            seen.extend(progress.observe(&hook("apply_start", addr, "create")));
            seen.extend(progress.observe(&hook("apply_complete", addr, "create")));
        }
        assert_eq!(seen, [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 3)]);
    }
}
