//! The sessions and users we answer with: GoTrue's, in our wire shapes, or, while GoTrue is
//! unreachable, the user that a verified access token describes.

use secrecy::ExposeSecret;
use serde::Deserialize;
use wire::{Session, User};

use super::{
    super::{AUTHENTICATED, AuthError, AuthUser},
    gotrue::GoTrueSession,
};

pub(super) fn to_wire_session(session: GoTrueSession) -> Session {
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
pub(super) fn to_wire_user(mut user: User) -> User {
    user.email = user.email.filter(|email| !email.is_empty());
    user
}

/// What a Supabase access token says of its user, beyond what verification keeps.
#[derive(Debug, Default, Deserialize)]
struct ProfileClaims {
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    app_metadata: Option<serde_json::Value>,
    #[serde(default)]
    user_metadata: Option<serde_json::Value>,
    #[serde(default)]
    is_anonymous: Option<bool>,
    /// Sign-in methods with their Unix times (`[{"method": "password", "timestamp": …}]`).
    #[serde(default)]
    amr: Option<Vec<serde_json::Value>>,
}

/// The user an already verified access token describes, for `/auth/me` while GoTrue is
/// unreachable. What a token does not carry is left empty (`email_confirmed_at`,
/// `confirmed_at`), or taken from the token: `last_sign_in_at` from its newest `amr` entry,
/// `created_at` and `updated_at` from its `iat`.
pub(super) fn user_from_claims(user: &AuthUser) -> Result<wire::User, AuthError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = user.access_token.expose_secret().split('.').nth(1).unwrap_or_default();
    let claims: ProfileClaims = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0);
    let issued = claims.iat.and_then(at).unwrap_or_else(chrono::Utc::now);
    let aud = match claims.aud {
        Some(serde_json::Value::String(aud)) => aud,
        Some(serde_json::Value::Array(auds)) => {
            auds.first().and_then(|aud| aud.as_str()).unwrap_or(AUTHENTICATED).to_owned()
        }
        _ => AUTHENTICATED.to_owned(),
    };
    let last_sign_in_at = claims
        .amr
        .unwrap_or_default()
        .iter()
        .filter_map(|entry| entry.get("timestamp")?.as_i64())
        .max()
        .and_then(at);
    Ok(wire::User {
        id: user.id,
        aud,
        role: user.role.clone(),
        email: user.email.clone().filter(|email| !email.is_empty()),
        email_confirmed_at: None,
        phone: claims.phone.unwrap_or_default(),
        confirmed_at: None,
        last_sign_in_at,
        app_metadata: claims.app_metadata.unwrap_or_else(|| serde_json::json!({})),
        user_metadata: claims.user_metadata.unwrap_or_else(|| serde_json::json!({})),
        created_at: issued,
        updated_at: issued,
        is_anonymous: claims.is_anonymous.unwrap_or(false),
    })
}
