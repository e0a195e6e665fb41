//! The data directory holds key material (and the default SQLite file). Keys are
//! generated on first run with 0600 permissions and are never logged.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("invalid configuration: {var}: expected {len} bytes as hex")]
    BadEnvKey { var: &'static str, len: usize },
    #[error("{path} is corrupt: expected {len} bytes as hex")]
    BadFile { path: PathBuf, len: usize },
}

pub struct DataDir {
    root: PathBuf,
}

/// Secret key bytes; the Debug form hides them.
#[derive(Clone)]
pub struct KeyBytes(pub Vec<u8>);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl DataDir {
    pub fn open(root: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: root.to_owned(), source };
        fs::create_dir_all(root).map_err(io)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The key from `env_value` when given, else from the file `name`, created with
    /// fresh random bytes on first use.
    pub fn key(
        &self,
        name: &str,
        len: usize,
        env_var: &'static str,
        env_value: Option<&str>,
    ) -> Result<KeyBytes, KeyError> {
        if let Some(value) = env_value {
            return decode(value, len).ok_or(KeyError::BadEnvKey { var: env_var, len });
        }
        let path = self.root.join(name);
        let io = |source| KeyError::Io { path: path.clone(), source };
        let mut fresh = vec![0u8; len];
        rand::rng().fill_bytes(&mut fresh);
        // create_new: two processes starting at once cannot both write a key.
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut file) => {
                file.write_all(hex::encode(&fresh).as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(file = %path.display(), "generated a new key");
                return Ok(KeyBytes(fresh));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mode = fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(io)?;
        decode(&text, len).ok_or(KeyError::BadFile { path, len })
    }
}

fn decode(text: &str, len: usize) -> Option<KeyBytes> {
    hex::decode(text.trim()).ok().filter(|b| b.len() == len).map(KeyBytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(&dir.path().join("d")).unwrap();
        let first = data.key("jwt.key", 32, "X", None).unwrap();
        let again = data.key("jwt.key", 32, "X", None).unwrap();
        assert_eq!(first.0, again.0);
        let mode = fs::metadata(data.path().join("jwt.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!format!("{first:?}").contains(&hex::encode(&first.0)));
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        data.key("k", 32, "X", None).unwrap();
        fs::set_permissions(dir.path().join("k"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(data.key("k", 32, "X", None), Err(KeyError::TooOpen { .. })));
    }

    #[test]
    fn env_key_must_be_hex_of_the_right_length() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let good = "ab".repeat(32);
        assert_eq!(data.key("k", 32, "AEGIS_MASTER_KEY", Some(&good)).unwrap().0, vec![0xab; 32]);
        let err = data.key("k", 32, "AEGIS_MASTER_KEY", Some("abcd")).unwrap_err();
        assert!(err.to_string().contains("AEGIS_MASTER_KEY"));
        assert!(!dir.path().join("k").exists(), "an env key must not create a file");
    }
}
