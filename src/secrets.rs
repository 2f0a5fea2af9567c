//! Encryption of stored credentials: channel secrets and the secret fields of channel
//! configs are kept in the database sealed with a key the database does not hold.
//!
//! A sealed value is text, `enc:v1:<key id>:<base64(nonce || ciphertext)>`:
//! XChaCha20-Poly1305 with a random 24-byte nonce, the key id being the first 8 hex
//! digits of a hash of the key, so that a value names the key it needs and a rotated
//! key can still be read. Every value is sealed for one place (a channel and a field):
//! the place is the cipher's associated data, so a value copied to another row or
//! field does not open. Values without the `enc:` prefix are plaintext, as written
//! before encryption was configured, and are read as they are.
//!
//! A [`Keyring`] seals with its current key and opens with any of its keys. Without a
//! current key it stores plaintext (PostgreSQL deployments that set no key). This
//! module is pure: it reads no configuration and does no I/O.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// The prefix of every sealed value; plaintext that starts with it is sealed too, so a
/// stored value is never ambiguous.
pub const SEALED_PREFIX: &str = "enc:";
/// The prefix of values sealed by this version of the format.
const V1: &str = "enc:v1:";
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;

/// Why a stored value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The value was sealed with a key that is not configured.
    #[error(
        "sealed with key {key_id}, which is neither CONVERGER_SECRET_KEY nor one of \
         CONVERGER_SECRET_KEY_PREVIOUS"
    )]
    UnknownKey { key_id: String },
    /// The value is sealed but no key is configured at all.
    #[error("sealed with key {key_id}, but no CONVERGER_SECRET_KEY is configured")]
    NoKey { key_id: String },
    /// The key matches but the value does not open: changed, or moved from another
    /// channel or field.
    #[error("does not decrypt with key {key_id}: the value was altered or belongs elsewhere")]
    Tampered { key_id: String },
    /// The value starts with `enc:` but is not a sealed value this version reads.
    #[error("is not a sealed value this version of Converger reads")]
    Malformed,
    /// A value starting with `enc:` cannot be stored as plaintext.
    #[error("begins with `enc:` and cannot be stored without CONVERGER_SECRET_KEY")]
    Reserved,
}

/// One encryption key.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; KEY_BYTES],
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

impl SecretKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let digest = Sha256::digest([b"converger-secret-key:".as_slice(), &bytes].concat());
        Self {
            bytes,
            id: hex::encode(&digest[..4]),
        }
    }

    /// A key from its base64 form (standard alphabet, padding optional).
    ///
    /// # Errors
    /// What is wrong with the text, for a configuration message.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| "is not base64".to_owned())?;
        let bytes: [u8; KEY_BYTES] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("must be {KEY_BYTES} bytes once decoded, not {}", b.len())
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The key in base64, as configured.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// The short name sealed values carry to say which key they need.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// Whether a stored value is sealed (rather than legacy plaintext).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// The key id a sealed value names, if it is one of this version.
pub fn key_id_of(stored: &str) -> Option<&str> {
    let rest = stored.strip_prefix(V1)?;
    rest.split_once(':').map(|(id, _)| id)
}

/// The JSON pointer (RFC 6901) of a path of object keys: how a config value is named
/// in the place it is sealed for.
pub fn pointer(keys: &[&str]) -> String {
    keys.iter()
        .map(|key| format!("/{}", key.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The keys of a node: the current one seals, every one opens.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    current: Option<SecretKey>,
    previous: Vec<SecretKey>,
}

impl Keyring {
    /// A keyring sealing with `current` and also opening with `previous`.
    pub fn new(current: Option<SecretKey>, previous: Vec<SecretKey>) -> Self {
        Self { current, previous }
    }

    /// The key new values are sealed with, if any.
    pub fn current(&self) -> Option<&SecretKey> {
        self.current.as_ref()
    }

    /// Whether a stored value is as this keyring would write it: sealed with the
    /// current key, or plaintext when there is none.
    pub fn is_current(&self, stored: &str) -> bool {
        match &self.current {
            Some(key) => key_id_of(stored) == Some(key.id()),
            None => !is_sealed(stored),
        }
    }

    fn key(&self, id: &str) -> Option<&SecretKey> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id() == id)
    }

    /// Seals `plaintext` for `place` (a channel and field) with the current key;
    /// without one, returns the plaintext.
    ///
    /// # Errors
    /// Without a key, a plaintext that would read back as sealed (`Reserved`).
    pub fn seal(&self, plaintext: &str, place: &str) -> Result<String, SecretError> {
        let Some(key) = &self.current else {
            return if is_sealed(plaintext) {
                Err(SecretError::Reserved)
            } else {
                Ok(plaintext.to_owned())
            };
        };
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: place.as_bytes(),
        };
        // Encryption fails only for messages of gigabytes; a config value is not one.
        let ciphertext = key
            .cipher()
            .encrypt(&XNonce::from(nonce), payload)
            .map_err(|_| SecretError::Malformed)?;
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("{V1}{}:{}", key.id(), STANDARD.encode(sealed)))
    }

    /// Opens a stored value sealed for `place`; plaintext is returned as it is.
    ///
    /// # Errors
    /// An unknown key, no key at all, a value altered or sealed for another place, or
    /// a value of an unknown format.
    pub fn open<'a>(&self, stored: &'a str, place: &str) -> Result<Cow<'a, str>, SecretError> {
        if !is_sealed(stored) {
            return Ok(Cow::Borrowed(stored));
        }
        let rest = stored.strip_prefix(V1).ok_or(SecretError::Malformed)?;
        let (key_id, body) = rest.split_once(':').ok_or(SecretError::Malformed)?;
        let key = match (self.key(key_id), &self.current) {
            (Some(key), _) => key,
            (None, None) if self.previous.is_empty() => {
                return Err(SecretError::NoKey {
                    key_id: key_id.to_owned(),
                });
            }
            (None, _) => {
                return Err(SecretError::UnknownKey {
                    key_id: key_id.to_owned(),
                });
            }
        };
        let bytes = STANDARD.decode(body).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SecretError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| SecretError::Malformed)?;
        let tampered = || SecretError::Tampered {
            key_id: key_id.to_owned(),
        };
        let plaintext = key
            .cipher()
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| tampered())?;
        String::from_utf8(plaintext)
            .map(Cow::Owned)
            .map_err(|_| tampered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> Keyring {
        Keyring::new(Some(SecretKey::generate()), vec![])
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes() {
        let key = SecretKey::generate();
        let parsed = SecretKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(parsed.id(), key.id());
        assert_eq!(key.id().len(), 8);
        assert!(
            SecretKey::from_base64("not base64!")
                .unwrap_err()
                .contains("base64")
        );
        let short = STANDARD.encode([0u8; 16]);
        assert!(
            SecretKey::from_base64(&short)
                .unwrap_err()
                .contains("32 bytes once decoded, not 16")
        );
        assert_ne!(SecretKey::generate().id(), key.id());
    }

    #[test]
    fn sealed_values_name_their_key_and_hide_the_plaintext() {
        let ring = ring();
        let sealed = ring.seal("whsec_abc", "c1/secret").unwrap();
        assert!(sealed.starts_with("enc:v1:"), "{sealed}");
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(key_id_of(&sealed), ring.current().map(SecretKey::id));
        assert!(ring.is_current(&sealed));
        // A random nonce each time: equal plaintexts do not look equal.
        assert_ne!(sealed, ring.seal("whsec_abc", "c1/secret").unwrap());
    }

    #[test]
    fn plaintext_reads_as_it_is() {
        let ring = ring();
        assert_eq!(
            ring.open("whsec_legacy", "c1/secret").unwrap(),
            "whsec_legacy"
        );
        assert!(!ring.is_current("whsec_legacy"));
        let none = Keyring::default();
        assert_eq!(none.seal("x", "p").unwrap(), "x");
        assert!(none.is_current("x"));
        assert_eq!(none.seal("enc:x", "p"), Err(SecretError::Reserved));
    }

    #[test]
    fn another_place_does_not_open() {
        let ring = ring();
        let sealed = ring.seal("token", "c1/config/access_token").unwrap();
        assert!(matches!(
            ring.open(&sealed, "c2/config/access_token"),
            Err(SecretError::Tampered { .. })
        ));
        assert!(matches!(
            ring.open(&sealed, "c1/config/app_secret"),
            Err(SecretError::Tampered { .. })
        ));
    }

    #[test]
    fn keys_rotate_and_wrong_keys_are_named() {
        let old = SecretKey::generate();
        let new = SecretKey::generate();
        let sealed = Keyring::new(Some(old.clone()), vec![])
            .seal("s", "p")
            .unwrap();
        let rotated = Keyring::new(Some(new.clone()), vec![old.clone()]);
        assert_eq!(rotated.open(&sealed, "p").unwrap(), "s");
        assert!(!rotated.is_current(&sealed));
        let resealed = rotated.seal("s", "p").unwrap();
        assert_eq!(key_id_of(&resealed), Some(new.id()));
        let wrong = Keyring::new(Some(new), vec![]);
        assert_eq!(
            wrong.open(&sealed, "p"),
            Err(SecretError::UnknownKey {
                key_id: old.id().to_owned()
            })
        );
        let message = wrong.open(&sealed, "p").unwrap_err().to_string();
        assert!(message.contains(old.id()) && message.contains("CONVERGER_SECRET_KEY"));
        assert!(matches!(
            Keyring::default().open(&sealed, "p"),
            Err(SecretError::NoKey { .. })
        ));
    }

    #[test]
    fn malformed_values_are_refused() {
        let ring = ring();
        let id = ring.current().unwrap().id().to_owned();
        for bad in [
            "enc:".to_owned(),
            "enc:v2:abc:def".to_owned(),
            format!("enc:v1:{id}"),
            format!("enc:v1:{id}:***"),
            format!("enc:v1:{id}:{}", STANDARD.encode([0u8; 20])),
        ] {
            assert_eq!(ring.open(&bad, "p"), Err(SecretError::Malformed), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn sealing_roundtrips(plaintext in ".{0,200}", place in "[a-z0-9/_-]{0,40}") {
            let ring = ring();
            let sealed = ring.seal(&plaintext, &place).unwrap();
            prop_assert!(is_sealed(&sealed));
            prop_assert_eq!(ring.open(&sealed, &place).unwrap(), plaintext);
        }

        /// Any change to any byte of a sealed value's nonce, ciphertext or tag is found.
        #[test]
        fn tampering_is_detected(plaintext in ".{0,64}", index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let ring = ring();
            let sealed = ring.seal(&plaintext, "p").unwrap();
            let (head, body) = sealed.rsplit_once(':').unwrap();
            let mut bytes = STANDARD.decode(body).unwrap();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            let altered = format!("{head}:{}", STANDARD.encode(&bytes));
            prop_assert!(
                matches!(ring.open(&altered, "p"), Err(SecretError::Tampered { .. })),
                "byte {} changed went unnoticed", i
            );
        }
    }
}
