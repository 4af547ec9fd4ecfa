use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of entropy in a session secret: 256 bits, well past the 64 bits OWASP asks for, so
/// guessing a live session is hopeless even with billions of them.
pub const TOKEN_BYTES: usize = 32;
/// Length of the secret's URL-safe base64 text (no padding).
pub const TOKEN_LEN: usize = 43;

/// The session secret a browser holds in its cookie. Never stored, never logged.
///
/// Kept as its 43 ASCII characters inline (no heap): every verification parses one and
/// copies it into the request's verified session.
#[derive(Clone)]
pub struct SessionToken([u8; TOKEN_LEN]);

impl SessionToken {
    /// A fresh secret from the OS CSPRNG (`getrandom`), the only source fit for secrets:
    /// a userspace PRNG seeded once could be predicted after a fork or a state leak.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        // If the kernel cannot give us entropy nothing safe can be done: abort loudly rather
        // than hand out a guessable secret.
        getrandom::fill(&mut bytes).expect("the OS CSPRNG is unavailable");
        Self::from_entropy(bytes)
    }

    /// Builds a token from caller-supplied entropy (tests, or a caller with its own CSPRNG).
    pub fn from_entropy(bytes: [u8; TOKEN_BYTES]) -> Self {
        let mut text = [0u8; TOKEN_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(bytes, &mut text)
            .expect("32 bytes are 43 base64 characters");
        debug_assert_eq!(n, TOKEN_LEN);
        Self(text)
    }

    /// Parses a cookie value. Anything but exactly 43 URL-safe base64 characters is refused
    /// before it reaches a hash or a store, so malformed input costs nothing.
    pub fn parse(value: &str) -> Option<Self> {
        let text: [u8; TOKEN_LEN] = value.as_bytes().try_into().ok()?;
        // One table lookup a character (this runs on every request with a cookie); OR-ing
        // the values leaves the invalid marker's high bit set if any character is not
        // URL-safe base64.
        let all = text
            .iter()
            .fold(0u8, |acc, &b| acc | B64_VALUES[usize::from(b)]);
        // 43 characters carry 258 bits: the last one's 2 low bits are padding and must be
        // zero. Rejecting non-canonical encodings keeps one secret = one cookie value (checked
        // on the character's value; no decoding needed).
        if all & INVALID != 0 || B64_VALUES[usize::from(text[TOKEN_LEN - 1])] & 0b11 != 0 {
            return None;
        }
        Some(Self(text))
    }

    /// The cookie value. Callers must not log it.
    pub fn expose(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a token is URL-safe base64 (ASCII)")
    }

    /// The SHA-256 of the secret, the only form stores ever see. A fast hash is right here
    /// (unlike for passwords): the input has 256 bits of entropy, so there is nothing to
    /// brute-force.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0).into())
    }

    /// A value derived from the secret for binding a CSRF form token to this session. It is a
    /// different hash (domain-separated) from [`Self::hash`], so a database dump, which holds
    /// only `hash()`, does not reveal it.
    pub fn derive(&self, purpose: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"sessiond-derive\0");
        h.update(purpose.as_bytes());
        h.update(b"\0");
        h.update(self.0);
        URL_SAFE_NO_PAD.encode(h.finalize())
    }
}

fn is_url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Marks a byte that is not URL-safe base64 in [`B64_VALUES`].
const INVALID: u8 = 0x80;

/// The 6-bit value of each URL-safe base64 character; [`INVALID`] for every other byte.
const B64_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i];
        t[c as usize] = i as u8;
        i += 1;
    }
    t
};

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// Compares two secrets in constant time.
impl PartialEq for SessionToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SessionToken {}

/// SHA-256 of a session secret: the key stores use.
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// A hash from its 32 bytes (as a store keeps them).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash from a slice of exactly 32 bytes; `None` otherwise.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Self)
    }

    /// Lowercase hex, for stores that key by text (e.g. Redis).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

/// Hashing for in-process maps keyed by token hashes (`[u8; 32]`, SHA-256 outputs): their
/// bytes are already uniformly distributed, so the map's hash is taken from them directly
/// rather than running SipHash over 32 bytes on every lookup (docs/performance.md,
/// "Token-hash maps").
///
/// Hash flooding is not a concern for the maps this is meant for, which hold only sessions
/// that verified: an attacker can compute SHA-256 of any string, but can only get an entry
/// inserted by creating a real session (a throttled, argon2-priced login) for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenHashState;

impl std::hash::BuildHasher for TokenHashState {
    type Hasher = TokenHashHasher;

    fn build_hasher(&self) -> TokenHashHasher {
        TokenHashHasher(0)
    }
}

/// See [`TokenHashState`].
#[derive(Clone, Copy, Debug)]
pub struct TokenHashHasher(u64);

impl std::hash::Hasher for TokenHashHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Folds the first 8 bytes of each write in (a slice's length prefix arrives as a
        // write of its own, before the bytes).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Constant-time, so a lookup that compares hashes in memory leaks no prefix timing. (Stores
/// index by the hash; an attacker would also need a SHA-256 preimage to exploit a timing
/// leak there, but equality of secrets-derived values is always compared this way.)
///
/// Folded a 64-bit word at a time, with no branch on the data, and the one comparison left
/// made through `subtle` (byte by byte, `subtle` puts an optimisation barrier on each of the
/// 32 bytes; this runs on every verification).
impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let a = u64::from_ne_bytes(a.try_into().expect("8 bytes"));
            let b = u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            diff |= a ^ b;
        }
        diff.ct_eq(&0).into()
    }
}
impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to correlate in a debugger, useless to an attacker.
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// The public identifier of a session, shown in APIs and admin tools: 16 bytes as 22 URL-safe
/// characters. Knowing it never lets anyone use the session.
///
/// A new session's id is [`SessionId::for_hash`] of its secret's hash (a one-way function of
/// it); ids of sessions made before that, and ids a caller makes up with
/// [`SessionId::generate`], are random. Stores treat both alike; Redis finds a session with a
/// derived id by the id through the same key it finds it by the hash.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// A new random id (128 bits from the OS CSPRNG).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS CSPRNG is unavailable");
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The id of the session whose secret hashes to `hash`: [`SessionId::bytes_for_hash`] as
    /// 22 URL-safe characters. What [`crate::ExpiryPolicy::start`] gives every new session.
    pub fn for_hash(hash: &TokenHash) -> Self {
        Self(URL_SAFE_NO_PAD.encode(Self::bytes_for_hash(hash)))
    }

    /// The first 16 bytes of a domain-separated SHA-256 of `hash`.
    ///
    /// Security: derived rather than random so that a store can key a session by one value
    /// that both its hash (verification) and its public id (revocation by id) lead to, with
    /// no second key mapping one to the other (Redis: the `sessiond-store-redis` crate docs).
    /// It gives nothing away: it is a one-way function of the secret's SHA-256, which every
    /// store holds anyway and which itself reveals nothing of the 256-bit secret; so an id,
    /// like a store's dump, yields neither the secret nor a cookie. Ids stay unique as random
    /// ones are: two sessions share one only if 128 bits of two hashes collide.
    pub fn bytes_for_hash(hash: &TokenHash) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"sessiond-session-id\0");
        h.update(hash.as_bytes());
        let d = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// The 16 bytes this id encodes, if it is their canonical encoding (every id this crate
    /// makes is); `None` for any other 22 characters [`SessionId::parse`] accepted.
    pub fn to_bytes(&self) -> Option<[u8; 16]> {
        let mut out = [0u8; 18];
        let n = URL_SAFE_NO_PAD.decode_slice(&self.0, &mut out).ok()?;
        if n != 16 {
            return None;
        }
        let bytes: [u8; 16] = out[..16].try_into().ok()?;
        // The base64 engine rejects trailing bits that are not zero, so this holds; checked
        // anyway, since a store keys by these bytes.
        (URL_SAFE_NO_PAD.encode(bytes) == self.0).then_some(bytes)
    }

    /// Accepts ids as the API shows them (22 URL-safe characters); anything else is no id.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 22 && s.bytes().all(is_url_safe)).then(|| Self(s.to_owned()))
    }

    /// The id as text (22 URL-safe characters).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn maps_keyed_by_token_hashes_find_every_key_with_the_prefix_hasher() {
        let tokens: Vec<TokenHash> = (0..2000).map(|_| SessionToken::generate().hash()).collect();
        let mut m: HashMap<[u8; 32], usize, TokenHashState> = HashMap::default();
        for (i, h) in tokens.iter().enumerate() {
            m.insert(*h.as_bytes(), i);
        }
        assert_eq!(m.len(), tokens.len());
        for (i, h) in tokens.iter().enumerate() {
            assert_eq!(m.get(h.as_bytes()), Some(&i));
        }
        // Keys differing only past the first 8 bytes still collide only in the hash, never
        // in the map.
        let (mut a, mut b) = ([7u8; 32], [7u8; 32]);
        a[31] = 1;
        b[31] = 2;
        m.insert(a, 1);
        m.insert(b, 2);
        assert_eq!((m.get(&a), m.get(&b)), (Some(&1), Some(&2)));
        // The hash does depend on the leading bytes.
        use std::hash::BuildHasher as _;
        let s = TokenHashState;
        assert_ne!(s.hash_one([1u8; 32]), s.hash_one([2u8; 32]));
    }

    #[test]
    fn tokens_are_43_url_safe_chars_carrying_256_bits() {
        let t = SessionToken::generate();
        assert_eq!(t.expose().len(), TOKEN_LEN);
        assert!(t.expose().bytes().all(is_url_safe));
        let mut raw = [0u8; 64];
        assert_eq!(
            URL_SAFE_NO_PAD.decode_slice(t.expose(), &mut raw).unwrap(),
            32
        );
    }

    #[test]
    fn tokens_are_unique() {
        let set: HashSet<String> = (0..10_000)
            .map(|_| SessionToken::generate().expose().to_owned())
            .collect();
        assert_eq!(set.len(), 10_000);
    }

    #[test]
    fn tokens_use_the_whole_alphabet() {
        // 2,000 tokens × 43 chars: every one of the 64 symbols shows up unless the encoding
        // or the entropy is broken.
        let seen: HashSet<u8> = (0..2_000)
            .flat_map(|_| SessionToken::generate().expose().as_bytes().to_vec())
            .collect();
        assert_eq!(seen.len(), 64);
    }

    #[test]
    fn parse_round_trips_and_rejects_malformed_values() {
        let t = SessionToken::generate();
        assert_eq!(SessionToken::parse(t.expose()), Some(t.clone()));
        let s = t.expose();
        for bad in [
            "",
            &s[..42],
            &format!("{s}A"),
            &format!("{}+", &s[..42]),
            &format!("{}=", &s[..42]),
            &format!("{}é", &s[..41]),
            // non-canonical: the last char's spare bits set
            &format!("{}B", &URL_SAFE_NO_PAD.encode([0u8; 32])[..42]),
        ] {
            assert!(SessionToken::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    /// The canonical-encoding check on the last character's value accepts exactly what the
    /// base64 decoder accepts, for every character of the alphabet.
    #[test]
    fn parse_agrees_with_the_base64_decoder_on_the_last_character() {
        let s = SessionToken::generate();
        let head = &s.expose()[..42];
        for c in (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain([b'-', b'_'])
        {
            let value = format!("{head}{}", char::from(c));
            let mut out = [0u8; TOKEN_BYTES];
            let decodes = matches!(URL_SAFE_NO_PAD.decode_slice(&value, &mut out), Ok(32));
            assert_eq!(SessionToken::parse(&value).is_some(), decodes, "{value}");
        }
    }

    #[test]
    fn token_hashes_are_equal_only_when_every_byte_is() {
        let a = TokenHash::from_bytes([9; 32]);
        assert_eq!(a, TokenHash::from_bytes([9; 32]));
        for i in 0..32 {
            let mut b = [9u8; 32];
            b[i] ^= 0x80;
            assert_ne!(a, TokenHash::from_bytes(b), "byte {i}");
        }
    }

    #[test]
    fn hash_is_sha256_of_the_cookie_value_and_debug_redacts() {
        let t = SessionToken::from_entropy([7; 32]);
        let expected: [u8; 32] = Sha256::digest(t.expose().as_bytes()).into();
        assert_eq!(t.hash().as_bytes(), &expected);
        assert!(!format!("{t:?}").contains(t.expose()));
        assert_ne!(t.derive("csrf"), t.hash().to_hex());
        assert_ne!(t.derive("csrf"), t.derive("other"));
    }

    #[test]
    fn session_ids_are_independent_of_tokens() {
        let id = SessionId::generate();
        assert_eq!(id.as_str().len(), 22);
        assert!(SessionId::parse(id.as_str()).is_some());
        assert!(SessionId::parse("../../etc/passwd").is_none());
    }

    #[test]
    fn derived_ids_are_22_chars_of_their_16_bytes_and_differ_from_the_hash() {
        let t = SessionToken::generate();
        let h = t.hash();
        let id = SessionId::for_hash(&h);
        assert_eq!(id.as_str().len(), 22);
        assert_eq!(SessionId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(id, SessionId::for_hash(&h), "deterministic");
        assert_eq!(id.to_bytes(), Some(SessionId::bytes_for_hash(&h)));
        // Not a piece of the hash (nor of the CSRF derivation).
        assert_ne!(&SessionId::bytes_for_hash(&h)[..], &h.as_bytes()[..16]);
        assert_ne!(id, SessionId::for_hash(&SessionToken::generate().hash()));
        // Random ids decode too; text that is no canonical encoding of 16 bytes does not.
        assert!(SessionId::generate().to_bytes().is_some());
        let mut last_not_canonical = SessionId::generate().as_str().to_owned();
        last_not_canonical.replace_range(21.., "B");
        assert_eq!(
            SessionId::parse(&last_not_canonical).unwrap().to_bytes(),
            None
        );
    }
}
