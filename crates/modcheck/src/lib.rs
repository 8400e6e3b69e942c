//! nim-modcheck as a library: checks the cloud Terraform modules against their providers'
//! schemas (extracted from the prebuilt CDK for Terraform packages into `schemas/`), since no
//! provider can be downloaded where the modules are developed. See docs/clouds.md.
//!
//! The module contract (variables, outputs) is not checked here: that is the backend's own
//! `ModuleCatalog`, which `./dev check-modules` runs through the backend's tests rather than
//! linking the whole backend into this small tool.

pub mod check;
pub mod literal;
pub mod schema;
pub mod version;

pub use check::{Finding, ModuleReport, check_module};
pub use schema::Schemas;
