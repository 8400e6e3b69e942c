//! What operators and API tools see of a running server: `/metrics` (to scrapers on its own
//! host, or behind `NIM_METRICS_TOKEN`), the offline `/docs` page under its
//! Content-Security-Policy.

use reqwest::{StatusCode, header};

use crate::helpers::{app, assert_problem, provision_ready, run_command, spawn_app};

const METRICS_TOKEN: &str = "metrics-token-for-tests-0123456789";

async fn metrics_text(app: &crate::helpers::TestApp, token: Option<&str>) -> String {
    let response = app.get("/metrics", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_never_by_raw_path() {
    let app = spawn_app().await;
    let token = app.token("metrics@example.com").await;
    let id = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";
    let missing = app.get(&format!("/infrastructure/{id}"), Some(&token)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    app.get("/no/such/route/1", None).await;
    app.get("/no/such/route/2", None).await;

    let text = metrics_text(&app, None).await;
    assert!(
        text.contains(
            r#"nim_http_request_duration_seconds_count{method="GET",route="/infrastructure/{id}",status="404"} 1"#
        ),
        "{text}"
    );
    // Unknown paths share one series, so probing random paths cannot grow the metrics.
    assert!(
        text.contains(
            r#"nim_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"} 2"#
        ),
        "{text}"
    );
    assert!(!text.contains(id) && !text.contains("/no/such"), "a raw path leaked:\n{text}");
    assert!(text.contains(r#"nim_http_request_duration_seconds_bucket{method="POST",route="/auth/signup",status="201",le="#)
        || text.contains(r#"route="/auth/signup",status="200""#), "{text}");
    for family in [
        "# TYPE nim_runs gauge",
        "nim_runs{kind=\"apply\",status=\"queued\"} 0",
        "# TYPE nim_terraform_processes gauge",
        "nim_machines{health=\"healthy\"} 0",
        "nim_db_connections{state=\"idle\"}",
        "nim_db_max_connections 8",
        "# TYPE process_cpu_seconds_total counter",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(family), "no {family:?} in:\n{text}");
    }
}

#[tokio::test]
async fn without_a_metrics_token_only_a_scraper_on_this_host_reads_the_server_wide_counts() {
    let app = spawn_app().await;
    // A loopback scraper reads them (as `metrics_text` checks)...
    metrics_text(&app, None).await;
    // ...but not a client a proxy on this host relays, nor a user with their own token: the
    // counts are every user's.
    let user = app.token("curious@example.com").await;
    for token in [None, Some(user.as_str())] {
        let mut request =
            app.client.get(app.url("/metrics")).header("x-forwarded-for", "203.0.113.7");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_problem(request.send().await.unwrap(), 401, "metrics_token_required").await;
    }
}

#[tokio::test]
async fn with_a_metrics_token_metrics_answer_only_that_bearer_token() {
    let app = app().env("NIM_METRICS_TOKEN", METRICS_TOKEN).spawn().await;
    assert_problem(app.get("/metrics", None).await, 401, "no_authorization").await;
    assert_problem(app.get("/metrics", Some("not-the-token")).await, 401, "invalid_token").await;
    // A user's access token is not the metrics token.
    let user = app.token("scraper@example.com").await;
    assert_problem(app.get("/metrics", Some(&user)).await, 401, "invalid_token").await;
    let text = metrics_text(&app, Some(METRICS_TOKEN)).await;
    // The refused scrapes were counted too.
    assert!(
        text.contains(
            r#"nim_http_request_duration_seconds_count{method="GET",route="/metrics",status="401"} 3"#
        ),
        "{text}"
    );
    // The rest of the API is unaffected by the setting.
    assert_eq!(app.get("/healthz", None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_docs_page_loads_everything_from_this_server_under_a_self_only_policy() {
    let app = spawn_app().await;
    let page = app.get("/docs", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    for directive in
        ["script-src 'self'", "style-src 'self'", "connect-src 'self'", "object-src 'none'"]
    {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains("http"), "{csp}");
    let html = page.text().await.unwrap();
    // Every script and stylesheet is a file of this server's, and there is no inline script.
    let references: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.ends_with(".js") || part.ends_with(".css"))
        .collect();
    assert_eq!(references.len(), 5, "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    assert_eq!(html.matches("<script").count(), html.matches("<script src=\"/docs/").count());
    for reference in references {
        assert!(reference.starts_with("/docs/"), "{reference} is not served here");
        let asset = app.get(reference, None).await;
        assert_eq!(asset.status(), StatusCode::OK, "{reference}");
        assert!(asset.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        let content_type = asset.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let expected = if reference.ends_with(".js") { "text/javascript" } else { "text/css" };
        assert!(content_type.starts_with(expected), "{reference}: {content_type}");
        assert!(!asset.bytes().await.unwrap().is_empty());
    }
    // Nothing outside the vendored distribution (no path tricks, no source maps).
    for missing in ["/docs/nope.js", "/docs/..%2FCargo.toml", "/docs/swagger-ui.js.map"] {
        assert_problem(app.get(missing, None).await, 404, "not_found").await;
    }
}

#[tokio::test]
async fn metrics_count_a_real_run_a_command_its_machine_and_the_machines_health() {
    let app = app().provisioning().spawn().await;
    let token = app.token("metrics-run@example.com").await;
    let body = serde_json::json!({"name": "metered", "provider": "local", "variables": {"machine_count": 1}});
    let id = provision_ready(&app, &token, body).await;
    run_command(&app, &token, &id, serde_json::json!({"argv": ["true"]})).await;

    let text = metrics_text(&app, None).await;
    for line in [
        r#"nim_run_duration_seconds_count{kind="apply",outcome="succeeded"} 1"#,
        r#"nim_commands_total{outcome="succeeded"} 1"#,
        r#"nim_machine_command_duration_seconds_count{outcome="succeeded"} 1"#,
        r#"nim_machines{health="healthy"} 1"#,
        r#"nim_runs{kind="apply",status="running"} 0"#,
        // Every Terraform process of the apply has ended.
        "nim_terraform_processes 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
}
