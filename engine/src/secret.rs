//! The secret bytes of a finding, kept out of logs: `Debug` shows only the
//! length and a short fingerprint.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A matched secret. Never printed by `Debug`; use [`Secret::redacted`] or,
/// when the caller may see secrets, [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Self {
        Secret(bytes.into())
    }

    /// The secret itself; only for output the caller asked for, or encryption.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first 4 characters, then `…` (DESIGN §4).
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Keyed hash (HMAC-SHA256) of rule and secret, hex: stable across scans,
    /// reveals nothing without the key.
    pub fn fingerprint(&self, key: &[u8], rule_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(rule_id.as_bytes());
        mac.update(&[0]);
        mac.update(&self.0);
        hex::encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = self.fingerprint(b"debug", "");
        write!(f, "Secret(len={}, fp={})", self.0.len(), &digest[..12])
    }
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &byte in data {
        counts[byte as usize] += 1;
    }
    let length = data.len() as f64;
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / length;
            -p * p.log2()
        })
        .sum()
}

/// The first 4 characters of a secret, then `…`: how secrets are shown
/// wherever they are not needed in full (DESIGN §4).
pub fn redact(secret: &[u8]) -> String {
    let text = String::from_utf8_lossy(secret);
    let prefix: String = text.chars().take(REDACTED_CHARS).collect();
    format!("{prefix}…")
}

/// Whether `text` is a secret as [`redact`] shows it (at most 4
/// characters, then `…`), not the secret itself.
pub fn is_redacted(text: &str) -> bool {
    text.ends_with('…') && text.chars().count() <= REDACTED_CHARS + 1
}

/// How many characters of a secret a redacted one keeps.
const REDACTED_CHARS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let secret = Secret::new(b"ghp_supersecretvalue");
        let shown = format!("{secret:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("len=20"));
    }

    #[test]
    fn a_redacted_secret_is_recognised_as_one() {
        let shown = redact(b"AKIAQ7LXZT2M4KD9PW3E");
        assert_eq!(shown, "AKIA…");
        assert!(is_redacted(&shown));
        assert!(!is_redacted("AKIAQ7LXZT2M4KD9PW3E"));
        assert!(!is_redacted("a longer value…"));
    }

    #[test]
    fn redaction_keeps_four_characters() {
        assert_eq!(Secret::new(b"AKIAXYZ").redacted(), "AKIA…");
        assert_eq!(Secret::new("ßéçr3t".as_bytes()).redacted(), "ßéçr…");
    }

    #[test]
    fn fingerprint_depends_on_key_rule_and_secret() {
        let secret = Secret::new(b"abc");
        let base = secret.fingerprint(b"k1", "R");
        assert_eq!(base, secret.fingerprint(b"k1", "R"));
        assert_ne!(base, secret.fingerprint(b"k2", "R"));
        assert_ne!(base, secret.fingerprint(b"k1", "S"));
        assert_ne!(base, Secret::new(b"abd").fingerprint(b"k1", "R"));
    }

    #[test]
    fn entropy_of_known_strings() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
        assert!(shannon_entropy(b"q8Zr2vLp9xTkW3mN") > 3.5);
    }
}
