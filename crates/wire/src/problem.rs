//! RFC 9457 problem details: the one error body every endpoint of the backend returns.

use serde::{Deserialize, Serialize};

/// The media type of [`Problem`] bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer (`application/problem+json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:nim:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem; the same for every occurrence.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, for a human.
    pub detail: String,
    /// A stable machine-readable code (`invalid_credentials`, `validation_failed`, ...).
    pub code: String,
    /// For validation problems: one entry per offending field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    /// Where the field is: a JSON path like `variables.region`, or `body` for the whole body.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl Problem {
    /// The `type` URI for a problem code.
    pub fn type_uri(code: &str) -> String {
        format!("urn:nim:problem:{code}")
    }
}
