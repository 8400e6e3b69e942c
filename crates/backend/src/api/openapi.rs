//! The answers every operation shares, added to the OpenAPI document in one place instead of on
//! each handler: what the extractors and middleware answer before (or instead of) a handler.
//! Each rule says when it applies, with the problem `code` it carries; a status the handler
//! already documents gets the code appended to its description, so the document lists every
//! status each operation can answer and every code behind it.

use serde_json::{Map, Value, json};

use super::{commands, health, metrics};

/// `(status, code, what it means)`; one rule per code.
type Rule = (&'static str, &'static str, &'static str);

/// A path parameter that does not parse is a missing resource (`extract::Path`).
const PATH_PARAMS: &[Rule] = &[("404", "not_found", "no such resource of yours")];
/// `extract::Query` and the listings' `limit`.
const QUERY_PARAMS: &[Rule] =
    &[("400", "invalid_query", "a query parameter does not parse or is out of range")];
/// `extract::Json` and the body limit.
const JSON_BODY: &[Rule] = &[
    ("400", "bad_json", "the body is not JSON"),
    ("400", "bad_body", "the body could not be read"),
    ("413", "request_entity_too_large", "the body is larger than `NIM_BODY_LIMIT_BYTES`"),
    ("415", "unsupported_media_type", "no `Content-Type: application/json` (an empty body too)"),
    ("422", "validation_failed", "a field is missing, mistyped or invalid (`errors` names it)"),
];
/// The `AuthUser` extractor.
const BEARER: &[Rule] = &[
    ("401", "no_authorization", "no bearer token"),
    ("401", "invalid_token", "the token is malformed, forged or expired"),
];
/// The request time limit, and storage that refuses writes or does not answer.
const TIMED: &[Rule] = &[
    ("503", "request_timeout", "the request took longer than `NIM_REQUEST_TIMEOUT_SECS`"),
    ("503", "storage_unavailable", "the database or the disk refuses writes"),
    ("503", "database_unavailable", "the database does not answer"),
];

/// Operations that touch neither the database nor the time limit.
const STATIC_ROUTES: &[&str] =
    &["/openapi.json", "/docs", "/docs/{file}", metrics::METRICS_PATH, health::LIVENESS_PATH];

/// The event types of `GET /infrastructure/{id}/events`; each `data` is one JSON object with
/// `run_id` and `at` besides the fields named.
const EVENT_STREAM: &str = "A `text/event-stream`: each event has an `id` (resume with \
    `Last-Event-ID`), an `event` type and one line of JSON `data` carrying `run_id` and `at` \
    (RFC 3339) besides: `status` (`deployment_status`, `run_status`, and `kind`, `worker` when a \
    run starts), `log` (a Terraform JSON UI message, or `level` and `message` of the backend's \
    own steps), `progress` (`done`, `total` resources), `run_finished` (`status`, `error`, and \
    `requeued_as` when the run was re-queued). Comments (`:`) keep the connection alive.";

/// The `event:` of every event the stream sends.
const EVENT_TYPES: [&str; 4] = ["status", "log", "progress", "run_finished"];

/// Adds the shared answers to every operation of `doc` (an OpenAPI document as JSON).
pub(super) fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else { continue };
            complete_operation(path, method, operation);
        }
    }
    let components = doc
        .as_object_mut()
        .map(|doc| doc.entry("components").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut);
    if let Some(components) = components {
        let responses = components.entry("responses").or_insert_with(|| json!({}));
        responses["MethodNotAllowed"] = problem_response(
            "`method_not_allowed`: any path answers 405 to a method it does not document",
        );
    }
}

fn complete_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let params = operation.get("parameters").and_then(Value::as_array);
    let has_param = |place: &str| {
        params.is_some_and(|params| params.iter().any(|p| p["in"].as_str() == Some(place)))
    };
    let mut rules: Vec<Rule> = Vec::new();
    if has_param("path") {
        rules.extend(PATH_PARAMS);
    }
    if has_param("query") {
        rules.extend(QUERY_PARAMS);
    }
    let json_body = operation
        .get("requestBody")
        .and_then(|body| body.get("content"))
        .is_some_and(|content| content.get("application/json").is_some());
    if json_body {
        rules.extend(JSON_BODY);
    }
    let bearer = operation.get("security").and_then(Value::as_array).is_some_and(|security| {
        security.iter().any(|requirement| requirement.get("bearer").is_some())
    });
    if bearer {
        rules.extend(BEARER);
    }
    if !STATIC_ROUTES.contains(&path) {
        let untimed = path == commands::SEND_COMMAND_PATH && method == "post";
        rules.extend(TIMED.iter().filter(|(_, code, _)| !untimed || *code != "request_timeout"));
    }
    if path == "/infrastructure/{id}/events" && method == "get" {
        rules.push(("400", "invalid_last_event_id", "`Last-Event-ID` is not an event id"));
        describe_event_stream(operation);
    }
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    for (status, code, meaning) in rules {
        add(responses, status, code, meaning);
    }
}

/// Adds `code` to the `status` answer of `responses`, creating the answer when missing.
fn add(responses: &mut Value, status: &str, code: &str, meaning: &str) {
    let mention = format!("`{code}`");
    match responses.get_mut(status) {
        Some(response) => {
            let description = response["description"].as_str().unwrap_or_default();
            if !description.contains(&mention) {
                let joined = match description.trim_end_matches('.') {
                    "" => format!("{mention}: {meaning}"),
                    head => format!("{head}; {mention}: {meaning}"),
                };
                response["description"] = Value::String(joined);
            }
            // Every error answer is problem+json, whatever the handler declared.
            if response.get("content").is_none() {
                response["content"] = problem_response("")["content"].clone();
            }
        }
        None => responses[status] = problem_response(&format!("{mention}: {meaning}")),
    }
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } }
        }
    })
}

fn describe_event_stream(operation: &mut Map<String, Value>) {
    let Some(ok) = operation.get_mut("responses").and_then(|r| r.get_mut("200")) else { return };
    ok["description"] = Value::String(EVENT_STREAM.to_owned());
    // The schema of one event (as OpenAPI 3.2's `itemSchema` means it, and as API tools read a
    // `text/event-stream` schema): its fields, `data` being one line of JSON.
    ok["content"] = json!({
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["id", "event", "data"],
                "properties": {
                    "id": { "type": "string", "pattern": "^[0-9]+$", "description": "The event's id; send it back as `Last-Event-ID` to resume" },
                    "event": { "type": "string", "enum": EVENT_TYPES },
                    "data": { "type": "string", "contentMediaType": "application/json", "description": "One JSON object with `run_id` and `at`" }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Value {
        super::super::openapi()
    }

    fn codes(doc: &Value, path: &str, method: &str, status: &str) -> String {
        doc["paths"][path][method]["responses"][status]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} documents no {status}"))
            .to_owned()
    }

    #[test]
    fn the_extractors_answers_are_documented_on_every_operation_that_has_them() {
        let doc = document();
        assert!(codes(&doc, "/infrastructure", "get", "400").contains("`invalid_query`"));
        assert!(codes(&doc, "/auth/logout", "post", "400").contains("`invalid_query`"));
        for (path, method) in [
            ("/provision", "post"),
            ("/auth/refresh", "post"),
            ("/infrastructure/{id}/command", "post"),
        ] {
            assert!(codes(&doc, path, method, "415").contains("`unsupported_media_type`"));
            assert!(codes(&doc, path, method, "413").contains("`request_entity_too_large`"));
            assert!(codes(&doc, path, method, "400").contains("`bad_json`"));
        }
        assert!(
            codes(&doc, "/infrastructure/{id}/events", "get", "400")
                .contains("`invalid_last_event_id`")
        );
        assert!(codes(&doc, "/infrastructure/{id}", "get", "503").contains("`request_timeout`"));
        assert!(codes(&doc, "/infrastructure/{id}", "get", "401").contains("`no_authorization`"));
        // The waiting command has no time limit; the probe touches nothing.
        assert!(
            !codes(&doc, "/infrastructure/{id}/command", "post", "503")
                .contains("`request_timeout`")
        );
        assert!(doc["paths"]["/healthz"]["get"]["responses"].get("503").is_none());
    }

    #[test]
    fn every_error_answer_is_problem_json_and_the_event_stream_is_text_event_stream() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            response["content"].get("application/problem+json").is_some(),
                            "{method} {path} {status} is not problem+json"
                        );
                    }
                }
            }
        }
        let events = &doc["paths"]["/infrastructure/{id}/events"]["get"]["responses"]["200"];
        assert!(events["content"].get("text/event-stream").is_some());
        assert!(events["description"].as_str().unwrap().contains("`run_finished`"));
    }

    #[test]
    fn a_variable_default_may_be_any_json_value() {
        let doc = document();
        let default = &doc["components"]["schemas"]["VariableView"]["properties"]["default"];
        // No `type`: strings, numbers, booleans, lists, objects and null all conform.
        assert!(default.get("type").is_none(), "{default}");
        assert!(default.get("$ref").is_none(), "{default}");
    }
}
