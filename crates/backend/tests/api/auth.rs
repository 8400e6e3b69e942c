//! `/auth/*` with the built-in provider: the whole session story and every way to get it wrong.

use jsonwebtoken::{EncodingKey, Header};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{
    JWT_ISSUER, JWT_SECRET, app, assert_problem, error_fields, json_ok, spawn_app,
};

fn token_of(session: &Value) -> &str {
    session["access_token"].as_str().expect("access_token")
}

fn refresh_of(session: &Value) -> &str {
    session["refresh_token"].as_str().expect("refresh_token")
}

#[tokio::test]
async fn signup_login_me_refresh_logout_is_a_complete_story() {
    let app = spawn_app().await;

    let signed_up = app.sign_up("Ada.Lovelace@Example.COM", "correct horse").await;
    assert_eq!(signed_up.status(), StatusCode::CREATED);
    let signed_up = json_ok(signed_up).await;
    assert_eq!(signed_up["user"]["email"], "ada.lovelace@example.com");
    assert_eq!(signed_up["confirmation_required"], false);
    assert_eq!(signed_up["session"]["token_type"], "bearer");

    let session = json_ok(app.log_in("ada.lovelace@example.com", "correct horse").await).await;
    for field in ["access_token", "refresh_token", "expires_in", "expires_at", "user"] {
        assert!(!session[field].is_null(), "session lacks {field}: {session}");
    }
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 3600);
    let now = chrono::Utc::now().timestamp();
    let expires_at = session["expires_at"].as_i64().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expires_at), "expires_at {expires_at}, now {now}");
    let user = &session["user"];
    assert_eq!(user["id"], signed_up["user"]["id"]);
    assert_eq!(user["aud"], "authenticated");
    assert_eq!(user["role"], "authenticated");
    assert!(user["created_at"].as_str().is_some());

    let me = json_ok(app.get("/auth/me", Some(token_of(&session))).await).await;
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "ada.lovelace@example.com");

    let refreshed = json_ok(app.refresh(refresh_of(&session)).await).await;
    assert_ne!(refreshed["refresh_token"], session["refresh_token"]);
    assert_eq!(refreshed["user"]["id"], user["id"]);
    let me = json_ok(app.get("/auth/me", Some(token_of(&refreshed))).await).await;
    assert_eq!(me["id"], user["id"]);

    let logged_out = app.log_out(token_of(&refreshed), None).await;
    assert_eq!(logged_out.status(), StatusCode::NO_CONTENT);
    // The session is over: its refresh token is dead and /me says so.
    assert_problem(app.refresh(refresh_of(&refreshed)).await, 400, "session_expired").await;
    assert_problem(app.get("/auth/me", Some(token_of(&refreshed))).await, 401, "session_not_found")
        .await;
}

#[tokio::test]
async fn a_refresh_token_works_once_and_reusing_it_ends_the_session() {
    let app = spawn_app().await;
    let session = app.signed_in_user("reuse@example.com").await;

    let first = json_ok(app.refresh(refresh_of(&session)).await).await;
    let reused = app.refresh(refresh_of(&session)).await;
    assert_problem(reused, 400, "refresh_token_already_used").await;
    // The thief's reuse also killed the legitimate child token and the session.
    assert_problem(app.refresh(refresh_of(&first)).await, 400, "refresh_token_already_used").await;
    assert_problem(app.get("/auth/me", Some(token_of(&first))).await, 401, "session_not_found")
        .await;

    assert_problem(app.refresh("no-such-token").await, 400, "refresh_token_not_found").await;
    let problem =
        assert_problem(app.post_json("/auth/refresh", &json!({})).await, 422, "validation_failed")
            .await;
    assert_eq!(error_fields(&problem), ["refresh_token"]);
}

#[tokio::test]
async fn global_logout_ends_every_session_and_others_keeps_the_current_one() {
    let app = spawn_app().await;
    let a = app.signed_in_user("many@example.com").await;
    let b = json_ok(app.log_in("many@example.com", "correct horse battery").await).await;
    let c = json_ok(app.log_in("many@example.com", "correct horse battery").await).await;

    assert_eq!(app.log_out(token_of(&a), Some("others")).await.status(), StatusCode::NO_CONTENT);
    json_ok(app.get("/auth/me", Some(token_of(&a))).await).await;
    assert_problem(app.refresh(refresh_of(&b)).await, 400, "session_expired").await;

    let d = json_ok(app.log_in("many@example.com", "correct horse battery").await).await;
    assert_eq!(app.log_out(token_of(&d), Some("global")).await.status(), StatusCode::NO_CONTENT);
    assert_problem(app.refresh(refresh_of(&a)).await, 400, "session_expired").await;
    assert_problem(app.refresh(refresh_of(&c)).await, 400, "session_expired").await;
    assert_problem(app.refresh(refresh_of(&d)).await, 400, "session_expired").await;

    let problem =
        assert_problem(app.log_out(token_of(&d), Some("everyone")).await, 400, "invalid_query")
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("scope"), "{problem}");
}

#[tokio::test]
async fn duplicate_signup_is_user_already_exists_whatever_the_case() {
    let app = spawn_app().await;
    assert_eq!(app.sign_up("dup@example.com", "password1").await.status(), StatusCode::CREATED);
    let problem = assert_problem(
        app.sign_up("DUP@example.com", "password2").await,
        422,
        "user_already_exists",
    )
    .await;
    assert_eq!(error_fields(&problem), ["email"]);
}

#[tokio::test]
async fn signup_rejects_bad_emails_and_weak_passwords_with_field_errors() {
    let app = spawn_app().await;

    for email in ["not-an-email", "a@b", "", "x@@example.com"] {
        let problem =
            assert_problem(app.sign_up(email, "long enough").await, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), ["email"], "for {email:?}");
    }
    let problem =
        assert_problem(app.sign_up("weak@example.com", "short").await, 422, "weak_password").await;
    assert_eq!(error_fields(&problem), ["password"]);
    assert!(problem["detail"].as_str().unwrap().contains("at least 8 characters"));

    // Both wrong at once: both are reported.
    let problem = assert_problem(app.sign_up("nope", "").await, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), ["email", "password"]);

    // Nothing was created by any of it.
    assert_problem(app.log_in("weak@example.com", "short").await, 400, "invalid_credentials").await;
}

#[tokio::test]
async fn malformed_bodies_get_problem_json_never_plain_text() {
    let app = app().env("NIM_BODY_LIMIT_BYTES", "1024").spawn().await;
    let json = Some("application/json");

    assert_problem(app.post_raw("/auth/signup", json, "{\"email\": ").await, 400, "bad_json").await;
    assert_problem(app.post_raw("/auth/signup", json, "").await, 400, "bad_json").await;
    assert_problem(app.post_raw("/auth/login", json, "[1, 2]").await, 422, "validation_failed")
        .await;
    assert_problem(
        app.post_raw("/auth/login", Some("text/plain"), "{}").await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert_problem(app.post_raw("/auth/login", None, "{}").await, 415, "unsupported_media_type")
        .await;
    let big = format!(r#"{{"email": "a@example.com", "password": "{}"}}"#, "x".repeat(4096));
    assert_problem(app.post_raw("/auth/signup", json, big).await, 413, "request_entity_too_large")
        .await;

    let problem = assert_problem(
        app.post_json("/auth/login", &json!({ "email": "a@example.com" })).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(error_fields(&problem), ["password"]);
    let problem = assert_problem(
        app.post_json("/auth/signup", &json!({ "email": 42, "password": "long enough" })).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(error_fields(&problem), ["email"]);
}

#[tokio::test]
async fn wrong_email_and_wrong_password_get_the_same_answer() {
    let app = spawn_app().await;
    app.signed_in_user("real@example.com").await;

    let wrong_password = app.log_in("real@example.com", "not the password").await;
    let wrong_email = app.log_in("ghost@example.com", "not the password").await;
    let malformed_email = app.log_in("ghost", "not the password").await;
    let a = assert_problem(wrong_password, 400, "invalid_credentials").await;
    let b = assert_problem(wrong_email, 400, "invalid_credentials").await;
    let c = assert_problem(malformed_email, 400, "invalid_credentials").await;
    assert_eq!(a, b);
    assert_eq!(b, c);
}

#[tokio::test]
async fn login_and_signup_are_rate_limited_per_address() {
    let app = app().env("NIM_AUTH_RATE_LIMIT_PER_MINUTE", "3").spawn().await;
    for _ in 0..3 {
        assert_problem(app.log_in("x@example.com", "whatever1").await, 400, "invalid_credentials")
            .await;
    }
    let limited = app.log_in("x@example.com", "whatever1").await;
    let retry_after: u64 =
        limited.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert_problem(limited, 429, "over_request_rate_limit").await;
    // Signup shares the allowance: a flood of signups is throttled as well.
    assert_problem(app.sign_up("y@example.com", "whatever1").await, 429, "over_request_rate_limit")
        .await;
    // Endpoints outside the limit are unaffected.
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

fn mint(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

#[tokio::test]
async fn bad_tokens_are_401_with_www_authenticate() {
    let app = spawn_app().await;
    let session = app.signed_in_user("tokens@example.com").await;
    let good = token_of(&session).to_owned();
    let claims = |exp_offset: i64, aud: &str, iss: &str| {
        let now = chrono::Utc::now().timestamp();
        json!({
            "sub": session["user"]["id"], "aud": aud, "iss": iss, "role": "authenticated",
            "iat": now, "exp": now + exp_offset, "email": "tokens@example.com",
        })
    };

    // Sanity: a token minted the same way but valid is accepted, so the refusals below are
    // about the one thing each case changes.
    let minted = mint(JWT_SECRET, &claims(600, "authenticated", JWT_ISSUER));
    json_ok(app.get("/auth/me", Some(&minted)).await).await;

    let expired = mint(JWT_SECRET, &claims(-3600, "authenticated", JWT_ISSUER));
    let other_key =
        mint("another-secret-that-is-32-bytes-long!!", &claims(600, "authenticated", JWT_ISSUER));
    let other_audience = mint(JWT_SECRET, &claims(600, "service_role", JWT_ISSUER));
    let other_issuer = mint(JWT_SECRET, &claims(600, "authenticated", "https://evil.example"));
    let mut tampered = good.clone();
    let payload_start = tampered.find('.').unwrap() + 5;
    let flipped = if &tampered[payload_start..=payload_start] == "A" { "B" } else { "A" };
    tampered.replace_range(payload_start..=payload_start, flipped);

    for (case, token, detail) in [
        ("expired", expired.as_str(), "expired"),
        ("other key", other_key.as_str(), "signature"),
        ("other audience", other_audience.as_str(), "audience"),
        ("other issuer", other_issuer.as_str(), "issuer"),
        ("tampered", tampered.as_str(), ""),
        ("garbage", "garbage", "malformed"),
    ] {
        let response = app.get("/auth/me", Some(token)).await;
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#,
            "{case}"
        );
        let problem = assert_problem(response, 401, "invalid_token").await;
        assert!(problem["detail"].as_str().unwrap().contains(detail), "{case}: {problem}");
    }

    let missing = app.get("/auth/me", None).await;
    assert_eq!(missing.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_problem(missing, 401, "no_authorization").await;
    let basic = app
        .client
        .get(app.url("/auth/me"))
        .header(header::AUTHORIZATION, "Basic dXNlcjpwdw==")
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "invalid_token").await;
}

#[tokio::test]
async fn tokens_survive_a_restart_with_the_generated_key() {
    let first = app().bare().spawn().await;
    let session = first.signed_in_user("restart@example.com").await;
    let dir = first.into_dir();
    assert!(dir.dir.path().join("data/jwt-secret").exists());

    let second = app().bare().dir(dir).spawn().await;
    let me = json_ok(second.get("/auth/me", Some(token_of(&session))).await).await;
    assert_eq!(me["email"], "restart@example.com");
    json_ok(second.refresh(refresh_of(&session)).await).await;
}
