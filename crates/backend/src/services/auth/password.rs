//! Password hashing with argon2id (OWASP's parameters, the `argon2` crate's defaults). Hashing is
//! deliberately slow and memory-hungry, so it runs on the blocking pool and at most as many hashes
//! run at once as there are cores: a burst of logins queues instead of exhausting memory.

use std::sync::{Arc, LazyLock};

use anyhow::Context;
use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    Arc::new(Semaphore::new(cores))
});

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let _permit = HASHING.clone().acquire_owned().await.context("password hashing stopped")?;
    tokio::task::spawn_blocking(work).await.context("password hashing task failed")
}

/// A PHC-format argon2id hash of `password` with a fresh salt.
pub(super) async fn hash(password: SecretString) -> anyhow::Result<String> {
    blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| anyhow::anyhow!("failed to hash a password: {err}"))
    })
    .await?
}

/// Whether `password` matches the PHC `hash`.
pub(super) async fn verify(password: SecretString, hash: String) -> anyhow::Result<bool> {
    blocking(move || {
        let parsed = PasswordHash::new(&hash)
            .map_err(|err| anyhow::anyhow!("stored password hash is malformed: {err}"))?;
        Ok(Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hashed = hash(SecretString::from("correct horse")).await.unwrap();
        assert!(hashed.starts_with("$argon2id$"));
        assert!(verify(SecretString::from("correct horse"), hashed.clone()).await.unwrap());
        assert!(!verify(SecretString::from("wrong horse"), hashed).await.unwrap());
    }
}
