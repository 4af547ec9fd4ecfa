//! Encryption of second-factor secrets at rest (docs/reference/second-factor.md, "The
//! encryption key").
//!
//! A TOTP secret must be readable by the server (it computes the expected code), so unlike a
//! password it cannot be hashed: it is encrypted with ChaCha20-Poly1305 under a 256-bit key
//! that lives outside the database (configuration or a key file). A dump of the database alone
//! yields no TOTP secret. The ciphertext is bound to its user (associated data): a row copied
//! to another user does not decrypt.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sessiond_core::UserId;

/// Format tag of a ciphertext: `[1] ++ nonce (12 bytes) ++ ciphertext with tag`.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// The key that encrypts second-factor secrets at rest: 32 bytes. `Debug` never shows it.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not 32 bytes as base64 or hex.
    #[error("an encryption key is 32 bytes written as base64 (43 or 44 characters) or hex (64 characters)")]
    Malformed,
    /// The key file could not be read or created.
    #[error("encryption key file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A stored secret did not decrypt: the key is not the one it was encrypted with (or the row
/// was tampered with). Never a reason to skip the factor: the caller fails closed.
#[derive(Debug, thiserror::Error)]
#[error("a stored second-factor secret does not decrypt with the configured encryption key (was the key changed or lost?)")]
pub struct WrongKey;

impl EncryptionKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS CSPRNG is available");
        Self(k)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a key written as base64 (standard or URL-safe, padded or not) or as 64 hex
    /// digits; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| KeyError::Malformed)?
        } else {
            let unpadded = t.trim_end_matches('=');
            let engine = if unpadded.contains(['-', '_']) {
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
            } else {
                &base64::engine::general_purpose::STANDARD_NO_PAD
            };
            engine.decode(unpadded).map_err(|_| KeyError::Malformed)?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(bytes))
    }

    /// The key as text (URL-safe base64 without padding), for a key file.
    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Reads the key file at `path`, or creates it with a fresh key when there is none:
    /// created `0600` (only the server's user may read it), written and synced before it is
    /// used, so a crash never leaves secrets encrypted under a key that was not kept. Two
    /// processes creating it at once agree: the file is created exclusively, and the loser
    /// reads the winner's key.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let err = |source| KeyError::File {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse(&text),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            Err(_) => {}
        }
        let key = Self::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // Written to a temporary name and linked into place only when complete and synced:
        // a reader never sees a half-written key.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = options.open(&tmp).map_err(err)?;
        let written = writeln!(f, "{}", key.to_text()).and_then(|()| f.sync_all());
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // The directory entry itself must survive a power loss too.
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(err)?;
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::parse(&std::fs::read_to_string(path).map_err(err)?)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Encrypts `plain` for `user` under a random nonce (96 bits from the OS CSPRNG: secrets
    /// are encrypted a handful of times per user, far from the birthday bound).
    pub(crate) fn seal(&self, user: UserId, plain: &[u8]) -> Vec<u8> {
        self.seal_for(&associated_data(user), plain)
    }

    /// Decrypts what [`EncryptionKey::seal`] made for `user`.
    pub(crate) fn open(&self, user: UserId, sealed: &[u8]) -> Result<Vec<u8>, WrongKey> {
        self.open_for(&associated_data(user), sealed)
    }

    /// Encrypts `plain` bound to the associated data `aad` (what it is for).
    pub(crate) fn seal_for(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(&nonce, Payload { msg: plain, aad })
            .expect("ChaCha20-Poly1305 encrypts any message below 256 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`EncryptionKey::seal_for`] made with the same `aad`.
    pub(crate) fn open_for(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, WrongKey> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != VERSION {
            return Err(WrongKey);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| WrongKey)
    }
}

fn associated_data(user: UserId) -> Vec<u8> {
    let mut aad = b"sessiond second factor v1 user ".to_vec();
    aad.extend_from_slice(&user.0.to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_user() {
        let key = EncryptionKey::generate();
        let sealed = key.seal(UserId(7), b"12345678901234567890");
        assert_eq!(
            key.open(UserId(7), &sealed).unwrap(),
            b"12345678901234567890"
        );
        assert!(key.open(UserId(8), &sealed).is_err(), "bound to its user");
        assert!(EncryptionKey::generate().open(UserId(7), &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open(UserId(7), &tampered).is_err());
        assert!(key.open(UserId(7), &[]).is_err());
        assert_ne!(
            key.seal(UserId(7), b"x"),
            key.seal(UserId(7), b"x"),
            "fresh nonces"
        );
    }

    #[test]
    fn keys_read_as_base64_or_hex() {
        let key = EncryptionKey::generate();
        let again = EncryptionKey::parse(&format!("  {}\n", key.to_text())).unwrap();
        assert_eq!(again.0, key.0);
        let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(EncryptionKey::parse(&hex).unwrap().0, key.0);
        let std = base64::engine::general_purpose::STANDARD.encode(key.0);
        assert_eq!(EncryptionKey::parse(&std).unwrap().0, key.0);
        for bad in ["", "short", &"a".repeat(63), &key.to_text()[1..]] {
            assert!(EncryptionKey::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{key:?}"), "EncryptionKey(<redacted>)");
    }

    #[test]
    fn the_key_file_is_created_private_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiond.key");
        let made = EncryptionKey::load_or_create(&path).unwrap();
        let read = EncryptionKey::load_or_create(&path).unwrap();
        assert_eq!(made.0, read.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            EncryptionKey::load_or_create(&path),
            Err(KeyError::Malformed)
        ));
    }
}
