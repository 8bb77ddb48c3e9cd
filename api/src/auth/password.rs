//! Passwords: argon2id PHC strings, hashed and verified off the async runtime.
//!
//! Parameters are the `argon2` crate's defaults (argon2id, 19 MiB, 2 passes,
//! 1 lane: the OWASP recommendation). Verification reads the parameters from
//! the stored PHC string, so hashes made with other parameters keep working.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;

use crate::error::ApiError;

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted, in characters (hashing cost grows with length).
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A hash of a password nobody knows, made with the same parameters as real
/// ones. Logins for unknown emails verify against it, so that their timing
/// does not tell which emails have accounts.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$Y3JtLWR1bW15LXNhbHQtMQ$A3mhv11jY5LCE71nkTbkYNgmxmM3+dbf+aIJGI+Ftwc";

/// A new password that meets the length rules. Its `Debug` hides the value.
pub struct NewPassword(String);

impl NewPassword {
    /// Checks the length; the error is a message for the `password` field.
    pub fn parse(raw: String) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!(
                "must be at least {MIN_PASSWORD_CHARS} characters long"
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!(
                "must be at most {MAX_PASSWORD_CHARS} characters long"
            ));
        }
        Ok(NewPassword(raw))
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(<redacted>)")
    }
}

/// Hashes a new password into a PHC string.
pub async fn hash(password: NewPassword) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password.0))
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task failed: {e}")))?
}

fn hash_blocking(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ApiError::Internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("password hashing: {e}")))
}

/// True when `password` matches `stored`. With no stored hash (an unknown
/// user) it verifies against a dummy hash and returns false, taking as long.
pub async fn verify(password: String, stored: Option<String>) -> Result<bool, ApiError> {
    tokio::task::spawn_blocking(move || {
        let matches = verify_blocking(&password, stored.as_deref().unwrap_or(DUMMY_HASH));
        matches && stored.is_some()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password verification task failed: {e}")))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            // A corrupt stored hash: nobody can log in with it. Answer like a
            // wrong password, so that the response reveals nothing.
            tracing::error!(error = %e, "stored password hash cannot be parsed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(s: &str) -> NewPassword {
        NewPassword::parse(s.to_string()).unwrap()
    }

    #[test]
    fn length_rules_count_characters() {
        assert!(NewPassword::parse("short".into()).is_err());
        assert!(NewPassword::parse("elevenchars".into()).is_err());
        assert!(NewPassword::parse("twelve chars".into()).is_ok());
        // 12 characters, 24 bytes: counts as 12.
        assert!(NewPassword::parse("éééééééééééé".into()).is_ok());
        assert!(NewPassword::parse("x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
        assert_eq!(
            format!("{:?}", pw("a secret password")),
            "NewPassword(<redacted>)"
        );
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_strings_that_verify() {
        let phc = hash(pw("correct horse battery")).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify("correct horse battery".into(), Some(phc.clone()))
            .await
            .unwrap());
        assert!(!verify("wrong horse battery".into(), Some(phc.clone()))
            .await
            .unwrap());
        // Two hashes of one password differ (random salt).
        assert_ne!(phc, hash(pw("correct horse battery")).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_users_and_corrupt_hashes_never_match() {
        assert!(!verify("anything at all".into(), None).await.unwrap());
        assert!(
            !verify("anything at all".into(), Some("not a phc string".into()))
                .await
                .unwrap()
        );
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real_phc = hash_blocking("some real password").unwrap();
        let real = PasswordHash::new(&real_phc).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
    }
}
