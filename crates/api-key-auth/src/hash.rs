//! What the gateway keeps of an API key: its SHA-256 (or HMAC-SHA-256) hash.
//!
//! The plaintext key is hashed as soon as it is read and never leaves the request:
//! the key store is asked about the hash, and the cache is indexed by it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

/// Shortest pepper accepted: shorter ones are guessable, which defeats their purpose.
pub const MIN_PEPPER_LEN: usize = 16;

/// The 32-byte hash of an API key. Written as 64 lower-case hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    #[cfg(test)]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits (either case); anything else is `None`.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        if text.len() != 64 {
            return None;
        }
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first and the next eight bytes as numbers: the cache picks a key's two
    /// slots with them.
    pub fn slot_seeds(&self) -> (u64, u64) {
        let word = |from: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&self.0[from..from + 8]);
            u64::from_be_bytes(bytes)
        };
        (word(0), word(8))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell hashes apart in a log line.
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

/// How keys are hashed: plain SHA-256, or HMAC-SHA-256 keyed with a secret pepper so
/// that a leaked store of hashes cannot be checked against guessed keys offline.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyHasher {
    Sha256,
    HmacSha256 { pepper: Vec<u8> },
}

/// Why the pepper named by a `pepper_env` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperError {
    /// The variable's name is empty.
    NoName,
    /// The variable is not set, or empty.
    Unset { name: String },
    /// The pepper is shorter than `MIN_PEPPER_LEN` bytes.
    TooShort { name: String },
}

impl fmt::Display for PepperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoName => f.write_str("names an environment variable; it may not be empty"),
            Self::Unset { name } => write!(f, "environment variable {name} is not set"),
            Self::TooShort { name } => write!(
                f,
                "the pepper in {name} is shorter than {MIN_PEPPER_LEN} bytes: a pepper holds at least {MIN_PEPPER_LEN} bytes of secret"
            ),
        }
    }
}

impl KeyHasher {
    /// HMAC-SHA-256 keyed with the pepper in environment variable `name`, read through
    /// `env`. The one rule for the filter and the key store, which must agree on it.
    pub fn from_pepper_env(
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, PepperError> {
        if name.is_empty() {
            return Err(PepperError::NoName);
        }
        let pepper = env(name).unwrap_or_default();
        if pepper.is_empty() {
            return Err(PepperError::Unset { name: name.into() });
        }
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(PepperError::TooShort { name: name.into() });
        }
        Ok(Self::HmacSha256 {
            pepper: pepper.into_bytes(),
        })
    }

    pub fn hash(&self, key: &str) -> KeyHash {
        match self {
            Self::Sha256 => KeyHash(Sha256::digest(key.as_bytes()).into()),
            Self::HmacSha256 { pepper } => {
                // HMAC accepts keys of any length, so this cannot fail; the fallback
                // only keeps the error path panic-free.
                match Hmac::<Sha256>::new_from_slice(pepper) {
                    Ok(mut mac) => {
                        mac.update(key.as_bytes());
                        KeyHash(mac.finalize().into_bytes().into())
                    }
                    Err(_) => KeyHash(Sha256::digest(key.as_bytes()).into()),
                }
            }
        }
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256 => f.write_str("Sha256"),
            Self::HmacSha256 { pepper } => write!(f, "HmacSha256(<{} byte pepper>)", pepper.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_input() {
        assert_eq!(
            KeyHasher::Sha256.hash("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let hasher = KeyHasher::HmacSha256 {
            pepper: b"Jefe".to_vec(),
        };
        assert_eq!(
            hasher.hash("what do ya want for nothing?").to_hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex_round_trip_and_refusals() {
        let hash = KeyHasher::Sha256.hash("sk_live_x");
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
        assert_eq!(KeyHash::from_hex(&hash.to_hex()[..63]), None);
        assert_eq!(KeyHash::from_hex(&format!("{}0", hash.to_hex())), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(KeyHash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn debug_never_shows_the_pepper() {
        let hasher = KeyHasher::HmacSha256 {
            pepper: b"very-secret-pepper".to_vec(),
        };
        assert_eq!(format!("{hasher:?}"), "HmacSha256(<18 byte pepper>)");
    }
}
