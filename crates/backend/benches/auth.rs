//! Benchmark, not a test: what verifying an access token costs per token (ES256 from the JWKS,
//! HS256 with the project secret, and the built-in provider's HS256), and how many authenticated
//! requests per second `GET /auth/me` serves with each provider. Prints figures; asserts nothing.
//!
//! `cargo bench -p backend --bench auth` (Supabase is the GoTrue stub of the integration tests,
//! on loopback in this process).

// A bench target is its own crate root, like the test binary.
#![allow(unreachable_pub)]

#[allow(dead_code, reason = "the bench uses a few of the stub's controls")]
#[path = "../tests/api/gotrue_stub.rs"]
mod gotrue_stub;

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use gotrue_stub::{GoTrueStub, KeyMode, LEGACY_SECRET, StubConfig};
use nim_backend::{
    Application, Config,
    services::auth::{
        AUTHENTICATED, AuthService, ClientInfo, Credentials, JwtKeys, SupabaseAuth, SupabaseOptions,
    },
};
use secrecy::SecretString;
use uuid::Uuid;

const VERIFICATIONS: u32 = 20_000;
const DISTINCT: usize = 2_000;
const HTTP_SECONDS: u64 = 5;
const HTTP_WORKERS: usize = 16;
const PASSWORD: &str = "correct horse battery";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!(
        "token verification, mean per token ({DISTINCT} distinct tokens, each verified once; then \
         one token {VERIFICATIONS} times):"
    );
    let es256 = GoTrueStub::start(StubConfig::default()).await;
    let auth = supabase_auth(&es256, None);
    let token = signed_up_token(&auth, "es256@example.com").await?;
    auth.verify(&token).await?; // fetches the JWKS
    let tokens = distinct_tokens(&es256, &token);
    report("  supabase ES256 (JWKS), first sight", first_sight(&auth, &tokens).await?);
    report("  supabase ES256 (JWKS), repeat", per_token(&auth, &token).await?);

    let hs256 =
        GoTrueStub::start(StubConfig { keys: KeyMode::Legacy, ..StubConfig::default() }).await;
    let auth = supabase_auth(&hs256, Some(LEGACY_SECRET));
    let token = signed_up_token(&auth, "hs256@example.com").await?;
    let tokens = distinct_tokens(&hs256, &token);
    report(
        "  supabase HS256 (SUPABASE_JWT_SECRET), first sight",
        first_sight(&auth, &tokens).await?,
    );
    report("  supabase HS256 (SUPABASE_JWT_SECRET), repeat", per_token(&auth, &token).await?);
    let auth = supabase_auth(&hs256, None);
    let few = &tokens[..200];
    report("  supabase HS256 (no secret: GoTrue GET /user), first", first_sight(&auth, few).await?);
    report("  supabase HS256 (no secret: cached answer), repeat", per_token(&auth, &token).await?);

    let keys = JwtKeys::new(&SecretString::from("b".repeat(48)), "nim-backend")?;
    let claims = keys.claims(Uuid::new_v4(), None, AUTHENTICATED, Uuid::new_v4(), Utc::now(), 3600);
    let token = keys.sign(&claims)?;
    let started = Instant::now();
    for _ in 0..VERIFICATIONS {
        black_box(keys.verify(black_box(&token))?);
    }
    report(
        "  built-in HS256 (no cache: every sight is a first)",
        started.elapsed() / VERIFICATIONS,
    );

    println!(
        "\nHTTP, {HTTP_WORKERS} concurrent clients for {HTTP_SECONDS} s each (server, clients and \
         GoTrue stub share this machine):"
    );
    let data = tempfile::tempdir()?;
    let local = serve(config(&data, None)).await?;
    let supabase = serve(config(&data, Some(&es256))).await?;
    let client =
        reqwest::Client::builder().no_proxy().pool_max_idle_per_host(HTTP_WORKERS).build()?;
    for (name, base) in [("built-in", &local), ("supabase ES256", &supabase)] {
        let session: serde_json::Value = client
            .post(format!("{base}/auth/signup"))
            .json(&serde_json::json!({"email": "http@example.com", "password": PASSWORD}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = session["session"]["access_token"].as_str().unwrap_or_default().to_owned();
        let health = throughput(&client, &format!("{base}/healthz"), None).await;
        let me = throughput(&client, &format!("{base}/auth/me"), Some(&token)).await;
        println!(
            "  {name:<16} GET /healthz (no auth) {health:>8.0} req/s   GET /auth/me {me:>8.0} req/s"
        );
    }
    println!(
        "  (/auth/me reads the user record: from SQLite with the built-in provider, from GoTrue's \
         GET /user with Supabase; verification itself is the per-token cost above)"
    );
    Ok(())
}

fn supabase_auth(stub: &GoTrueStub, jwt_secret: Option<&str>) -> SupabaseAuth {
    SupabaseAuth::new(SupabaseOptions {
        url: stub.url(),
        anon_key: SecretString::from(stub.anon_key().to_owned()),
        jwt_secret: jwt_secret.map(|s| SecretString::from(s.to_owned())),
        issuer: None,
        secret_key: None,
        jwks_ttl: Duration::from_secs(600),
        session_check_interval: None,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        max_retries: 0,
    })
    .expect("provider builds")
}

async fn signed_up_token(auth: &SupabaseAuth, email: &str) -> anyhow::Result<String> {
    let credentials =
        Credentials { email: email.to_owned(), password: SecretString::from(PASSWORD.to_owned()) };
    let signed_up = auth.sign_up(credentials, &ClientInfo::default()).await?;
    let session = signed_up.session.ok_or_else(|| anyhow::anyhow!("the stub auto-confirms"))?;
    Ok(session.access_token)
}

/// Valid tokens of `token`'s user and session that all differ (by `iat`), signed by the project.
fn distinct_tokens(stub: &GoTrueStub, token: &str) -> Vec<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("JSON");
    (0..DISTINCT)
        .map(|i| {
            let mut claims = claims.clone();
            claims["iat"] =
                serde_json::json!(claims["iat"].as_i64().unwrap_or_default() - i as i64);
            stub.sign(&claims)
        })
        .collect()
}

/// Mean cost of verifying each of `tokens` once.
async fn first_sight(auth: &SupabaseAuth, tokens: &[String]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for token in tokens {
        black_box(auth.verify(black_box(token)).await?);
    }
    Ok(started.elapsed() / u32::try_from(tokens.len())?)
}

/// Mean cost of one `verify` of a token seen before.
async fn per_token(auth: &SupabaseAuth, token: &str) -> anyhow::Result<Duration> {
    auth.verify(token).await?;
    let started = Instant::now();
    for _ in 0..VERIFICATIONS {
        black_box(auth.verify(black_box(token)).await?);
    }
    Ok(started.elapsed() / VERIFICATIONS)
}

fn report(name: &str, per_token: Duration) {
    let micros = per_token.as_secs_f64() * 1e6;
    println!("{name:<56} {micros:>8.2} µs  ({:>9.0} tokens/s on one core)", 1e6 / micros);
}

fn config(data: &tempfile::TempDir, stub: Option<&GoTrueStub>) -> Config {
    let mut config = Config::defaults();
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.data_dir = data.path().join(if stub.is_some() { "supabase" } else { "local" });
    config.database_url = None;
    config.jwt_secret = Some(SecretString::from("b".repeat(48)));
    config.auth_rate_limit_per_minute = 1_000_000;
    config.supabase_url = stub.map(GoTrueStub::url);
    config.supabase_anon_key = stub.map(|s| SecretString::from(s.anon_key().to_owned()));
    config.supabase_jwt_secret = None;
    config.supabase_session_check_secs = None;
    config
}

/// Builds and serves an application in this process; returns its base URL.
async fn serve(config: Config) -> anyhow::Result<String> {
    let app = Application::build(config).await?;
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped());
    Ok(base)
}

/// Requests per second over `HTTP_SECONDS`, with `HTTP_WORKERS` requests in flight.
async fn throughput(client: &reqwest::Client, url: &str, token: Option<&str>) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(HTTP_SECONDS);
    let started = Instant::now();
    let url = Arc::new(url.to_owned());
    let token = token.map(str::to_owned);
    let workers: Vec<_> = (0..HTTP_WORKERS)
        .map(|_| {
            let (client, url, token) = (client.clone(), Arc::clone(&url), token.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let mut request = client.get(url.as_str());
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let response = request.send().await.expect("request");
                    assert!(
                        response.status().is_success(),
                        "{} answered {}",
                        url,
                        response.status()
                    );
                    response.bytes().await.expect("body");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
