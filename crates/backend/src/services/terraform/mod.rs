//! The plan's `TerraformService` (`service.rs`): the module catalog, per-deployment workspaces,
//! and running the Terraform CLI with its JSON UI streamed into run events.

pub mod module;
pub mod plugin_cache;
pub mod runner;
pub mod service;
pub mod types;
pub mod ui;
pub mod validation;
pub mod workspace;

pub use module::{Module, ModuleCatalog, Variable};
pub use plugin_cache::PluginCache;
pub(crate) use runner::find_on_path;
pub use runner::{Exit, StopSignals, Terraform};
pub use service::{Plan, Step, StepEvent, StepsEnd, TerraformService};
pub use types::TypeConstraint;
pub use workspace::Workspace;
pub(crate) use workspace::{copy_private, copy_tree, create_private_dir, write_private};
