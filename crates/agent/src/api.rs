//! The agent's three endpoints and the bearer-token check in front of two of them.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{
        ConnectInfo, DefaultBodyLimit, FromRef, FromRequestParts, State, rejection::BytesRejection,
    },
    http::{StatusCode, header, request::Parts},
    routing::{get, post},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wire::{ExecRequest, ExecResponse, HealthResponse, InfoResponse};

use crate::{
    config::Limits,
    error::{ApiError, Json},
    exec::ExecPlan,
    info,
};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct AgentState {
    pub(crate) token: Arc<SecretString>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) exec_slots: Arc<Semaphore>,
    /// Cancelled when SIGTERM's grace period is over: running commands are killed.
    pub(crate) kill_running: CancellationToken,
}

pub(crate) fn router(state: AgentState) -> Router {
    let body_limit = state.limits.max_request_bytes;
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/info", get(machine_info))
        .route("/v1/exec", post(exec))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}

async fn machine_info(_: Authorized) -> Result<Json<InfoResponse>, ApiError> {
    Ok(Json(info::machine_info().await?))
}

async fn exec(
    State(state): State<AgentState>,
    _: Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecResponse>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { limit: state.limits.max_request_bytes }
        }
        _ => ApiError::InvalidJson(rejection.body_text()),
    })?;
    let request = parse_exec_request(&body)?;
    let plan = ExecPlan::new(request, &state.limits).await?;
    let _slot = state
        .exec_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyExecs { limit: state.limits.max_concurrent_execs })?;
    Ok(Json(plan.run(state.limits.output_cap_bytes, state.kill_running.clone()).await?))
}

/// Syntax errors are 400; a well-formed body of the wrong shape (an unknown field, a string
/// where a list belongs) is 422 naming the field.
fn parse_exec_request(body: &[u8]) -> Result<ExecRequest, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let request = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::invalid(&field, strip_position(&inner.to_string()))
        } else {
            ApiError::InvalidJson(inner.to_string())
        }
    })?;
    deserializer.end().map_err(|err| ApiError::InvalidJson(err.to_string()))?;
    Ok(request)
}

/// serde_json appends ` at line 1 column 42`, which helps nobody reading a field error.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Proof that the request carried this deployment's bearer token. A wrong or missing token is
/// logged with the caller's address and answered 401.
pub(crate) struct Authorized;

impl<S> FromRequestParts<S> for Authorized
where
    AgentState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = AgentState::from_ref(state);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
        let Some(presented) = presented else {
            tracing::warn!(?peer, path = %parts.uri.path(), "request without a bearer token refused");
            return Err(ApiError::Unauthorized);
        };
        // Constant time in the token's content; only its length can leak, and the backend's
        // tokens all have the same length.
        if bool::from(presented.as_bytes().ct_eq(state.token.expose_secret().as_bytes())) {
            Ok(Authorized)
        } else {
            tracing::warn!(?peer, path = %parts.uri.path(), "request with a wrong bearer token refused");
            Err(ApiError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_field_is_a_field_error_without_a_position() {
        let Err(ApiError::Validation(errors)) =
            parse_exec_request(br#"{"argv":["true"],"bogus":1}"#)
        else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "bogus");
        assert!(errors[0].message.starts_with("unknown field `bogus`"), "{}", errors[0].message);
        assert!(!errors[0].message.contains("line"), "{}", errors[0].message);
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let Err(ApiError::Validation(errors)) = parse_exec_request(br#"{"argv":"ls"}"#) else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "argv");
    }

    #[test]
    fn broken_json_is_a_syntax_error() {
        assert!(matches!(parse_exec_request(br#"{"argv":["#), Err(ApiError::InvalidJson(_))));
        assert!(matches!(parse_exec_request(br#"{} {}"#), Err(ApiError::InvalidJson(_))));
    }
}
