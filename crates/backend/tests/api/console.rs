//! The web console at `/`: its files under a self-only Content-Security-Policy, and the whole
//! flow in a real browser (chromium) against a real server with `terraform/local`: sign up,
//! create three machines from the form, follow the run to ready, run a command, destroy; no
//! request leaves the origin; then `/metrics` shows what that flow did.

use std::time::Duration;

use reqwest::{StatusCode, header};

use crate::helpers::{RUN_WAIT, app, assert_problem, browser, spawn_app};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Every module the page loads, found by following `src`/`href` and `import … from "./x.js"`.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for part in text.split('"') {
        if part.ends_with(".js") || part.ends_with(".css") {
            found
                .push(part.strip_prefix("./").map_or(part.to_owned(), |p| format!("/console/{p}")));
        }
    }
    found
}

#[tokio::test]
async fn the_console_and_its_files_are_served_under_a_self_only_policy_with_revalidation() {
    let app = spawn_app().await;
    let mut queue = vec!["/".to_owned()];
    let mut seen = Vec::new();
    while let Some(path) = queue.pop() {
        if seen.contains(&path) {
            continue;
        }
        let response = app.get(&path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY", "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
        let expected = match path.rsplit_once('.').map(|(_, ext)| ext) {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            _ => "text/html",
        };
        assert!(content_type.starts_with(expected), "{path}: {content_type}");
        let text = response.text().await.unwrap();
        // Nothing from elsewhere, no inline script or style, no HTML built from strings.
        assert!(!text.contains("http://") && !text.contains("https://"), "{path}");
        assert!(!text.contains("innerHTML") && !text.contains("eval("), "{path}");
        if path == "/" {
            assert!(!text.contains("<style") && !text.contains(" style="), "{path}");
            assert_eq!(
                text.matches("<script").count(),
                text.matches("<script type=\"module\" src=\"/console/").count()
            );
        }
        // Unchanged: a 304 without a body, revalidated by its ETag.
        let request =
            app.client.get(app.url(&path)).header(header::IF_NONE_MATCH, &headers[header::ETAG]);
        assert_eq!(request.send().await.unwrap().status(), StatusCode::NOT_MODIFIED, "{path}");
        queue.extend(references(&text));
        seen.push(path);
    }
    assert!(seen.len() >= 10, "the page loads every module: {seen:?}");
    for missing in ["/console/nope.js", "/console/..%2FCargo.toml", "/console/index.html"] {
        assert_problem(app.get(missing, None).await, 404, "not_found").await;
    }
}

#[tokio::test]
async fn a_user_signs_up_creates_three_machines_runs_a_command_and_destroys_them_in_a_browser() {
    let Some(browser) = browser().await else { return };
    let app = app().provisioning().spawn().await;
    let origin = format!("http://{}", app.addr);
    let b = &browser;

    // Sign up (the page sends a signed-out visitor to the login form).
    b.client.goto(&app.url("/")).await.unwrap();
    b.find("#auth-form").await;
    b.eval("window.__violations = []; document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));").await;
    b.type_into("input[name=email]", "ada@example.com").await;
    b.type_into("input[name=password]", "correct horse battery").await;
    b.screenshot("1-login").await;
    b.click("button[name=signup]").await;
    b.wait_text("#deployments", Duration::from_secs(30), |t| t.contains("No deployments yet"))
        .await;

    // The form comes from GET /providers; a dry run previews the plan.
    b.click("a[href='#/new']").await;
    b.find("#create-form select[name=provider]").await.select_by_value("local").await.unwrap();
    b.find("#create-form input[name=machine_count]").await;
    b.type_into("#create-form input[name=name]", "console-demo").await;
    // A value the module refuses: the problem's title and detail, the message beside its field.
    b.type_into("#create-form input[name=machine_count]", "0").await;
    b.click("button[name=preview]").await;
    let problem = b.wait_text("#create-out .problem", RUN_WAIT, |t| !t.is_empty()).await;
    assert!(problem.contains("machine_count"), "{problem}");
    let beside = b
        .wait_text(
            "#variables label:has(input[name=machine_count]) .field-error",
            Duration::from_secs(5),
            |t| !t.is_empty(),
        )
        .await;
    assert!(!beside.is_empty());
    b.screenshot("2-create-field-error").await;
    b.type_into("#create-form input[name=machine_count]", "3").await;
    b.click("button[name=preview]").await;
    let plan = b.wait_text("#create-out", RUN_WAIT, |t| t.contains("Plan:")).await;
    assert!(plan.contains("Plan: 4 to add, 0 to change, 0 to destroy."), "{plan}");
    b.screenshot("3-create-preview").await;

    // Create, and follow the run live to ready.
    b.click("button[name=create]").await;
    b.wait_text("#run-progress-text", RUN_WAIT, |t| t.starts_with("4/4")).await;
    b.wait_text("main h1", RUN_WAIT, |t| t.contains("ready")).await;
    let log =
        b.wait_text("#run-log", Duration::from_secs(10), |t| t.contains("run succeeded")).await;
    assert!(log.contains("Apply complete!"), "{log}");
    let machines = b
        .wait_text("#machine-table", Duration::from_secs(30), |t| t.matches("healthy").count() == 3)
        .await;
    for name in ["local-0", "local-1", "local-2"] {
        assert!(machines.contains(name), "{machines}");
    }
    b.screenshot("4-deployment").await;

    // A command on every machine, each one's result side by side.
    b.type_into("#command-form textarea[name=shell]", "echo \"hello from $NIM_MACHINE\"").await;
    b.click("#run-command").await;
    let results = b
        .wait_text("#command-results", Duration::from_secs(60), |t| t.starts_with("succeeded"))
        .await;
    for name in ["local-0", "local-1", "local-2"] {
        let card = b
            .wait_text(&format!(".result[data-machine={name}]"), Duration::from_secs(5), |_| true)
            .await;
        assert!(card.contains(&format!("hello from {name}")) && card.contains("exit 0"), "{card}");
    }
    assert!(results.contains("3 succeeded"), "{results}");
    b.screenshot("5-command").await;
    b.client.set_window_size(360, 900).await.unwrap();
    b.eval("window.scrollTo(0, 0)").await;
    b.screenshot("6-deployment-360px").await;
    b.client.set_window_size(1280, 1000).await.unwrap();

    // Destroy after typing the name.
    b.type_into("input[name=confirm-name]", "console-demo").await;
    b.click("#destroy").await;
    b.wait_text("main h1", RUN_WAIT, |t| t.contains("destroyed")).await;
    b.click("a[href='#/']").await;
    b.wait_text("#deployments", Duration::from_secs(10), |t| t.contains("destroyed")).await;
    b.screenshot("7-list").await;

    // Everything the page loaded or called came from its own origin, and nothing was blocked.
    let urls = b
        .eval("return performance.getEntries().map((e) => e.name).filter((n) => n.includes(':'))")
        .await;
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(urls.iter().any(|u| u.ends_with("/console/app.js")), "{urls:?}");
    assert!(urls.iter().any(|u| u.contains("/events")), "the run was followed: {urls:?}");
    let foreign: Vec<&String> =
        urls.iter().filter(|u| !u.starts_with(&format!("{origin}/"))).collect();
    assert!(foreign.is_empty(), "requests outside {origin}: {foreign:?}");
    let violations = b.eval("return window.__violations").await;
    assert_eq!(violations, serde_json::json!([]), "CSP violations");
    eprintln!("console screenshots: {}", b.screenshots.display());

    // What the flow did, counted.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for line in [
        r#"nim_http_request_duration_seconds_count{method="GET",route="/",status="200"} 1"#,
        r#"nim_http_request_duration_seconds_count{method="POST",route="/auth/signup",status="201"} 1"#,
        r#"nim_http_request_duration_seconds_count{method="POST",route="/provision",status="200"} 1"#,
        r#"nim_http_request_duration_seconds_count{method="POST",route="/provision",status="202"} 1"#,
        r#"nim_http_request_duration_seconds_count{method="POST",route="/infrastructure/{id}/command",status="202"} 1"#,
        r#"nim_http_request_duration_seconds_count{method="DELETE",route="/infrastructure/{id}",status="202"} 1"#,
        r#"nim_run_duration_seconds_count{kind="apply",outcome="succeeded"} 1"#,
        r#"nim_run_duration_seconds_count{kind="destroy",outcome="succeeded"} 1"#,
        r#"nim_commands_total{outcome="succeeded"} 1"#,
        r#"nim_machine_command_duration_seconds_count{outcome="succeeded"} 3"#,
        r#"nim_machines{health="healthy"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no line {line:?} in:\n{metrics}");
    }
    assert!(!metrics.contains(r#"status="5"#), "a 5xx answer:\n{metrics}");
}

#[tokio::test]
async fn a_frontend_on_another_origin_may_resume_the_event_stream_with_last_event_id() {
    let app = app().env("NIM_CORS_ORIGINS", "https://frontend.example").spawn().await;
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/infrastructure/0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee/events"),
        )
        .header(header::ORIGIN, "https://frontend.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,last-event-id")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed =
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().to_owned();
    for name in ["authorization", "last-event-id"] {
        assert!(allowed.contains(name), "{allowed}");
    }
}
