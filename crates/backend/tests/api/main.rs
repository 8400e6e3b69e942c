//! The backend's integration tests: each starts the real `nim-backend` binary on `127.0.0.1:0`
//! with its own data directory and drives it over HTTP. `TEST_LOG=1` shows the servers' logs.

// A test binary is its own crate root: `pub` in its modules means "shared between tests".
#![allow(unreachable_pub)]

mod auth;
mod changes;
mod clouds;
mod commands;
mod console;
mod fuzz;
mod gotrue_stub;
mod helpers;
mod nimctl;
mod operability;
mod operations;
mod postgres;
mod provisioning;
mod sandbox;
mod server;
mod supabase;
