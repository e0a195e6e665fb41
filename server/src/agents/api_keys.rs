//! Agent API keys: `aegis_` + a 16-hex-digit key id + a 48-hex-digit secret (256
//! random bits in all). Only the SHA-256 of the whole key is stored; the key id
//! finds the row and the hash is compared in constant time.

use subtle::ConstantTimeEq;

use crate::digest::{random_hex, sha256_hex};

pub const PREFIX: &str = "aegis_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 48;

pub struct NewKey {
    /// Shown to the sponsor once, never stored.
    pub plaintext: String,
    pub key_id: String,
    pub hash: String,
}

pub fn generate() -> NewKey {
    let key_id = random_hex(ID_HEX / 2);
    let plaintext = format!("{PREFIX}{key_id}{}", random_hex(SECRET_HEX / 2));
    NewKey { hash: sha256_hex(plaintext.as_bytes()), plaintext, key_id }
}

/// The key id of a well-formed key, or `None` for anything that is not one.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let well_formed =
        rest.len() == ID_HEX + SECRET_HEX && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    well_formed.then(|| &rest[..ID_HEX])
}

/// Constant-time comparison of the presented key's hash with the stored one.
pub fn matches(presented: &str, stored_hash: &str) -> bool {
    sha256_hex(presented.as_bytes()).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// What the dashboard shows to recognise a key: `aegis_<key id>`.
pub fn display_prefix(key_id: &str) -> String {
    format!("{PREFIX}{key_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match() {
        let k = generate();
        assert!(k.plaintext.starts_with("aegis_"));
        assert_eq!(k.plaintext.len(), PREFIX.len() + ID_HEX + SECRET_HEX);
        assert_eq!(key_id(&k.plaintext), Some(k.key_id.as_str()));
        assert!(matches(&k.plaintext, &k.hash));
        assert!(!k.hash.contains(&k.plaintext[PREFIX.len() + ID_HEX..]), "secret not in the stored hash");
    }

    #[test]
    fn near_misses_do_not_match() {
        let k = generate();
        let mut wrong = k.plaintext.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(!matches(&wrong, &k.hash));
        assert_ne!(generate().plaintext, k.plaintext);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        let k = generate();
        for bad in [
            "",
            "aegis_",
            &k.plaintext[..k.plaintext.len() - 1],
            &format!("{}0", k.plaintext),
            &k.plaintext.to_uppercase(),
            &k.plaintext.replacen("aegis_", "aegix_", 1),
            &format!("{}g", &k.plaintext[..k.plaintext.len() - 1]),
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }
}
