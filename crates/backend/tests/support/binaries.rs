//! The workspace's other binaries, for the test binaries and benchmarks that run them (shared
//! through `#[path]`, so each includes it as a module of its own).

use std::path::{Path, PathBuf};

/// The `nim-agent` binary `terraform/local` runs.
pub(crate) fn agent_binary() -> PathBuf {
    workspace_binary("agent", "nim-agent")
}

/// The `nimctl` binary.
pub(crate) fn nimctl_binary() -> PathBuf {
    workspace_binary("cli", "nimctl")
}

/// A binary of another workspace package, from beside `nim-backend`. Tests and benchmarks never
/// build anything themselves: `cargo test --workspace` (what `./dev test` runs) builds every
/// binary of the workspace once, with the tests' features, and `./dev bench` builds the release
/// ones first. One missing, or older than its package's sources (a `cargo test -p backend` after
/// an edit elsewhere), is a failure that says so rather than a nested build or a test of stale
/// code.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Checked once per binary and test process: servers start it many times.
    static CHECKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = Path::new(env!("CARGO_BIN_EXE_nim-backend")).with_file_name(bin);
    let mut checked = CHECKED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if checked.iter().any(|b| b == bin) {
        return path;
    }
    let hint = "build every binary first: `./dev test` and `cargo test --workspace` do, and before a \
                filtered run `cargo build --workspace --bins --features backend/testing` does (the \
                same feature set, so nothing is rebuilt); benchmarks: `./dev bench`";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is not built: {hint}", path.display()));
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for sources in [crates.join(package).join("src"), crates.join("wire/src")] {
        if let Some(newer) = newest_file(&sources).filter(|(at, _)| *at > built) {
            panic!("{} is older than {}: {hint}", path.display(), newer.1.display());
        }
    }
    checked.push(bin.to_owned());
    path
}

/// The most recently modified file under `dir`, and when.
fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                newest_file(&path)
            } else {
                Some((entry.metadata().ok()?.modified().ok()?, path))
            }
        })
        .max()
}
