//! One file per group of subcommands; `run` in the crate root dispatches to them.

mod account;
mod commands;
mod deployments;
mod runs;

pub(crate) use account::{login, signup};
pub(crate) use commands::{command, commands};
pub(crate) use deployments::{
    deploy, destroy, list, providers, replace, resolve, retry, show_deployment, update,
};
pub(crate) use runs::{cancel, logs, runs};
