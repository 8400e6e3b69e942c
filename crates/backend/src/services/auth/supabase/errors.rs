//! **The** mapping of GoTrue's errors to ours, per call: the one place where an `error_code`
//! becomes an [`AuthError`] (the README's error-mapping table mirrors it).

use std::time::Duration;

use reqwest::StatusCode;
use wire::FieldError;

use super::{super::AuthError, gotrue::GoTrueError};

/// Which call an error answered: the same GoTrue code can mean different things for the caller
/// (`session_not_found` on refresh means "log in again", on `/user` "this token's session ended").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    SignUp,
    LogIn,
    Refresh,
    LogOut,
    Verify,
}

/// **The** mapping of GoTrue answers to our errors (and, through `api/error.rs`, to our status
/// codes). Keep the README's error-mapping table in step with it.
pub(super) fn map_error(op: Op, err: GoTrueError) -> AuthError {
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
