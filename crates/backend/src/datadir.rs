//! The data directory (`NIM_DATA_DIR`): made private (0700, files 0600, whatever the umask),
//! existing secrets tightened when others could read them, and, in embedded (SQLite) mode, owned
//! by one process at a time through an exclusive lock on `nim.lock` held for the process's life.

use std::{
    fs,
    io::{ErrorKind, Read, Seek, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

use crate::services::terraform::create_private_dir;

/// The lock file of an embedded data directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "nim.lock";
/// Files that hold secrets or data derived from them (password and refresh-token hashes, sealed
/// deployment secrets): never readable by anyone but the server's user.
pub const PRIVATE_FILES: &[&str] =
    &["nim.db", "nim.db-wal", "nim.db-shm", "jwt-secret", "encryption-key", LOCK_FILE];

/// Creates the data directory (0700) and makes the process's own files private: from here on
/// every file and directory the server (or a Terraform it runs) creates is 0600/0700, whatever
/// umask it was started with. The local machines' scripts set their own umask and modes.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    prepare_umask();
    create_private_dir(dir).context("failed to create the data directory (NIM_DATA_DIR)")?;
    for fixed in tighten(dir)? {
        tracing::warn!(
            path = %fixed.display(),
            "was readable by other users; made it private (0600/0700). If anyone else could log in here, rotate the secrets it held"
        );
    }
    Ok(())
}

/// Sets the process's umask to 077, so nothing it creates is readable by other users.
pub fn prepare_umask() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
}

/// Removes group and other permissions from the data directory and from the private files in it
/// that have any; returns what it changed. Fixing rather than refusing: every installation made
/// before this check has a 0644 `nim.db`, and the server owns these files anyway.
pub fn tighten(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut fixed = Vec::new();
    let paths =
        std::iter::once(dir.to_owned()).chain(PRIVATE_FILES.iter().map(|name| dir.join(name)));
    for path in paths {
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("failed to stat {}", path.display()));
            }
        };
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 && !metadata.file_type().is_symlink() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| format!("failed to make {} private", path.display()))?;
            fixed.push(path);
        }
    }
    Ok(fixed)
}

/// The exclusive hold of an embedded data directory; released when dropped (or when the process
/// ends, however it ends: the kernel drops `flock` locks with the last descriptor).
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<fs::File>,
}

/// Takes the data directory's lock without waiting, writing this process's pid into the lock
/// file; fails naming the process that holds it.
pub fn lock(dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = dir.join(LOCK_FILE);
    // Not truncated on open: until we hold the lock, the pid in it is the owner's.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut owner = String::new();
            let _ = file.read_to_string(&mut owner);
            let owner = match owner.trim() {
                "" => "another process".to_owned(),
                pid => format!("another process (pid {pid})"),
            };
            anyhow::bail!(
                "the data directory {} is in use by {owner}: one nim-backend owns an embedded (SQLite) data directory; stop that one first, or give this server its own NIM_DATA_DIR (with Postgres, replicas share the database instead)",
                dir.display()
            );
        }
        Err((_, errno)) => {
            return Err(errno).with_context(|| format!("failed to lock {}", path.display()));
        }
    };
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}

/// Whether an error (anywhere in its chain) is storage refusing writes: a full or read-only
/// filesystem under the data directory (workspaces, plans, state), or the database's own storage.
/// Such failures are the operator's to fix and end when space returns; they are answered 503
/// `storage_unavailable`, never 500.
pub fn is_storage_failure(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return is_storage_io(io);
        }
        matches!(
            cause.downcast_ref::<crate::store::StoreError>(),
            Some(crate::store::StoreError::Storage(_))
        )
    })
}

/// `ENOSPC`, `EROFS`, `EDQUOT`.
pub fn is_storage_io(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        ErrorKind::StorageFull | ErrorKind::ReadOnlyFilesystem | ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_owner_and_succeeds_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("NIM_DATA_DIR"), "{err}");
        drop(held);
        let again = lock(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(LOCK_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(again);
    }

    #[test]
    fn readable_secrets_and_directory_are_made_private() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for (name, mode) in [("jwt-secret", 0o644), ("nim.db", 0o640), ("encryption-key", 0o600)] {
            let path = dir.path().join(name);
            fs::write(&path, "x").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        let fixed = tighten(dir.path()).unwrap();
        assert_eq!(
            fixed,
            [dir.path().to_owned(), dir.path().join("nim.db"), dir.path().join("jwt-secret")]
        );
        for name in ["jwt-secret", "nim.db", "encryption-key"] {
            let mode = fs::metadata(dir.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(tighten(dir.path()).unwrap().is_empty());
    }
}
