//! The agent protocol: what `nim-backend` sends to `nim-agent` and what comes back. Both sides
//! compile against these types, so the daemon on a machine and the backend cannot drift apart.
//!
//! Requests reject unknown fields: a misspelt `timout_ms` must fail loudly rather than run a
//! command with the default timeout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/exec`: run one command. Exactly one of `argv` and `shell` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments, run directly (no shell); `argv[0]` is looked up on `PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A script for `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Variables set on top of the command's small base environment (`PATH`, `HOME`, `LANG`;
    /// never the agent's own environment), replacing base ones of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; must exist. Default: the agent's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Written to the command's standard input, which is then closed. Default: empty stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Milliseconds before the command's whole process group is killed. Default 60 000; the
    /// agent refuses values above its configured maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ExecRequest {
    /// Runs `argv` directly, without a shell.
    pub fn argv<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { argv: Some(argv.into_iter().map(Into::into).collect()), ..Self::default() }
    }

    /// Runs `script` with `/bin/sh -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self { shell: Some(script.into()), ..Self::default() }
    }

    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn with_stdin(mut self, stdin: impl Into<String>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }
}

/// What `POST /v1/exec` answers once the command has finished, been killed, or timed out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResponse {
    /// The exit status; null when the command was ended by a signal.
    pub exit_code: Option<i32>,
    /// The signal number that ended the command (9 after a timeout), else null.
    pub signal: Option<i32>,
    /// Standard output, decoded as UTF-8 (invalid sequences replaced), at most the output cap.
    pub stdout: String,
    /// Standard error, likewise.
    pub stderr: String,
    /// True when either stream produced more than the output cap; the rest was discarded.
    pub truncated: bool,
    /// Wall-clock time from start to exit.
    pub duration_ms: u64,
    /// True when the command ran past its timeout and its process group was killed.
    pub timed_out: bool,
}

/// `GET /v1/health`: answered without a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// Always `ok` when the agent answers at all.
    pub status: String,
    /// The agent's version.
    pub version: String,
}

/// `GET /v1/info`: what the machine is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InfoResponse {
    pub hostname: String,
    /// The distribution's name (`PRETTY_NAME` of `/etc/os-release`), else the kernel's name.
    pub os: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// The machine architecture (`uname -m`).
    pub arch: String,
    /// CPUs this agent may use.
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Seconds since the machine booted.
    pub uptime_secs: u64,
    pub agent_version: String,
    /// One entry per GPU `nvidia-smi` lists; empty when it is not installed.
    pub gpus: Vec<GpuInfo>,
    /// Why GPUs could not be listed although `nvidia-smi` exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_error: Option<String>,
}

/// One GPU as `nvidia-smi` describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_total_mib: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<ExecRequest>(r#"{"argv":["true"],"timout_ms":5}"#)
            .expect_err("a misspelt field must not be ignored");
        assert!(err.to_string().contains("unknown field `timout_ms`"), "{err}");
    }

    #[test]
    fn exec_request_omits_unset_fields_on_the_wire() {
        let json = serde_json::to_value(ExecRequest::argv(["echo", "hi"])).unwrap();
        assert_eq!(json, serde_json::json!({"argv": ["echo", "hi"]}));
    }
}
