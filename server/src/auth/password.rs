//! Password hashing (Argon2id, OWASP parameters) and the password policy.
//!
//! Hashing is CPU-heavy by design, so it runs on the blocking pool and at most a few
//! hashes run at once; a flood of logins cannot starve the proxy's async workers.

use std::sync::Arc;

use app::error::AppError;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP Password Storage Cheat Sheet: Argon2id, m = 19 MiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;
pub const MIN_LEN: usize = 10;
/// Longer inputs are refused so hashing cost stays bounded.
pub const MAX_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    /// Hash of a random password, verified when the account does not exist so the
    /// answer takes as long as for a real account.
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
}

impl Passwords {
    pub fn new() -> Self {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).expect("valid argon2 params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let dummy = argon
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .expect("hashing a fixed-size input cannot fail")
            .to_string();
        Self { argon, dummy: dummy.into(), permits: Arc::new(Semaphore::new(4)) }
    }

    pub async fn hash(&self, password: &str) -> Result<String, AppError> {
        let _permit = self.permits.acquire().await.map_err(|_| AppError::internal())?;
        let (argon, password) = (self.argon.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon.hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await
        .map_err(|_| AppError::internal())?
        .map_err(|_| AppError::internal())
    }

    /// Checks `password` against `stored`; with no stored hash, spends the same time
    /// on the dummy hash and answers false.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let exists = stored.is_some();
        let (argon, password) = (self.argon.clone(), password.to_owned());
        let stored = stored.map(str::to_owned).unwrap_or_else(|| self.dummy.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        exists && matched
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

/// At least [`MIN_LEN`] characters drawn from at least two classes (lower, upper,
/// digit, other), so "aaaaaaaaaa" and "1234567890" are refused.
pub fn check_policy(password: &str) -> Result<(), AppError> {
    if password.chars().count() < MIN_LEN {
        return Err(AppError::new(
            422,
            "weak_password",
            format!("password must be at least {MIN_LEN} characters"),
        ));
    }
    if password.len() > MAX_BYTES {
        return Err(AppError::new(
            422,
            "weak_password",
            format!("password must be at most {MAX_BYTES} bytes"),
        ));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_numeric()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if classes.iter().filter(|c| **c).count() < 2 {
        return Err(AppError::new(
            422,
            "weak_password",
            "password must mix at least two of: lowercase, uppercase, digits, symbols",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let p = Passwords::new();
        let hash = p.hash("correct horse 9").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(p.verify("correct horse 9", Some(&hash)).await);
        assert!(!p.verify("correct horse 8", Some(&hash)).await);
        assert!(!p.verify("correct horse 9", None).await, "no account never verifies");
        assert!(!p.verify("x", Some("not a phc string")).await);
        assert_ne!(hash, p.hash("correct horse 9").await.unwrap(), "salted");
    }

    #[test]
    fn policy_table() {
        for ok in ["abcdefghi1", "Abcdefghij", "pass word here", "ääääääääää1"] {
            assert!(check_policy(ok).is_ok(), "{ok} should pass");
        }
        for bad in ["short1A", "aaaaaaaaaaaaaaa", "1234567890123", "ABCDEFGHIJKL", "a1"] {
            let err = check_policy(bad).unwrap_err();
            assert_eq!((err.status, err.code.as_str()), (422, "weak_password"), "{bad}");
        }
        assert!(check_policy(&format!("a1{}", "x".repeat(MAX_BYTES))).is_err());
    }
}
