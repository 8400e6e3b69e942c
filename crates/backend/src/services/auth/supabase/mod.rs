//! The plan's `supabaseClient` provider: [`AuthService`] against a Supabase project's Auth server
//! (GoTrue). Sign-up, login, refresh and logout go to GoTrue; access tokens are verified locally
//! (JWKS or the legacy secret), so an authenticated request needs no round trip to Supabase.
//!
//! GoTrue's errors become ours in one place, [`map_error`]; the README's "Using Supabase" section has the same
//! table for humans.

mod gotrue;
mod keys;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wire::{FieldError, Session, SignUpResponse, User};

use self::{
    gotrue::{GoTrueClient, GoTrueError, GoTrueOptions, GoTrueSession, OnBehalfOf, SignUpAnswer},
    keys::{Jwks, KeyChoice, Verified},
};
use super::{
    AuthError, AuthService, AuthUser, ClientInfo, Credentials, CurrentUser, LogoutScope,
    normalize_email, require_login_fields, require_refresh_token, signup_fields,
};

/// GoTrue refuses passwords longer than this (bcrypt's limit), in bytes.
const MAX_PASSWORD_BYTES: usize = 72;
/// How long a token that GoTrue vouched for (HS256 without a configured secret) is trusted
/// without asking again.
const VOUCHED_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a locally verified token is answered from memory (never past its `exp`, and never
/// after the key set it was verified against has changed).
const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(60);
/// The longest access-token lifetime a Supabase project can configure (one week).
const MAX_TOKEN_LIFETIME_SECS: i64 = 7 * 86_400;
/// Entries kept in the per-token and per-session caches before expired ones are swept.
const CACHE_CAPACITY: usize = 10_000;

/// Everything the provider needs from configuration.
pub struct SupabaseOptions {
    /// The project URL, e.g. `https://<ref>.supabase.co`.
    pub url: String,
    pub anon_key: SecretString,
    pub jwt_secret: Option<SecretString>,
    /// `iss` of user tokens; `None`: `<url>/auth/v1`.
    pub issuer: Option<String>,
    pub secret_key: Option<SecretString>,
    pub jwks_ttl: Duration,
    pub session_check_interval: Option<Duration>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
}

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

struct CachedToken {
    verified: Verified,
    until: Instant,
    /// The JWKS version it was verified against; `None` for shared-secret and GoTrue checks.
    key_version: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum SessionCheck {
    Alive { user_id: Uuid, checked_at: Instant },
    Ended { until_exp: i64 },
}

impl SupabaseAuth {
    pub fn new(options: SupabaseOptions) -> anyhow::Result<Self> {
        let url = Url::parse(options.url.trim())
            .with_context(|| format!("SUPABASE_URL {:?} is not a URL", options.url))?;
        anyhow::ensure!(
            matches!(url.scheme(), "https" | "http") && url.host().is_some(),
            "SUPABASE_URL must be an http(s) URL such as https://<project-ref>.supabase.co"
        );
        anyhow::ensure!(
            !options.anon_key.expose_secret().trim().is_empty(),
            "SUPABASE_ANON_KEY is empty"
        );
        if url.scheme() == "http" && !is_loopback(&url) {
            tracing::warn!(%url, "SUPABASE_URL is plain http: credentials travel unencrypted");
        }
        let issuer = options
            .issuer
            .unwrap_or_else(|| format!("{}/auth/v1", url.as_str().trim_end_matches('/')));
        let client = Arc::new(GoTrueClient::new(GoTrueOptions {
            project_url: url,
            anon_key: options.anon_key,
            secret_key: options.secret_key,
            connect_timeout: options.connect_timeout,
            timeout: options.timeout,
            max_retries: options.max_retries,
        })?);
        tracing::info!(
            %issuer,
            hs256_secret = options.jwt_secret.is_some(),
            strict_session_check_secs = options.session_check_interval.map(|d| d.as_secs()),
            "using Supabase Auth"
        );
        Ok(Self {
            jwks: Jwks::new(Arc::clone(&client), options.jwks_ttl),
            client,
            issuer,
            shared: options.jwt_secret.as_ref().map(keys::shared_secret_key),
            verified: Mutex::new(HashMap::new()),
            session_check_interval: options.session_check_interval,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The token's identity, from its signature alone. A token seen before is answered from
    /// [`Self::verified`]: a hash and a lookup instead of a signature check.
    async fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = self.cached(&hash) {
            return Ok(verified);
        }
        let (verified, trust_for, key_version) = match keys::key_choice(token)? {
            KeyChoice::Asymmetric { alg, kid } => {
                // Read before the lookup: a fetch during it makes the entry stale, never wrong.
                let version = self.jwks.key_version();
                let (key, alg) = self.jwks.key(&kid, alg).await?;
                let verified = keys::decode(token, &key, &keys::validation(alg, &self.issuer))?;
                (verified, VERIFIED_CACHE_TTL, Some(version))
            }
            KeyChoice::Shared => match &self.shared {
                Some(secret) => {
                    let validation = keys::validation(Algorithm::HS256, &self.issuer);
                    (keys::decode(token, secret, &validation)?, VERIFIED_CACHE_TTL, None)
                }
                None => (self.vouched_by_gotrue(token).await?, VOUCHED_CACHE_TTL, None),
            },
        };
        let now = Instant::now();
        let mut cache = lock(&self.verified);
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, entry| entry.until > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        let entry = CachedToken { verified: verified.clone(), until: now + trust_for, key_version };
        cache.insert(hash, entry);
        Ok(verified)
    }

    /// A still-valid earlier verification of the token with this hash.
    fn cached(&self, hash: &[u8; 32]) -> Option<Verified> {
        let cache = lock(&self.verified);
        let entry = cache.get(hash)?;
        let fresh = entry.until > Instant::now()
            && entry.verified.exp > chrono::Utc::now().timestamp()
            // Verified against a key set that has changed since: the key may be revoked.
            && entry.key_version.is_none_or(|v| v == self.jwks.key_version());
        fresh.then(|| entry.verified.clone())
    }

    /// HS256 without the secret: GoTrue checks the token (`GET /user`).
    async fn vouched_by_gotrue(&self, token: &str) -> Result<Verified, AuthError> {
        let user = self.client.user(token).await.map_err(|err| map_error(Op::Verify, err))?;
        // GoTrue verified signature and expiry; the claims say which session this is.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.insecure_disable_signature_validation();
        validation.validate_aud = false;
        validation.set_required_spec_claims::<&str>(&[]);
        let verified = keys::decode(token, &DecodingKey::from_secret(&[]), &validation)?;
        if verified.user_id != user.id {
            return Err(AuthError::InvalidToken("the access token does not match its user".into()));
        }
        Ok(verified)
    }

    /// Strict mode: the session must still exist, as GoTrue last said at most `interval` ago.
    async fn check_session(
        &self,
        verified: &Verified,
        token: &str,
        interval: Duration,
    ) -> Result<(), AuthError> {
        let Some(session_id) = verified.session_id else { return Ok(()) };
        let now = Instant::now();
        {
            let mut sessions = lock(&self.sessions);
            match sessions.get(&session_id) {
                Some(SessionCheck::Ended { .. }) => return Err(AuthError::SessionNotFound),
                Some(SessionCheck::Alive { checked_at, .. })
                    if now.duration_since(*checked_at) < interval =>
                {
                    return Ok(());
                }
                _ => {}
            }
            sweep(&mut sessions);
            // Claim this check, so concurrent requests of the session do not all ask.
            sessions.insert(
                session_id,
                SessionCheck::Alive { user_id: verified.user_id, checked_at: now },
            );
        }
        match self.client.user(token).await.map_err(|err| map_error(Op::Verify, err)) {
            Ok(_) => Ok(()),
            Err(AuthError::Unavailable(cause)) => {
                // Revocation is a refinement; an outage must not sign everyone out.
                tracing::warn!(error = format!("{cause:#}"), %session_id, "cannot check the session with Supabase; allowing it");
                Ok(())
            }
            Err(err) => {
                lock(&self.sessions)
                    .insert(session_id, SessionCheck::Ended { until_exp: verified.exp });
                Err(err)
            }
        }
    }

    /// After a logout through us, strict mode stops trusting the ended sessions at once.
    fn forget_sessions(&self, user: &AuthUser, scope: LogoutScope) {
        if self.session_check_interval.is_none() {
            return;
        }
        let mut sessions = lock(&self.sessions);
        let current = user.session_id;
        if scope != LogoutScope::Others {
            if let Some(id) = current {
                // The token's `exp` is not at hand; Supabase caps token lifetimes at a week.
                let until_exp = chrono::Utc::now().timestamp() + MAX_TOKEN_LIFETIME_SECS;
                sessions.insert(id, SessionCheck::Ended { until_exp });
            }
        }
        if scope != LogoutScope::Local {
            // The user's other sessions are not known by id: make each one ask again.
            sessions.retain(|id, check| {
                Some(*id) == current
                    || !matches!(check, SessionCheck::Alive { user_id, .. } if *user_id == user.id)
            });
        }
    }
}

fn sweep(sessions: &mut HashMap<Uuid, SessionCheck>) {
    if sessions.len() < CACHE_CAPACITY {
        return;
    }
    let now = chrono::Utc::now().timestamp();
    sessions
        .retain(|_, check| matches!(check, SessionCheck::Ended { until_exp } if *until_exp > now));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a cache, which stays usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
                    Ok(CurrentUser { user: keys::user_from_claims(user)?, checked: false })
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

fn to_wire_session(session: GoTrueSession) -> Session {
    let expires_at =
        session.expires_at.unwrap_or_else(|| chrono::Utc::now().timestamp() + session.expires_in);
    Session {
        access_token: session.access_token,
        token_type: session.token_type.to_ascii_lowercase(),
        expires_in: session.expires_in,
        expires_at,
        refresh_token: session.refresh_token,
        user: to_wire_user(session.user),
    }
}

/// GoTrue writes `""` for a missing email; we write null.
fn to_wire_user(mut user: User) -> User {
    user.email = user.email.filter(|email| !email.is_empty());
    user
}

/// Which call an error answered: the same GoTrue code can mean different things for the caller
/// (`session_not_found` on refresh means "log in again", on `/user` "this token's session ended").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    SignUp,
    LogIn,
    Refresh,
    LogOut,
    Verify,
}

/// **The** mapping of GoTrue answers to our errors (and, through `api/error.rs`, to our status
/// codes). Keep the README's error-mapping table in step with it.
fn map_error(op: Op, err: GoTrueError) -> AuthError {
    let (status, code, message, reasons) = match err {
        GoTrueError::Api { status, code, message, reasons } => (status, code, message, reasons),
        GoTrueError::Unreachable(cause) => return AuthError::Unavailable(cause),
        err @ GoTrueError::Undecodable { status, .. } if status.is_server_error() => {
            return AuthError::Unavailable(err.into());
        }
        err @ GoTrueError::Undecodable { .. } => {
            return AuthError::Internal(
                anyhow::Error::new(err).context("unexpected answer from Supabase Auth"),
            );
        }
    };
    match (op, code.as_deref()) {
        (_, Some("invalid_credentials")) => AuthError::InvalidCredentials,
        (_, Some("email_not_confirmed" | "phone_not_confirmed")) => AuthError::EmailNotConfirmed,
        (_, Some("user_already_exists" | "email_exists" | "phone_exists")) => {
            AuthError::UserAlreadyExists
        }
        (_, Some("weak_password")) => {
            AuthError::WeakPassword(weak_password_message(&message, &reasons))
        }
        (
            _,
            Some("signup_disabled" | "email_provider_disabled" | "anonymous_provider_disabled"),
        ) => AuthError::SignupDisabled,
        (
            _,
            Some(
                "over_request_rate_limit"
                | "over_email_send_rate_limit"
                | "over_sms_send_rate_limit",
            ),
        ) => AuthError::RateLimited { retry_after: retry_after(&message) },
        (_, Some("user_banned")) => AuthError::UserBanned,
        // A refresh token GoTrue cannot use: malformed, unknown, or its session is gone.
        (Op::Refresh, Some("refresh_token_not_found" | "validation_failed" | "bad_json")) => {
            AuthError::RefreshTokenNotFound
        }
        (Op::Refresh, Some("refresh_token_already_used")) => AuthError::RefreshTokenAlreadyUsed,
        (Op::Refresh, Some("session_expired" | "session_not_found")) => AuthError::SessionExpired,
        (_, Some("session_not_found" | "user_not_found")) => AuthError::SessionNotFound,
        (_, Some("bad_jwt" | "no_authorization")) => AuthError::InvalidToken(format!(
            "Supabase refused the access token: {}",
            message.trim_start_matches("invalid JWT: unable to parse or verify signature, ")
        )),
        (_, Some("email_address_invalid" | "email_address_not_authorized")) => {
            AuthError::Validation(vec![FieldError::new("email", message.to_lowercase())])
        }
        (_, Some("validation_failed" | "bad_json" | "request_entity_too_large")) => {
            let field =
                if message.to_lowercase().contains("password") { "password" } else { "email" };
            AuthError::Validation(vec![FieldError::new(field, message)])
        }
        (_, Some("conflict")) => AuthError::Unavailable(anyhow::anyhow!(
            "Supabase Auth kept answering 409 conflict: {message}"
        )),
        _ if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT => {
            AuthError::Unavailable(anyhow::anyhow!(
                "Supabase Auth answered {status} {}: {message}",
                code.as_deref().unwrap_or("")
            ))
        }
        // No code at all on a 401: the gateway refused our API key.
        (_, None) if status == StatusCode::UNAUTHORIZED => AuthError::Internal(anyhow::anyhow!(
            "Supabase refused the API key; check SUPABASE_ANON_KEY (and SUPABASE_SECRET_KEY): {message}"
        )),
        (_, Some("captcha_failed")) => AuthError::Internal(anyhow::anyhow!(
            "the Supabase project requires CAPTCHA, which nim-backend does not support; turn it off under Authentication → Attack Protection"
        )),
        _ => AuthError::Internal(anyhow::anyhow!(
            "unexpected answer from Supabase Auth: {status} {}: {message}",
            code.as_deref().unwrap_or("(no error code)")
        )),
    }
}

fn weak_password_message(message: &str, reasons: &[String]) -> String {
    let message = message.trim().trim_end_matches('.').to_owned();
    let message = if message.is_empty() { "the password is too weak".to_owned() } else { message };
    if reasons.is_empty() {
        message
    } else {
        format!("{message} (reasons: {})", reasons.join(", "))
    }
}

/// GoTrue sends no `Retry-After`; its per-user email window says "… after N seconds". Other
/// limits refill a token bucket within seconds (login) or within the hour (email budget).
fn retry_after(message: &str) -> Duration {
    let seconds = message
        .split_once("after ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    match seconds {
        Some(n) => Duration::from_secs(n.max(1)),
        None if message.to_lowercase().contains("email") => Duration::from_secs(60),
        None => Duration::from_secs(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, message: &str) -> GoTrueError {
        GoTrueError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: Some(code.to_owned()),
            message: message.to_owned(),
            reasons: Vec::new(),
        }
    }

    #[test]
    fn the_same_code_means_what_the_call_makes_it_mean() {
        let refresh = map_error(Op::Refresh, api(403, "session_not_found", "gone"));
        assert!(matches!(refresh, AuthError::SessionExpired), "{refresh:?}");
        let verify = map_error(Op::Verify, api(403, "session_not_found", "gone"));
        assert!(matches!(verify, AuthError::SessionNotFound), "{verify:?}");
        let malformed =
            map_error(Op::Refresh, api(400, "validation_failed", "Refresh token is not valid"));
        assert!(matches!(malformed, AuthError::RefreshTokenNotFound), "{malformed:?}");
    }

    #[test]
    fn rate_limits_carry_a_retry_after() {
        let limited = map_error(
            Op::SignUp,
            api(
                429,
                "over_email_send_rate_limit",
                "For security purposes, you can only request this after 42 seconds.",
            ),
        );
        assert!(
            matches!(limited, AuthError::RateLimited { retry_after } if retry_after.as_secs() == 42)
        );
        let limited =
            map_error(Op::LogIn, api(429, "over_request_rate_limit", "Request rate limit reached"));
        assert!(
            matches!(limited, AuthError::RateLimited { retry_after } if retry_after.as_secs() == 10)
        );
    }

    #[test]
    fn outages_and_misconfiguration_are_told_apart() {
        assert!(matches!(
            map_error(Op::LogIn, api(504, "request_timeout", "slow")),
            AuthError::Unavailable(_)
        ));
        assert!(matches!(
            map_error(Op::LogIn, api(500, "unexpected_failure", "x")),
            AuthError::Unavailable(_)
        ));
        let gateway = GoTrueError::Api {
            status: StatusCode::UNAUTHORIZED,
            code: None,
            message: "Invalid API key".into(),
            reasons: Vec::new(),
        };
        let err = map_error(Op::LogIn, gateway);
        assert!(
            matches!(&err, AuthError::Internal(cause) if cause.to_string().contains("SUPABASE_ANON_KEY")),
            "{err:?}"
        );
    }
}
