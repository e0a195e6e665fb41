//! The data directory holds key material (and the default SQLite file). Keys are
//! generated on first run with 0600 permissions and are never logged.
//!
//! The master key (which seals the vault) is kept *outside* the data directory by
//! default, so a copy of the data directory (a backup, a stolen disk image of the
//! database volume) does not carry the key to its ciphertexts: see [`master_key_path`].

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
        key_file(&self.root.join(name), len)
    }

    /// The vault's master keys: the current one (`AEGIS_MASTER_KEY`, else the file at
    /// [`master_key_path`], created on first use) and the retired ones `aegis rekey`
    /// left in [`retired_path`].
    pub fn master_keys(&self, keys: MasterKeySettings<'_>) -> Result<(KeyBytes, Vec<KeyBytes>), KeyError> {
        if let Some(value) = keys.env_key {
            let key = decode(value, MASTER_KEY_LEN)
                .ok_or(KeyError::BadEnvKey { var: "AEGIS_MASTER_KEY", len: 32 })?;
            return Ok((key, Vec::new()));
        }
        let path = master_key_path(self, keys);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
        }
        let key = key_file(&path, MASTER_KEY_LEN)?;
        Ok((key, read_retired(&retired_path(&path))?))
    }
}

/// Where the master key comes from, as configured (`Config::master_key_settings`):
/// a key from the environment, else the key file.
#[derive(Debug, Clone, Copy)]
pub struct MasterKeySettings<'a> {
    /// `AEGIS_MASTER_KEY`.
    pub env_key: Option<&'a str>,
    /// `AEGIS_MASTER_KEY_FILE` or its default.
    pub file: Option<&'a Path>,
}

pub const MASTER_KEY_FILE: &str = "master.key";
pub const MASTER_KEY_LEN: usize = 32;

/// Where the master key file is: `Config::master_key_file`
/// (`AEGIS_MASTER_KEY_FILE`, else `$XDG_CONFIG_HOME/aegis/master.key`, else
/// `$HOME/.config/aegis/master.key`), outside the data directory. Two exceptions keep
/// existing set-ups working: a `master.key` already in the data directory (from
/// before this default) is used while the configured file does not exist (a warning
/// says to move it), and without a configured place (no `HOME`) the data directory is
/// used.
pub fn master_key_path(data: &DataDir, keys: MasterKeySettings<'_>) -> PathBuf {
    let legacy = data.root.join(MASTER_KEY_FILE);
    match keys.file {
        Some(path) if path.exists() || !legacy.exists() => path.to_owned(),
        Some(path) => {
            tracing::warn!(
                legacy = %legacy.display(), recommended = %path.display(),
                "the master key is inside the data directory: move it to the recommended place \
                 (or set AEGIS_MASTER_KEY_FILE) so backups of the data directory do not carry it"
            );
            legacy
        }
        None => {
            tracing::warn!(
                file = %legacy.display(),
                "no HOME, XDG_CONFIG_HOME or AEGIS_MASTER_KEY_FILE: the master key is kept in the data directory"
            );
            legacy
        }
    }
}

/// The retired master keys next to the key file (`<file>.retired`, hex, one per line).
pub fn retired_path(master_key_file: &Path) -> PathBuf {
    let mut name = master_key_file.as_os_str().to_owned();
    name.push(".retired");
    PathBuf::from(name)
}

fn read_retired(path: &Path) -> Result<Vec<KeyBytes>, KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    check_mode(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            decode(l, MASTER_KEY_LEN).ok_or(KeyError::BadFile { path: path.to_owned(), len: MASTER_KEY_LEN })
        })
        .collect()
}

fn check_mode(path: &Path) -> Result<(), KeyError> {
    let mode = fs::metadata(path)
        .map_err(|source| KeyError::Io { path: path.to_owned(), source })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Writes `text` to `path` (0600) durably, replacing it atomically.
pub fn write_key_file(path: &Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// Appends a key to the retired keys file (created 0600).
pub fn retire_key(master_key_file: &Path, key: &KeyBytes) -> Result<(), KeyError> {
    let path = retired_path(master_key_file);
    let mut text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(KeyError::Io { path, source }),
    };
    let line = hex::encode(&key.0);
    if !text.lines().any(|l| l.trim() == line) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
    }
    write_key_file(&path, &text)
}

/// The key in the file at `path`, created with fresh random bytes on first use.
fn key_file(path: &Path, len: usize) -> Result<KeyBytes, KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let mut fresh = vec![0u8; len];
    rand::rng().fill_bytes(&mut fresh);
    // create_new: two processes starting at once cannot both write a key.
    match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            file.write_all(hex::encode(&fresh).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::info!(file = %path.display(), "generated a new key");
            return Ok(KeyBytes(fresh));
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    check_mode(path)?;
    let text = fs::read_to_string(path).map_err(io)?;
    decode(&text, len).ok_or(KeyError::BadFile { path: path.to_owned(), len })
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

    fn config(vars: &[(&str, String)]) -> crate::config::Config {
        let env: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        crate::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap()
    }

    /// The master key lives outside the data directory by default ($XDG_CONFIG_HOME,
    /// else $HOME/.config, else AEGIS_MASTER_KEY_FILE when set).
    #[test]
    fn the_master_key_is_kept_outside_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let home = dir.path().join("home");
        let c = config(&[
            ("AEGIS_DATA_DIR", data_path.display().to_string()),
            ("HOME", home.display().to_string()),
        ]);
        let data = DataDir::open(&data_path).unwrap();
        let (key, retired) = data.master_keys(c.master_key_settings()).unwrap();
        let file = home.join(".config/aegis/master.key");
        assert_eq!(fs::read_to_string(&file).unwrap(), hex::encode(&key.0));
        assert!(retired.is_empty());
        assert!(!data_path.join(MASTER_KEY_FILE).exists(), "no key in the data directory");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(file.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            data.master_keys(c.master_key_settings()).unwrap().0.0,
            key.0,
            "the same key on the next start"
        );

        let xdg = dir.path().join("xdg");
        let c =
            config(&[("XDG_CONFIG_HOME", xdg.display().to_string()), ("HOME", home.display().to_string())]);
        assert_eq!(master_key_path(&data, c.master_key_settings()), xdg.join("aegis/master.key"));
        let explicit = dir.path().join("k");
        let c = config(&[
            ("AEGIS_MASTER_KEY_FILE", explicit.display().to_string()),
            ("HOME", home.display().to_string()),
        ]);
        assert_eq!(master_key_path(&data, c.master_key_settings()), explicit);
    }

    /// An existing deployment's `data/master.key` keeps working (until it is moved);
    /// without any home the data directory is the fallback.
    #[test]
    fn a_master_key_already_in_the_data_directory_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        let data = DataDir::open(&data_path).unwrap();
        let legacy = data.key(MASTER_KEY_FILE, 32, "AEGIS_MASTER_KEY", None).unwrap();
        let home = dir.path().join("home");
        let c = config(&[("HOME", home.display().to_string())]);
        assert_eq!(data.master_keys(c.master_key_settings()).unwrap().0.0, legacy.0);
        assert!(!home.join(".config/aegis/master.key").exists());
        assert_eq!(
            master_key_path(&data, config(&[]).master_key_settings()),
            data_path.join(MASTER_KEY_FILE)
        );
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
