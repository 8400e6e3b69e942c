//! The plan's `index.ts`: builds configuration, services and the router, binds the listener and
//! serves until a signal. `main.rs` is a shim over [`Application`]; tests build one the same way.

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState, AuthRateLimiter, ClientAddrSource, RequestTimeout},
    config::{Config, redact_database_url},
    datadir::{self, DataDirLock},
    secrets::{self, SecretBox},
    services::{
        agent_download::AgentDistribution,
        auth::{AuthService, JwtKeys, LocalAuth, SupabaseAuth, SupabaseOptions},
        cloud_client::{CloudClientConfig, CloudClientService},
        commands::CommandService,
        deployments::{DeploymentDeps, DeploymentService},
        events::EventBus,
        health::HealthChecker,
        local_machines::{LocalMachines, LocalSettings},
        runs::{RunWorker, WorkerSettings},
        terraform::{ModuleCatalog, Terraform, TerraformService},
    },
    store::Store,
};

/// A built server: listener bound, database migrated, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// Local machines' view of this server (the agent download), when they are available.
    machine_facing: Option<(TcpListener, axum::Router)>,
    store: Store,
    config: Config,
    worker: RunWorker,
    bus: EventBus,
    health: HealthChecker,
    commands: CommandService,
    shutdown: CancellationToken,
    /// Held until the server has stopped (embedded database only).
    data_dir_lock: Option<DataDirLock>,
}

impl Application {
    /// Prepares everything the server needs; fails with a message naming the setting to fix.
    /// Longer than our usual function on purpose: it is the one place that wires the services
    /// together, in the order they depend on each other, and reads top to bottom as that list.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        datadir::prepare(&config.data_dir)?;
        let database_url = config.database_url();
        // One process owns an embedded database; Postgres replicas share theirs by design.
        let data_dir_lock = match config.embedded_database() {
            true => Some(datadir::lock(&config.data_dir)?),
            false => None,
        };
        let store = Store::connect(&database_url, config.db_max_connections).await?;
        tracing::info!(database = %redact_database_url(&database_url), "database ready");

        let auth = build_auth(&config, store.clone()).await?;
        let (deployments, terraform, machine_listener) =
            build_deployments(&config, store.clone()).await?;
        let bus = EventBus::default();
        let cloud = Arc::new(CloudClientService::new(CloudClientConfig::default()));
        let shutdown = CancellationToken::new();
        // One name for this replica in run and command leases and in run events.
        let replica = config.replica_name.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
            format!("{}-{}", host.unwrap_or_else(|| "nim".into()), uuid::Uuid::new_v4().simple())
        });
        let lease = std::time::Duration::from_secs(config.run_lease_secs);
        let commands = CommandService::new(
            deployments.clone(),
            cloud.clone(),
            shutdown.clone(),
            replica.clone(),
            lease,
        );
        let health = HealthChecker::new(
            deployments.clone(),
            cloud.clone(),
            Duration::from_secs(config.health_interval_secs),
            config.health_concurrency as usize,
        );
        let worker = RunWorker::new(
            deployments.clone(),
            terraform,
            cloud,
            bus.clone(),
            WorkerSettings {
                max_concurrent_runs: config.max_concurrent_runs as usize,
                run_timeout: std::time::Duration::from_secs(config.run_timeout_secs),
                ready_timeout: std::time::Duration::from_secs(config.ready_timeout_secs),
                lease,
            },
            Some(replica),
        );
        // The embedded database has exactly one process: whatever it left running died with it.
        // With Postgres other replicas may be running theirs; only lapsed leases count.
        let recovered = worker.recover(!store.is_postgres(), true).await?;
        if recovered > 0 {
            tracing::warn!(runs = recovered, "found runs interrupted by the last stop");
        }
        let interrupted = commands.recover(!store.is_postgres(), true).await?;
        if interrupted > 0 {
            tracing::warn!(commands = interrupted, "found commands interrupted by the last stop");
        }
        let per_minute = NonZeroU32::new(config.auth_rate_limit_per_minute)
            .context("NIM_AUTH_RATE_LIMIT_PER_MINUTE must be at least 1")?;
        let state = AppState {
            store: store.clone(),
            auth,
            auth_rate_limiter: Arc::new(AuthRateLimiter::per_minute(per_minute)),
            client_addr: ClientAddrSource { trust_forwarded_for: config.trust_forwarded_for },
            deployments: Arc::new(deployments),
            commands: commands.clone(),
            bus: bus.clone(),
            request_timeout: RequestTimeout(config.request_timeout()),
        };
        let machine_router = api::machine_router(state.clone());
        let router = api::router(state, &config);

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {} (NIM_LISTEN)", config.listen))?;
        let machine_facing = machine_listener.map(|listener| (listener, machine_router));
        Ok(Self {
            listener,
            router,
            machine_facing,
            store,
            config,
            worker,
            bus,
            health,
            commands,
            shutdown,
            data_dir_lock,
        })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The run worker, not yet started: the worker's own tests drive its claim step directly.
    #[cfg(test)]
    pub(crate) fn worker(&self) -> &RunWorker {
        &self.worker
    }

    /// Cancelling this token stops the server as SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM/SIGINT (or the shutdown token), then lets in-flight requests and
    /// runs finish for up to the configured grace period. The HTTP server, the run worker and the
    /// health checker are sibling tasks: if one stops on its own, the others are stopped too and
    /// the cause reported. Running commands are interrupted (their agents kill them) and
    /// recorded as such before the server's last responses go out. One function on purpose: the
    /// order (start the siblings, wait for the first to stop, cancel the rest, wait for commands
    /// and siblings within the grace period, then close the store) is the point, and it reads
    /// best as one sequence.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let Self {
            listener,
            router,
            machine_facing,
            store,
            config,
            worker,
            bus,
            health,
            commands,
            shutdown,
            data_dir_lock,
        } = self;
        tracing::info!(%addr, "listening");

        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let graceful = shutdown.clone();
        let server =
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { graceful.cancelled().await });
        let mut server = tokio::spawn(server.into_future());
        // What local machines reach of this server: the agent download, nothing else.
        let machine_server = machine_facing.map(|(listener, router)| {
            let graceful = shutdown.clone();
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { graceful.cancelled().await })
                    .into_future(),
            )
        });
        let mut worker = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        let mut health = tokio::spawn(health.run_until_stopped(shutdown.clone()));
        let leases = tokio::spawn(commands.clone().keep_leases_until_stopped(shutdown.clone()));
        // Other replicas' run events (Postgres only; returns at once on SQLite).
        let listener = {
            let (store, bus) = (store.clone(), bus.clone());
            tokio::spawn(async move { store.listen_events(move |id| bus.publish(id)).await })
        };

        let first = tokio::select! {
            result = &mut server => ("the HTTP server", result),
            result = &mut worker => ("the run worker", result.map(|r| r.map_err(std::io::Error::other))),
            result = &mut health => ("the health checker", result.map(|r| r.map_err(std::io::Error::other))),
        };
        let mut result: anyhow::Result<()> = match first {
            (_, Ok(Ok(()))) if shutdown.is_cancelled() => Ok(()),
            (name, Ok(Ok(()))) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
            (name, Ok(Err(err))) => Err(anyhow::Error::new(err).context(format!("{name} failed"))),
            (name, Err(err)) => Err(anyhow::Error::new(err).context(format!("{name} panicked"))),
        };
        if let Err(err) = &result {
            tracing::error!(error = format!("{err:#}"), "shutting down");
        }
        shutdown.cancel();
        bus.close();

        let grace = config.shutdown_grace();
        let rest = async {
            commands.wait_idle().await;
            if !health.is_finished() {
                let _ = (&mut health).await;
            }
            if !server.is_finished() {
                let _ = (&mut server).await;
            }
            if !worker.is_finished() {
                let _ = (&mut worker).await;
            }
        };
        if tokio::time::timeout(grace, rest).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "still busy after the grace period; stopping anyway"
            );
            server.abort();
            worker.abort();
            health.abort();
            if result.is_ok() {
                result = Ok(());
            }
        }
        listener.abort();
        leases.abort();
        if let Some(machine_server) = machine_server {
            machine_server.abort();
        }
        store.close().await;
        drop(data_dir_lock);
        tracing::info!("stopped");
        result
    }
}

/// The deployment service and the Terraform service it and the run worker share, and the
/// machine-facing listener when local machines are available.
async fn build_deployments(
    config: &Config,
    store: Store,
) -> anyhow::Result<(DeploymentService, Arc<TerraformService>, Option<TcpListener>)> {
    let store_is_postgres = store.is_postgres();
    let modules_dir = config.modules_dir();
    let catalog = ModuleCatalog::load(&modules_dir)?;
    tracing::info!(dir = %modules_dir.display(), providers = ?catalog.names().collect::<Vec<_>>(), "modules loaded");
    let terraform = discover_terraform(config).await;
    let agent_distribution = agent_distribution(config, &catalog);
    let key = match &config.encryption_key {
        Some(key) => key.clone(),
        // Replicas sharing a database must share the key; a per-replica generated one would
        // leave each unable to open the others' deployments.
        None if store_is_postgres => anyhow::bail!(
            "with a Postgres DATABASE_URL, set NIM_ENCRYPTION_KEY (32 random bytes, base64, e.g. `openssl rand -base64 32`) to the same value on every replica"
        ),
        None => secrets::load_or_generate(&config.data_dir.join("encryption-key"), 32)?,
    };
    let mut local = LocalMachines::prepare(LocalSettings {
        network: LocalSettings::parse_network(&config.local_network)?,
        machines_dir: config.local_machines_dir.clone(),
        uid_base: config.local_uid_base,
        max_machines_per_user: config.local_max_machines_per_user,
    })
    .await;
    let machine_listener = match local.available {
        Ok(()) => {
            let addr = SocketAddr::from((local.settings.gateway_address(), 0));
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("failed to listen on the machine-facing address {addr}")
            })?;
            let bound = listener.local_addr().context("the machine listener has no address")?;
            tracing::info!(%bound, machines_dir = %local.settings.machines_dir.display(), "local machines ready; they download the agent here");
            local.download_base = Some(format!("http://{bound}"));
            Some(listener)
        }
        Err(_) => None,
    };
    let terraform = Arc::new(TerraformService::new(
        terraform,
        store_is_postgres.then(|| config.database_url()),
        store.clone(),
        std::time::Duration::from_secs(config.run_cancel_grace_secs),
    ));
    let deployments = DeploymentService::new(DeploymentDeps {
        store,
        catalog,
        terraform: terraform.clone(),
        secret_box: SecretBox::new(&key)?,
        data_dir: std::fs::canonicalize(&config.data_dir)
            .with_context(|| format!("failed to resolve {}", config.data_dir.display()))?,
        agent_distribution,
        local,
    });
    Ok((deployments, terraform, machine_listener))
}

/// The Terraform CLI, or why there is none (provisioning then answers 503).
async fn discover_terraform(config: &Config) -> Result<Terraform, String> {
    match Terraform::discover(
        config.terraform_bin.as_deref(),
        &config.data_dir.join("plugin-cache"),
    )
    .await
    {
        Ok(terraform) => {
            tracing::info!(version = terraform.version(), "terraform ready");
            Ok(terraform)
        }
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "terraform is not available: provisioning will answer 503"
            );
            Err(format!("{err:#}"))
        }
    }
}

/// The agent binary cloud machines download, said in the log either way.
fn agent_distribution(config: &Config, catalog: &ModuleCatalog) -> AgentDistribution {
    let agent_binary = config.agent_binary();
    let agent_distribution = AgentDistribution::new(&agent_binary, config.public_url.clone());
    match &agent_distribution.binary {
        Some(binary) => {
            tracing::info!(path = %binary.path.display(), target = %binary.target, sha256 = %binary.sha256, public_url = ?config.public_url, "agent binary ready for download")
        }
        None => tracing::warn!(
            reason = agent_distribution.missing_reason.as_deref().unwrap_or_default(),
            "no agent binary to serve: cloud providers will answer 503"
        ),
    }
    if config.public_url.is_none()
        && catalog.modules().any(|m| m.variables.contains_key("agent_download_url"))
    {
        tracing::warn!("NIM_PUBLIC_URL is not set: cloud providers will answer 503 until it is");
    }
    agent_distribution
}

async fn build_auth(config: &Config, store: Store) -> anyhow::Result<Arc<dyn AuthService>> {
    // An empty variable (`SUPABASE_URL=` in a `.env`) counts as unset.
    let url = config.supabase_url.as_deref().map(str::trim).filter(|url| !url.is_empty());
    let anon_key =
        config.supabase_anon_key.as_ref().filter(|key| !key.expose_secret().trim().is_empty());
    let auth: Arc<dyn AuthService> = match (url, anon_key) {
        (Some(url), Some(anon_key)) => Arc::new(SupabaseAuth::new(SupabaseOptions {
            url: url.to_owned(),
            anon_key: anon_key.clone(),
            jwt_secret: config.supabase_jwt_secret.clone(),
            issuer: config.supabase_jwt_issuer.clone(),
            secret_key: config.supabase_secret_key.clone(),
            jwks_ttl: Duration::from_secs(config.supabase_jwks_ttl_secs),
            session_check_interval: config.supabase_session_check_secs.map(Duration::from_secs),
            connect_timeout: Duration::from_millis(config.supabase_connect_timeout_ms),
            timeout: Duration::from_millis(config.supabase_timeout_ms),
            max_retries: config.supabase_max_retries,
        })?),
        (Some(_), None) => anyhow::bail!(
            "SUPABASE_URL is set but SUPABASE_ANON_KEY is not; set both to use Supabase Auth, or neither for the built-in provider"
        ),
        (None, Some(_)) => anyhow::bail!(
            "SUPABASE_ANON_KEY is set but SUPABASE_URL is not; set both to use Supabase Auth, or neither for the built-in provider"
        ),
        (None, None) => {
            let secret = match &config.jwt_secret {
                Some(secret) => secret.clone(),
                // Every replica must verify the tokens the others issue.
                None if store.is_postgres() => anyhow::bail!(
                    "with a Postgres DATABASE_URL and the built-in auth provider, set NIM_JWT_SECRET (at least 32 bytes) to the same value on every replica"
                ),
                None => secrets::load_or_generate(&config.data_dir.join("jwt-secret"), 32)?,
            };
            let keys = JwtKeys::new(&secret, &config.jwt_issuer)?;
            Arc::new(
                LocalAuth::new(store, keys, config.access_token_ttl_secs, config.session_ttl_secs)
                    .await?,
            )
        }
    };
    tracing::info!(provider = auth.provider(), "auth ready");
    Ok(auth)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
