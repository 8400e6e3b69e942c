//! `nim-backend backup PATH` and `nim-backend restore PATH`: everything an embedded (SQLite)
//! installation needs to come back, in one directory. The backup runs beside a live server (the
//! database is copied from one snapshot with `VACUUM INTO`); a restore needs the server stopped
//! and takes the data directory's lock to be sure. Postgres installations back up with
//! `pg_dump` instead (README, "Operations").

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{
    config::Config,
    datadir,
    services::terraform::{copy_private, copy_tree, create_private_dir, runner::PID_FILE},
    store,
};

/// Written last into a backup: a directory without it is not a complete backup.
pub const MANIFEST: &str = "nim-backup.json";
/// The secrets generated into the data directory (absent when they come from configuration).
const SECRETS: [&str; 2] = ["jwt-secret", "encryption-key"];
const DATABASE: &str = "nim.db";
const DEPLOYMENTS: &str = "deployments";

/// Terraform's working files, which the next run recreates (providers, the saved plan holding
/// secrets, a running Terraform's pid and lock).
fn working_file(name: &str) -> bool {
    matches!(name, ".terraform" | "tfplan" | ".terraform.tfstate.lock.info" | "modules.partial")
        || name == PID_FILE
}

fn postgres_refusal(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`nim-backend {what}` is for the embedded SQLite database; with a Postgres DATABASE_URL use pg_dump / pg_restore of the `nim` and `nim_terraform` schemas (README, Operations)"
    )
}

/// Copies the database, the generated secrets and every deployment's workspace (module copy and
/// Terraform state) into `target`, a new or empty directory.
pub async fn backup(config: &Config, target: &Path) -> anyhow::Result<()> {
    if !config.embedded_database() {
        return Err(postgres_refusal("backup"));
    }
    let database = store::sqlite_file(&config.database_url())?;
    anyhow::ensure!(
        database.is_file(),
        "there is no database at {} to back up (NIM_DATA_DIR / DATABASE_URL)",
        database.display()
    );
    datadir::prepare_umask();
    if fs::read_dir(target).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!("{} is not empty; back up into a new directory", target.display());
    }
    create_private_dir(target)?;

    // The database first: a run that finishes meanwhile has its state copied as it is now, and
    // the restored database still calls it running, so the next start re-queues it.
    store::backup_sqlite(&database, &target.join(DATABASE)).await?;
    let mut secrets = Vec::new();
    for name in SECRETS {
        let source = config.data_dir.join(name);
        if source.is_file() {
            copy_private(&source, &target.join(name))?;
            secrets.push(name);
        }
    }
    let deployments = config.data_dir.join(DEPLOYMENTS);
    if deployments.is_dir() {
        copy_tree(&deployments, &target.join(DEPLOYMENTS), &working_file)?;
    }
    let manifest = json!({
        "nim_backend_version": env!("CARGO_PKG_VERSION"),
        "created_at": crate::domain::now(),
        "secrets": secrets,
    });
    crate::services::terraform::write_private(
        &target.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    println!("backed up {} to {}", database.display(), target.display());
    for name in SECRETS.iter().filter(|name| !secrets.contains(name)) {
        println!(
            "note: no {name} in the data directory: its value comes from configuration (NIM_{}); keep it with the backup yourself",
            name.replace('-', "_").to_uppercase()
        );
    }
    Ok(())
}

/// Puts a backup made by [`backup`] back into the data directory. The server must be stopped;
/// an existing database is replaced only with `force`.
pub async fn restore(config: &Config, source: &Path, force: bool) -> anyhow::Result<()> {
    if !config.embedded_database() {
        return Err(postgres_refusal("restore"));
    }
    anyhow::ensure!(
        source.join(MANIFEST).is_file() && source.join(DATABASE).is_file(),
        "{} is not a complete nim-backend backup (no {MANIFEST} or {DATABASE})",
        source.display()
    );
    let database = store::sqlite_file(&config.database_url())?;
    datadir::prepare(&config.data_dir)?;
    // Fails, naming it, while a server runs on this directory.
    let _lock = datadir::lock(&config.data_dir)?;
    let existing = fs::metadata(&database).is_ok_and(|m| m.len() > 0);
    if existing && !force {
        bail!(
            "{} already holds a database; move it away first, or pass --force to replace it (and the deployments' workspaces) with the backup",
            database.display()
        );
    }

    // A WAL left by the replaced database would be applied to the restored one.
    for suffix in ["-wal", "-shm"] {
        remove_if_present(&with_suffix(&database, suffix))?;
    }
    let partial = with_suffix(&database, ".restoring");
    remove_if_present(&partial)?;
    copy_private(&source.join(DATABASE), &partial)?;
    fs::rename(&partial, &database).with_context(|| {
        format!("failed to move the restored database to {}", database.display())
    })?;
    for name in SECRETS {
        let backed_up = source.join(name);
        if backed_up.is_file() {
            copy_private(&backed_up, &config.data_dir.join(name))?;
        }
    }
    let deployments = config.data_dir.join(DEPLOYMENTS);
    let backed_up = source.join(DEPLOYMENTS);
    if backed_up.is_dir() {
        let partial = config.data_dir.join("deployments.restoring");
        remove_dir_if_present(&partial)?;
        copy_tree(&backed_up, &partial, &|_| false)?;
        remove_dir_if_present(&deployments)?;
        fs::rename(&partial, &deployments).with_context(|| {
            format!("failed to move the workspaces to {}", deployments.display())
        })?;
    }
    println!("restored {} into {}; start the server", source.display(), config.data_dir.display());
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("failed to remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn remove_dir_if_present(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("failed to remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
