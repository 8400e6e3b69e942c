//! `GET /agent/download/{target}`: the nim-agent binary cloud machines install at first boot.
//! Unauthenticated (a booting machine holds no user token, and the binary holds no secret);
//! machines check the SHA-256 their user data carries, also sent here as headers.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use tokio_util::io::ReaderStream;
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::Problem;

use super::{ApiError, AppState, Path};
use crate::services::deployments::DeploymentService;

/// Lowercase hex SHA-256 of the body, for scripts; `Repr-Digest` (RFC 9530) says the same.
const SHA256_HEADER: &str = "x-nim-agent-sha256";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download_agent))
}

/// Download the nim-agent binary for a target (e.g. `linux-x86_64`).
///
/// Streams the binary this server was started with (`NIM_AGENT_BINARY`), with its length and
/// SHA-256 (`X-Nim-Agent-Sha256` in hex, `Repr-Digest` per RFC 9530). No authentication.
#[utoipa::path(get, path = "/agent/download/{target}", tag = "agent",
    params(("target" = String, Path, description = "`linux-x86_64`, `linux-aarch64`, ...", example = "linux-x86_64")),
    responses(
        (status = 200, description = "The agent binary", content_type = "application/octet-stream", body = Vec<u8>,
            headers(("x-nim-agent-sha256" = String, description = "SHA-256 of the body, lowercase hex"))),
        (status = 404, description = "No binary for this target", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The binary changed on disk since the server started", body = Problem, content_type = "application/problem+json"),
    ))]
async fn download_agent(
    State(deployments): State<Arc<DeploymentService>>,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    let distribution = deployments.agent_distribution();
    let Some(binary) = distribution.binary_for(&target) else {
        let detail = match &distribution.binary {
            Some(binary) => format!(
                "no agent binary for target \"{target}\"; this server has one for \"{}\"",
                binary.target
            ),
            None => "this server has no agent binary to serve (NIM_AGENT_BINARY)".to_owned(),
        };
        return Err(ApiError::not_found(detail));
    };
    let file = tokio::fs::File::open(&binary.path).await.map_err(|err| {
        ApiError::Internal(
            anyhow::Error::new(err)
                .context(format!("failed to open the agent binary {}", binary.path.display())),
        )
    })?;
    let size = file.metadata().await.map_err(|err| ApiError::Internal(err.into()))?.len();
    // Hashed at start: a file replaced since would not match the hash machines expect.
    if size != binary.size {
        tracing::error!(path = %binary.path.display(), "the agent binary changed since start; restart the server to serve it");
        return Err(ApiError::Unavailable {
            code: "agent_binary_changed",
            detail: "the agent binary changed since the server started; it must be restarted"
                .into(),
        });
    }
    let digest = hex_to_bytes(&binary.sha256).map(|bytes| STANDARD.encode(bytes));
    let mut response = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"nim-agent\""),
    );
    if let Ok(value) = HeaderValue::from_str(&binary.sha256) {
        headers.insert(SHA256_HEADER, value);
    }
    if let Some(Ok(value)) = digest.map(|d| HeaderValue::from_str(&format!("sha-256=:{d}:"))) {
        headers.insert("repr-digest", value);
    }
    Ok(response)
}

fn hex_to_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}
