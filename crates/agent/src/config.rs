//! The agent's one typed configuration. Every setting can come from a flag, an environment
//! variable (`NIM_AGENT_*`) or a JSON file named by `--config` (`-` for stdin); flags win over
//! the environment, which wins over the file. JSON rather than TOML because Terraform writes it natively
//! (`jsonencode`) into cloud-init, and because the agent already parses JSON.

use std::{
    io::Read,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::hardening;

/// The shortest bearer token the agent accepts; the backend mints far longer ones.
pub const MIN_TOKEN_LEN: usize = 16;

/// nim-agent: runs commands on this machine for nim-backend, over HTTPS with a bearer token.
///
/// Every option can also be set by the environment variable shown with it, or as a key of the
/// JSON given to `--config` as a file or on stdin (the option's long name with `_` for `-`, e.g.
/// `{"listen": "0.0.0.0:7070", "token": "...", "tls_cert": "/etc/nim/agent.crt"}`).
/// Flags win over the environment, which wins over the file.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "nim-agent", version, about, long_about)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// A JSON file with settings, or `-` to read them from standard input to its end, so that a
    /// launcher can pipe them in and the token and key never touch the machine's disk. Once
    /// read, the agent's stdin is pointed at /dev/null.
    #[arg(long, env = "NIM_AGENT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port to listen on [default: 0.0.0.0:7070]; port 0 picks a free port. The
    /// bound address is printed on stdout as `{"listening":"<addr>"}`.
    #[arg(long, env = "NIM_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// The deployment's bearer token, at least 16 characters. Prefer the environment or the
    /// config file: command lines are visible to every user of the machine.
    #[arg(long, env = "NIM_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,

    /// The TLS certificate (chain) to serve: a PEM file's path, or the PEM text itself.
    #[arg(long, env = "NIM_AGENT_TLS_CERT", hide_env_values = true)]
    pub tls_cert: Option<String>,

    /// The certificate's private key: a PEM file's path, or the PEM text itself.
    #[arg(long, env = "NIM_AGENT_TLS_KEY", hide_env_values = true)]
    pub tls_key: Option<SecretString>,

    /// Commands allowed to run at once; further `POST /v1/exec` calls get 429 [default: 32].
    #[arg(long, env = "NIM_AGENT_MAX_CONCURRENT_EXECS")]
    pub max_concurrent_execs: Option<usize>,

    /// Bytes of stdout and of stderr kept per command; the rest is discarded and the response
    /// says `truncated` [default: 1048576].
    #[arg(long, env = "NIM_AGENT_OUTPUT_CAP_BYTES")]
    pub output_cap_bytes: Option<usize>,

    /// The largest `timeout_ms` a command may ask for [default: 86400000, one day].
    #[arg(long, env = "NIM_AGENT_MAX_TIMEOUT_MS")]
    pub max_timeout_ms: Option<u64>,

    /// The largest request body accepted, in bytes (bounds `stdin`) [default: 8388608].
    #[arg(long, env = "NIM_AGENT_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Seconds running commands get to finish after SIGTERM before they are killed
    /// [default: 30].
    #[arg(long, env = "NIM_AGENT_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,

    /// Log line format, on stderr; the level comes from `RUST_LOG` [default: text].
    #[arg(long, env = "NIM_AGENT_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings after merging flags, environment, file and defaults, and checking them.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub token: SecretString,
    /// PEM text of the certificate chain.
    pub tls_cert_pem: String,
    /// PEM text of the private key.
    pub tls_key_pem: SecretString,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

/// What one command may use.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_concurrent_execs: usize,
    pub output_cap_bytes: usize,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_request_bytes: usize,
}

/// The timeout of a command whose request names none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

impl Config {
    /// Reads the `--config` file or stdin (when given) under the flags and environment, applies
    /// defaults and checks the result; errors name the setting to fix.
    pub fn load(args: Args) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) if path == Path::new("-") => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("failed to read the config from stdin (--config -)")?;
                // Zeroed when dropped, like the token and key parsed out of it (copies left
                // behind while the string grew are not).
                let text = SecretString::from(text);
                hardening::detach_stdin()?;
                serde_json::from_str::<Args>(text.expose_secret())
                    .context("failed to parse the config from stdin (--config -)")?
            }
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map(SecretString::from).with_context(|| {
                        format!("failed to read the config file {} (--config)", path.display())
                    })?;
                serde_json::from_str::<Args>(text.expose_secret()).with_context(|| {
                    format!("failed to parse the config file {} (--config)", path.display())
                })?
            }
            None => Args::default(),
        };
        Self::from_args(args.or(file))
    }

    fn from_args(args: Args) -> anyhow::Result<Self> {
        let token = args.token.context(
            "no bearer token: set --token, NIM_AGENT_TOKEN or `token` in the config file",
        )?;
        if token.expose_secret().len() < MIN_TOKEN_LEN {
            bail!(
                "the bearer token (--token / NIM_AGENT_TOKEN) must be at least {MIN_TOKEN_LEN} characters"
            );
        }
        let tls_cert = args.tls_cert.context(
            "no TLS certificate: set --tls-cert, NIM_AGENT_TLS_CERT or `tls_cert` in the config file",
        )?;
        let tls_key = args.tls_key.context(
            "no TLS key: set --tls-key, NIM_AGENT_TLS_KEY or `tls_key` in the config file",
        )?;
        let tls_cert_pem = pem_or_file(&tls_cert, "--tls-cert")?;
        let tls_key_pem = SecretString::from(pem_or_file(tls_key.expose_secret(), "--tls-key")?);

        let max_concurrent_execs = args.max_concurrent_execs.unwrap_or(32);
        if max_concurrent_execs == 0 {
            bail!("--max-concurrent-execs (NIM_AGENT_MAX_CONCURRENT_EXECS) must be at least 1");
        }
        let max_timeout = Duration::from_millis(args.max_timeout_ms.unwrap_or(86_400_000));
        if max_timeout.is_zero() {
            bail!("--max-timeout-ms (NIM_AGENT_MAX_TIMEOUT_MS) must be at least 1");
        }
        Ok(Self {
            listen: args.listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7070))),
            token,
            tls_cert_pem,
            tls_key_pem,
            limits: Limits {
                max_concurrent_execs,
                output_cap_bytes: args.output_cap_bytes.unwrap_or(1024 * 1024),
                default_timeout: DEFAULT_EXEC_TIMEOUT.min(max_timeout),
                max_timeout,
                max_request_bytes: args.max_request_bytes.unwrap_or(8 * 1024 * 1024),
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs.unwrap_or(30)),
            log_format: args.log_format.unwrap_or(LogFormat::Text),
        })
    }
}

impl Args {
    /// Each setting from `self` when present, else from `lower`.
    fn or(self, lower: Args) -> Args {
        Args {
            config: self.config,
            listen: self.listen.or(lower.listen),
            token: self.token.or(lower.token),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            max_concurrent_execs: self.max_concurrent_execs.or(lower.max_concurrent_execs),
            output_cap_bytes: self.output_cap_bytes.or(lower.output_cap_bytes),
            max_timeout_ms: self.max_timeout_ms.or(lower.max_timeout_ms),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            shutdown_grace_secs: self.shutdown_grace_secs.or(lower.shutdown_grace_secs),
            log_format: self.log_format.or(lower.log_format),
        }
    }
}

/// PEM given inline (it starts with `-----BEGIN`) or the path of a file holding it.
fn pem_or_file(value: &str, flag: &str) -> anyhow::Result<String> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(value).with_context(|| format!("failed to read {value} ({flag})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token: &str) -> Args {
        Args {
            token: Some(token.into()),
            tls_cert: Some("-----BEGIN CERTIFICATE-----".into()),
            tls_key: Some("-----BEGIN PRIVATE KEY-----".into()),
            ..Args::default()
        }
    }

    #[test]
    fn defaults_listen_on_port_7070_with_a_one_mebibyte_cap() {
        let config = Config::from_args(args("0123456789abcdef")).unwrap();
        assert_eq!(config.listen, "0.0.0.0:7070".parse().unwrap());
        assert_eq!(config.limits.output_cap_bytes, 1024 * 1024);
        assert_eq!(config.limits.default_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_short_token_is_refused_naming_the_flag() {
        let err = Config::from_args(args("short")).unwrap_err().to_string();
        assert!(err.contains("--token"), "{err}");
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let file: Args =
            serde_json::from_str(r#"{"listen":"127.0.0.1:1","output_cap_bytes":5}"#).unwrap();
        let flags =
            Args { listen: Some("127.0.0.1:2".parse().unwrap()), ..args("0123456789abcdef") };
        let config = Config::from_args(flags.or(file)).unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.limits.output_cap_bytes, 5);
    }

    #[test]
    fn the_config_file_rejects_unknown_keys() {
        let err = serde_json::from_str::<Args>(r#"{"listne":"127.0.0.1:1"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `listne`"), "{err}");
    }
}
