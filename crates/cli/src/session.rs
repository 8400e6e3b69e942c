//! Saved sessions: one per server, in a JSON file only its owner can read. Refresh tokens are
//! single-use, so every refreshed session is written back at once, atomically (a temporary
//! file in the same folder, renamed over the old one).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use wire::Session;

#[derive(Debug, Default, Serialize, Deserialize)]
struct SessionsFile {
    /// Keyed by the server's base URL.
    #[serde(default)]
    servers: BTreeMap<String, Session>,
}

/// The sessions file.
#[derive(Debug, Clone)]
pub(crate) struct SessionStore {
    path: PathBuf,
}

impl SessionStore {
    /// `path`, or the default under the user's config folder.
    pub(crate) fn new(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = match path {
            Some(path) => path,
            None => default_path()?,
        };
        Ok(Self { path })
    }

    #[cfg(test)]
    fn path(&self) -> &Path {
        &self.path
    }

    /// The session saved for `server`, if any.
    pub(crate) fn get(&self, server: &str) -> anyhow::Result<Option<Session>> {
        Ok(self.read()?.servers.remove(server))
    }

    /// Saves (`Some`) or forgets (`None`) the session for `server`.
    pub(crate) fn set(&self, server: &str, session: Option<&Session>) -> anyhow::Result<()> {
        let mut file = self.read()?;
        match session {
            Some(session) => file.servers.insert(server.to_owned(), session.clone()),
            None => file.servers.remove(server),
        };
        self.write(&file)
    }

    fn read(&self) -> anyhow::Result<SessionsFile> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a nimctl sessions file; delete it and log in again",
                    self.path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(SessionsFile::default()),
            Err(err) => Err(err).with_context(|| format!("failed to read {}", self.path.display())),
        }
    }

    fn write(&self, file: &SessionsFile) -> anyhow::Result<()> {
        let dir =
            self.path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        // A named temporary file is created readable by its owner only (0600).
        let mut temp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("failed to create a file in {}", dir.display()))?;
        let json = serde_json::to_vec_pretty(file).context("failed to encode the sessions")?;
        temp.write_all(&json).context("failed to write the sessions")?;
        temp.as_file().sync_all().context("failed to write the sessions")?;
        temp.persist(&self.path)
            .with_context(|| format!("failed to save {}", self.path.display()))?;
        Ok(())
    }
}

fn default_path() -> anyhow::Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .context("neither XDG_CONFIG_HOME nor HOME is set; pass --sessions FILE")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(config.join("nimctl").join("sessions.json"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn session(token: &str) -> Session {
        serde_json::from_value(serde_json::json!({
            "access_token": token, "token_type": "bearer", "expires_in": 3600,
            "expires_at": 2_000_000_000, "refresh_token": "r",
            "user": {"id": "00000000-0000-0000-0000-000000000001", "aud": "authenticated",
                "role": "authenticated", "email": "a@example.com", "email_confirmed_at": null,
                "confirmed_at": null, "last_sign_in_at": null,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
        }))
        .unwrap()
    }

    #[test]
    fn sessions_are_kept_per_server_in_a_file_only_the_owner_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(Some(dir.path().join("nested/sessions.json"))).unwrap();
        assert!(store.get("http://a").unwrap().is_none());
        store.set("http://a", Some(&session("one"))).unwrap();
        store.set("http://b", Some(&session("two"))).unwrap();
        assert_eq!(store.get("http://a").unwrap().unwrap().access_token, "one");
        assert_eq!(store.get("http://b").unwrap().unwrap().access_token, "two");
        let mode = std::fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        store.set("http://a", None).unwrap();
        assert!(store.get("http://a").unwrap().is_none());
        assert!(store.get("http://b").unwrap().is_some());
    }

    #[test]
    fn a_corrupt_file_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.json");
        std::fs::write(&path, "not json").unwrap();
        let err = SessionStore::new(Some(path)).unwrap().get("http://a").unwrap_err();
        assert!(format!("{err:#}").contains("log in again"), "{err:#}");
    }
}
