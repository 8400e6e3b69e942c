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

/// Seals secrets at rest (agent tokens, TLS keys, sensitive variables) with ChaCha20-Poly1305 under
/// the key from `NIM_ENCRYPTION_KEY` (or the one generated into the data dir). A sealed value is
/// `nonce (12 bytes) || ciphertext+tag`; a fresh random nonce per value.
#[derive(Clone)]
pub struct SecretBox {
    cipher: chacha20poly1305::ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

const NONCE_LEN: usize = 12;

impl SecretBox {
    /// Builds the box from a base64 key of exactly 32 bytes.
    pub fn new(key: &SecretString) -> anyhow::Result<Self> {
        use chacha20poly1305::KeyInit;
        use secrecy::ExposeSecret;
        let bytes = STANDARD
            .decode(key.expose_secret().trim())
            .context("the encryption key (NIM_ENCRYPTION_KEY) is not valid base64")?;
        let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| {
            anyhow::anyhow!(
                "the encryption key (NIM_ENCRYPTION_KEY) must be 32 bytes, base64-encoded"
            )
        })?;
        Ok(Self { cipher })
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, AeadCore};
        let nonce = chacha20poly1305::ChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
        let mut sealed = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        sealed
            .extend(self.cipher.encrypt(&nonce, plaintext).expect("ChaCha20-Poly1305 encryption"));
        sealed
    }

    pub fn open(&self, sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        use chacha20poly1305::aead::Aead;
        anyhow::ensure!(sealed.len() > NONCE_LEN, "sealed value is truncated");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(chacha20poly1305::Nonce::from_slice(nonce), ciphertext).map_err(|_| {
            anyhow::anyhow!(
                "a sealed secret does not open with this key (was NIM_ENCRYPTION_KEY changed?)"
            )
        })
    }
}

#[cfg(test)]
mod secret_box_tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from(STANDARD.encode([7u8; 32]))
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_intact() {
        let sealer = SecretBox::new(&key()).unwrap();
        let sealed = sealer.seal(b"agent token");
        assert_ne!(&sealed[NONCE_LEN..], b"agent token");
        assert_eq!(sealer.open(&sealed).unwrap(), b"agent token");
        assert_ne!(sealer.seal(b"agent token"), sealed, "nonces are fresh");

        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&tampered).is_err());
        let other = SecretBox::new(&SecretString::from(STANDARD.encode([8u8; 32]))).unwrap();
        assert!(other.open(&sealed).unwrap_err().to_string().contains("NIM_ENCRYPTION_KEY"));
        assert!(SecretBox::new(&SecretString::from(STANDARD.encode([1u8; 16]))).is_err());
    }
}
