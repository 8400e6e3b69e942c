//! The session and user objects, shaped exactly like Supabase Auth's (GoTrue) so that a frontend
//! written against Supabase works unchanged against either of our auth providers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A signed-in session: what `POST /auth/login` and `POST /auth/refresh` return.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// A JWT to send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: i64,
    /// When `access_token` expires, in Unix seconds.
    pub expires_at: i64,
    /// An opaque, single-use token for `POST /auth/refresh`.
    pub refresh_token: String,
    pub user: User,
}

/// A user as Supabase Auth describes one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: Uuid,
    /// The audience the user's tokens are issued for (`authenticated`).
    pub aud: String,
    /// The Postgres role the user's tokens carry (`authenticated`).
    pub role: String,
    pub email: Option<String>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub phone: String,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub app_metadata: serde_json::Value,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub user_metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub is_anonymous: bool,
}

/// What `POST /auth/signup` returns. It mirrors supabase-js's `signUp` result: `session` is null
/// when the project requires the user to confirm their email first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignUpResponse {
    pub user: User,
    pub session: Option<Session>,
    /// True when the user must follow the link in a confirmation email before logging in.
    pub confirmation_required: bool,
}
