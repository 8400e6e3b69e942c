//! The agent's one HTTP error type. Every failure is answered as `application/problem+json`
//! (the same [`wire::Problem`] the backend uses), with a message that says what to change and
//! never an internal error's text.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use wire::{FieldError, Problem, problem::PROBLEM_JSON};

/// A JSON response body. Only for answers: axum's `Json` extractor would reject requests in
/// plain text, so `POST /v1/exec` parses its body itself (see `api::parse_exec_request`).
pub(crate) struct Json<T>(pub(crate) T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => {
                ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                    .into_response()
            }
            Err(err) => {
                ApiError::Internal(anyhow::Error::new(err).context("failed to encode a response"))
                    .into_response()
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("{limit} commands are already running; retry later")]
    TooManyExecs { limit: usize },
    #[error("{0}")]
    SpawnFailed(String),
    #[error("the agent failed")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json", "Invalid JSON"),
            Self::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large")
            }
            Self::Validation(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "Validation failed")
            }
            Self::TooManyExecs { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_execs", "Too many running commands")
            }
            Self::SpawnFailed(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "spawn_failed", "The command could not start")
            }
            Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal agent error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let detail = match &self {
            Self::Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            Self::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed");
                self.to_string()
            }
            other => other.to_string(),
        };
        let errors = match self {
            Self::Validation(errors) => errors,
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: Problem::type_uri(code),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            errors,
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
