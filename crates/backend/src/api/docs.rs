//! The API's own description: the OpenAPI document and a browsable page rendering it.
//!
//! The page is Swagger UI, served from the copy vendored in `utoipa-swagger-ui` (its `vendored`
//! feature: a pinned release compiled into the binary, nothing fetched at build or run time),
//! so it works without network access and runs no script the server did not ship. Every answer
//! of `/docs` carries a Content-Security-Policy that allows nothing but this origin.

use std::sync::{Arc, LazyLock};

use axum::{
    Extension,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use wire::Problem;

use super::{ApiError, AppState, extract::Path};

/// The serialized OpenAPI document, built once at start.
#[derive(Debug, Clone)]
pub(super) struct OpenApiJson(pub(super) Arc<String>);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_openapi))
        .routes(routes!(get_docs))
        .routes(routes!(get_docs_asset))
}

/// Scripts, styles, fonts, images and connections (the document) from this origin only; no
/// inline script, no `eval`, no plugins, no framing.
pub(super) const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; \
     form-action 'self'; frame-ancestors 'none'";

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn get_openapi(Extension(OpenApiJson(json)): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json.as_str().to_owned())
}

/// The page's HTML: Swagger UI's own `index.html` with absolute asset paths (so `/docs` and
/// `/docs/` both work) and without its favicons.
const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>nim-backend API</title>
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css" />
    <link rel="stylesheet" type="text/css" href="/docs/index.css" />
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
"#;

/// Swagger UI's settings: the document at `/openapi.json`, try-it-out requests to this origin.
static SWAGGER_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> =
    LazyLock::new(|| Arc::new(utoipa_swagger_ui::Config::from("/openapi.json")));

fn with_csp(content_type: &str, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Human-readable API reference rendering `/openapi.json` (Swagger UI, served by this server;
/// the page loads nothing from anywhere else).
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
async fn get_docs() -> Response {
    with_csp("text/html; charset=utf-8", INDEX_HTML)
}

/// The page's scripts, styles and images (Swagger UI's distribution, vendored and pinned).
#[utoipa::path(get, path = "/docs/{file}", tag = "docs",
    params(("file" = String, Path, description = "A file of Swagger UI's distribution, e.g. `swagger-ui-bundle.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "image/png"), (String = "text/html"),
        )),
        (status = 404, description = "No such file (`not_found`)", body = Problem, content_type = "application/problem+json"),
    ))]
async fn get_docs_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let no_file = || ApiError::not_found("no such file of the API page");
    // `index.html` is ours (above); Swagger UI's own refers to its files relatively.
    if file == "index.html" {
        return Ok(with_csp("text/html; charset=utf-8", INDEX_HTML));
    }
    // Only what the page uses, each with the type the document names (no source maps).
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("html") => "text/html; charset=utf-8",
        _ => return Err(no_file()),
    };
    match utoipa_swagger_ui::serve(&file, SWAGGER_CONFIG.clone()) {
        Ok(Some(found)) => Ok(with_csp(content_type, found.bytes.into_owned())),
        Ok(None) => Err(no_file()),
        Err(err) => Err(ApiError::Internal(anyhow::anyhow!("swagger ui file {file}: {err}"))),
    }
}
