//! `/auth/*` with the Supabase provider, against the GoTrue stub on loopback: every flow in both
//! confirmation modes, both key systems and both error formats; the error mapping; local token
//! verification (JWKS caching, rotation, single-flight, outages, forged tokens); strict mode.

use std::{sync::atomic::AtomicUsize, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nim_backend::services::auth::{
    AuthError, AuthService, LogoutScope, SupabaseAuth, SupabaseOptions,
};
use reqwest::{StatusCode, header};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    gotrue_stub::{GoTrueStub, KeyMode, LEGACY_SECRET, SECRET_KEY, StubConfig},
    helpers::{AppBuilder, TestApp, app, assert_problem, error_fields, json_ok},
};

const PASSWORD: &str = "correct horse battery";

fn supabase(stub: &GoTrueStub) -> AppBuilder {
    app().env("SUPABASE_URL", stub.url()).env("SUPABASE_ANON_KEY", stub.anon_key())
}

fn token_of(session: &Value) -> &str {
    session["access_token"].as_str().expect("access_token")
}

fn refresh_of(session: &Value) -> &str {
    session["refresh_token"].as_str().expect("refresh_token")
}

fn count(counter: &AtomicUsize) -> usize {
    GoTrueStub::count(counter)
}

/// Every project mode a test should hold in: both key systems, both error formats.
fn modes(autoconfirm: bool) -> Vec<StubConfig> {
    let mut modes = Vec::new();
    for keys in [KeyMode::Jwks, KeyMode::Legacy] {
        for strip_api_version in [false, true] {
            modes.push(StubConfig {
                autoconfirm,
                keys,
                strip_api_version,
                ..StubConfig::default()
            });
        }
    }
    modes
}

fn describe(config: &StubConfig) -> String {
    format!(
        "keys {:?}, autoconfirm {}, {} errors",
        config.keys,
        config.autoconfirm,
        if config.strip_api_version { "legacy" } else { "2024-01-01" }
    )
}

/// Asserts a session in exactly the built-in provider's shape.
fn assert_session(session: &Value, email: &str) {
    for field in ["access_token", "refresh_token", "expires_in", "expires_at", "user"] {
        assert!(!session[field].is_null(), "session lacks {field}: {session}");
    }
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 3600);
    let now = chrono::Utc::now().timestamp();
    let expires_at = session["expires_at"].as_i64().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expires_at), "expires_at {expires_at}, now {now}");
    assert_eq!(session["user"]["email"], email);
    assert_eq!(session["user"]["aud"], "authenticated");
    assert_eq!(session["user"]["role"], "authenticated");
}

/// Login, me, refresh, logout and their failures, for an account that can log in.
async fn session_story(app: &TestApp, email: &str, context: &str) {
    let session = json_ok(app.log_in(email, PASSWORD).await).await;
    assert_session(&session, email);

    let me = json_ok(app.get("/auth/me", Some(token_of(&session))).await).await;
    assert_eq!(me["email"], email, "{context}");
    assert_eq!(me["id"], session["user"]["id"], "{context}");

    let refreshed = json_ok(app.refresh(refresh_of(&session)).await).await;
    assert_session(&refreshed, email);
    assert_ne!(refreshed["refresh_token"], session["refresh_token"], "{context}");
    json_ok(app.get("/auth/me", Some(token_of(&refreshed))).await).await;

    assert_problem(app.log_in(email, "not the password").await, 400, "invalid_credentials").await;
    assert_problem(app.log_in("nobody@example.com", PASSWORD).await, 400, "invalid_credentials")
        .await;

    assert_eq!(app.log_out(token_of(&refreshed), None).await.status(), StatusCode::NO_CONTENT);
    // The session is over at Supabase: its refresh token is gone and /me says so.
    assert_problem(app.refresh(refresh_of(&refreshed)).await, 400, "refresh_token_not_found").await;
    assert_problem(app.get("/auth/me", Some(token_of(&refreshed))).await, 401, "session_not_found")
        .await;
    // Logging out twice is not an error, as with the built-in provider.
    assert_eq!(app.log_out(token_of(&refreshed), None).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn every_flow_works_with_email_confirmation_off_in_every_project_mode() {
    for config in modes(true) {
        let context = describe(&config);
        let stub = GoTrueStub::start(config).await;
        let app = supabase(&stub).spawn().await;

        let signed_up = app.sign_up("Ada@Example.com", PASSWORD).await;
        assert_eq!(signed_up.status(), StatusCode::CREATED, "{context}");
        let signed_up = json_ok(signed_up).await;
        assert_eq!(signed_up["confirmation_required"], false, "{context}");
        assert_session(&signed_up["session"], "ada@example.com");
        assert_eq!(signed_up["user"]["id"], signed_up["session"]["user"]["id"]);
        assert!(signed_up["user"]["email_confirmed_at"].is_string(), "{context}");

        session_story(&app, "ada@example.com", &context).await;

        let problem = assert_problem(
            app.sign_up("ada@example.com", PASSWORD).await,
            422,
            "user_already_exists",
        )
        .await;
        assert_eq!(error_fields(&problem), ["email"], "{context}");
        let problem =
            assert_problem(app.sign_up("weak@example.com", "abc").await, 422, "weak_password")
                .await;
        assert!(problem["detail"].as_str().unwrap().contains("at least 6 characters"), "{problem}");
        assert_eq!(error_fields(&problem), ["password"]);
        // Field errors are found before Supabase is asked, exactly as the built-in provider does.
        let signups = count(&stub.counters().signup);
        let problem = assert_problem(app.sign_up("nope", "").await, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), ["email", "password"]);
        assert_eq!(count(&stub.counters().signup), signups, "{context}");
    }
}

#[tokio::test]
async fn every_flow_works_with_email_confirmation_on_in_every_project_mode() {
    for config in modes(false) {
        let context = describe(&config);
        let stub = GoTrueStub::start(config).await;
        let app = supabase(&stub).spawn().await;

        let signed_up = app.sign_up("grace@example.com", PASSWORD).await;
        assert_eq!(signed_up.status(), StatusCode::CREATED, "{context}");
        let signed_up = json_ok(signed_up).await;
        assert_eq!(signed_up["confirmation_required"], true, "{context}");
        assert!(signed_up["session"].is_null(), "{context}: {signed_up}");
        assert_eq!(signed_up["user"]["email"], "grace@example.com");
        assert!(signed_up["user"]["email_confirmed_at"].is_null(), "{context}");

        // Right password, unconfirmed: told so. Wrong password: nothing is revealed.
        assert_problem(app.log_in("grace@example.com", PASSWORD).await, 403, "email_not_confirmed")
            .await;
        assert_problem(
            app.log_in("grace@example.com", "wrong password").await,
            400,
            "invalid_credentials",
        )
        .await;
        // Asking again within a minute: Supabase's per-user email window, with its wait.
        let again = app.sign_up("grace@example.com", PASSWORD).await;
        let retry_after: u64 =
            again.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((50..=60).contains(&retry_after), "{context}: Retry-After {retry_after}");
        assert_problem(again, 429, "over_request_rate_limit").await;

        stub.confirm_email("grace@example.com");
        session_story(&app, "grace@example.com", &context).await;

        // A confirmed address signing up again gets Supabase's look-alike answer: the same
        // shape as a new account, so signup does not reveal who has one.
        let duplicate = app.sign_up("grace@example.com", "another password").await;
        assert_eq!(duplicate.status(), StatusCode::CREATED, "{context}");
        let duplicate = json_ok(duplicate).await;
        assert_eq!(duplicate["confirmation_required"], true);
        assert!(duplicate["session"].is_null());
        assert_ne!(duplicate["user"]["id"], signed_up["user"]["id"], "{context}");
    }
}

#[tokio::test]
async fn disabled_signups_and_unusable_refresh_tokens_map_to_our_codes() {
    let config = StubConfig { signup_disabled: true, ..StubConfig::default() };
    let stub = GoTrueStub::start(config).await;
    let app = supabase(&stub).spawn().await;

    assert_problem(app.sign_up("new@example.com", PASSWORD).await, 403, "signup_disabled").await;
    // Malformed (GoTrue: validation_failed) and unknown tokens read the same as with the
    // built-in provider.
    assert_problem(app.refresh("not-a-token").await, 400, "refresh_token_not_found").await;
    assert_problem(app.refresh("abcdefghijkl").await, 400, "refresh_token_not_found").await;
    let problem = assert_problem(app.refresh("").await, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["refresh_token"]);
}

#[tokio::test]
async fn refresh_token_reuse_and_bans_map_like_the_built_in_provider() {
    let config = StubConfig { reuse_interval: Duration::ZERO, ..StubConfig::default() };
    let stub = GoTrueStub::start(config).await;
    let app = supabase(&stub).spawn().await;
    let session = json_ok(app.sign_up("reuse@example.com", PASSWORD).await).await;
    let t0 = session["session"].clone();

    let t1 = json_ok(app.refresh(refresh_of(&t0)).await).await;
    // The parent of the active token may be presented again: it answers the active one.
    let again = json_ok(app.refresh(refresh_of(&t0)).await).await;
    assert_eq!(again["refresh_token"], t1["refresh_token"]);
    let t2 = json_ok(app.refresh(refresh_of(&t1)).await).await;
    // A grandparent is a stolen token: refused, and the whole session is ended.
    assert_problem(app.refresh(refresh_of(&t0)).await, 400, "refresh_token_already_used").await;
    assert_problem(app.refresh(refresh_of(&t2)).await, 400, "refresh_token_not_found").await;

    // Sessions ended at Supabase (time-box, an admin): their refresh tokens are gone.
    let session = json_ok(app.log_in("reuse@example.com", PASSWORD).await).await;
    stub.delete_all_sessions();
    assert_problem(app.refresh(refresh_of(&session)).await, 400, "refresh_token_not_found").await;

    let session = json_ok(app.log_in("reuse@example.com", PASSWORD).await).await;
    stub.end_all_sessions();
    assert_problem(app.refresh(refresh_of(&session)).await, 400, "session_expired").await;

    let session = json_ok(app.log_in("reuse@example.com", PASSWORD).await).await;
    stub.ban("reuse@example.com");
    assert_problem(app.log_in("reuse@example.com", PASSWORD).await, 403, "user_banned").await;
    assert_problem(app.refresh(refresh_of(&session)).await, 403, "user_banned").await;
    assert_problem(app.get("/auth/me", Some(token_of(&session))).await, 403, "user_banned").await;
}

#[tokio::test]
async fn supabase_rate_limits_become_our_429_with_retry_after() {
    let config = StubConfig { token_burst: Some(2), ..StubConfig::default() };
    let stub = GoTrueStub::start(config).await;
    let app = supabase(&stub).spawn().await;
    assert_eq!(app.sign_up("limited@example.com", PASSWORD).await.status(), StatusCode::CREATED);
    for _ in 0..2 {
        json_ok(app.log_in("limited@example.com", PASSWORD).await).await;
    }
    let limited = app.log_in("limited@example.com", PASSWORD).await;
    let retry_after: u64 =
        limited.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 10);
    assert_problem(limited, 429, "over_request_rate_limit").await;
    // Not retried: a 4xx is final.
    assert_eq!(count(&stub.counters().token), 3);
}

#[tokio::test]
async fn timeouts_are_retried_and_a_persistent_one_is_503() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let app = supabase(&stub).env("SUPABASE_MAX_RETRIES", "2").spawn().await;
    // Signup is retried on 504 too: GoTrue gave up before creating anything.
    stub.time_out_next(1);
    json_ok(app.sign_up("slow@example.com", PASSWORD).await).await;
    assert_eq!(count(&stub.counters().signup), 1, "the timed-out attempt never reached /signup");

    stub.time_out_next(2);
    json_ok(app.log_in("slow@example.com", PASSWORD).await).await;
    stub.time_out_next(3);
    assert_problem(app.log_in("slow@example.com", PASSWORD).await, 503, "auth_unavailable").await;
    assert_eq!(count(&stub.counters().token), 1, "only the one attempt that got through");
}

#[tokio::test]
async fn a_wrong_api_key_is_a_logged_server_error_not_a_credentials_error() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let app = app()
        .env("SUPABASE_URL", stub.url())
        .env("SUPABASE_ANON_KEY", "eyJ-not-the-projects-key")
        .spawn()
        .await;
    assert_problem(app.log_in("a@example.com", PASSWORD).await, 500, "internal_error").await;
    assert_eq!(count(&stub.counters().gateway_rejections), 1);
    assert_eq!(count(&stub.counters().token), 0);
}

#[tokio::test]
async fn with_a_secret_key_the_end_users_address_is_forwarded() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let app = supabase(&stub).env("SUPABASE_SECRET_KEY", SECRET_KEY).spawn().await;
    json_ok(app.sign_up("fwd@example.com", PASSWORD).await).await;
    json_ok(app.log_in("fwd@example.com", PASSWORD).await).await;
    assert_eq!(stub.forwarded_for(), ["127.0.0.1", "127.0.0.1"]);
}

#[tokio::test]
async fn signing_key_rotation_causes_no_failed_request() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let app = supabase(&stub).env("SUPABASE_JWKS_TTL_SECS", "1").spawn().await;
    let old = json_ok(app.sign_up("rotate@example.com", PASSWORD).await).await["session"].clone();
    json_ok(app.get("/auth/me", Some(token_of(&old))).await).await;
    assert_eq!(count(&stub.counters().jwks), 1);

    // A standby key is published and becomes the signing key: new tokens carry its kid.
    let new_kid = stub.rotate_key();
    let new = json_ok(app.log_in("rotate@example.com", PASSWORD).await).await;
    json_ok(app.get("/auth/me", Some(token_of(&new))).await).await;
    assert_eq!(count(&stub.counters().jwks), 2, "one refetch for the unseen kid {new_kid}");
    json_ok(app.get("/auth/me", Some(token_of(&old))).await).await;

    // The old key is revoked: tokens of the new key keep working throughout.
    stub.revoke_old_keys();
    for _ in 0..5 {
        json_ok(app.get("/auth/me", Some(token_of(&new))).await).await;
    }
    // Once the cache has expired and been refreshed, the old key's tokens are refused.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    json_ok(app.get("/auth/me", Some(token_of(&new))).await).await;
    let refused = app.get("/auth/me", Some(token_of(&old))).await;
    assert_problem(refused, 401, "invalid_token").await;
}

#[tokio::test]
async fn a_thousand_concurrent_requests_with_a_cold_cache_fetch_the_jwks_once() {
    let config = StubConfig { jwks_delay: Duration::from_millis(300), ..StubConfig::default() };
    let stub = GoTrueStub::start(config).await;
    let app = supabase(&stub).spawn().await;
    let session = json_ok(app.sign_up("burst@example.com", PASSWORD).await).await;
    let token = token_of(&session["session"]).to_owned();
    assert_eq!(count(&stub.counters().jwks), 0, "the cache starts cold");

    let requests = (0..1000).map(|_| {
        let request = app.client.get(app.url("/auth/me")).bearer_auth(&token).send();
        async move { request.await.map(|r| r.status()) }
    });
    let statuses = futures_join_all(requests).await;
    let ok = statuses.iter().filter(|s| matches!(s, Ok(StatusCode::OK))).count();
    assert_eq!(ok, 1000, "{:?}", statuses.iter().find(|s| !matches!(s, Ok(StatusCode::OK))));
    assert_eq!(count(&stub.counters().jwks), 1);
}

/// Runs futures concurrently on this task (no `futures` dependency needed for one join).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("request task"));
    }
    out
}

#[tokio::test]
async fn when_supabase_is_down_login_is_503_and_issued_tokens_still_verify_and_me_answers_from_claims()
 {
    let mut stub = GoTrueStub::start(StubConfig::default()).await;
    let app = supabase(&stub).env("SUPABASE_MAX_RETRIES", "1").spawn().await;
    let session = json_ok(app.sign_up("down@example.com", PASSWORD).await).await["session"].clone();
    let me = app.get("/auth/me", Some(token_of(&session))).await;
    assert!(me.headers().get("x-nim-user-source").is_none(), "GoTrue answered this one");
    json_ok(me).await;
    let auth = in_process(&stub, None).await;
    auth.verify(token_of(&session)).await.expect("verifies while up");

    stub.take_down().await;

    let problem =
        assert_problem(app.log_in("down@example.com", PASSWORD).await, 503, "auth_unavailable")
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("unavailable"), "{problem}");
    assert_problem(app.sign_up("new@example.com", PASSWORD).await, 503, "auth_unavailable").await;
    assert_problem(app.refresh(refresh_of(&session)).await, 503, "auth_unavailable").await;
    // Verification needs no Supabase: a good token passes it, and /me answers from its claims
    // (saying so), a forged one is still refused.
    let me = app.get("/auth/me", Some(token_of(&session))).await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.headers()["x-nim-user-source"], "token");
    let user = json_ok(me).await;
    assert_eq!(user["id"], session["user"]["id"]);
    assert_eq!(user["email"], "down@example.com");
    assert_eq!(user["role"], "authenticated");
    assert_eq!(user["aud"], "authenticated");
    let mut forged = stub.user_claims(session["user"]["id"].as_str().unwrap(), "x");
    forged["iss"] = json!("https://attacker.example/auth/v1");
    assert_problem(app.get("/auth/me", Some(&stub.sign(&forged))).await, 401, "invalid_token")
        .await;
    let user = auth.verify(token_of(&session)).await.expect("verifies from the cached JWKS");
    assert_eq!(user.email.as_deref(), Some("down@example.com"));
}

/// The provider itself, in this process, for what no route shows on its own: verification
/// without the user lookup `/auth/me` adds.
async fn in_process(stub: &GoTrueStub, session_check: Option<Duration>) -> SupabaseAuth {
    SupabaseAuth::new(SupabaseOptions {
        url: stub.url(),
        anon_key: SecretString::from(stub.anon_key().to_owned()),
        jwt_secret: None,
        issuer: None,
        secret_key: None,
        jwks_ttl: Duration::from_secs(600),
        session_check_interval: session_check,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        max_retries: 0,
    })
    .expect("provider builds")
}

#[tokio::test]
async fn expired_foreign_none_confused_and_api_key_tokens_are_all_refused() {
    for jwt_secret in [false, true] {
        let stub = GoTrueStub::start(StubConfig::default()).await;
        let mut builder = supabase(&stub);
        if jwt_secret {
            builder = builder.env("SUPABASE_JWT_SECRET", LEGACY_SECRET);
        }
        let app = builder.spawn().await;
        let session =
            json_ok(app.sign_up("forge@example.com", PASSWORD).await).await["session"].clone();
        json_ok(app.get("/auth/me", Some(token_of(&session))).await).await;
        let user_id = session["user"]["id"].as_str().unwrap();
        let claims = stub.user_claims(user_id, "");
        let with = |key: &str, value: Value| {
            let mut claims = claims.clone();
            claims[key] = value;
            stub.sign(&claims)
        };
        let now = chrono::Utc::now().timestamp();
        let mut no_sub = claims.clone();
        no_sub.as_object_mut().unwrap().remove("sub");

        // alg none: a header that names no algorithm and an empty signature.
        let b64 = |v: &Value| {
            use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
            URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
        // Algorithm confusion: HS256 "signed" with the project's public key as the secret.
        let jwk = stub.public_jwk();
        let mut confused_header = Header::new(Algorithm::HS256);
        confused_header.kid = Some(stub.signing_kid());
        let confused = jsonwebtoken::encode(
            &confused_header,
            &claims,
            &EncodingKey::from_secret(jwk.to_string().as_bytes()),
        )
        .unwrap();

        let users_before = count(&stub.counters().user);
        let cases = [
            ("expired", with("exp", json!(now - 3600))),
            ("wrong issuer", with("iss", json!("https://other.supabase.co/auth/v1"))),
            ("wrong audience", with("aud", json!("service_role"))),
            ("alg none", none),
            ("no subject", stub.sign(&no_sub)),
            ("the anon API key", stub.anon_key().to_owned()),
            ("HS256 with the public key", confused),
        ];
        for (case, token) in &cases {
            let response = app.get("/auth/me", Some(token)).await;
            assert_eq!(
                response.headers()[header::WWW_AUTHENTICATE],
                r#"Bearer error="invalid_token""#
            );
            assert_problem(response, 401, "invalid_token").await;
            let _ = case;
        }
        // Refused locally; only HS256 tokens without the project's secret are put to GoTrue
        // (the anon key and the confused token).
        let asked = count(&stub.counters().user) - users_before;
        assert_eq!(asked, if jwt_secret { 0 } else { 2 }, "SUPABASE_JWT_SECRET set: {jwt_secret}");
    }
}

#[tokio::test]
async fn hs256_projects_verify_with_the_secret_or_a_briefly_cached_check() {
    // Without the secret: GoTrue vouches for a token once, then the answer is cached.
    let stub =
        GoTrueStub::start(StubConfig { keys: KeyMode::Legacy, ..StubConfig::default() }).await;
    let auth = in_process(&stub, None).await;
    let app = supabase(&stub).spawn().await;
    let session = json_ok(app.sign_up("hs@example.com", PASSWORD).await).await["session"].clone();
    for _ in 0..5 {
        auth.verify(token_of(&session)).await.expect("verifies");
    }
    assert_eq!(count(&stub.counters().user), 1);
    assert_eq!(count(&stub.counters().jwks), 0, "HS256 needs no JWKS");

    // With the secret: no call at all.
    let with_secret = app_with_secret(&stub).await;
    for _ in 0..5 {
        json_ok(with_secret.get("/auth/me", Some(token_of(&session))).await).await;
    }
    assert_eq!(count(&stub.counters().user), 1 + 5, "only /me's own user lookups");
}

async fn app_with_secret(stub: &GoTrueStub) -> TestApp {
    supabase(stub).env("SUPABASE_JWT_SECRET", LEGACY_SECRET).spawn().await
}

#[tokio::test]
async fn strict_mode_refuses_a_session_ended_elsewhere_and_asks_at_most_once_per_interval() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let app = supabase(&stub).spawn().await;
    let strict = in_process(&stub, Some(Duration::from_secs(3600))).await;
    let lenient = in_process(&stub, None).await;
    let a = json_ok(app.sign_up("strict@example.com", PASSWORD).await).await["session"].clone();
    let b = json_ok(app.log_in("strict@example.com", PASSWORD).await).await;

    let before = count(&stub.counters().user);
    for _ in 0..10 {
        strict.verify(token_of(&a)).await.expect("live session");
    }
    assert_eq!(count(&stub.counters().user) - before, 1, "one check per interval");

    // Session b ends through another client (not through this backend).
    assert_eq!(app.log_out(token_of(&b), Some("local")).await.status(), StatusCode::NO_CONTENT);
    assert!(matches!(strict.verify(token_of(&b)).await, Err(AuthError::SessionNotFound)));
    lenient.verify(token_of(&b)).await.expect("without strict mode a token lives until exp");

    // A logout through the provider itself is known at once, without asking.
    let user = strict.verify(token_of(&a)).await.unwrap();
    strict.log_out(&user, LogoutScope::Local).await.unwrap();
    let before = count(&stub.counters().user);
    assert!(matches!(strict.verify(token_of(&a)).await, Err(AuthError::SessionNotFound)));
    assert_eq!(count(&stub.counters().user), before);
}

#[test]
fn supabase_url_without_the_anon_key_refuses_to_start_and_says_why() {
    for (set, missing) in
        [("SUPABASE_URL", "SUPABASE_ANON_KEY"), ("SUPABASE_ANON_KEY", "SUPABASE_URL")]
    {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_nim-backend"))
            .current_dir(dir.path())
            .env_remove("SUPABASE_URL")
            .env_remove("SUPABASE_ANON_KEY")
            .env("NIM_LISTEN", "127.0.0.1:0")
            .env("NIM_DATA_DIR", dir.path().join("data"))
            .env(set, "https://example.supabase.co")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("{missing} is not")), "{stderr}");
    }
}

/// The stub is only worth its tests if it answers as GoTrue does: spot checks of the contract's
/// §9 items our client never triggers on its own.
#[tokio::test]
async fn the_gotrue_stub_answers_as_the_contract_says() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("{}/auth/v1{path}", stub.url());

    let missing = http.get(url("/user")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["message"], "No API key found in request");
    assert!(body.get("code").is_none() && body.get("error_code").is_none());
    let wrong = http.get(url("/health")).header("apikey", "nope").send().await.unwrap();
    assert_eq!(wrong.json::<Value>().await.unwrap()["message"], "Invalid API key");

    // Only the apikey: the gateway makes it the bearer token, and it has no `sub`.
    let legacy = http.get(url("/user")).header("apikey", stub.anon_key()).send().await.unwrap();
    assert_eq!(legacy.status(), 403);
    assert_eq!(legacy.headers()["x-sb-error-code"], "bad_jwt");
    let body: Value = legacy.json().await.unwrap();
    assert_eq!(
        body,
        json!({"code": 403, "error_code": "bad_jwt", "msg": "invalid claim: missing sub claim"})
    );
    let dated = http
        .get(url("/user"))
        .query(&[("apikey", stub.anon_key())])
        .header("X-Supabase-Api-Version", "2024-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(dated.headers()["x-supabase-api-version"], "2024-01-01");
    let body: Value = dated.json().await.unwrap();
    assert_eq!(body, json!({"code": "bad_jwt", "message": "invalid claim: missing sub claim"}));

    let grantless =
        http.post(url("/token")).header("apikey", stub.anon_key()).json(&json!({})).send();
    let body: Value = grantless.await.unwrap().json().await.unwrap();
    assert_eq!(
        (&body["error_code"], &body["msg"]),
        (&json!("invalid_credentials"), &json!("unsupported_grant_type"))
    );
    let empty = http.post(url("/signup")).header("apikey", stub.anon_key()).send().await.unwrap();
    let body: Value = empty.json().await.unwrap();
    assert_eq!(body["msg"], "Could not parse request body as JSON: unexpected end of JSON input");

    let jwks = http.get(url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(jwks.headers()[header::CACHE_CONTROL], "public, max-age=600");
    let keys: Value = jwks.json().await.unwrap();
    assert_eq!(keys["keys"][0]["kid"], stub.signing_kid().as_str());
    assert_eq!(keys["keys"][0]["alg"], "ES256");

    let unknown = http.get(url("/nowhere")).header("apikey", stub.anon_key()).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.text().await.unwrap(), "404 page not found\n");
}

#[tokio::test]
async fn a_revoked_signing_key_stops_verifying_even_for_tokens_seen_before() {
    let stub = GoTrueStub::start(StubConfig::default()).await;
    let auth = in_process(&stub, None).await;
    let user = uuid::Uuid::new_v4().to_string();
    let session = uuid::Uuid::new_v4().to_string();
    let old = stub.sign(&stub.user_claims(&user, &session));
    for _ in 0..3 {
        auth.verify(&old).await.expect("verifies, then from memory");
    }
    assert_eq!(count(&stub.counters().jwks), 1);

    stub.rotate_key();
    stub.revoke_old_keys();
    let new = stub.sign(&stub.user_claims(&user, &session));
    auth.verify(&new).await.expect("the unseen kid is fetched");
    assert_eq!(count(&stub.counters().jwks), 2);
    let refused = auth.verify(&old).await;
    assert!(
        matches!(&refused, Err(AuthError::InvalidToken(reason)) if reason.contains("does not publish")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn empty_supabase_variables_mean_the_built_in_provider() {
    let app = app().env("SUPABASE_URL", "").env("SUPABASE_ANON_KEY", " ").spawn().await;
    let session = app.sign_up("local@example.com", PASSWORD).await;
    assert_eq!(session.status(), StatusCode::CREATED);
}
