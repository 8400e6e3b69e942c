//! The one HTTP error type. Every handler and extractor returns [`ApiError`]; its `IntoResponse`
//! writes RFC 9457 problem+json, and only this file turns domain errors into status codes.

use std::time::Duration;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use wire::{FieldError, Problem, problem::PROBLEM_JSON};

use crate::services::{auth::AuthError, commands::CommandError, deployments::DeploymentError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood (malformed JSON, wrong credentials, ...).
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// 401 with `WWW-Authenticate: Bearer`.
    #[error("{detail}")]
    Unauthorized { code: &'static str, detail: String },
    /// 403: understood and authenticated, but not allowed (banned user, unconfirmed email, ...).
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    /// 404, also for resources that exist but belong to someone else.
    #[error("{detail}")]
    NotFound { detail: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("request body is larger than the limit")]
    PayloadTooLarge,
    #[error("{detail}")]
    UnsupportedMediaType { detail: String },
    /// 422: understood but invalid; `errors` says which fields.
    #[error("{detail}")]
    Validation { code: &'static str, detail: String, errors: Vec<FieldError> },
    #[error("too many requests")]
    RateLimited { retry_after: Duration },
    /// 503: a dependency (database, auth provider) is not answering.
    #[error("{detail}")]
    Unavailable { code: &'static str, detail: String },
    /// 503: the request took longer than the configured limit.
    #[error("request timed out")]
    Timeout,
    /// 500: logged with its cause; the caller learns nothing of it.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest { code, detail: detail.into() }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::NotFound { detail: detail.into() }
    }

    /// 422 `validation_failed` for the given fields.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::Validation { code: "validation_failed", detail, errors }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            Self::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request_entity_too_large"),
            Self::UnsupportedMediaType { .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::Validation { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit"),
            Self::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The problem+json body this error is answered with.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.parts();
        let detail = match self {
            Self::Internal(_) => {
                "the server failed to handle this request; it has been logged with its request id"
                    .to_owned()
            }
            Self::RateLimited { retry_after } => format!(
                "too many attempts from this address; try again in {} s",
                retry_after.as_secs().max(1)
            ),
            Self::MethodNotAllowed => "this path does not accept that method".to_owned(),
            Self::PayloadTooLarge => {
                "the request body is larger than the server accepts".to_owned()
            }
            Self::Timeout => "the request took too long and was abandoned".to_owned(),
            other => other.to_string(),
        };
        let errors = match self {
            Self::Validation { errors, .. } => errors.clone(),
            _ => Vec::new(),
        };
        Problem {
            kind: Problem::type_uri(code),
            title: title(code),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            errors,
        }
    }
}

/// `invalid_credentials` → `Invalid credentials`: the same title for every occurrence of a code.
fn title(code: &str) -> String {
    let words = code.replace('_', " ");
    let mut chars = words.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(
                request_id = super::router::current_request_id(),
                error = format!("{cause:#}"),
                "internal error"
            );
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            Self::Unauthorized { code: "no_authorization", .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthorized { .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                );
            }
            Self::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        let detail = err.to_string();
        match err {
            AuthError::InvalidCredentials => Self::bad_request("invalid_credentials", detail),
            AuthError::UserAlreadyExists => Self::Validation {
                code: "user_already_exists",
                detail,
                errors: vec![FieldError::new("email", "is already registered")],
            },
            AuthError::WeakPassword(message) => Self::Validation {
                code: "weak_password",
                detail: message.clone(),
                errors: vec![FieldError::new("password", message)],
            },
            AuthError::Validation(errors) => Self::validation(errors),
            AuthError::InvalidToken(_) => Self::Unauthorized { code: "invalid_token", detail },
            AuthError::SessionNotFound => Self::Unauthorized { code: "session_not_found", detail },
            AuthError::RefreshTokenNotFound => Self::bad_request("refresh_token_not_found", detail),
            AuthError::RefreshTokenAlreadyUsed => {
                Self::bad_request("refresh_token_already_used", detail)
            }
            AuthError::SessionExpired => Self::bad_request("session_expired", detail),
            AuthError::EmailNotConfirmed => Self::Forbidden { code: "email_not_confirmed", detail },
            AuthError::SignupDisabled => Self::Forbidden { code: "signup_disabled", detail },
            AuthError::UserBanned => Self::Forbidden { code: "user_banned", detail },
            AuthError::RateLimited { retry_after } => Self::RateLimited { retry_after },
            AuthError::Unavailable(cause) => {
                tracing::warn!(
                    request_id = super::router::current_request_id(),
                    error = format!("{cause:#}"),
                    "auth dependency unavailable"
                );
                Self::Unavailable {
                    code: "auth_unavailable",
                    detail: "authentication is temporarily unavailable; try again shortly".into(),
                }
            }
            AuthError::Internal(cause) if crate::datadir::is_storage_failure(&cause) => {
                storage_unavailable(&cause)
            }
            AuthError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<DeploymentError> for ApiError {
    fn from(err: DeploymentError) -> Self {
        let detail = err.to_string();
        match err {
            DeploymentError::Validation(errors) => Self::validation(errors),
            DeploymentError::NotFound => Self::not_found("no such deployment or run"),
            DeploymentError::MachineNotFound(_) => Self::not_found(detail),
            DeploymentError::Conflict(detail) => Self::Conflict { code: "conflict", detail },
            DeploymentError::IdempotencyMismatch => {
                Self::Validation { code: "idempotency_key_reused", detail, errors: Vec::new() }
            }
            DeploymentError::TerraformUnavailable(_) => {
                Self::Unavailable { code: "terraform_unavailable", detail }
            }
            DeploymentError::AgentDownloadUnavailable(_) => {
                Self::Unavailable { code: "agent_download_unavailable", detail }
            }
            DeploymentError::LocalUnavailable(_) => {
                Self::Unavailable { code: "local_sandbox_unavailable", detail }
            }
            DeploymentError::LocalMachineLimit(_) => {
                Self::Conflict { code: "local_machine_limit", detail }
            }
            DeploymentError::PlanFailed(_) => {
                Self::Validation { code: "plan_failed", detail, errors: Vec::new() }
            }
            DeploymentError::Store(err) => err.into(),
            DeploymentError::Internal(cause) if crate::datadir::is_storage_failure(&cause) => {
                storage_unavailable(&cause)
            }
            DeploymentError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        let detail = err.to_string();
        match err {
            CommandError::Validation(errors) => Self::validation(errors),
            CommandError::NotFound => Self::not_found(detail),
            CommandError::NotReady(_) => Self::Conflict { code: "deployment_not_ready", detail },
            CommandError::NotRunning(_) => Self::Conflict { code: "command_not_running", detail },
            CommandError::Store(err) => err.into(),
            CommandError::Internal(cause) if crate::datadir::is_storage_failure(&cause) => {
                storage_unavailable(&cause)
            }
            CommandError::Internal(cause) => Self::Internal(cause),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Unavailable(cause) => {
                tracing::warn!(
                    request_id = super::router::current_request_id(),
                    error = %cause,
                    "database unavailable"
                );
                Self::Unavailable {
                    code: "database_unavailable",
                    detail: "the database is temporarily unavailable; try again shortly".into(),
                }
            }
            crate::store::StoreError::Storage(cause) => {
                storage_unavailable(&anyhow::Error::new(cause))
            }
            other => Self::Internal(other.into()),
        }
    }
}

/// 503 `storage_unavailable`: the disk under the database or the data directory is full or
/// read-only. Reads keep working; the same request works again once the disk does.
fn storage_unavailable(cause: &anyhow::Error) -> ApiError {
    tracing::error!(
        request_id = super::router::current_request_id(),
        error = format!("{cause:#}"),
        "storage refuses writes (disk full or read-only)"
    );
    ApiError::Unavailable {
        code: "storage_unavailable",
        detail: "the server's storage is full or read-only, so nothing was changed; reads still work, and this request will work again once an operator frees space".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_derived_from_codes() {
        assert_eq!(title("invalid_credentials"), "Invalid credentials");
        assert_eq!(title("not_found"), "Not found");
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let problem =
            ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.internal")).problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("hunter2"));
        assert_eq!(problem.kind, "urn:nim:problem:internal_error");
    }

    #[test]
    fn one_invalid_field_is_named_in_the_detail() {
        let problem = ApiError::validation(vec![FieldError::new("email", "is required")]).problem();
        assert_eq!(problem.detail, "email: is required");
        assert_eq!(problem.errors.len(), 1);
    }
}
