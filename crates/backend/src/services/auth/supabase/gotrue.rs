//! `GoTrueClient`: the one typed client of a Supabase project's Auth server (GoTrue), one method
//! per endpoint. It owns the transport concerns (API key, version header, timeouts, retries) and
//! turns every error shape GoTrue or its gateway can answer with into one [`GoTrueError`].

use std::{net::IpAddr, time::Duration};

use anyhow::Context;
use rand::Rng;
use reqwest::{Method, StatusCode, Url, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use wire::User;

use super::super::LogoutScope;

/// The error format we ask for; GoTrue answers `{code: "<error_code>", message}` with it.
pub(super) const API_VERSION: &str = "2024-01-01";
const API_VERSION_HEADER: &str = "x-supabase-api-version";

/// How to reach the project and how patiently.
pub(super) struct GoTrueOptions {
    pub(super) project_url: Url,
    pub(super) anon_key: SecretString,
    /// Sent instead of the anon key on signup and login, with `Sb-Forwarded-For`.
    pub(super) secret_key: Option<SecretString>,
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) max_retries: u32,
}

pub(super) struct GoTrueClient {
    http: reqwest::Client,
    /// `<project>/auth/v1/`, with the trailing slash so that joins append.
    base: Url,
    anon_key: SecretString,
    secret_key: Option<SecretString>,
    max_retries: u32,
}

/// A failed call. `Api` is an answer from the server (or its gateway) that will not change on
/// retry; `Unreachable` means no usable answer came at all, after retries.
#[derive(Debug, thiserror::Error)]
pub(super) enum GoTrueError {
    #[error("Supabase Auth answered {status} {}: {message}", code.as_deref().unwrap_or("(no error code)"))]
    Api {
        status: StatusCode,
        /// GoTrue's `error_code`; `None` for gateway errors and very old servers.
        code: Option<String>,
        message: String,
        /// `weak_password.reasons`, when present.
        reasons: Vec<String>,
    },
    #[error("Supabase Auth is unreachable")]
    Unreachable(#[source] anyhow::Error),
    #[error("Supabase Auth answered {status} with a body we cannot read")]
    Undecodable {
        status: StatusCode,
        #[source]
        source: anyhow::Error,
    },
}

/// The token response (§5.1 of the contract).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct GoTrueSession {
    pub(super) access_token: String,
    pub(super) token_type: String,
    pub(super) expires_in: i64,
    /// Absent in some versions; then worked out from `expires_in` as the JS client does.
    pub(super) expires_at: Option<i64>,
    pub(super) refresh_token: String,
    pub(super) user: User,
}

/// `/signup` answers a session when the project auto-confirms, the bare user when it sends a
/// confirmation email first.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SignUpAnswer {
    Session(Box<GoTrueSession>),
    User(Box<User>),
}

#[derive(Serialize)]
struct EmailPassword<'a> {
    email: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct RefreshBody<'a> {
    refresh_token: &'a str,
}

/// Who the request is on behalf of: their address (for `Sb-Forwarded-For`) and user agent.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct OnBehalfOf<'a> {
    pub(super) ip: Option<IpAddr>,
    pub(super) user_agent: Option<&'a str>,
}

/// One request, described well enough to be sent again.
struct Call<'a> {
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<serde_json::Value>,
    bearer: Option<&'a str>,
    on_behalf_of: OnBehalfOf<'a>,
    /// Whether a request that may have reached the server can be sent again. Connection
    /// failures are always retried: nothing was sent.
    idempotent: bool,
}

impl GoTrueClient {
    pub(super) fn new(options: GoTrueOptions) -> anyhow::Result<Self> {
        let mut base = options.project_url;
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&format!("{path}/auth/v1/"));
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            .user_agent(concat!("nim-backend/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("failed to build the HTTP client for Supabase Auth")?;
        Ok(Self {
            http,
            base,
            anon_key: options.anon_key,
            secret_key: options.secret_key,
            max_retries: options.max_retries,
        })
    }

    /// `POST /signup`.
    pub(super) async fn sign_up(
        &self,
        email: &str,
        password: &str,
        on_behalf_of: OnBehalfOf<'_>,
    ) -> Result<SignUpAnswer, GoTrueError> {
        let body = serde_json::to_value(EmailPassword { email, password }).ok();
        self.json(Call {
            method: Method::POST,
            path: "signup",
            query: &[],
            body,
            bearer: None,
            on_behalf_of,
            idempotent: false,
        })
        .await
    }

    /// `POST /token?grant_type=password`.
    pub(super) async fn password_grant(
        &self,
        email: &str,
        password: &str,
        on_behalf_of: OnBehalfOf<'_>,
    ) -> Result<GoTrueSession, GoTrueError> {
        let body = serde_json::to_value(EmailPassword { email, password }).ok();
        self.json(Call {
            method: Method::POST,
            path: "token",
            query: &[("grant_type", "password")],
            body,
            bearer: None,
            on_behalf_of,
            // A repeated login creates one more session at worst.
            idempotent: true,
        })
        .await
    }

    /// `POST /token?grant_type=refresh_token`. Refresh is safe to repeat: GoTrue's reuse interval
    /// answers a repeated token with the current session.
    pub(super) async fn refresh_grant(
        &self,
        refresh_token: &str,
    ) -> Result<GoTrueSession, GoTrueError> {
        let body = serde_json::to_value(RefreshBody { refresh_token }).ok();
        self.json(Call {
            method: Method::POST,
            path: "token",
            query: &[("grant_type", "refresh_token")],
            body,
            bearer: None,
            on_behalf_of: OnBehalfOf::default(),
            idempotent: true,
        })
        .await
    }

    /// `POST /logout?scope=…`; 204 on success.
    pub(super) async fn log_out(
        &self,
        access_token: &str,
        scope: LogoutScope,
    ) -> Result<(), GoTrueError> {
        let scope = match scope {
            LogoutScope::Local => "local",
            LogoutScope::Global => "global",
            LogoutScope::Others => "others",
        };
        self.send(Call {
            method: Method::POST,
            path: "logout",
            query: &[("scope", scope)],
            body: None,
            bearer: Some(access_token),
            on_behalf_of: OnBehalfOf::default(),
            idempotent: true,
        })
        .await
        .map(drop)
    }

    /// `GET /user`: the user behind an access token, which GoTrue verifies, session included.
    pub(super) async fn user(&self, access_token: &str) -> Result<User, GoTrueError> {
        self.json(Call {
            method: Method::GET,
            path: "user",
            query: &[],
            body: None,
            bearer: Some(access_token),
            on_behalf_of: OnBehalfOf::default(),
            idempotent: true,
        })
        .await
    }

    /// `GET /.well-known/jwks.json`: the project's public signing keys, as raw JSON so that one
    /// key of an unknown kind cannot make the whole set unreadable.
    pub(super) async fn jwks(&self) -> Result<serde_json::Value, GoTrueError> {
        self.json(Call {
            method: Method::GET,
            path: ".well-known/jwks.json",
            query: &[],
            body: None,
            bearer: None,
            on_behalf_of: OnBehalfOf::default(),
            idempotent: true,
        })
        .await
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, GoTrueError> {
        let (status, body) = self.send(call).await?;
        serde_json::from_slice(&body).map_err(|err| GoTrueError::Undecodable {
            status,
            source: anyhow::Error::new(err).context(snippet(&body)),
        })
    }

    /// Sends `call`, retrying 5xx answers and failed connections with jittered exponential
    /// backoff; returns a 2xx answer's status and body or the error it carried.
    async fn send(&self, call: Call<'_>) -> Result<(StatusCode, Vec<u8>), GoTrueError> {
        let url = self.base.join(call.path).map_err(|err| GoTrueError::Unreachable(err.into()))?;
        let mut attempt = 0;
        loop {
            let outcome = self.send_once(&url, &call).await;
            let retry = match &outcome {
                Ok(_) => false,
                Err(Attempt::Answered(err)) => is_retryable_answer(err, call.idempotent),
                // Nothing was sent when connecting failed. A timeout means an overloaded server,
                // which a retry would only load more.
                Err(Attempt::Transport(err)) => {
                    err.is_connect() || (call.idempotent && !err.is_timeout())
                }
            };
            if !retry || attempt >= self.max_retries {
                return outcome.map_err(|failure| match failure {
                    Attempt::Answered(err) => err,
                    Attempt::Transport(err) => GoTrueError::Unreachable(
                        anyhow::Error::new(err).context(format!("{} {url}", call.method)),
                    ),
                });
            }
            let delay = backoff(attempt);
            tracing::debug!(path = call.path, attempt, ?delay, "retrying a Supabase Auth request");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        url: &Url,
        call: &Call<'_>,
    ) -> Result<(StatusCode, Vec<u8>), Attempt> {
        // The secret key is only worth its risk where GoTrue rate-limits per address.
        let forwarded = call.on_behalf_of.ip.zip(self.secret_key.as_ref());
        let api_key = forwarded.map_or(&self.anon_key, |(_, key)| key);
        let mut request = self
            .http
            .request(call.method.clone(), url.clone())
            .query(call.query)
            .header("apikey", api_key.expose_secret())
            .header(API_VERSION_HEADER, API_VERSION);
        if let Some((ip, _)) = forwarded {
            request = request.header("sb-forwarded-for", ip.to_string());
        }
        if let Some(user_agent) = call.on_behalf_of.user_agent {
            request = request.header(header::USER_AGENT, user_agent);
        }
        if let Some(token) = call.bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Attempt::Transport)?;
        let status = response.status();
        let answered_version = response
            .headers()
            .get(API_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(Attempt::Transport)?.to_vec();
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(Attempt::Answered(parse_error(status, answered_version.as_deref(), &body)))
        }
    }
}

enum Attempt {
    Answered(GoTrueError),
    Transport(reqwest::Error),
}

/// 502/503/504 come from the gateway or a timeout and may succeed next time. GoTrue's own 500 and
/// 409 `conflict` (concurrent refreshes of one session) are retried only where repeating the call
/// is harmless: a signup that failed sending its email has created the user. Other 4xx are final.
fn is_retryable_answer(err: &GoTrueError, idempotent: bool) -> bool {
    let status = match err {
        GoTrueError::Api { status, .. } | GoTrueError::Undecodable { status, .. } => *status,
        GoTrueError::Unreachable(_) => return false,
    };
    matches!(status.as_u16(), 502..=504)
        || (idempotent && (status.is_server_error() || status == StatusCode::CONFLICT))
}

/// 100 ms, 200 ms, 400 ms, … capped at 2 s, each with full jitter so that many clients retrying
/// at once do not arrive together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 100u64.saturating_mul(1 << attempt.min(5)).min(2_000);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling / 2..=ceiling))
}

/// Reads an error body the way supabase-js does, whatever its shape (legacy `{code: <status>,
/// error_code, msg}`, `2024-01-01` `{code, message}`, OAuth `{error, error_description}`, gateway
/// `{message, hint}`): the message is the first of `msg`, `message`, `error_description`, `error`;
/// the code is `code` when the answer is in the `2024-01-01` format and `code` is a string,
/// otherwise `error_code`.
pub(super) fn parse_error(
    status: StatusCode,
    answered_version: Option<&str>,
    body: &[u8],
) -> GoTrueError {
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return GoTrueError::Api {
            status,
            code: None,
            message: snippet(body),
            reasons: Vec::new(),
        };
    };
    let text = |key: &str| body.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let message = ["msg", "message", "error_description", "error"]
        .into_iter()
        .find_map(text)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("unknown error").to_owned());
    let versioned = answered_version.is_some_and(|v| v.trim() >= API_VERSION);
    let code = match body.get("code").and_then(|c| c.as_str()) {
        Some(code) if versioned => Some(code.to_owned()),
        _ => text("error_code"),
    };
    let reasons = body
        .get("weak_password")
        .and_then(|w| w.get("reasons"))
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let hint = text("hint");
    let message = match hint {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    };
    GoTrueError::Api { status, code, message, reasons }
}

/// The start of an unexpected body, for logs.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut snippet: String = text.chars().take(200).collect();
    if snippet.len() < text.len() {
        snippet.push('…');
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(status: u16, version: Option<&str>, body: &str) -> (Option<String>, String) {
        match parse_error(StatusCode::from_u16(status).unwrap(), version, body.as_bytes()) {
            GoTrueError::Api { code, message, .. } => (code, message),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[test]
    fn every_error_shape_gives_its_code_and_message() {
        // 2024-01-01: `code` is the string error code.
        assert_eq!(
            parsed(
                400,
                Some("2024-01-01"),
                r#"{"code":"invalid_credentials","message":"Invalid login credentials"}"#
            ),
            (Some("invalid_credentials".into()), "Invalid login credentials".into())
        );
        // Legacy: `code` is the status, the error code is `error_code`, the text `msg`.
        assert_eq!(
            parsed(
                400,
                None,
                r#"{"code":400,"error_code":"email_not_confirmed","msg":"Email not confirmed"}"#
            ),
            (Some("email_not_confirmed".into()), "Email not confirmed".into())
        );
        // A string `code` without the version header is not trusted as the error code.
        assert_eq!(parsed(400, None, r#"{"code":"x","error_code":"y","msg":"m"}"#).0.unwrap(), "y");
        // OAuth (before v2.159.0).
        assert_eq!(
            parsed(
                400,
                None,
                r#"{"error":"invalid_grant","error_description":"Invalid login credentials"}"#
            ),
            (None, "Invalid login credentials".into())
        );
        // Gateway: no code at all, the hint kept for the log.
        let (code, message) = parsed(
            401,
            None,
            r#"{"message":"Invalid API key","hint":"Double check your Supabase `anon` or `service_role` API key."}"#,
        );
        assert_eq!(code, None);
        assert!(message.starts_with("Invalid API key (Double check"), "{message}");
        // Not JSON at all (a proxy's HTML page).
        assert_eq!(parsed(502, None, "<html>Bad Gateway</html>").1, "<html>Bad Gateway</html>");
    }

    #[test]
    fn weak_password_reasons_are_kept() {
        let err = parse_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("2024-01-01"),
            br#"{"code":"weak_password","message":"Password should be at least 6 characters.","weak_password":{"reasons":["length"]}}"#,
        );
        match err {
            GoTrueError::Api { reasons, .. } => assert_eq!(reasons, ["length"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let delay = backoff(attempt);
            assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_secs(2));
        }
        assert!(backoff(0) <= Duration::from_millis(100));
    }

    #[test]
    fn retries_are_for_5xx_and_conflicts_only() {
        let api = |status: u16| GoTrueError::Api {
            status: StatusCode::from_u16(status).unwrap(),
            code: None,
            message: String::new(),
            reasons: Vec::new(),
        };
        for status in [500, 502, 503, 504, 409] {
            assert!(is_retryable_answer(&api(status), true), "{status}");
        }
        for status in [502, 503, 504] {
            assert!(is_retryable_answer(&api(status), false), "{status}");
        }
        for status in [500, 409] {
            assert!(!is_retryable_answer(&api(status), false), "{status}");
        }
        for status in [400, 401, 403, 404, 422, 429] {
            assert!(!is_retryable_answer(&api(status), true), "{status}");
        }
    }
}
