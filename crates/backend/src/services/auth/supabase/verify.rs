//! Local verification of access tokens (JWKS, the legacy secret, or GoTrue vouching for an
//! HS256 token when no secret is configured), with the per-token cache that spares a signature
//! check on every request.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use super::{
    super::AuthError,
    CACHE_CAPACITY, SupabaseAuth,
    errors::{Op, map_error},
    keys::{self, KeyChoice, Verified},
    lock,
};

/// How long a token that GoTrue vouched for (HS256 without a configured secret) is trusted
/// without asking again.
const VOUCHED_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a locally verified token is answered from memory (never past its `exp`, and never
/// after the key set it was verified against has changed).
const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(60);

pub(super) struct CachedToken {
    verified: Verified,
    until: Instant,
    /// The JWKS version it was verified against; `None` for shared-secret and GoTrue checks.
    key_version: Option<u64>,
}

impl SupabaseAuth {
    /// The token's identity, from its signature alone. A token seen before is answered from
    /// [`Self::verified`]: a hash and a lookup instead of a signature check.
    pub(super) async fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
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
}
