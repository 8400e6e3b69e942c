//! When `terraform init` may run at the same time as another: the shared plugin cache
//! (`TF_PLUGIN_CACHE_DIR`) is not safe for concurrent *writers*, but an init whose providers are
//! all in the cache and pinned by the workspace's `.terraform.lock.hcl` only links them from it.
//!
//! Since Terraform 1.4 an init uses a cached package only when the workspace's lock file already
//! holds a matching checksum; without a lock file it downloads the package again and rewrites the
//! cache entry (the reference notes, section 5). So the first init of a module's provider set
//! runs alone (exclusive lock), and its lock file becomes the template every later workspace of
//! that provider set starts from; those inits then only read the cache and run concurrently
//! (shared lock). A module with built-in providers only (`terraform/local`) writes nothing to the
//! cache, so after its first init every init of it runs concurrently.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::Path,
};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The dependency lock file Terraform reads and writes in a working directory.
pub const LOCK_FILE: &str = ".terraform.lock.hcl";

/// Which provider sets this process has installed into the plugin cache, and the lock files that
/// pin them.
#[derive(Debug, Default)]
pub struct PluginCache {
    /// Shared by inits that only read the cache, exclusive for an init that may write it.
    gate: RwLock<()>,
    known: std::sync::Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    /// Keys (configuration + lock file) whose init succeeded: the cache holds their providers.
    warm: HashSet<[u8; 32]>,
    /// By configuration alone: the lock file its first init wrote.
    templates: HashMap<[u8; 32], Vec<u8>>,
}

/// Held for the length of one `terraform init`.
#[derive(Debug)]
pub struct InitPermit<'a> {
    _guard: Guard<'a>,
    cache: &'a PluginCache,
    configuration: [u8; 32],
    had_lock_file: bool,
}

#[derive(Debug)]
enum Guard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

impl PluginCache {
    /// Prepares `module_dir` for `terraform init` and waits until it may run: at once, beside
    /// other inits, when this provider set is already in the cache; alone otherwise. Gives a
    /// workspace without a lock file the template one of its provider set first.
    pub async fn before_init(&self, module_dir: &Path) -> anyhow::Result<InitPermit<'_>> {
        let configuration = configuration_digest(module_dir)?;
        let lock_path = module_dir.join(LOCK_FILE);
        let template = self.known().templates.get(&configuration).cloned();
        if let Some(template) = template.filter(|_| !lock_path.exists()) {
            super::write_private(&lock_path, &template)?;
        }
        let had_lock_file = lock_path.exists();
        let key = key(configuration, &lock_path)?;
        let warm = self.known().warm.contains(&key);
        let guard = match warm {
            true => Guard::Shared(self.gate.read().await),
            false => Guard::Exclusive(self.gate.write().await),
        };
        Ok(InitPermit { _guard: guard, cache: self, configuration, had_lock_file })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl InitPermit<'_> {
    /// Records a successful init: its providers are in the cache now, and a lock file it wrote
    /// becomes its provider set's template.
    pub fn succeeded(self, module_dir: &Path) {
        let lock_path = module_dir.join(LOCK_FILE);
        let Ok(key) = key(self.configuration, &lock_path) else { return };
        let mut known = self.cache.known();
        known.warm.insert(key);
        let written = (!self.had_lock_file).then(|| fs::read(&lock_path).ok()).flatten();
        if let Some(written) = written {
            known.templates.entry(self.configuration).or_insert(written);
        }
    }
}

/// A digest of every `.tf` file of the workspace's modules (the module and the modules it calls,
/// e.g. `../shared`): it changes whenever the provider requirements may have.
fn configuration_digest(module_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let root = module_dir.parent().unwrap_or(module_dir);
    let mut files = Vec::new();
    collect_tf_files(root, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let text = fs::read(&file).with_context(|| format!("failed to read {}", file.display()))?;
        hasher.update(file.strip_prefix(root).unwrap_or(&file).as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(&text);
    }
    Ok(hasher.finalize().into())
}

fn collect_tf_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("failed to read {}", dir.display()))?;
        let path = entry.path();
        let kind =
            entry.file_type().with_context(|| format!("failed to stat {}", path.display()))?;
        if kind.is_dir() && entry.file_name() != ".terraform" {
            collect_tf_files(&path, files)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "tf") {
            files.push(path);
        }
    }
    Ok(())
}

/// The configuration and the lock file (if any): what decides whether an init writes the cache.
fn key(configuration: [u8; 32], lock_path: &Path) -> anyhow::Result<[u8; 32]> {
    let lock = match fs::read(lock_path) {
        Ok(lock) => Some(lock),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => {
            return Err(err).with_context(|| format!("failed to read {}", lock_path.display()));
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(configuration);
    if let Some(lock) = lock {
        hasher.update([1]);
        hasher.update(lock);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn module(root: &Path, text: &str) -> std::path::PathBuf {
        let dir = root.join("modules").join("m");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("main.tf"), text).unwrap();
        dir
    }

    /// Whether a second init of the same workspace kind can start while the first still runs.
    async fn runs_beside(cache: &PluginCache, dir: &Path) -> bool {
        let _held = cache.before_init(dir).await.unwrap();
        tokio::time::timeout(Duration::from_millis(50), cache.before_init(dir)).await.is_ok()
    }

    #[tokio::test]
    async fn the_first_init_of_a_provider_set_runs_alone_and_later_ones_together() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (module(a.path(), "# v1"), module(b.path(), "# v1"));
        let cache = PluginCache::default();
        assert!(!runs_beside(&cache, &first).await, "nothing is known to be cached yet");

        let permit = cache.before_init(&first).await.unwrap();
        fs::write(first.join(LOCK_FILE), "provider \"x\" {}").unwrap();
        permit.succeeded(&first);

        assert!(runs_beside(&cache, &second).await, "the same provider set is cached");
        assert_eq!(fs::read_to_string(second.join(LOCK_FILE)).unwrap(), "provider \"x\" {}");
        assert!(runs_beside(&cache, &first).await, "a workspace's later runs too");

        let changed = tempfile::tempdir().unwrap();
        let changed = module(changed.path(), "# v2");
        assert!(!runs_beside(&cache, &changed).await, "a changed module may need new providers");
        assert!(!changed.join(LOCK_FILE).exists());
    }

    #[tokio::test]
    async fn a_failed_init_teaches_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (module(a.path(), "# v1"), module(b.path(), "# v1"));
        let cache = PluginCache::default();
        drop(cache.before_init(&first).await.unwrap());
        assert!(!runs_beside(&cache, &second).await);
        let permit = cache.before_init(&first).await.unwrap();
        permit.succeeded(&first);
        assert!(runs_beside(&cache, &second).await, "no lock file: built-in providers only");
        assert!(!second.join(LOCK_FILE).exists());
    }
}
