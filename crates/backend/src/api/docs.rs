//! The API's own description: the OpenAPI document and a browsable page rendering it.

use std::sync::Arc;

use axum::{
    Extension,
    http::header,
    response::{Html, IntoResponse},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;

/// The serialized OpenAPI document, built once at start.
#[derive(Debug, Clone)]
pub(super) struct OpenApiJson(pub(super) Arc<String>);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_openapi)).routes(routes!(get_docs))
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)))]
async fn get_openapi(Extension(OpenApiJson(json)): Extension<OpenApiJson>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json.as_str().to_owned())
}

/// Human-readable API reference rendering `/openapi.json` (Scalar, loaded from its CDN by the
/// browser; the server itself makes no outbound request).
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
async fn get_docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html>
  <head>
    <title>nim-backend API</title>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
  </head>
  <body>
    <script id="api-reference" data-url="/openapi.json"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
  </body>
</html>
"#,
    )
}
