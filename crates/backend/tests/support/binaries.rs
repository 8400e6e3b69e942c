//! The workspace's other binaries, for the test binaries and benchmarks that run them (shared
//! through `#[path]`, so each includes it as a module of its own).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The `nim-agent` binary `terraform/local` runs.
pub(crate) fn agent_binary() -> PathBuf {
    workspace_binary("agent", "nim-agent")
}

/// The `nimctl` binary.
pub(crate) fn nimctl_binary() -> PathBuf {
    workspace_binary("cli", "nimctl")
}

/// A binary of another workspace package, built beside `nim-backend`: by this test run if it is
/// not there yet (`cargo test -p backend` alone does not build other packages).
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = Path::new(env!("CARGO_BIN_EXE_nim-backend")).with_file_name(bin);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !built.iter().any(|b| b == bin) {
        // Always ask cargo: it rebuilds a binary whose sources changed and is quick otherwise.
        // Build with the profile this binary was built with (benches run in release).
        let release = path.parent().is_some_and(|dir| dir.ends_with("release"));
        let mut args = vec!["build", "-p", package, "--bin", bin];
        if release {
            args.push("--release");
        }
        let status = Command::new(env!("CARGO")).args(args).status().expect("cargo runs");
        assert!(status.success(), "failed to build {bin} for the tests");
        built.push(bin.to_owned());
    }
    path
}
