//! Access tokens: HS256 JWTs whose claims copy Supabase's, so that code reading a Supabase token
//! (including Postgres row-level security via `auth.uid()`) reads ours the same way.

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AUTHENTICATED, AuthError};

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub aud: String,
    pub iss: String,
    pub exp: i64,
    pub iat: i64,
    pub email: Option<String>,
    #[serde(default)]
    pub phone: String,
    pub role: String,
    /// Authenticator assurance level; password sign-in is `aal1`.
    #[serde(default)]
    pub aal: String,
    pub session_id: Option<Uuid>,
    #[serde(default)]
    pub is_anonymous: bool,
}

/// The signing key and the issuer/audience every token must carry.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// Shortest accepted HS256 secret, in bytes (RFC 7518 §3.2: at least the hash size).
pub(super) const MIN_SECRET_BYTES: usize = 32;

impl JwtKeys {
    /// Builds keys from a secret. A secret that is valid base64 of at least 32 bytes (as the
    /// generated one is) is used decoded; any other secret is used as its UTF-8 bytes.
    pub fn new(secret: &SecretString, issuer: &str) -> anyhow::Result<Self> {
        let text = secret.expose_secret();
        let bytes = match STANDARD.decode(text.trim()) {
            Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => bytes,
            _ => text.as_bytes().to_vec(),
        };
        anyhow::ensure!(
            bytes.len() >= MIN_SECRET_BYTES,
            "NIM_JWT_SECRET is {} bytes long; use at least {MIN_SECRET_BYTES}",
            bytes.len()
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUTHENTICATED]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = 30;
        Ok(Self {
            encoding: EncodingKey::from_secret(&bytes),
            decoding: DecodingKey::from_secret(&bytes),
            validation,
            issuer: issuer.to_owned(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Claims for a fresh token of `user`'s `session_id`, valid for `ttl_secs` from `now`.
    pub fn claims(
        &self,
        user: Uuid,
        email: Option<String>,
        role: &str,
        session_id: Uuid,
        now: DateTime<Utc>,
        ttl_secs: i64,
    ) -> AccessClaims {
        AccessClaims {
            sub: user,
            aud: AUTHENTICATED.to_owned(),
            iss: self.issuer.clone(),
            exp: now.timestamp() + ttl_secs,
            iat: now.timestamp(),
            email,
            phone: String::new(),
            role: role.to_owned(),
            aal: "aal1".to_owned(),
            session_id: Some(session_id),
            is_anonymous: false,
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm, `exp`, `aud` and `iss`; says which check failed.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| token_error(&err))
    }
}

/// Says which check a token failed, in words the caller can act on.
pub(super) fn token_error(err: &jsonwebtoken::errors::Error) -> AuthError {
    let reason = match err.kind() {
        ErrorKind::ExpiredSignature => "the access token has expired",
        ErrorKind::InvalidSignature => "the access token's signature is invalid",
        ErrorKind::InvalidAudience => "the access token is for another audience",
        ErrorKind::InvalidIssuer => "the access token is from another issuer",
        ErrorKind::InvalidAlgorithm => "the access token uses an unaccepted algorithm",
        ErrorKind::MissingRequiredClaim(_) => "the access token lacks a required claim",
        _ => "the access token is malformed",
    };
    AuthError::InvalidToken(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned()), "nim-test").unwrap()
    }

    fn token(keys: &JwtKeys, now: DateTime<Utc>, ttl: i64) -> String {
        let claims = keys.claims(Uuid::now_v7(), None, AUTHENTICATED, Uuid::now_v7(), now, ttl);
        keys.sign(&claims).unwrap()
    }

    fn reason(result: Result<AccessClaims, AuthError>) -> String {
        match result {
            Err(AuthError::InvalidToken(reason)) => reason,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_token_verifies_to_its_claims() {
        let keys = keys(&"k".repeat(32));
        let claims = keys.claims(
            Uuid::now_v7(),
            Some("a@b.co".into()),
            "authenticated",
            Uuid::now_v7(),
            Utc::now(),
            60,
        );
        let verified = keys.verify(&keys.sign(&claims).unwrap()).unwrap();
        assert_eq!(verified, claims);
    }

    #[test]
    fn expired_foreign_and_garbled_tokens_are_refused_with_a_reason() {
        let ours = keys(&"k".repeat(32));
        let theirs = keys(&"x".repeat(32));
        let expired = token(&ours, Utc::now() - chrono::Duration::hours(2), 60);
        assert!(reason(ours.verify(&expired)).contains("expired"));
        assert!(reason(ours.verify(&token(&theirs, Utc::now(), 60))).contains("signature"));
        assert!(reason(ours.verify("not.a.jwt")).contains("malformed"));
        let other_issuer = JwtKeys::new(&SecretString::from("k".repeat(32)), "elsewhere").unwrap();
        assert!(reason(ours.verify(&token(&other_issuer, Utc::now(), 60))).contains("issuer"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let err = JwtKeys::new(&SecretString::from("short".to_owned()), "i").unwrap_err();
        assert!(err.to_string().contains("at least 32"));
    }
}
