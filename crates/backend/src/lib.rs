//! nim-backend: the multi-cloud provisioning control plane, as a library. The `nim-backend`
//! binary is a thin shim over [`app::Application`]; see `ARCHITECTURE.md` for the map.

pub mod api;
pub mod app;
pub mod backup;
pub mod config;
pub mod datadir;
pub mod domain;
pub mod metrics;
pub mod secrets;
pub mod services;
pub mod store;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
