//! Configuration of the Supabase provider: [`SupabaseOptions`] and [`SupabaseAuth::new`], which
//! checks them and builds the GoTrue client, the JWKS cache and the empty caches.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use super::{
    SupabaseAuth,
    gotrue::{GoTrueClient, GoTrueOptions},
    keys::{self, Jwks},
};

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
