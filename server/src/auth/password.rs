//! Password hashing (Argon2id, OWASP parameters) and the password policy.
//!
//! Hashing is CPU-heavy by design, so it runs on the blocking pool and at most a few
//! hashes run at once; a flood of logins cannot starve the proxy's async workers.
//! Requests waiting for a hash form a bounded queue: past it the answer is at once
//! `503 busy` with `Retry-After`, rather than an ever longer wait.

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
/// Hashes computed at once.
pub const WORKERS: usize = 4;
/// Requests that may wait for a worker; one more is refused with 503.
pub const QUEUE: usize = 64;
/// `Retry-After` of a refused request.
const BUSY_RETRY_SECS: u64 = 2;

#[derive(Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    /// Hash of a random password, verified when the account does not exist so the
    /// answer takes as long as for a real account.
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
    /// Workers + queue places: every hash holds one from arrival to completion.
    places: Arc<Semaphore>,
}

fn busy() -> AppError {
    AppError {
        retry_after_secs: Some(BUSY_RETRY_SECS),
        ..AppError::unavailable("busy", "too many sign-ins in progress; try again shortly")
    }
}

impl Passwords {
    pub fn new() -> Self {
        Self::with_limits(WORKERS, QUEUE)
    }

    pub fn with_limits(workers: usize, queue: usize) -> Self {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).expect("valid argon2 params");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let dummy = argon
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .expect("hashing a fixed-size input cannot fail")
            .to_string();
        Self {
            argon,
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(workers)),
            places: Arc::new(Semaphore::new(workers + queue)),
        }
    }

    /// A place in the queue (or 503), then a worker.
    async fn admit(
        &self,
    ) -> Result<(tokio::sync::SemaphorePermit<'_>, tokio::sync::SemaphorePermit<'_>), AppError> {
        let place = self.places.try_acquire().map_err(|_| busy())?;
        let permit = self.permits.acquire().await.map_err(|_| AppError::internal())?;
        Ok((place, permit))
    }

    pub async fn hash(&self, password: &str) -> Result<String, AppError> {
        let _permit = self.admit().await?;
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
    /// on the dummy hash and answers false. `503 busy` when the queue is full.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, AppError> {
        let _permit = self.admit().await?;
        let exists = stored.is_some();
        let (argon, password) = (self.argon.clone(), password.to_owned());
        let stored = stored.map(str::to_owned).unwrap_or_else(|| self.dummy.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored).is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        Ok(exists && matched)
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
        assert!(p.verify("correct horse 9", Some(&hash)).await.unwrap());
        assert!(!p.verify("correct horse 8", Some(&hash)).await.unwrap());
        assert!(!p.verify("correct horse 9", None).await.unwrap(), "no account never verifies");
        assert!(!p.verify("x", Some("not a phc string")).await.unwrap());
        assert_ne!(hash, p.hash("correct horse 9").await.unwrap(), "salted");
    }

    /// Past the workers and the queue, a hash is refused at once with 503 and
    /// `Retry-After` instead of waiting; a freed place is usable again.
    #[tokio::test]
    async fn a_full_queue_answers_busy() {
        let p = Passwords::with_limits(1, 2);
        let held = p.places.try_acquire_many(3).unwrap();
        let started = std::time::Instant::now();
        let err = p.verify("correct horse 9", None).await.unwrap_err();
        assert_eq!((err.status, err.code.as_str(), err.retry_after_secs), (503, "busy", Some(2)));
        assert_eq!(p.hash("correct horse 9").await.unwrap_err().status, 503);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused without waiting");
        drop(held);
        assert!(!p.verify("correct horse 9", None).await.unwrap());
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
