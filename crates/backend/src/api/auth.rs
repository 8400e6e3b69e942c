//! The plan's `AuthController`: `/auth/*`. Handlers only translate HTTP to [`AuthService`] calls;
//! whichever provider is configured answers.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::{Problem, Session, SignUpResponse, User};

use super::{
    ApiError, AppState,
    extract::{AuthAttempt, Json, Query},
};
use crate::services::auth::{AuthService, AuthUser, ClientInfo, Credentials, LogoutScope};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sign_up))
        .routes(routes!(log_in))
        .routes(routes!(refresh_session))
        .routes(routes!(log_out))
        .routes(routes!(current_user))
}

/// Email and password. Fields other than these are ignored, as Supabase Auth ignores them.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct CredentialsRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    #[schema(value_type = String, format = Password, min_length = 8)]
    password: SecretString,
}

impl From<CredentialsRequest> for Credentials {
    fn from(request: CredentialsRequest) -> Self {
        Self { email: request.email, password: request.password }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogoutParams {
    /// Which sessions to end: this one (`local`, default), all (`global`), or all others.
    #[serde(default)]
    #[param(inline)]
    scope: LogoutScope,
}

/// Create an account.
///
/// The email is lower-cased. The built-in provider wants at least 8 characters of password and
/// confirms the account at once, returning a session; with Supabase the project's password policy
/// applies, and with email confirmation on `session` is null and `confirmation_required` is true.
#[utoipa::path(post, path = "/auth/signup", tag = "auth",
    request_body = CredentialsRequest,
    responses(
        (status = 201, description = "Account created", body = SignUpResponse),
        (status = 400, description = "Malformed JSON (`bad_json`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`signup_disabled` (Supabase project with signups off)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `weak_password` or `user_already_exists`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this address (or Supabase's own limit)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`auth_unavailable`: Supabase Auth cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn sign_up(
    State(auth): State<Arc<dyn AuthService>>,
    AuthAttempt(client): AuthAttempt,
    Json(request): Json<CredentialsRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let response = auth.sign_up(request.into(), &client).await?;
    Ok((StatusCode::CREATED, Json(response)))
}

/// Log in with email and password.
///
/// A wrong email and a wrong password get the same answer.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = CredentialsRequest,
    responses(
        (status = 200, description = "A new session", body = Session),
        (status = 400, description = "`invalid_credentials` or `bad_json`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a JSON body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or mistyped", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`email_not_confirmed` or `user_banned` (Supabase)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this address (or Supabase's own limit)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`auth_unavailable`: Supabase Auth cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn log_in(
    State(auth): State<Arc<dyn AuthService>>,
    AuthAttempt(client): AuthAttempt,
    Json(request): Json<CredentialsRequest>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(auth.log_in(request.into(), &client).await?))
}

/// Exchange a refresh token for a new session.
///
/// Refresh tokens are single-use. Presenting one that was already exchanged ends its whole session
/// (`refresh_token_already_used`): it means the token was copied.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new session with a new refresh token", body = Session),
        (status = 400, description = "`refresh_token_not_found`, `refresh_token_already_used`, `session_expired` or `bad_json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is missing or mistyped", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`auth_unavailable`: Supabase Auth cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn refresh_session(
    State(auth): State<Arc<dyn AuthService>>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(auth.refresh(&request.refresh_token, &ClientInfo::default()).await?))
}

/// Log out: end this session (or, with `scope`, all or all other sessions).
///
/// Refresh tokens of ended sessions stop working at once; access tokens already issued stay valid
/// until they expire, as with Supabase.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    params(LogoutParams),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing or invalid token", body = Problem, content_type = "application/problem+json"),
    ))]
async fn log_out(
    State(auth): State<Arc<dyn AuthService>>,
    user: AuthUser,
    Query(params): Query<LogoutParams>,
) -> Result<StatusCode, ApiError> {
    auth.log_out(&user, params.scope).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The current user. While Supabase Auth cannot be reached, the user as the (locally verified) token describes them, marked by `X-Nim-User-Source: token`", body = User,
            headers(("X-Nim-User-Source" = String, description = "`token` when the answer comes from the token's claims, not from Supabase Auth (absent otherwise)"))),
        (status = 401, description = "Missing or invalid token, or the session has ended", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`auth_unavailable`: the token is one only Supabase Auth can check (an HS256 token without `SUPABASE_JWT_SECRET`, or a session check that is due) and it cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
async fn current_user(
    State(auth): State<Arc<dyn AuthService>>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    let current = auth.user(&user).await?;
    let mut response = Json(current.user).into_response();
    if !current.checked {
        response.headers_mut().insert(USER_SOURCE, HeaderValue::from_static("token"));
    }
    Ok(response)
}

/// Marks a `/auth/me` answer built from the token's claims (Supabase unreachable).
const USER_SOURCE: HeaderName = HeaderName::from_static("x-nim-user-source");
