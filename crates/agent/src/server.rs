//! The HTTPS server: binds the listener, terminates TLS with rustls, serves the router over
//! HTTP/1.1, and shuts down in order on SIGTERM (stop accepting, let commands finish for the
//! grace period, then kill them).

use std::{io::Write, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use secrecy::ExposeSecret;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{
    api::{self, AgentState},
    config::Config,
};

/// A TLS handshake that takes longer than this is abandoned (a port scanner, a stuck client).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once running commands are killed, how long their responses get to reach the client.
const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// A request's head must arrive within this; it also closes keep-alive connections idle this
/// long (hyper starts the timer while waiting for the next request). The backend's pool drops
/// idle connections sooner (20 s), so it never reuses one the agent is closing.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A built agent: listener bound, certificate loaded, not yet serving.
pub struct Agent {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    kill_running: CancellationToken,
    shutdown: CancellationToken,
    grace: Duration,
}

impl Agent {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(&config)?));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {} (--listen)", config.listen))?;
        let kill_running = CancellationToken::new();
        let state = AgentState {
            token: Arc::new(config.token),
            exec_slots: Arc::new(Semaphore::new(config.limits.max_concurrent_execs)),
            limits: Arc::new(config.limits),
            kill_running: kill_running.clone(),
        };
        Ok(Self {
            listener,
            acceptor,
            router: api::router(state),
            kill_running,
            shutdown: CancellationToken::new(),
            grace: config.shutdown_grace,
        })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Cancelling this token starts the same shutdown as SIGTERM.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM/SIGINT or the shutdown token.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let Self { listener, acceptor, router, kill_running, shutdown, grace } = self;
        tracing::info!(%addr, "listening");
        // For supervisors and tests that start the agent on port 0. A closed stdout is no
        // reason to stop serving, so a failed write is only logged.
        let announce = serde_json::json!({ "listening": addr.to_string() });
        if let Err(err) = writeln!(std::io::stdout(), "{announce}") {
            tracing::warn!(error = %err, "failed to print the listening address on stdout");
        }

        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let connections = GracefulShutdown::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Typically EMFILE: back off rather than spin.
                        tracing::error!(error = %err, "failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, router, watcher) =
                (acceptor.clone(), router.clone(), connections.watcher());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::info!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let service = hyper::service::service_fn(move |mut request| {
                    request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(err) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!(
            grace_secs = grace.as_secs(),
            "no longer accepting; waiting for running commands"
        );
        let all_closed = connections.shutdown();
        tokio::pin!(all_closed);
        tokio::select! {
            () = &mut all_closed => {}
            () = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; killing running commands");
                kill_running.cancel();
                if tokio::time::timeout(FINAL_FLUSH, &mut all_closed).await.is_err() {
                    tracing::warn!("connections still open; stopping anyway");
                }
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn tls_config(config: &Config) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(config.tls_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("failed to parse the TLS certificate (--tls-cert) as PEM")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the TLS certificate (--tls-cert) holds no CERTIFICATE block"
    );
    let key = PrivateKeyDer::from_pem_slice(config.tls_key_pem.expose_secret().as_bytes())
        .context("failed to parse the TLS key (--tls-key) as a PEM private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("failed to set up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key (--tls-cert, --tls-key) do not fit together")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM/SIGINT");
                return;
            }
        };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
        () = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}
