//! The backend's one typed configuration: every setting is a flag with an environment variable,
//! and the doc comments below are the `--help` text. With nothing set at all, the defaults give
//! a working server (SQLite in `./data`, built-in auth).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum, builder::BoolishValueParser};
use secrecy::{ExposeSecret, SecretString};

/// nim-backend: multi-cloud provisioning control plane.
///
/// Every option can also be set through the environment variable shown with it; a `.env` file in
/// the working directory (or one of its parents) is read at start when present.
#[derive(Debug, Clone, Parser)]
#[command(name = "nim-backend", version, about, long_about)]
pub struct Config {
    /// Without a subcommand, the server runs.
    #[command(subcommand)]
    pub operation: Option<Operation>,

    /// Address and port the HTTP API listens on; port 0 picks a free port.
    #[arg(long, env = "NIM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the embedded database and generated keys; created when missing.
    #[arg(long, env = "NIM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Database connection string. Default: the SQLite file `<data dir>/nim.db`.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// Most open database connections.
    #[arg(long, env = "NIM_DB_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub db_max_connections: u32,

    /// Log line format; the level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "NIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Origins allowed to call the API from a browser, comma-separated (`*` allows any). Empty:
    /// no cross-origin access.
    #[arg(long, env = "NIM_CORS_ORIGINS", value_delimiter = ',', num_args = 0..)]
    pub cors_origins: Vec<String>,

    /// Bearer token `GET /metrics` requires (`Authorization: Bearer <token>`); compared in
    /// constant time and never logged. Unset: the metrics are public, like `/healthz`.
    #[arg(long, env = "NIM_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "NIM_BODY_LIMIT_BYTES", default_value_t = 1024 * 1024)]
    pub body_limit_bytes: usize,

    /// Seconds a request may take before it is answered with 503 `request_timeout`.
    #[arg(long, env = "NIM_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "NIM_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Secret that signs access tokens (HS256), at least 32 bytes. Default: generated into
    /// `<data dir>/jwt-secret` on first start and reused after.
    #[arg(long, env = "NIM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,

    /// `iss` claim of the access tokens the built-in provider issues.
    #[arg(long, env = "NIM_JWT_ISSUER", default_value = "nim-backend")]
    pub jwt_issuer: String,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "NIM_ACCESS_TOKEN_TTL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(30..=86_400))]
    pub access_token_ttl_secs: u64,

    /// Lifetime of a login session (how long refreshing keeps working), in seconds.
    #[arg(long, env = "NIM_SESSION_TTL_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(60..))]
    pub session_ttl_secs: u64,

    /// Login and signup attempts allowed per client address per minute.
    #[arg(long, env = "NIM_AUTH_RATE_LIMIT_PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_rate_limit_per_minute: u32,

    /// Folder of Terraform modules, one `<provider>/*.tf` folder each. Default: `./terraform`,
    /// else the `terraform/` folder of the source checkout this binary was built from.
    #[arg(long, env = "NIM_MODULES_DIR")]
    pub modules_dir: Option<PathBuf>,

    /// The Terraform (or OpenTofu) binary. Default: `terraform`, else `tofu`, on PATH.
    #[arg(long, env = "NIM_TERRAFORM_BIN")]
    pub terraform_bin: Option<PathBuf>,

    /// The nim-agent binary machines install: local machines and cloud machines download it
    /// from `GET /agent/download/<target>`. Default: `nim-agent` beside this
    /// executable. Hashed at start: restart the server after replacing it.
    #[arg(long, env = "NIM_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,

    /// Base URL at which cloud machines reach this server (e.g. `https://nim.example.com`); they
    /// download the agent from `<url>/agent/download/linux-x86_64`. Unset: cloud providers
    /// (aws, azure, gcp) answer 503 `agent_download_unavailable`; `local` works without it.
    #[arg(long, env = "NIM_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,

    /// Address range of `terraform/local` machines (IPv4, a /16 to a /22): each deployment gets a
    /// /26 of it on a bridge of its own; the first address is the host's, where machines download
    /// the agent. Never routed off the host. Replicas on one host must use the same range.
    #[arg(long, env = "NIM_LOCAL_NETWORK", default_value = "10.213.0.0/16")]
    pub local_network: String,

    /// Host directory holding every local machine's disk (by deployment id and machine name), so
    /// that any replica on this host finds the machines another one started.
    #[arg(long, env = "NIM_LOCAL_MACHINES_DIR", default_value = "/var/lib/nim-local")]
    pub local_machines_dir: PathBuf,

    /// First host uid of local machines: each machine's root is an unprivileged uid of its own,
    /// from this one up to 65,536 above it. No host account should use that range.
    #[arg(long, env = "NIM_LOCAL_UID_BASE", default_value_t = 1_000_000_000, value_parser = clap::value_parser!(u32).range(100_000..=4_000_000_000))]
    pub local_uid_base: u32,

    /// Local machines one user may have at once (in deployments not yet destroyed).
    #[arg(long, env = "NIM_LOCAL_MAX_MACHINES_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub local_max_machines_per_user: u32,

    /// Terraform runs allowed at once (one per deployment at most, always).
    #[arg(long, env = "NIM_MAX_CONCURRENT_RUNS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_concurrent_runs: u32,

    /// Seconds a run may take before it is stopped like a cancel and marked failed.
    #[arg(long = "run-timeout-secs", env = "NIM_RUN_TIMEOUT", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..))]
    pub run_timeout_secs: u64,

    /// Seconds Terraform gets after SIGINT (cancel, timeout, shutdown) before its process group is
    /// killed.
    #[arg(long, env = "NIM_RUN_CANCEL_GRACE_SECS", default_value_t = 60)]
    pub run_cancel_grace_secs: u64,

    /// This replica's name in run events and leases. Default: `<hostname>-<random>`.
    #[arg(long, env = "NIM_REPLICA_NAME")]
    pub replica_name: Option<String>,

    /// Seconds a worker's claim on a run lasts without renewal (renewed every third of it). A
    /// replica that dies holding a run loses it this long after; another takes it over.
    #[arg(long, env = "NIM_RUN_LEASE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub run_lease_secs: u64,

    /// Seconds after a successful apply within which every machine's agent must answer.
    #[arg(long, env = "NIM_READY_TIMEOUT_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_timeout_secs: u64,

    /// Seconds between two health checks of every ready deployment's machines.
    #[arg(long, env = "NIM_HEALTH_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub health_interval_secs: u64,

    /// Machines' agents the health checker calls at once, across all deployments.
    #[arg(long, env = "NIM_HEALTH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub health_concurrency: u32,

    /// Key (32 bytes, base64) sealing secrets at rest: agent tokens, TLS keys, sensitive
    /// variables. Default: generated into `<data dir>/encryption-key`. Losing it loses them.
    #[arg(long, env = "NIM_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<SecretString>,

    /// Take the client address from the last `X-Forwarded-For` entry (only behind a proxy that
    /// sets it; otherwise clients could pick their own address).
    #[arg(long, env = "NIM_TRUST_FORWARDED_FOR", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: bool,

    /// Supabase project URL (Dashboard → Project Settings → API → Project URL), e.g.
    /// `https://<ref>.supabase.co`. Together with `SUPABASE_ANON_KEY` it switches sign-in to the
    /// project's Supabase Auth instead of the built-in provider.
    #[arg(long, env = "SUPABASE_URL")]
    pub supabase_url: Option<String>,

    /// The project's public API key: the legacy `anon` JWT key or a `sb_publishable_…` key
    /// (Dashboard → Project Settings → API Keys).
    #[arg(long, env = "SUPABASE_ANON_KEY", hide_env_values = true)]
    pub supabase_anon_key: Option<SecretString>,

    /// Legacy JWT secret of the project (Dashboard → Project Settings → JWT Keys → Legacy JWT
    /// Secret), for projects that still sign tokens with HS256. Without it, HS256 tokens are
    /// checked with Supabase (`GET /auth/v1/user`, briefly cached). Not needed for ES256/RS256.
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub supabase_jwt_secret: Option<SecretString>,

    /// `iss` of the project's access tokens. Default: `<SUPABASE_URL>/auth/v1`, which is what
    /// hosted projects and the Supabase CLI issue; set it when a custom domain or a self-hosted
    /// `GOTRUE_JWT_ISSUER` differs.
    #[arg(long, env = "SUPABASE_JWT_ISSUER")]
    pub supabase_jwt_issuer: Option<String>,

    /// A secret API key (`sb_secret_…`). When set, signup and login are sent with it and with the
    /// end user's address in `Sb-Forwarded-For`, so Supabase rate-limits each user on their own
    /// address instead of all users on this server's.
    #[arg(long, env = "SUPABASE_SECRET_KEY", hide_env_values = true)]
    pub supabase_secret_key: Option<SecretString>,

    /// Seconds the project's signing keys (JWKS) are cached; an unknown key id refetches sooner.
    #[arg(long, env = "SUPABASE_JWKS_TTL_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub supabase_jwks_ttl_secs: u64,

    /// Strict revocation: also ask Supabase whether a token's session still exists, at most once
    /// per this many seconds per session (a logged-out session is refused within that time).
    /// Unset: tokens stay valid until they expire, as with any local JWT verification.
    #[arg(long, env = "SUPABASE_SESSION_CHECK_SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub supabase_session_check_secs: Option<u64>,

    /// Milliseconds to wait for a TCP/TLS connection to Supabase Auth.
    #[arg(long, env = "SUPABASE_CONNECT_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub supabase_connect_timeout_ms: u64,

    /// Milliseconds one request to Supabase Auth may take, connection included.
    #[arg(long, env = "SUPABASE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=120_000))]
    pub supabase_timeout_ms: u64,

    /// Retries of a Supabase Auth request that failed with 5xx or before reaching the server
    /// (4xx answers are never retried).
    #[arg(long, env = "SUPABASE_MAX_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub supabase_max_retries: u32,
}

/// What `nim-backend` does instead of serving; the options above still say where the data is.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Operation {
    /// Back up an embedded (SQLite) installation into PATH, a new directory: a consistent copy
    /// of the database (taken while the server runs), the generated secrets and every
    /// deployment's workspace with its Terraform state. With Postgres, use pg_dump (README).
    Backup {
        /// Directory to create (or an empty one).
        path: PathBuf,
    },
    /// Restore a backup made by `nim-backend backup` into the data directory. Stop the server
    /// first: the restore refuses while one holds the data directory.
    Restore {
        /// The backup directory.
        path: PathBuf,
        /// Replace a database already in the data directory.
        #[arg(long)]
        force: bool,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The database to use: `DATABASE_URL`, else the SQLite file in the data directory.
    pub fn database_url(&self) -> SecretString {
        match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let path = self.data_dir.join("nim.db");
                SecretString::from(format!("sqlite://{}?mode=rwc", path.display()))
            }
        }
    }

    /// Whether the database is the embedded SQLite one (any `sqlite:` URL), whose data directory
    /// one process owns.
    pub fn embedded_database(&self) -> bool {
        self.database_url().expose_secret().starts_with("sqlite:")
    }

    /// The modules folder to use (see `--modules-dir`).
    pub fn modules_dir(&self) -> PathBuf {
        if let Some(dir) = &self.modules_dir {
            return dir.clone();
        }
        let local = PathBuf::from("terraform");
        if local.is_dir() {
            return local;
        }
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../terraform"))
    }

    /// The agent binary to hand `terraform/local` (see `--agent-binary`).
    pub fn agent_binary(&self) -> PathBuf {
        if let Some(path) = &self.agent_binary {
            return path.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("nim-agent")))
            .unwrap_or_else(|| PathBuf::from("nim-agent"))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// A configuration with every default, as if started with no flags or environment; tests and
    /// benchmarks adjust it from there.
    pub fn defaults() -> Self {
        Self::parse_from(["nim-backend"])
    }
}

/// `NIM_PUBLIC_URL`: an absolute http(s) URL with no query or fragment, kept without a trailing
/// slash so paths can be appended.
fn parse_public_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|err| format!("not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must not have a query, fragment or credentials".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A database URL with any password replaced, for logs and error messages.
pub fn redact_database_url(url: &SecretString) -> String {
    let url = url.expose_secret();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_of_a_database_url() {
        let url = SecretString::from("postgres://nim:hunter2@db.example:5432/nim");
        assert_eq!(redact_database_url(&url), "postgres://nim:***@db.example:5432/nim");
        let url = SecretString::from("sqlite://data/nim.db?mode=rwc");
        assert_eq!(redact_database_url(&url), "sqlite://data/nim.db?mode=rwc");
    }

    #[test]
    fn defaults_need_no_configuration() {
        let config = Config::try_parse_from(["nim-backend"]).expect("defaults parse");
        // The environment may legitimately configure these; only check the defaults when not.
        if std::env::var_os("NIM_LISTEN").is_none() {
            assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        }
        if std::env::var_os("NIM_DATA_DIR").is_none() && std::env::var_os("DATABASE_URL").is_none()
        {
            assert_eq!(config.data_dir, PathBuf::from("./data"));
            assert!(config.database_url().expose_secret().starts_with("sqlite://./data/nim.db"));
        }
    }

    #[test]
    fn cors_origins_split_on_commas() {
        let config = Config::try_parse_from([
            "nim-backend",
            "--cors-origins",
            "https://a.example,https://b.example",
        ])
        .unwrap();
        assert_eq!(config.cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn the_public_url_is_an_http_url_kept_without_its_trailing_slash() {
        assert_eq!(
            parse_public_url("https://nim.example.com/").unwrap(),
            "https://nim.example.com"
        );
        assert_eq!(
            parse_public_url("http://10.0.0.5:8080/nim/").unwrap(),
            "http://10.0.0.5:8080/nim"
        );
        for bad in [
            "nim.example.com",
            "ftp://x.example",
            "https://x.example/?a=1",
            "https://u:p@x.example",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
        let err = Config::try_parse_from(["nim-backend", "--public-url", "nope"]).unwrap_err();
        assert!(err.to_string().contains("--public-url"), "{err}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
