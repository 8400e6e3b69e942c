//! The plan's `FrontendService`: every route, and the middleware around them (request ids,
//! tracing, panics, CORS, body limit, timeout). Routes come only from the feature routers below,
//! each registered through `utoipa_axum::routes!`, so a route cannot exist without its OpenAPI
//! description.

use std::{any::Any, sync::Arc, time::Duration};

use axum::{
    Extension, Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, Any as AnyOrigin, CorsLayer},
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::router::OpenApiRouter;
use wire::{FieldError, Problem};

use super::{
    ApiError, AppState, agent, auth, commands, console, docs, health, infrastructure, metrics,
};
use crate::config::Config;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nim-backend",
        description = "Multi-cloud provisioning control plane. Errors are `application/problem+json` (RFC 9457) with a stable `code`.",
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "auth", description = "Sign up, log in, refresh and log out"),
        (name = "infrastructure", description = "Provider modules, deployments, runs and their events"),
        (name = "commands", description = "Commands run on a deployment's machines, and their history"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "agent", description = "The nim-agent binary cloud machines install"),
        (name = "docs", description = "This API's description"),
        (name = "console", description = "The web console, served by this server"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from `POST /auth/login`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`NIM_METRICS_TOKEN`, when the server is configured with one",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every feature's routes with their documentation; the one list of what the API serves.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(auth::router())
        .merge(infrastructure::router())
        .merge(commands::router())
        .merge(agent::router())
        .merge(docs::router())
        .merge(metrics::router())
        .merge(console::router())
}

/// The OpenAPI document of everything [`router`] serves, with the answers every operation
/// shares (`openapi::complete`), as JSON: what `GET /openapi.json` answers.
pub fn openapi() -> serde_json::Value {
    let (_, api) = routes().split_for_parts();
    completed(&api)
}

fn completed(api: &utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    super::openapi::complete(&mut doc);
    doc
}

/// The complete HTTP service.
pub fn router(state: AppState, config: &Config) -> Router {
    let (routes, api) = routes().split_for_parts();
    let api = completed(&api);
    let api_json = api.to_string();
    let timeout = config.request_timeout();
    let templates = api["paths"].as_object().into_iter().flat_map(|paths| paths.keys());
    let http_routes = crate::metrics::HttpRoutes::new(templates.map(String::as_str));

    let middleware = ServiceBuilder::new()
        // Outermost, so a request's latency and status are what the client saw (timeouts and
        // panics included).
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            crate::metrics::track_http(http_routes.clone(), request, next)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, SequentialRequestId::new()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .extensions()
                        .get::<RequestId>()
                        .and_then(|id| id.header_value().to_str().ok())
                        .unwrap_or_default();
                    // `debug`: at `info` the span (its fields formatted for every request) cost
                    // 40% of `/healthz`'s throughput. Error lines carry the request id through
                    // `request_context` instead.
                    tracing::debug_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                    )
                })
                // One line per request only at `debug`: at `info` it was the largest cost of a
                // cheap read. 5xx answers are logged at `error` by `request_context`.
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(middleware::from_fn(request_context))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(tower::util::option_layer(cors(&config.cors_origins)))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            time_limit(timeout, request, next)
        }));

    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(docs::OpenApiJson(Arc::new(api_json))))
        .layer(Extension(metrics::MetricsAccess::new(config.metrics_token.as_ref())))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware)
        .with_state(state)
}

/// What local machines reach of this server, on its machine-facing address: the agent download
/// and nothing else (no API, no sign-in), as a cloud machine would need of the public URL.
pub fn machine_router(state: AppState) -> Router {
    let (routes, _) = OpenApiRouter::new().merge(agent::router()).split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

tokio::task_local! {
    /// The request id of the request this task serves.
    static CURRENT_REQUEST_ID: HeaderValue;
}

/// The id of the request being served, for the log lines of its errors; empty outside one.
pub(super) fn current_request_id() -> String {
    CURRENT_REQUEST_ID.try_with(|id| id.to_str().unwrap_or_default().to_owned()).unwrap_or_default()
}

/// Makes the request id available to the request's log lines (a task-local: nearly free, unlike
/// an `info` span) and logs every 5xx answer at `error` with method, path, id, status and time.
async fn request_context(request: Request, next: Next) -> Response {
    let id = request.headers().get(REQUEST_ID).cloned().unwrap_or(HeaderValue::from_static(""));
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let started = std::time::Instant::now();
    let response = CURRENT_REQUEST_ID.scope(id.clone(), next.run(request)).await;
    if response.status().is_server_error() {
        tracing::error!(
            method = %method,
            path = uri.path(),
            request_id = id.to_str().unwrap_or_default(),
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "request failed"
        );
    }
    response
}

/// Request ids for requests that bring none: UUID-shaped, a random 128-bit base fixed at start
/// plus a counter. Unique within the process and unlikely to meet another process's; cheaper than
/// a fresh random UUID per request (which asks the kernel for entropy each time). They identify
/// a request in logs; nothing relies on them being unguessable.
#[derive(Clone)]
struct SequentialRequestId {
    base: u128,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl SequentialRequestId {
    fn new() -> Self {
        Self { base: uuid::Uuid::new_v4().as_u128(), next: Arc::default() }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = uuid::Uuid::from_u128(self.base.wrapping_add(u128::from(n)));
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = id.hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// The CORS policy for `NIM_CORS_ORIGINS`; none at all (same-origin only) when it is empty.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::from(AnyOrigin)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|origin| match origin.parse::<HeaderValue>() {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(origin, "ignoring an unusable NIM_CORS_ORIGINS entry");
                None
            }
        }))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            // Browsers following a run with `fetch` resume the event stream with it.
            HeaderName::from_static("last-event-id"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID, header::RETRY_AFTER, header::LOCATION])
        .max_age(Duration::from_secs(3600));
    Some(layer)
}

/// Routes the request time limit does not apply to, each bounded some other way: a waiting
/// command lasts as long as its command (at most `timeout_s` per machine and round of
/// `max_concurrency`); the liveness probe awaits nothing, and a timer registration per probe
/// was the largest cost left on it (measured: BENCHMARKS.md). (Streams such as SSE need no
/// entry: the limit ends when the response head is sent.)
const UNTIMED_ROUTES: &[(Method, &str)] =
    &[(Method::POST, commands::SEND_COMMAND_PATH), (Method::GET, health::LIVENESS_PATH)];

/// Answers 503 `request_timeout` when a request outlives the configured limit. Dropping the
/// handler's future cancels its work at the next await point. The layer runs after routing, so
/// the matched route decides whether it is one of [`UNTIMED_ROUTES`].
async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    if UNTIMED_ROUTES
        .iter()
        .any(|(method, path)| request.method() == method && matched == Some(path))
    {
        return next.run(request).await;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_secs = limit.as_secs(), "request timed out");
            ApiError::Timeout.into_response()
        }
    }
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::to_bytes, routing::get};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_over_the_time_limit_is_answered_503_problem_json() {
        let limit = Duration::from_millis(50);
        let app = Router::new()
            .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }))
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                time_limit(limit, request, next)
            }));
        let response = app
            .oneshot(Request::get("/slow").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let problem: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem.code, "request_timeout");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_that_leaks_nothing() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("secret internals");
                    }
                    "unreachable"
                }),
            )
            .layer(CatchPanicLayer::custom(panic_response));
        let response = app
            .oneshot(Request::get("/boom").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let problem: Problem = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem.code, "internal_error");
        assert!(!String::from_utf8_lossy(&body).contains("secret"));
    }

    /// Routes registered with plain axum calls would escape the OpenAPI document, so the API
    /// sources may only register them through `utoipa_axum::routes!`. Together with the
    /// integration test that every documented operation is served, the document and the router
    /// cannot drift apart.
    #[test]
    fn every_route_is_registered_through_the_openapi_router() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut offenders = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let source = std::fs::read_to_string(&path).unwrap();
            // This file's own tests build throwaway routers; only its non-test part counts.
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            for forbidden in [".route(", ".route_service(", ".nest(", ".nest_service("] {
                if source.contains(forbidden) {
                    offenders.push(format!("{} uses {forbidden}", path.display()));
                }
            }
        }
        assert!(offenders.is_empty(), "undocumented routes: {offenders:?}");
        // And the document covers the probes, so the scan above is not vacuous.
        let doc = openapi();
        for (method, path) in UNTIMED_ROUTES {
            let item = doc["paths"].get(*path).unwrap_or_else(|| panic!("{path} is not served"));
            let operation = item.get(method.as_str().to_ascii_lowercase());
            assert!(operation.is_some(), "{method} {path} is not served");
        }
        assert!(doc["paths"].get("/healthz").is_some());
        assert!(doc["paths"].get("/auth/login").is_some());
        assert!(doc["paths"].get("/metrics").is_some());
    }
}
