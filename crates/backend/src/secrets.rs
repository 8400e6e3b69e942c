//! Secrets the server generates for itself on first start (the access-token signing key, later
//! the at-rest encryption key), kept as files in the data directory so a restart reuses them.

use std::{
    fs,
    io::{ErrorKind, Write},
    path::Path,
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use secrecy::SecretString;

/// Reads the base64 secret stored at `path`, or creates that file with `len` fresh random bytes
/// (mode 0600) when it does not exist yet. Creation uses `create_new`, so two processes starting
/// at once cannot end up with different keys: the loser reads the winner's file.
pub fn load_or_generate(path: &Path, len: usize) -> anyhow::Result<SecretString> {
    match fs::read_to_string(path) {
        Ok(text) => return parse(path, &text, len),
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("failed to read {}", path.display())),
    }
    let mut bytes = vec![0u8; len];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let encoded = STANDARD.encode(&bytes);

    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{encoded}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("failed to write {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(SecretString::from(encoded))
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            parse(path, &text, len)
        }
        Err(err) => Err(err).with_context(|| format!("failed to create {}", path.display())),
    }
}

fn parse(path: &Path, text: &str, len: usize) -> anyhow::Result<SecretString> {
    let text = text.trim();
    match STANDARD.decode(text) {
        Ok(bytes) if bytes.len() >= len => Ok(SecretString::from(text.to_owned())),
        Ok(bytes) => bail!(
            "{} holds a {}-byte secret, at least {len} bytes are needed; delete it to generate a new one",
            path.display(),
            bytes.len()
        ),
        Err(_) => bail!("{} is not valid base64; delete it to generate a new one", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn generates_once_then_reuses_the_same_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = load_or_generate(&path, 32).unwrap();
        let second = load_or_generate(&path, 32).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert_eq!(STANDARD.decode(first.expose_secret()).unwrap().len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_a_corrupt_or_short_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "not base64!").unwrap();
        let err = load_or_generate(&path, 32).unwrap_err().to_string();
        assert!(err.contains("not valid base64"), "{err}");
        fs::write(&path, STANDARD.encode([1u8; 8])).unwrap();
        let err = load_or_generate(&path, 32).unwrap_err().to_string();
        assert!(err.contains("8-byte secret"), "{err}");
    }
}
