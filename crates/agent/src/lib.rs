//! nim-agent as a library: the `nim-agent` binary is a shim over [`Agent`]. The agent serves
//! `GET /v1/health`, `GET /v1/info` and `POST /v1/exec` over HTTPS to the backend that holds the
//! deployment's pinned certificate and bearer token. See `docs/agent.md`.

mod api;
pub mod config;
mod error;
mod exec;
pub mod hardening;
mod info;
mod server;
pub mod telemetry;

pub use config::{Args, Config};
pub use server::Agent;
