//! The HTTP layer. Only this module knows status codes and JSON shapes; it turns requests into
//! service calls and domain errors into problem+json.

mod agent;
mod auth;
mod commands;
mod console;
mod docs;
mod error;
mod extract;
mod health;
mod infrastructure;
mod metrics;
mod openapi;
mod rate_limit;
mod router;
mod views;

use std::sync::Arc;

use axum::extract::FromRef;

pub use error::ApiError;
pub use extract::{ClientAddrSource, Json, Path, Query};
pub use infrastructure::RequestTimeout;
pub use rate_limit::AuthRateLimiter;
pub use router::{machine_router, openapi, router};

use crate::{
    services::{
        auth::AuthService, commands::CommandService, deployments::DeploymentService,
        events::EventBus,
    },
    store::Store,
};

/// Everything handlers share; cheap to clone. Handlers take the parts they need with `State<T>`.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<dyn AuthService>,
    pub auth_rate_limiter: Arc<AuthRateLimiter>,
    pub client_addr: ClientAddrSource,
    pub deployments: Arc<DeploymentService>,
    pub commands: CommandService,
    pub bus: EventBus,
    pub request_timeout: RequestTimeout,
}
