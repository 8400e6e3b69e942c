//! The web console at `/`: plain ES modules, a stylesheet and a page, compiled into the binary
//! (`include_str!`), so the console needs no build step, no file beside the binary and no
//! request outside this origin. Every answer carries a Content-Security-Policy that allows
//! nothing but this origin (no inline script or style), `nosniff`, and `no-cache` with an
//! `ETag`, so a new server version is picked up at once and an unchanged file costs a 304.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::Problem;

use super::{ApiError, AppState, extract::Path};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_console)).routes(routes!(get_console_asset))
}

/// Only this origin, for everything; no inline script or style, no plugins, no framing, forms
/// post nowhere but here.
pub(super) const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../console/index.html");

/// The console's files by name, with their media types (the one list of what `/console/` serves).
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("dom.js", JS, include_str!("../../console/dom.js")),
    ("stream.js", JS, include_str!("../../console/stream.js")),
    ("auth.js", JS, include_str!("../../console/auth.js")),
    ("list.js", JS, include_str!("../../console/list.js")),
    ("create.js", JS, include_str!("../../console/create.js")),
    ("deployment.js", JS, include_str!("../../console/deployment.js")),
    ("command.js", JS, include_str!("../../console/command.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../console/style.css")),
];
const JS: &str = "text/javascript; charset=utf-8";

/// A strong validator of a file's bytes (FNV-1a: a change detector, not a security measure).
fn etag(body: &str) -> String {
    let hash = body
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("\"{hash:016x}\"")
}

fn serve(request: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let tag = etag(body);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONSOLE_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, tag);
    }
    response
}

/// The web console (an HTML page; its scripts and styles come from `/console/`).
#[utoipa::path(get, path = "/", tag = "console",
    responses(
        (status = 200, description = "The console's page", content_type = "text/html", body = String),
        (status = 304, description = "Unchanged since the `ETag` sent in `If-None-Match`"),
    ))]
async fn get_console(headers: HeaderMap) -> Response {
    serve(&headers, "text/html; charset=utf-8", INDEX_HTML)
}

/// One of the console's scripts or its stylesheet.
#[utoipa::path(get, path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "A file of the console, e.g. `app.js` or `style.css`")),
    responses(
        (status = 200, description = "The file", content((String = "text/javascript"), (String = "text/css"))),
        (status = 304, description = "Unchanged since the `ETag` sent in `If-None-Match`"),
        (status = 404, description = "No such file (`not_found`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_console_asset(
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::not_found("no such file of the console"))?;
    Ok(serve(&headers, content_type, body))
}
