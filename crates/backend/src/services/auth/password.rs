//! Password hashing with argon2id (OWASP's parameters, the `argon2` crate's defaults). Hashing is
//! deliberately slow and memory-hungry, so it runs on the blocking pool and at most as many hashes
//! run at once as there are cores: a burst of logins queues instead of exhausting memory.

use std::sync::{Arc, LazyLock};

use anyhow::Context;
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
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

/// Above glibc's largest mmap threshold (32 MiB on 64-bit; the dynamic threshold never rises
/// past it).
const MAPPED_BYTES: usize = 33 << 20;

/// argon2's working memory (19 MiB with the default parameters), allocated so that it goes back
/// to the system when freed. The `argon2` crate's own `vec![Block; n]` is an ordinary allocation:
/// glibc kept each one in the arena of the blocking thread that hashed, so every login left
/// about 19 MiB in the process for good. A reservation above the mmap threshold is a mapping of
/// its own, unmapped on free; only the blocks argon2 uses are ever touched (made resident).
fn working_memory(params: &Params) -> Vec<Block> {
    let blocks = params.block_count();
    let mut memory = Vec::with_capacity(blocks.max(MAPPED_BYTES / std::mem::size_of::<Block>()));
    memory.resize(blocks, Block::default());
    memory
}

fn malformed(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("stored password hash is malformed: {err}")
}

fn hash_err(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("failed to hash a password: {err}")
}

/// A PHC-format argon2id hash of `password` with a fresh salt (the crate's default parameters:
/// OWASP's m = 19 MiB, t = 2, p = 1).
pub(super) async fn hash(password: SecretString) -> anyhow::Result<String> {
    blocking(move || {
        let argon2 = Argon2::default();
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes).map_err(hash_err)?;
        let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
            argon2
                .hash_password_into_with_memory(
                    password.expose_secret().as_bytes(),
                    salt_bytes,
                    out,
                    working_memory(argon2.params()),
                )
                .map_err(|_| argon2::password_hash::Error::Crypto)
        })
        .map_err(hash_err)?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon2.params()).map_err(hash_err)?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(hash.to_string())
    })
    .await?
}

/// Whether `password` matches the PHC `hash` (whatever argon2 parameters it was made with).
pub(super) async fn verify(password: SecretString, hash: String) -> anyhow::Result<bool> {
    blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(malformed)?;
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(malformed)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(malformed)?
            .unwrap_or_default();
        let params = Params::try_from(&parsed).map_err(malformed)?;
        let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
            anyhow::bail!("stored password hash is malformed: no salt or hash");
        };
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_bytes).map_err(malformed)?;
        let argon2 = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        argon2
            .hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                salt_bytes,
                &mut out,
                working_memory(argon2.params()),
            )
            .map_err(hash_err)?;
        // `Output`'s equality is constant-time.
        Ok(Output::new(&out).map_err(malformed)? == expected)
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
        assert!(!verify(SecretString::from("wrong horse"), hashed.clone()).await.unwrap());
        // The same hash as the `argon2` crate's own verifier reads it: nothing of the format changed.
        use argon2::PasswordVerifier;
        let parsed = PasswordHash::new(&hashed).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(hashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hashed}");
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_verify() {
        use argon2::PasswordHasher;
        let salt = SaltString::generate(&mut OsRng);
        let params = Params::new(8192, 3, 1, None).unwrap();
        let made = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"older hash", &salt)
            .unwrap()
            .to_string();
        assert!(verify(SecretString::from("older hash"), made.clone()).await.unwrap());
        assert!(!verify(SecretString::from("older hasx"), made).await.unwrap());
        assert!(verify(SecretString::from("x"), "$argon2id$nonsense".into()).await.is_err());
    }
}
