//! The plan's `supabaseClient` provider: [`AuthService`] against a Supabase project's Auth server
//! (GoTrue). Sign-up, login, refresh and logout go to GoTrue; access tokens are verified locally
//! (JWKS or the legacy secret), so an authenticated request needs no round trip to Supabase.
//!
//! GoTrue's errors become ours in one place, [`errors::map_error`]; the README's "Using Supabase"
//! section has the same table for humans.
//!
//! Here: the provider's state and its [`AuthService`] methods. Construction from configuration is
//! in `config.rs`, local token verification in `verify.rs`, strict-mode session checks in
//! `sessions.rs`, the users and sessions we answer with in `users.rs`.

mod config;
mod errors;
mod gotrue;
mod keys;
mod sessions;
mod users;
mod verify;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use jsonwebtoken::DecodingKey;
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;
use wire::{Session, SignUpResponse};

pub use self::config::SupabaseOptions;
use self::{
    errors::{Op, map_error},
    gotrue::{GoTrueClient, OnBehalfOf, SignUpAnswer},
    keys::Jwks,
    sessions::SessionCheck,
    users::{to_wire_session, to_wire_user},
    verify::CachedToken,
};
use super::{
    AuthError, AuthService, AuthUser, ClientInfo, Credentials, CurrentUser, LogoutScope,
    normalize_email, require_login_fields, require_refresh_token, signup_fields,
};

/// GoTrue refuses passwords longer than this (bcrypt's limit), in bytes.
const MAX_PASSWORD_BYTES: usize = 72;
/// Entries kept in the per-token and per-session caches before expired ones are swept.
const CACHE_CAPACITY: usize = 10_000;

pub struct SupabaseAuth {
    client: Arc<GoTrueClient>,
    jwks: Arc<Jwks>,
    issuer: String,
    /// The legacy HS256 secret, when configured.
    shared: Option<DecodingKey>,
    /// Tokens verified before, by SHA-256 of the token (never the token itself).
    verified: Mutex<HashMap<[u8; 32], CachedToken>>,
    /// Strict revocation: when each session was last confirmed alive, or found ended.
    session_check_interval: Option<Duration>,
    sessions: Mutex<HashMap<Uuid, SessionCheck>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a cache, which stays usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl AuthService for SupabaseAuth {
    fn provider(&self) -> &'static str {
        "supabase"
    }

    #[tracing::instrument(skip_all)]
    async fn sign_up(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<SignUpResponse, AuthError> {
        // The same field errors as the built-in provider, without a round trip. Password
        // strength is the project's policy (GoTrue answers `weak_password`).
        let email = normalize_email(&credentials.email);
        let password = credentials.password.expose_secret();
        let password_problem = if password.is_empty() {
            Some("a password is required".to_owned())
        } else if password.len() > MAX_PASSWORD_BYTES {
            Some(format!("the password is longer than {MAX_PASSWORD_BYTES} bytes"))
        } else {
            None
        };
        let email = signup_fields(email, password_problem)?;
        let answer = self
            .client
            .sign_up(&email, password, on_behalf_of(client))
            .await
            .map_err(|err| map_error(Op::SignUp, err))?;
        Ok(match answer {
            SignUpAnswer::Session(session) => {
                let session = to_wire_session(*session);
                tracing::info!(user_id = %session.user.id, "user signed up (confirmed at once)");
                SignUpResponse {
                    user: session.user.clone(),
                    session: Some(session),
                    confirmation_required: false,
                }
            }
            // Confirmation on. An already-registered address gets a look-alike user (no
            // identities) from Supabase so that signup does not reveal who has an account; we
            // pass that on unchanged for the same reason.
            SignUpAnswer::User(user) => SignUpResponse {
                user: to_wire_user(*user),
                session: None,
                confirmation_required: true,
            },
        })
    }

    #[tracing::instrument(skip_all)]
    async fn log_in(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<Session, AuthError> {
        require_login_fields(&credentials)?;
        let password = credentials.password.expose_secret();
        // A malformed address cannot have an account: the same answer as a wrong one.
        let email =
            normalize_email(&credentials.email).map_err(|_| AuthError::InvalidCredentials)?;
        let session = self
            .client
            .password_grant(&email, password, on_behalf_of(client))
            .await
            .map_err(|err| map_error(Op::LogIn, err))?;
        Ok(to_wire_session(session))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        refresh_token: &str,
        _client: &ClientInfo,
    ) -> Result<Session, AuthError> {
        require_refresh_token(refresh_token)?;
        let session = self
            .client
            .refresh_grant(refresh_token)
            .await
            .map_err(|err| map_error(Op::Refresh, err))?;
        Ok(to_wire_session(session))
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    async fn log_out(&self, user: &AuthUser, scope: LogoutScope) -> Result<(), AuthError> {
        let result = self.client.log_out(user.access_token.expose_secret(), scope).await;
        match result.map_err(|err| map_error(Op::LogOut, err)) {
            // Already signed out at Supabase (supabase-js treats these the same way).
            Ok(()) | Err(AuthError::SessionNotFound) => {
                self.forget_sessions(user, scope);
                tracing::info!(?scope, "logged out");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    /// GoTrue's record of the user; while GoTrue is unreachable, the user the verified token
    /// describes (`checked: false`), so a frontend that calls this on page load keeps its users
    /// signed in through an outage, as every other route does on local verification.
    async fn user(&self, user: &AuthUser) -> Result<CurrentUser, AuthError> {
        match self.client.user(user.access_token.expose_secret()).await {
            Ok(found) => Ok(CurrentUser { user: to_wire_user(found), checked: true }),
            Err(err) => match map_error(Op::Verify, err) {
                AuthError::Unavailable(cause) => {
                    tracing::warn!(
                        error = format!("{cause:#}"),
                        "Supabase Auth is unreachable: answering with the token's claims"
                    );
                    Ok(CurrentUser { user: users::user_from_claims(user)?, checked: false })
                }
                other => Err(other),
            },
        }
    }

    async fn verify(&self, access_token: &str) -> Result<AuthUser, AuthError> {
        let verified = self.verify_token(access_token).await?;
        if let Some(interval) = self.session_check_interval {
            self.check_session(&verified, access_token, interval).await?;
        }
        Ok(AuthUser {
            id: verified.user_id,
            email: verified.email,
            role: verified.role,
            session_id: verified.session_id,
            access_token: SecretString::from(access_token.to_owned()),
        })
    }
}

fn on_behalf_of(client: &ClientInfo) -> OnBehalfOf<'_> {
    OnBehalfOf { ip: client.ip, user_agent: client.user_agent.as_deref() }
}
