//! Per-deployment workspaces: `<data dir>/deployments/<id>/` (mode 0700) holding a copy of the
//! modules as they were when the deployment was first applied (a later destroy uses the same
//! copy, whatever has changed in `terraform/` since), Terraform's state, and the plain variables.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Names never copied from the modules folder: Terraform's own working data and state.
fn skipped(name: &str) -> bool {
    name == ".terraform"
        || name.contains(".tfstate")
        || name == "tfplan"
        || name == "machines"
        || name == super::runner::PID_FILE
        || name == "terraform.tfvars.json"
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// Where Terraform runs: the copy of the deployment's provider module.
    pub module_dir: PathBuf,
}

impl Workspace {
    pub fn for_deployment(data_dir: &Path, deployment_id: Uuid, provider: &str) -> Self {
        let root = data_dir.join("deployments").join(deployment_id.to_string());
        let module_dir = root.join("modules").join(provider);
        Self { root, module_dir }
    }

    /// A throwaway workspace (dry runs), removed when the returned guard drops.
    pub fn temporary(data_dir: &Path, provider: &str) -> anyhow::Result<(Self, tempfile::TempDir)> {
        let parent = data_dir.join("tmp");
        create_private_dir(&parent)?;
        let dir =
            tempfile::Builder::new().prefix("plan-").tempdir_in(&parent).with_context(|| {
                format!("failed to create a temporary workspace in {}", parent.display())
            })?;
        let root = dir.path().to_owned();
        let module_dir = root.join("modules").join(provider);
        Ok((Self { root, module_dir }, dir))
    }

    /// Copies the modules folder in, unless this workspace already has its copy.
    pub fn ensure_modules(&self, modules_root: &Path) -> anyhow::Result<()> {
        create_private_dir(&self.root)?;
        if self.module_dir.is_dir() {
            return Ok(());
        }
        // Copy into a sibling first and rename, so a crash never leaves a half copy in place.
        let partial = self.root.join("modules.partial");
        let _ = fs::remove_dir_all(&partial);
        copy_tree(modules_root, &partial, &skipped)?;
        fs::rename(&partial, self.root.join("modules")).with_context(|| {
            format!("failed to move the module copy into {}", self.root.display())
        })?;
        Ok(())
    }

    /// Writes `terraform.tfvars.json` (mode 0600): the non-secret variables.
    pub fn write_variables(&self, variables: &Map<String, Value>) -> anyhow::Result<()> {
        let path = self.module_dir.join("terraform.tfvars.json");
        write_private(&path, serde_json::to_vec_pretty(variables)?.as_slice())
    }

    /// Removes the saved plan: it holds every variable, secrets included, in clear text.
    pub fn remove_plan(&self) {
        let _ = fs::remove_file(self.module_dir.join("tfplan"));
    }
}

pub(crate) fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("failed to create {}", path.display()))
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("failed to write {}", path.display()))
}

/// Copies a folder tree, leaving out the names `skip` picks. Copies are private (0600/0700, the
/// owner's execute bit kept), like everything else under the data directory.
pub(crate) fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    create_private_dir(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("failed to read {}", from.display()))? {
        let entry = entry.with_context(|| format!("failed to read {}", from.display()))?;
        let name = entry.file_name();
        if skip(&name.to_string_lossy()) {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let kind =
            entry.file_type().with_context(|| format!("failed to stat {}", source.display()))?;
        if kind.is_dir() {
            copy_tree(&source, &target, skip)?;
        } else if kind.is_file() {
            copy_private(&source, &target)?;
        }
    }
    Ok(())
}

/// Copies one file, private (0600, or 0700 when its owner could execute it).
pub(crate) fn copy_private(source: &Path, target: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let copied = fs::copy(source, target).and_then(|_| {
        let mode = fs::metadata(target)?.permissions().mode();
        fs::set_permissions(target, fs::Permissions::from_mode(mode & 0o700))
    });
    copied.with_context(|| format!("failed to copy {} to {}", source.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_copy_is_made_once_and_skips_terraform_working_files() {
        let modules = tempfile::tempdir().unwrap();
        let local = modules.path().join("local");
        fs::create_dir_all(local.join(".terraform")).unwrap();
        fs::write(local.join("main.tf"), "# v1").unwrap();
        fs::write(local.join("terraform.tfstate"), "{}").unwrap();
        fs::create_dir_all(modules.path().join("shared")).unwrap();
        fs::write(modules.path().join("shared/cloud-init.tftpl"), "x").unwrap();

        let data = tempfile::tempdir().unwrap();
        let workspace = Workspace::for_deployment(data.path(), Uuid::now_v7(), "local");
        workspace.ensure_modules(modules.path()).unwrap();
        assert_eq!(fs::read_to_string(workspace.module_dir.join("main.tf")).unwrap(), "# v1");
        assert!(!workspace.module_dir.join(".terraform").exists());
        assert!(!workspace.module_dir.join("terraform.tfstate").exists());
        assert!(workspace.root.join("modules/shared/cloud-init.tftpl").exists());

        // A later change to the modules does not reach an existing workspace.
        fs::write(local.join("main.tf"), "# v2").unwrap();
        workspace.ensure_modules(modules.path()).unwrap();
        assert_eq!(fs::read_to_string(workspace.module_dir.join("main.tf")).unwrap(), "# v1");

        workspace.write_variables(&Map::from_iter([("a".to_owned(), Value::from(1))])).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(workspace.module_dir.join("terraform.tfvars.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(&workspace.root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
