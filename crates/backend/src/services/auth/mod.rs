//! The plan's `AuthService`: sign up, log in, refresh, log out and token verification behind one
//! trait, so handlers never know which provider answers. `local` keeps users in our database;
//! a Supabase provider (GoTrue over REST) implements the same trait.

mod jwt;
mod local;
mod password;
mod supabase;

use std::net::IpAddr;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;
use wire::{FieldError, Session, SignUpResponse, User};

pub use jwt::{AccessClaims, JwtKeys};
pub use local::LocalAuth;
pub use supabase::{SupabaseAuth, SupabaseOptions};

/// Audience and role of every signed-in user's token, as in Supabase.
pub const AUTHENTICATED: &str = "authenticated";

/// `GET /auth/me`'s answer.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: User,
    /// The provider itself vouched for the user just now; `false` when the user was built from
    /// the locally verified token's claims because the provider did not answer.
    pub checked: bool,
}

/// The signed-in caller, as established from a verified access token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub email: Option<String>,
    pub role: String,
    pub session_id: Option<Uuid>,
    /// The bearer token itself, for providers that must pass it on (Supabase logout).
    pub access_token: SecretString,
}

/// Email and password as the caller sent them.
#[derive(Debug)]
pub struct Credentials {
    pub email: String,
    pub password: SecretString,
}

/// Facts about the caller that sessions record.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// Which sessions `log_out` ends, as in Supabase's `POST /logout?scope=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogoutScope {
    /// Only the session of the presented token.
    #[default]
    Local,
    /// Every session of the user.
    Global,
    /// Every session of the user except the presented one.
    Others,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid login credentials")]
    InvalidCredentials,
    #[error("a user with this email address has already been registered")]
    UserAlreadyExists,
    #[error("{0}")]
    WeakPassword(String),
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    InvalidToken(String),
    #[error("the session has ended; log in again")]
    SessionNotFound,
    #[error("invalid refresh token: refresh token not found")]
    RefreshTokenNotFound,
    #[error("invalid refresh token: already used")]
    RefreshTokenAlreadyUsed,
    #[error("the session has expired or was logged out; log in again")]
    SessionExpired,
    #[error(
        "the email address has not been confirmed yet; follow the link in the confirmation email"
    )]
    EmailNotConfirmed,
    #[error("new accounts cannot be created: sign-ups are disabled for this project")]
    SignupDisabled,
    #[error("this user is banned")]
    UserBanned,
    /// The auth provider itself is rate-limiting us (ours is in front, in the API layer).
    #[error("the auth provider is rate-limiting these requests")]
    RateLimited { retry_after: std::time::Duration },
    #[error("the auth service is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for AuthError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Unavailable(_) => Self::Unavailable(err.into()),
            other => Self::Internal(other.into()),
        }
    }
}

/// Signs users up and in, and turns bearer tokens into [`AuthUser`]s.
#[async_trait]
pub trait AuthService: Send + Sync + 'static {
    /// `local` or `supabase`, for logs and `/readyz`.
    fn provider(&self) -> &'static str;

    async fn sign_up(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<SignUpResponse, AuthError>;

    async fn log_in(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<Session, AuthError>;

    async fn refresh(&self, refresh_token: &str, client: &ClientInfo)
    -> Result<Session, AuthError>;

    async fn log_out(&self, user: &AuthUser, scope: LogoutScope) -> Result<(), AuthError>;

    /// The user behind a verified token, as the provider currently knows them, or (Supabase,
    /// while GoTrue is unreachable) as the verified token describes them.
    async fn user(&self, user: &AuthUser) -> Result<CurrentUser, AuthError>;

    /// Verifies an access token; must not need a network round trip in the common case.
    async fn verify(&self, access_token: &str) -> Result<AuthUser, AuthError>;
}

/// Login needs both fields: the same field errors whichever provider answers.
pub(crate) fn require_login_fields(credentials: &Credentials) -> Result<(), AuthError> {
    let mut missing = Vec::new();
    if credentials.email.trim().is_empty() {
        missing.push(FieldError::new("email", "an email address is required"));
    }
    if credentials.password.expose_secret().is_empty() {
        missing.push(FieldError::new("password", "a password is required"));
    }
    if missing.is_empty() { Ok(()) } else { Err(AuthError::Validation(missing)) }
}

/// A signup's field checks combined: the address to use, or every field's error at once.
pub(crate) fn signup_fields(
    email: Result<String, FieldError>,
    password_problem: Option<String>,
) -> Result<String, AuthError> {
    match (email, password_problem) {
        (Ok(email), None) => Ok(email),
        (email, password_problem) => {
            let mut errors: Vec<FieldError> = email.err().into_iter().collect();
            errors.extend(password_problem.map(|p| FieldError::new("password", p)));
            Err(AuthError::Validation(errors))
        }
    }
}

/// An empty refresh token is a missing field, not an unknown token.
pub(crate) fn require_refresh_token(refresh_token: &str) -> Result<(), AuthError> {
    if refresh_token.is_empty() {
        return Err(AuthError::Validation(vec![FieldError::new(
            "refresh_token",
            "a refresh token is required",
        )]));
    }
    Ok(())
}

/// The longest email address accepted (RFC 5321's path limit, and Supabase's 255).
const MAX_EMAIL_LEN: usize = 254;

/// Checks an email address's syntax and returns it trimmed and lower-cased.
pub fn normalize_email(email: &str) -> Result<String, FieldError> {
    let email = email.trim().to_lowercase();
    if email.is_empty() {
        return Err(FieldError::new("email", "an email address is required"));
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(FieldError::new(
            "email",
            format!("the email address is longer than {MAX_EMAIL_LEN} characters"),
        ));
    }
    // `email_address` accepts display forms and IP-literal domains; a sign-up address must be a
    // plain `local@domain.tld`.
    let valid = email_address::EmailAddress::parse_with_options(
        &email,
        email_address::Options::default().without_display_text().without_domain_literal(),
    )
    .is_ok_and(|parsed| parsed.domain().contains('.'));
    if !valid {
        return Err(FieldError::new("email", "unable to validate email address: invalid format"));
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
            "a b@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email(&long).unwrap_err().message.contains("longer than"));
    }
}
