//! Extractors that turn requests into typed, validated values, answering every rejection in the
//! same problem+json form as the handlers' own errors (never axum's plain-text rejections).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::Bytes,
    extract::{
        ConnectInfo, FromRef, FromRequest, FromRequestParts, Request,
        rejection::{BytesRejection, FailedToBufferBody},
    },
    http::{HeaderMap, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use wire::FieldError;

use super::{ApiError, rate_limit::AuthRateLimiter};
use crate::services::auth::{AuthService, AuthUser, ClientInfo};

/// A JSON request body or response. As an extractor it insists on a JSON content type, enforces
/// the body limit, and reports undecodable fields by their JSON path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType {
                detail: "expected a JSON body with `Content-Type: application/json`".into(),
            });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::bad_request("bad_body", format!("failed to read the body: {other}")),
        })?;
        decode(&bytes).map(Json)
    }
}

/// Decodes a JSON body: syntax errors are 400 `bad_json`, well-formed JSON of the wrong shape is
/// 422 `validation_failed` naming the field.
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bad_json = |err: serde_json::Error| {
        ApiError::bad_request("bad_json", format!("request body is not valid JSON: {err}"))
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_data() {
            let (field, message) = describe_data_error(&path, &inner);
            ApiError::validation(vec![FieldError::new(field, message)])
        } else {
            bad_json(inner)
        }
    })?;
    deserializer.end().map_err(bad_json)?;
    Ok(value)
}

/// Names the field a serde data error is about. serde reports a missing or unknown field at its
/// parent's path with the name in the message; this moves the name into the path.
fn describe_data_error(path: &str, err: &serde_json::Error) -> (String, String) {
    let text = err.to_string();
    // serde_json appends " at line L column C", which means nothing to an API caller.
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(head, _)| head).to_owned();
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let parent = if path == "." { "" } else { path };
    let field = match (named, parent) {
        // An unknown field's path already ends with its own name.
        (Some(name), parent) if parent == name || parent.ends_with(&format!(".{name}")) => {
            parent.to_owned()
        }
        (Some(name), "") => name.to_owned(),
        (Some(name), parent) => format!("{parent}.{name}"),
        (None, "") => "body".to_owned(),
        (None, parent) => parent.to_owned(),
    };
    (field, message)
}

fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query-string parameters; a value that does not parse is 400 `invalid_query` naming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    #[allow(clippy::disallowed_types, reason = "this is the wrapper the lint points to")]
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri).map(|q| Query(q.0)).map_err(|rejection| {
            let text = rejection.body_text();
            let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
            ApiError::bad_request("invalid_query", format!("invalid query string: {detail}"))
        })
    }
}

/// Path parameters; one that does not parse (a malformed id) names no resource, so it is a 404
/// like any other missing resource.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    #[allow(clippy::disallowed_types, reason = "this is the wrapper the lint points to")]
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| Path(path.0))
            .map_err(|rejection| {
                ApiError::not_found(format!("no such resource: {}", rejection.body_text()))
            })
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The caller, from a verified `Authorization: Bearer` token. Verification is local to the auth
/// provider (no database round trip).
impl<S> FromRequestParts<S> for AuthUser
where
    Arc<dyn AuthService>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let auth = Arc::<dyn AuthService>::from_ref(state);
        Ok(auth.verify(token).await?)
    }
}

pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| ApiError::Unauthorized {
        code: "no_authorization",
        detail: "this endpoint requires a bearer token".into(),
    })?;
    let malformed = || ApiError::Unauthorized {
        code: "invalid_token",
        detail: "the Authorization header must be `Bearer <access token>`".into(),
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

/// How the client's address is determined: the TCP peer, or (behind a trusted proxy) the last
/// `X-Forwarded-For` entry, which is the one that proxy appended.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddrSource {
    pub trust_forwarded_for: bool,
}

fn client_info(parts: &Parts, source: ClientAddrSource) -> ClientInfo {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let forwarded = source
        .trust_forwarded_for
        .then(|| parts.headers.get("x-forwarded-for")?.to_str().ok())
        .flatten()
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(512).collect());
    ClientInfo { ip: forwarded.or(peer), user_agent }
}

/// A login or signup attempt: the caller's details, admitted by the per-address rate limit.
#[derive(Debug)]
pub(super) struct AuthAttempt(pub(super) ClientInfo);

impl<S> FromRequestParts<S> for AuthAttempt
where
    Arc<AuthRateLimiter>: FromRef<S>,
    ClientAddrSource: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let client = client_info(parts, ClientAddrSource::from_ref(state));
        if let Some(ip) = client.ip {
            Arc::<AuthRateLimiter>::from_ref(state).check(ip)?;
        }
        Ok(Self(client))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        region: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        count: u32,
        inner: Option<Inner>,
    }

    fn field_errors(body: &str) -> Vec<FieldError> {
        match decode::<Outer>(body.as_bytes()).unwrap_err() {
            ApiError::Validation { errors, .. } => errors,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn data_errors_name_the_field() {
        assert_eq!(field_errors(r#"{"count": 1}"#)[0].field, "name");
        assert_eq!(field_errors(r#"{"name": "a", "count": "x"}"#)[0].field, "count");
        let errors = field_errors(r#"{"name": "a", "count": 1, "inner": {}}"#);
        assert_eq!(errors[0].field, "inner.region");
        assert_eq!(errors[0].message, "missing field `region`");
        assert_eq!(field_errors(r#"{"name": "a", "count": 1, "bogus": 1}"#)[0].field, "bogus");
        assert_eq!(field_errors("[]")[0].field, "body");
    }

    #[test]
    fn syntax_errors_are_bad_json() {
        for body in ["", "{", r#"{"name": "a", "count": 1} trailing"#, "nul"] {
            match decode::<Outer>(body.as_bytes()).unwrap_err() {
                ApiError::BadRequest { code: "bad_json", .. } => {}
                other => panic!("{body:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            has_json_content_type(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!has_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_owned).map_err(|e| e.problem().code)
        };
        assert_eq!(with("Bearer abc").unwrap(), "abc");
        assert_eq!(with("bearer abc").unwrap(), "abc");
        assert_eq!(with("Basic abc").unwrap_err(), "invalid_token");
        assert_eq!(with("Bearer ").unwrap_err(), "invalid_token");
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap_err().problem().code, "no_authorization");
    }
}
