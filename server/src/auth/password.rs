//! Password hashing: argon2id with the OWASP parameters (m = 19 MiB, t = 2, p = 1), always on
//! the blocking pool, since one hash costs tens of milliseconds of CPU.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::ApiError;

/// Accepted password lengths, in bytes.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

/// A PHC string with the same parameters as real hashes and a random salt and output, so no
/// known password matches it. A login for an unknown user is verified against it, so it costs
/// as much as a wrong password does.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$n3yUe4HgVhM4ALiHQI8h3A$VdFfKw1UFhSp2c+VUyIOJWm1qGHrvQ2o5N6n5w2jtGo";

fn argon2() -> Result<Argon2<'static>, ApiError> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("argon2 parameters: {e}")))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` to a PHC string with a fresh random salt.
pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        argon2()?
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("password hashing task: {e}")))?
}

/// Whether `password` matches `phc`; with `None` (no such user) it checks against a dummy hash
/// and answers `false`, taking about as long as a real check.
pub async fn verify(password: String, phc: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let argon2 = argon2()?;
        match phc {
            // Imported from the Django prototype; login then replaces it with argon2id.
            Some(phc) if super::django::is_django_hash(&phc) => {
                Ok(super::django::verify_for_login(&password, &phc))
            }
            Some(phc) => match argon2.verify_password(password.as_bytes(), phc.as_str()) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(ApiError::Internal(anyhow::anyhow!(
                    "stored password hash: {e}"
                ))),
            },
            None => {
                let _ = argon2.verify_password(password.as_bytes(), DUMMY_HASH);
                Ok(false)
            }
        }
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("password check task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let phc = hash("correct horse battery".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(
            verify("correct horse battery".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !verify("wrong horse battery".into(), Some(phc))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        assert!(!verify("anything at all".into(), None).await.unwrap());
    }

    #[test]
    fn dummy_hash_uses_the_real_parameters() {
        // Same cost as a real verification, or the timing would tell unknown users apart.
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let parsed = argon2::password_hash::phc::PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.hash.map(|h| h.len()), Some(32));
        // It parses and is really computed against: a mismatch, not a format error.
        let outcome = argon2()
            .unwrap()
            .verify_password(b"anything at all", DUMMY_HASH);
        assert!(
            matches!(outcome, Err(argon2::password_hash::Error::PasswordInvalid)),
            "{outcome:?}"
        );
    }
}
