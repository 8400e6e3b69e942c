//! The plan's `index.ts`: builds configuration, services and the router, binds the listener and
//! serves until a signal. `main.rs` is a shim over [`Application`]; tests build one the same way.

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState, AuthRateLimiter, ClientAddrSource},
    config::{Config, redact_database_url},
    secrets,
    services::auth::{AuthService, JwtKeys, LocalAuth, SupabaseAuth, SupabaseOptions},
    store::Store,
};

/// A built server: listener bound, database migrated, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    config: Config,
    shutdown: CancellationToken,
}

impl Application {
    /// Prepares everything the server needs; fails with a message naming the setting to fix.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "failed to create the data directory {} (NIM_DATA_DIR)",
                config.data_dir.display()
            )
        })?;
        let database_url = config.database_url();
        let store = Store::connect(&database_url, config.db_max_connections).await?;
        tracing::info!(database = %redact_database_url(&database_url), "database ready");

        let auth = build_auth(&config, store.clone()).await?;
        let per_minute = NonZeroU32::new(config.auth_rate_limit_per_minute)
            .context("NIM_AUTH_RATE_LIMIT_PER_MINUTE must be at least 1")?;
        let state = AppState {
            store: store.clone(),
            auth,
            auth_rate_limiter: Arc::new(AuthRateLimiter::per_minute(per_minute)),
            client_addr: ClientAddrSource { trust_forwarded_for: config.trust_forwarded_for },
        };
        let router = api::router(state, &config);

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {} (NIM_LISTEN)", config.listen))?;
        Ok(Self { listener, router, store, config, shutdown: CancellationToken::new() })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Cancelling this token stops the server as SIGTERM would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM/SIGINT (or the shutdown token), then lets in-flight requests finish
    /// for up to the configured grace period.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let Self { listener, router, store, config, shutdown } = self;
        tracing::info!(%addr, "listening");

        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let graceful = shutdown.clone();
        let server =
            axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { graceful.cancelled().await });
        let mut server = std::pin::pin!(server.into_future());

        let grace = config.shutdown_grace();
        let result = tokio::select! {
            result = &mut server => result.context("the HTTP server failed"),
            () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        store.close().await;
        tracing::info!("stopped");
        result
    }
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
