//! The server as a whole: probes, routing errors, request ids, CORS, OpenAPI, configuration and
//! shutdown.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use crate::helpers::{app, assert_problem, exists, json_ok, spawn_app};

#[tokio::test]
async fn health_and_readiness_answer_ok() {
    let app = spawn_app().await;
    let health = json_ok(app.get("/healthz", None).await).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let ready = json_ok(app.get("/readyz", None).await).await;
    assert_eq!(ready["database"], "ok");
}

#[tokio::test]
async fn the_server_starts_and_works_with_no_configuration_at_all() {
    let app = app().bare().spawn().await;
    // Defaults: SQLite and a generated signing key under ./data of the working directory.
    assert!(exists(&app.dir.path().join("data/nim.db")));
    assert!(exists(&app.dir.path().join("data/jwt-secret")));
    let session = app.signed_in_user("defaults@example.com").await;
    let me =
        json_ok(app.get("/auth/me", Some(session["access_token"].as_str().unwrap())).await).await;
    assert_eq!(me["email"], "defaults@example.com");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let app = spawn_app().await;
    assert_problem(app.get("/no/such/route", None).await, 404, "not_found").await;
    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let app = spawn_app().await;
    let response = app.get("/healthz", None).await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    let response = app
        .client
        .get(app.url("/no/such"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app =
        app().env("NIM_CORS_ORIGINS", "https://app.example,https://admin.example").spawn().await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/auth/login"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,authorization")
            .send()
    };
    let allowed = preflight("https://admin.example").await.unwrap();
    assert_eq!(allowed.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://admin.example");
    let allowed_headers = allowed.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap();
    assert!(allowed_headers.contains("authorization"), "{allowed_headers}");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // Without configuration there is no cross-origin access at all.
    let plain = spawn_app().await;
    let response = plain
        .client
        .get(plain.url("/healthz"))
        .header(header::ORIGIN, "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly() {
    let mut app = spawn_app().await;
    json_ok(app.get("/healthz", None).await).await;
    let status = app.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "still serving after SIGTERM"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_each_is_served() {
    let app = spawn_app().await;
    let doc = json_ok(app.get("/openapi.json", None).await).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object().unwrap().keys().map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    // Each documented operation is really routed: it answers with anything but the router's own
    // 404/405 (parameters get a placeholder value).
    for (method, path) in &documented {
        let concrete =
            path.split('/')
                .map(|seg| {
                    if seg.starts_with('{') { "00000000-0000-0000-0000-000000000000" } else { seg }
                })
                .collect::<Vec<_>>()
                .join("/");
        let response =
            app.client.request(method.parse().unwrap(), app.url(&concrete)).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && body["detail"] != "no such route",
            "{method} {path} is documented but not served ({status})"
        );
    }
    // And the routes this issue adds are all there.
    for expected in [
        ("POST", "/auth/signup"),
        ("POST", "/auth/login"),
        ("POST", "/auth/refresh"),
        ("POST", "/auth/logout"),
        ("GET", "/auth/me"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/{file}"),
        ("GET", "/metrics"),
        ("GET", "/agent/download/{target}"),
    ] {
        assert!(
            documented.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} is not documented"
        );
    }
    let docs = app.get("/docs", None).await;
    assert!(docs.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(docs.text().await.unwrap().contains("/docs/swagger-initializer.js"));
    let initializer = app.get("/docs/swagger-initializer.js", None).await.text().await.unwrap();
    assert!(initializer.contains(r#""url": "/openapi.json""#), "{initializer}");
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nim-backend"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "NIM_LISTEN",
        "NIM_DATA_DIR",
        "DATABASE_URL",
        "NIM_DB_MAX_CONNECTIONS",
        "NIM_LOG_FORMAT",
        "NIM_CORS_ORIGINS",
        "NIM_BODY_LIMIT_BYTES",
        "NIM_REQUEST_TIMEOUT_SECS",
        "NIM_SHUTDOWN_GRACE_SECS",
        "NIM_JWT_SECRET",
        "NIM_JWT_ISSUER",
        "NIM_ACCESS_TOKEN_TTL_SECS",
        "NIM_SESSION_TTL_SECS",
        "NIM_AUTH_RATE_LIMIT_PER_MINUTE",
        "NIM_TRUST_FORWARDED_FOR",
        "NIM_AGENT_BINARY",
        "NIM_PUBLIC_URL",
    ] {
        assert!(help.contains(&format!("[env: {var}")), "--help does not mention {var}:\n{help}");
    }
}

#[test]
fn a_bad_setting_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nim-backend"))
        .current_dir(dir.path())
        .env("NIM_JWT_SECRET", "too-short")
        .env("NIM_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NIM_JWT_SECRET"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nim-backend"))
        .current_dir(dir.path())
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}
