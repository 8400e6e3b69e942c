//! Local verification of Supabase access tokens: the project's public keys (JWKS) cached with a
//! TTL, refetched once for an unknown `kid` (single-flight, so a burst of requests causes one
//! fetch), served stale when Supabase cannot be reached; plus the legacy HS256 secret.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use super::{
    super::{AUTHENTICATED, AuthError, jwt::token_error},
    gotrue::GoTrueClient,
};

/// After a failed JWKS fetch, no new attempt is made for this long; verification meanwhile uses
/// the keys already known (stale-if-error) instead of waiting on a dead server per request.
const FETCH_ERROR_BACKOFF: Duration = Duration::from_secs(10);
/// Refetches caused by an unknown `kid` are spaced at least this far apart, so that tokens with
/// made-up key ids cannot turn every request into a fetch.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

/// The claims we read from a Supabase access token (§6 of the contract). `sub` is optional here
/// so that its absence (an API key) can be reported as such.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct SupabaseClaims {
    pub(super) sub: Option<String>,
    pub(super) exp: i64,
    #[serde(default)]
    pub(super) email: Option<String>,
    #[serde(default)]
    pub(super) role: Option<String>,
    #[serde(default)]
    pub(super) session_id: Option<String>,
}

/// A token's verified identity.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub(super) user_id: Uuid,
    pub(super) email: Option<String>,
    pub(super) role: String,
    pub(super) session_id: Option<Uuid>,
    pub(super) exp: i64,
}

impl SupabaseClaims {
    pub(super) fn into_verified(self) -> Result<Verified, AuthError> {
        let sub = self.sub.ok_or_else(|| {
            AuthError::InvalidToken(
                "the token has no subject: it is an API key, not a user's access token".into(),
            )
        })?;
        let user_id = Uuid::parse_str(&sub).map_err(|_| {
            AuthError::InvalidToken("the access token's subject is not a user id".into())
        })?;
        let session_id = match self.session_id.as_deref() {
            None | Some("") => None,
            Some(id) => Some(Uuid::parse_str(id).map_err(|_| {
                AuthError::InvalidToken("the access token's session_id is not a UUID".into())
            })?),
        };
        Ok(Verified {
            user_id,
            email: self.email.filter(|e| !e.is_empty()),
            role: self.role.unwrap_or_else(|| AUTHENTICATED.to_owned()),
            session_id,
            exp: self.exp,
        })
    }
}

/// What a token's header asks for.
#[derive(Debug)]
pub(super) enum KeyChoice {
    /// ES256/RS256 with this key id: verify against the JWKS.
    Asymmetric { alg: Algorithm, kid: String },
    /// HS256: the legacy shared secret.
    Shared,
}

/// Reads the header and says which kind of key verifies the token; refuses every algorithm
/// Supabase does not sign user tokens with (including `none`, which the JWT library does not
/// even parse).
pub(super) fn key_choice(token: &str) -> Result<KeyChoice, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::InvalidToken("the access token is malformed".into()))?;
    match header.alg {
        Algorithm::ES256 | Algorithm::RS256 => match header.kid {
            Some(kid) => Ok(KeyChoice::Asymmetric { alg: header.alg, kid }),
            None => {
                Err(AuthError::InvalidToken("the access token names no signing key (kid)".into()))
            }
        },
        Algorithm::HS256 => Ok(KeyChoice::Shared),
        _ => Err(AuthError::InvalidToken("the access token uses an unaccepted algorithm".into())),
    }
}

/// The checks every Supabase user token must pass, for one algorithm.
pub(super) fn validation(alg: Algorithm, issuer: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_audience(&[AUTHENTICATED]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "aud", "iss"]);
    validation.leeway = LEEWAY_SECS;
    validation
}

/// Verifies `token` with `key` and turns a failure into a reason the caller can act on.
pub(super) fn decode(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<Verified, AuthError> {
    jsonwebtoken::decode::<SupabaseClaims>(token, key, validation)
        .map_err(|err| token_error(&err))?
        .claims
        .into_verified()
}

/// The legacy HS256 secret, used as its raw bytes as GoTrue does.
pub(super) fn shared_secret_key(secret: &SecretString) -> DecodingKey {
    DecodingKey::from_secret(secret.expose_secret().as_bytes())
}

/// One usable public key from the JWKS.
struct PublicKey {
    alg: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    keys: HashMap<String, Arc<PublicKey>>,
    fetched_at: Instant,
}

#[derive(Default)]
struct FetchState {
    last_failure: Option<Instant>,
    last_unknown_kid_fetch: Option<Instant>,
}

impl FetchState {
    fn backing_off(&self) -> bool {
        self.last_failure.is_some_and(|at| at.elapsed() < FETCH_ERROR_BACKOFF)
    }
}

/// The project's JWKS, cached.
pub(super) struct Jwks {
    client: Arc<GoTrueClient>,
    ttl: Duration,
    keys: RwLock<Option<KeySet>>,
    /// Held while fetching: the single-flight lock.
    fetch: Mutex<FetchState>,
    /// Counts finished fetch attempts, so that a task which waited for the fetch lock can tell
    /// that someone fetched meanwhile, and use that result instead of fetching again.
    generation: AtomicU64,
    /// Bumped when a fetch finds a different set of key ids than before (a key added or
    /// revoked); cached verifications from an older version are not trusted.
    key_version: AtomicU64,
    background_refresh: AtomicBool,
}

impl Jwks {
    pub(super) fn new(client: Arc<GoTrueClient>, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            ttl,
            keys: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
            generation: AtomicU64::new(0),
            key_version: AtomicU64::new(0),
            background_refresh: AtomicBool::new(false),
        })
    }

    /// Changes whenever the published key ids change.
    pub(super) fn key_version(&self) -> u64 {
        self.key_version.load(Ordering::Acquire)
    }

    /// The key for `kid` and `alg`. Known keys are answered from memory, even past the TTL (a
    /// refresh then starts in the background); an unknown `kid` waits for one refetch.
    pub(super) async fn key(
        self: &Arc<Self>,
        kid: &str,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        let seen = {
            let keys = self.keys.read().await;
            if let Some(key) = keys.as_ref().and_then(|set| set.keys.get(kid)) {
                if keys.as_ref().is_some_and(|set| set.fetched_at.elapsed() >= self.ttl) {
                    self.refresh_in_background();
                }
                return matching(key, alg);
            }
            // Read under the keys lock: a fetch stores its keys before it counts itself.
            self.generation.load(Ordering::Acquire)
        };
        self.fetch_for_unknown(seen).await?;
        let keys = self.keys.read().await;
        match keys.as_ref().and_then(|set| set.keys.get(kid)) {
            Some(key) => matching(key, alg),
            None => Err(AuthError::InvalidToken(
                "the access token is signed with a key this project does not publish".into(),
            )),
        }
    }

    /// Fetches the JWKS for a `kid` that was not in it, unless a fetch finished since the caller
    /// looked (generation `seen`) or the limits say not now.
    async fn fetch_for_unknown(&self, seen: u64) -> Result<(), AuthError> {
        let mut state = self.fetch.lock().await;
        let have_keys = self.keys.read().await.is_some();
        if self.generation.load(Ordering::Acquire) != seen {
            // Someone fetched while we waited: that answer stands for us too.
            return if have_keys { Ok(()) } else { Err(unavailable()) };
        }
        if have_keys {
            let throttled = state
                .last_unknown_kid_fetch
                .is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFETCH_INTERVAL);
            if throttled || state.backing_off() {
                return Ok(());
            }
            state.last_unknown_kid_fetch = Some(Instant::now());
        } else if state.backing_off() {
            return Err(unavailable());
        }
        match self.fetch_now(&mut state).await {
            Ok(()) => Ok(()),
            // Stale keys are still good for the tokens they verify; without any there is nothing
            // to verify with.
            Err(_) if have_keys => Ok(()),
            Err(err) => Err(AuthError::Unavailable(err)),
        }
    }

    /// One fetch; the caller holds the fetch lock (`state`).
    async fn fetch_now(&self, state: &mut FetchState) -> anyhow::Result<()> {
        let result = match self.client.jwks().await {
            Ok(body) => {
                let keys = parse_jwks(&body);
                tracing::info!(keys = keys.len(), "fetched the Supabase signing keys (JWKS)");
                let mut current = self.keys.write().await;
                let changed = current.as_ref().is_none_or(|old| {
                    old.keys.len() != keys.len()
                        || keys.keys().any(|kid| !old.keys.contains_key(kid))
                });
                if changed {
                    self.key_version.fetch_add(1, Ordering::AcqRel);
                }
                *current = Some(KeySet { keys, fetched_at: Instant::now() });
                drop(current);
                state.last_failure = None;
                Ok(())
            }
            Err(err) => {
                let err = anyhow::Error::new(err).context("failed to fetch the Supabase JWKS");
                tracing::warn!(
                    error = format!("{err:#}"),
                    "keeping the signing keys already known"
                );
                state.last_failure = Some(Instant::now());
                Err(err)
            }
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Starts one refresh of an expired set; requests keep using the old keys meanwhile.
    fn refresh_in_background(self: &Arc<Self>) {
        if self.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut state = this.fetch.lock().await;
            let expired = this
                .keys
                .read()
                .await
                .as_ref()
                .is_none_or(|set| set.fetched_at.elapsed() >= this.ttl);
            if expired && !state.backing_off() {
                // A failure is logged inside, and the stale set kept.
                let _ = this.fetch_now(&mut state).await;
            }
            drop(state);
            this.background_refresh.store(false, Ordering::Release);
        });
    }
}

fn unavailable() -> AuthError {
    AuthError::Unavailable(anyhow::anyhow!(
        "the Supabase signing keys have not been fetched yet and Supabase Auth is unreachable"
    ))
}

/// The key, if it is of the kind the token's header claims: an ES256 token is never checked
/// against an RSA key and vice versa.
fn matching(key: &PublicKey, alg: Algorithm) -> Result<(DecodingKey, Algorithm), AuthError> {
    if key.alg == alg {
        Ok((key.key.clone(), alg))
    } else {
        Err(AuthError::InvalidToken(
            "the access token's algorithm does not match its signing key".into(),
        ))
    }
}

/// The usable keys of a JWKS body: EC P-256 keys for ES256 and RSA keys for RS256, by `kid`.
/// Anything else (symmetric keys, other curves, keys without an id) is skipped, so it can never
/// be used to verify a token.
fn parse_jwks(body: &serde_json::Value) -> HashMap<String, Arc<PublicKey>> {
    let Some(keys) = body.get("keys").and_then(|k| k.as_array()) else {
        tracing::warn!("the Supabase JWKS has no `keys` array");
        return HashMap::new();
    };
    keys.iter()
        .filter_map(|value| {
            let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
            let kid = jwk.common.key_id.clone()?;
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                _ => {
                    tracing::debug!(kid, "skipping a JWKS key of an unaccepted kind");
                    return None;
                }
            };
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some((kid, Arc::new(PublicKey { alg, key })))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    /// A 2048-bit RSA key made for this test only (`openssl genrsa 2048`).
    const RSA_PRIVATE_PEM: &str = include_str!("testdata/rsa-test-key.pem");

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        let n_e: serde_json::Value =
            serde_json::from_str(include_str!("testdata/rsa-test-key.jwk.json")).unwrap();
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "key_ops": ["verify"],
               "n": n_e["n"], "e": n_e["e"]})
    }

    fn claims(iss: &str) -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        json!({"sub": Uuid::new_v4(), "aud": "authenticated", "iss": iss, "exp": now + 600,
               "iat": now, "role": "authenticated", "email": "a@example.com",
               "session_id": Uuid::new_v4()})
    }

    #[test]
    fn rs256_tokens_verify_against_an_rsa_jwk() {
        let keys = parse_jwks(
            &json!({"keys": [rsa_jwk("r1"), {"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}),
        );
        assert_eq!(keys.len(), 1, "the symmetric key is never accepted");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("r1".into());
        let signing = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
        let token =
            jsonwebtoken::encode(&header, &claims("https://p.example/auth/v1"), &signing).unwrap();
        let KeyChoice::Asymmetric { alg, kid } = key_choice(&token).unwrap() else { panic!() };
        let (key, alg) = matching(&keys[&kid], alg).unwrap();
        let verified = decode(&token, &key, &validation(alg, "https://p.example/auth/v1")).unwrap();
        assert_eq!(verified.email.as_deref(), Some("a@example.com"));
        // The same token claiming ES256 is refused before any signature check.
        assert!(matching(&keys["r1"], Algorithm::ES256).is_err());
        // And the wrong issuer is refused.
        assert!(decode(&token, &key, &validation(alg, "https://other.example/auth/v1")).is_err());
    }

    #[test]
    fn tokens_without_a_subject_are_refused_as_api_keys() {
        let secret = SecretString::from("s".repeat(40));
        let mut claims = claims("supabase");
        claims.as_object_mut().unwrap().remove("sub");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
        )
        .unwrap();
        let err =
            decode(&token, &shared_secret_key(&secret), &validation(Algorithm::HS256, "supabase"))
                .unwrap_err();
        assert!(err.to_string().contains("API key"), "{err}");
    }

    #[test]
    fn none_and_unlisted_algorithms_are_refused() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", part(json!({"alg": "none", "typ": "JWT"})), part(claims("x")));
        assert!(key_choice(&none).is_err());
        let hs512 = format!("{}.{}.sig", part(json!({"alg": "HS512"})), part(claims("x")));
        assert!(key_choice(&hs512).unwrap_err().to_string().contains("unaccepted"));
    }
}
