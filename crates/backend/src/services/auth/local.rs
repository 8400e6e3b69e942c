//! The built-in (`local`) auth provider: users, sessions and refresh tokens in our own database,
//! access tokens signed with our own key. It answers exactly as Supabase Auth would, so the
//! frontend cannot tell the providers apart.

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wire::{Session, SignUpResponse, User};

use super::{
    AUTHENTICATED, AuthError, AuthService, AuthUser, ClientInfo, Credentials, JwtKeys, LogoutScope,
    normalize_email, password, require_login_fields, require_refresh_token, signup_fields,
};
use crate::store::{AuthSessionRow, RefreshOutcome, SessionSelector, Store, StoreError, UserRow};

/// Shortest accepted password, in characters.
pub(super) const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in bytes: enough for any passphrase, small enough that hashing
/// cannot be used to burn CPU on megabyte inputs.
pub(super) const MAX_PASSWORD_BYTES: usize = 1024;

pub struct LocalAuth {
    store: Store,
    keys: JwtKeys,
    access_ttl_secs: i64,
    session_ttl: chrono::Duration,
    /// Hash checked when the email is unknown, so that a wrong email costs as much time as a
    /// wrong password and response times do not reveal which addresses have accounts.
    decoy_hash: String,
}

impl LocalAuth {
    pub async fn new(
        store: Store,
        keys: JwtKeys,
        access_ttl_secs: u64,
        session_ttl_secs: u64,
    ) -> anyhow::Result<Self> {
        let decoy_hash = password::hash(SecretString::from("decoy password".to_owned())).await?;
        Ok(Self {
            store,
            keys,
            access_ttl_secs: i64::try_from(access_ttl_secs)?,
            session_ttl: chrono::Duration::seconds(i64::try_from(session_ttl_secs)?),
            decoy_hash,
        })
    }

    async fn issue_session(
        &self,
        user: &UserRow,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> Result<Session, AuthError> {
        let session = AuthSessionRow {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now,
            not_after: now + self.session_ttl,
            user_agent: client.user_agent.clone(),
            ip: client.ip.map(|ip| ip.to_string()),
        };
        let (refresh_token, refresh_hash) = new_refresh_token();
        self.store.create_session(&session, &refresh_hash).await?;
        let mut user = user.clone();
        user.last_sign_in_at = Some(now);
        self.session_for(&user, session.id, refresh_token, now)
    }

    fn session_for(
        &self,
        user: &UserRow,
        session_id: Uuid,
        refresh_token: String,
        now: DateTime<Utc>,
    ) -> Result<Session, AuthError> {
        let claims = self.keys.claims(
            user.id,
            Some(user.email.clone()),
            &user.role,
            session_id,
            now,
            self.access_ttl_secs,
        );
        Ok(Session {
            access_token: self.keys.sign(&claims)?,
            token_type: "bearer".to_owned(),
            expires_in: self.access_ttl_secs,
            expires_at: claims.exp,
            refresh_token,
            user: to_wire(user),
        })
    }
}

#[async_trait]
impl AuthService for LocalAuth {
    fn provider(&self) -> &'static str {
        "local"
    }

    #[tracing::instrument(skip_all)]
    async fn sign_up(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<SignUpResponse, AuthError> {
        let email = normalize_email(&credentials.email);
        let password = check_password(&credentials.password);
        // A weak password alone is `weak_password`; with other problems, one of the field errors.
        if let (Ok(_), Err(PasswordProblem::Weak(message))) = (&email, &password) {
            return Err(AuthError::WeakPassword(message.clone()));
        }
        let email = signup_fields(email, password.err().map(|problem| problem.message()))?;
        let password_hash = password::hash(credentials.password).await?;
        let now = crate::domain::now();
        let user = UserRow {
            id: Uuid::new_v4(),
            email,
            password_hash,
            role: AUTHENTICATED.to_owned(),
            // The built-in provider does not send mail; it behaves like a Supabase project with
            // "Confirm email" off, where sign-up confirms at once.
            email_confirmed_at: Some(now),
            last_sign_in_at: None,
            created_at: now,
            updated_at: now,
        };
        match self.store.insert_user(&user).await {
            Ok(()) => {}
            Err(StoreError::Conflict("users_email_key")) => {
                return Err(AuthError::UserAlreadyExists);
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(user_id = %user.id, "user signed up");
        let session = self.issue_session(&user, client, now).await?;
        Ok(SignUpResponse {
            user: session.user.clone(),
            session: Some(session),
            confirmation_required: false,
        })
    }

    #[tracing::instrument(skip_all)]
    async fn log_in(
        &self,
        credentials: Credentials,
        client: &ClientInfo,
    ) -> Result<Session, AuthError> {
        require_login_fields(&credentials)?;
        // A malformed address cannot have an account; it gets the same answer as a wrong one.
        let user = match normalize_email(&credentials.email) {
            Ok(email) => self.store.find_user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash =
            user.as_ref().map_or_else(|| self.decoy_hash.clone(), |u| u.password_hash.clone());
        let matches = password::verify(credentials.password, hash).await?;
        match user {
            Some(user) if matches => {
                let session = self.issue_session(&user, client, crate::domain::now()).await?;
                tracing::info!(user_id = %user.id, "user logged in");
                Ok(session)
            }
            _ => Err(AuthError::InvalidCredentials),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        refresh_token: &str,
        _client: &ClientInfo,
    ) -> Result<Session, AuthError> {
        require_refresh_token(refresh_token)?;
        let old_hash = hash_refresh_token(refresh_token);
        let (new_token, new_hash) = new_refresh_token();
        let now = crate::domain::now();
        match self.store.rotate_refresh_token(&old_hash, &new_hash, now).await? {
            RefreshOutcome::Rotated { session_id, user_id } => {
                let user =
                    self.store.find_user(user_id).await?.ok_or(AuthError::SessionNotFound)?;
                self.session_for(&user, session_id, new_token, now)
            }
            RefreshOutcome::Reused { session_id } => {
                tracing::warn!(%session_id, "a rotated refresh token was presented again; session revoked");
                Err(AuthError::RefreshTokenAlreadyUsed)
            }
            RefreshOutcome::SessionEnded => Err(AuthError::SessionExpired),
            RefreshOutcome::NotFound => Err(AuthError::RefreshTokenNotFound),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    async fn log_out(&self, user: &AuthUser, scope: LogoutScope) -> Result<(), AuthError> {
        let which = match (scope, user.session_id) {
            (LogoutScope::Global, _) => SessionSelector::All,
            (LogoutScope::Local, Some(id)) => SessionSelector::Only(id),
            (LogoutScope::Others, Some(id)) => SessionSelector::AllBut(id),
            // A token without a session (not one we issue) has nothing of its own to end.
            (_, None) => return Ok(()),
        };
        let ended = self.store.revoke_sessions(user.id, which, crate::domain::now()).await?;
        tracing::info!(?scope, ended, "logged out");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    async fn user(&self, user: &AuthUser) -> Result<super::CurrentUser, AuthError> {
        if let Some(session_id) = user.session_id {
            if !self.store.session_is_live(session_id, user.id, crate::domain::now()).await? {
                return Err(AuthError::SessionNotFound);
            }
        }
        let row = self.store.find_user(user.id).await?.ok_or(AuthError::SessionNotFound)?;
        Ok(super::CurrentUser { user: to_wire(&row), checked: true })
    }

    async fn verify(&self, access_token: &str) -> Result<AuthUser, AuthError> {
        let claims = self.keys.verify(access_token)?;
        Ok(AuthUser {
            id: claims.sub,
            email: claims.email,
            role: claims.role,
            session_id: claims.session_id,
            access_token: SecretString::from(access_token.to_owned()),
        })
    }
}

enum PasswordProblem {
    Missing,
    Weak(String),
    TooLong,
}

impl PasswordProblem {
    fn message(&self) -> String {
        match self {
            Self::Missing => "a password is required".to_owned(),
            Self::Weak(message) => message.clone(),
            Self::TooLong => format!("the password is longer than {MAX_PASSWORD_BYTES} bytes"),
        }
    }
}

fn check_password(password: &SecretString) -> Result<(), PasswordProblem> {
    let password = password.expose_secret();
    if password.is_empty() {
        Err(PasswordProblem::Missing)
    } else if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordProblem::TooLong)
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Err(PasswordProblem::Weak(format!(
            "password should be at least {MIN_PASSWORD_CHARS} characters"
        )))
    } else {
        Ok(())
    }
}

/// A new opaque refresh token (256 random bits) and the hash we store instead of it.
fn new_refresh_token() -> (String, Vec<u8>) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// Refresh tokens are high-entropy, so a plain SHA-256 is enough to make a stolen table useless.
fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn to_wire(user: &UserRow) -> User {
    User {
        id: user.id,
        aud: AUTHENTICATED.to_owned(),
        role: user.role.clone(),
        email: Some(user.email.clone()),
        email_confirmed_at: user.email_confirmed_at,
        phone: String::new(),
        confirmed_at: user.email_confirmed_at,
        last_sign_in_at: user.last_sign_in_at,
        app_metadata: serde_json::json!({ "provider": "email", "providers": ["email"] }),
        user_metadata: serde_json::json!({}),
        created_at: user.created_at,
        updated_at: user.updated_at,
        is_anonymous: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_checked_for_presence_length_and_size() {
        let check = |p: &str| check_password(&SecretString::from(p.to_owned()));
        assert!(matches!(check(""), Err(PasswordProblem::Missing)));
        assert!(matches!(check("1234567"), Err(PasswordProblem::Weak(_))));
        // Length counts characters, not bytes.
        assert!(matches!(check("ééééééé"), Err(PasswordProblem::Weak(_))));
        assert!(check("12345678").is_ok());
        assert!(matches!(
            check(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordProblem::TooLong)
        ));
    }

    #[test]
    fn refresh_tokens_are_unique_and_stored_only_as_hashes() {
        let (a, hash_a) = new_refresh_token();
        let (b, _) = new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_a, hash_refresh_token(&a));
        assert_ne!(hash_a, a.as_bytes());
    }
}
