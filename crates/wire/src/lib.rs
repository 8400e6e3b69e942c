//! Wire types shared by `nim-backend`, `nim-agent` and `nimctl`: what travels over HTTP, and
//! nothing else. Keeping them in one small crate means the CLI and the agent cannot drift from
//! what the backend actually sends.

pub mod agent;
pub mod auth;
pub mod commands;
pub mod deployments;
pub mod events;
pub mod problem;
pub mod status;

pub use agent::{ExecRequest, ExecResponse, GpuInfo, HealthResponse, InfoResponse};
pub use auth::{Session, SignUpResponse, User};
pub use events::RunEvent;
pub use problem::{FieldError, Problem};
