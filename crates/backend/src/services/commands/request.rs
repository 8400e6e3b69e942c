//! Checking a command request before anything is stored, and what the agents are sent.

use std::{collections::HashSet, time::Duration};

use uuid::Uuid;
use wire::{
    ExecRequest, FieldError,
    commands::{CommandRequest, Scale},
};

use super::{DEFAULT_TIMEOUT_S, MAX_CONCURRENCY, MAX_TIMEOUT_S};

/// Checks the range; `what` names the field in the message.
fn check_scale(scale: Scale, field: &str, max_count: u32, errors: &mut Vec<FieldError>) {
    match scale {
        Scale::Count(count) if count == 0 || count > max_count => errors.push(FieldError::new(
            field,
            format!("must be a count from 1 to {max_count} or a percentage from 1% to 100%"),
        )),
        Scale::Percent(percent) if percent == 0 || percent > 100 => {
            errors.push(FieldError::new(field, "a percentage must be from 1% to 100%".to_owned()))
        }
        _ => {}
    }
}

/// What the backend adds to the wire type: its checks and what the agents are sent.
pub(super) trait CommandRequestExt {
    fn check(&self) -> Vec<FieldError>;
    fn timeout(&self) -> Duration;
    fn exec_request(&self, command_id: Uuid) -> ExecRequest;
}

impl CommandRequestExt for CommandRequest {
    /// Every problem with the request that does not need the deployment.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.argv, &self.shell) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("shell", "give either argv or shell, not both"))
            }
            (None, None) => {
                errors.push(FieldError::new("argv", "one of argv or shell is required"))
            }
            (Some(argv), None) if argv.first().is_none_or(|p| p.is_empty()) => {
                errors.push(FieldError::new("argv", "argv[0] must name a program"))
            }
            (None, Some(shell)) if shell.trim().is_empty() => {
                errors.push(FieldError::new("shell", "must not be empty"))
            }
            _ => {}
        }
        let texts = self.argv.iter().flatten().chain(&self.shell).chain(&self.cwd);
        if texts.into_iter().any(|text| text.contains('\0')) {
            errors.push(FieldError::new("argv", "arguments must not contain NUL bytes"));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "names must be non-empty without `=` or NUL, values without NUL",
                ));
            }
        }
        if let Some(timeout) = self.timeout_s {
            if !(1..=MAX_TIMEOUT_S).contains(&timeout) {
                errors.push(FieldError::new(
                    "timeout_s",
                    format!("must be from 1 to {MAX_TIMEOUT_S} seconds"),
                ));
            }
        }
        if let Some(machines) = &self.machines {
            if machines.is_empty() {
                errors.push(FieldError::new(
                    "machines",
                    "must name at least one machine (leave it out for all of them)",
                ));
            }
            let mut seen = HashSet::new();
            for (index, name) in machines.iter().enumerate() {
                if !seen.insert(name) {
                    errors.push(FieldError::new(
                        format!("machines[{index}]"),
                        format!("\"{name}\" is named twice"),
                    ));
                }
            }
        }
        if let Some(scale) = self.max_concurrency {
            check_scale(scale, "max_concurrency", MAX_CONCURRENCY, &mut errors);
        }
        if let Some(scale) = self.max_errors {
            check_scale(scale, "max_errors", u32::MAX, &mut errors);
        }
        errors
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
    }

    /// What each agent is sent; `NIM_MACHINE` is added per machine.
    fn exec_request(&self, command_id: Uuid) -> ExecRequest {
        let mut env = self.env.clone();
        env.insert("NIM_COMMAND_ID".into(), command_id.to_string());
        ExecRequest {
            argv: self.argv.clone(),
            shell: self.shell.clone(),
            env,
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: Some(self.timeout().as_millis() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let fields = |r: CommandRequest| r.check().into_iter().map(|e| e.field).collect::<Vec<_>>();
        assert_eq!(fields(CommandRequest::default()), ["argv"]);
        let ok = CommandRequest { argv: Some(vec!["true".into()]), ..CommandRequest::default() };
        assert!(fields(ok.clone()).is_empty());
        assert_eq!(fields(CommandRequest { shell: Some("x".into()), ..ok.clone() }), ["shell"]);
        assert_eq!(fields(CommandRequest { timeout_s: Some(3601), ..ok.clone() }), ["timeout_s"]);
        assert_eq!(fields(CommandRequest { timeout_s: Some(0), ..ok.clone() }), ["timeout_s"]);
        assert_eq!(
            fields(CommandRequest { machines: Some(vec!["a".into(), "a".into()]), ..ok.clone() }),
            ["machines[1]"]
        );
        assert_eq!(fields(CommandRequest { machines: Some(vec![]), ..ok.clone() }), ["machines"]);
        assert_eq!(
            fields(CommandRequest { max_concurrency: Some(Scale::Count(0)), ..ok.clone() }),
            ["max_concurrency"]
        );
        assert_eq!(
            fields(CommandRequest { max_errors: Some(Scale::Percent(101)), ..ok.clone() }),
            ["max_errors"]
        );
        let env = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert_eq!(fields(CommandRequest { env, ..ok }), ["env.A=B"]);
    }
}
