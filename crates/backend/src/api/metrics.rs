//! `GET /metrics`: the Prometheus scrape endpoint (see `crate::metrics` for what it holds).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::{ConnectInfo, State},
    http::{HeaderMap, header},
    response::IntoResponse,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::Problem;

use super::{ApiError, AppState, extract::bearer_token};
use crate::{metrics, store::Store};

/// How long a scrape waits for the database's counts before answering without them.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// `NIM_METRICS_TOKEN`, when set; only its digest is kept, so comparing takes the same time
/// whatever the length of what a caller sends.
#[derive(Clone, Default)]
pub(super) struct MetricsAccess(Option<Arc<[u8; 32]>>);

impl MetricsAccess {
    pub(super) fn new(token: Option<&SecretString>) -> Self {
        Self(token.map(|token| Arc::new(digest(token.expose_secret()))))
    }

    /// With a token, only its bearer passes. Without one, only a scraper on this host does (a
    /// loopback peer, not relaying anyone through `X-Forwarded-For`): the counts describe every
    /// user's runs and machines, which no user of the API may see of the others.
    fn check(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.0 else {
            let local = peer.is_some_and(|peer| peer.ip().is_loopback())
                && !headers.contains_key("x-forwarded-for");
            return match local {
                true => Ok(()),
                false => Err(ApiError::Unauthorized {
                    code: "metrics_token_required",
                    detail: "without NIM_METRICS_TOKEN, /metrics answers only scrapers on this host; set it to scrape from elsewhere".into(),
                }),
            };
        };
        let presented = bearer_token(headers)?;
        match bool::from(digest(presented).ct_eq(expected.as_ref())) {
            true => Ok(()),
            false => Err(ApiError::Unauthorized {
                code: "invalid_token",
                detail: "this is not the metrics token (NIM_METRICS_TOKEN)".into(),
            }),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_metrics))
}

/// The path Prometheus scrapes.
pub(super) const METRICS_PATH: &str = "/metrics";

/// Prometheus metrics in the text exposition format (0.0.4): HTTP requests, runs, commands,
/// machines, the database pool and the process. When the server has `NIM_METRICS_TOKEN`, it
/// requires that token as a bearer token; otherwise only a scraper on the server's own host
/// (a loopback peer, no `X-Forwarded-For`) may read it.
#[utoipa::path(get, path = "/metrics", tag = "health",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Every metric, in Prometheus' text format", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, description = "A metrics token is configured and the request does not carry it (`no_authorization`, `invalid_token`), or none is and the scraper is not on this host (`metrics_token_required`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_metrics(
    State(store): State<Store>,
    Extension(access): Extension<MetricsAccess>,
    // What the listener recorded of the TCP peer (absent only in tests that skip the listener).
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    access.check(peer.map(|Extension(ConnectInfo(peer))| peer), &headers)?;
    let counts = async { tokio::join!(store.active_run_counts(), store.machine_health_counts()) };
    let (runs, machines) = match tokio::time::timeout(DB_TIMEOUT, counts).await {
        Ok((runs, machines)) => (runs, machines),
        Err(_) => {
            tracing::warn!("the database did not answer a metrics scrape in time");
            return Ok((
                [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                render(&store, None, None),
            ));
        }
    };
    let text = render(&store, logged(runs), logged(machines));
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text))
}

/// The counts, or `None` (logged) when the database failed to give them.
fn logged<T>(result: Result<T, crate::store::StoreError>) -> Option<T> {
    result.map_err(|err| tracing::warn!(error = %err, "metrics scrape: database counts")).ok()
}

fn render(
    store: &Store,
    runs: Option<Vec<(String, String, i64)>>,
    machines: Option<Vec<(String, i64)>>,
) -> String {
    metrics::render(&metrics::Snapshot { runs, machines, pool: store.pool_state() })
}
