use crate::{SessionId, Timestamp, TokenHash, UserId};

/// A session as stored. Holds the hash of the secret, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public identifier (APIs, logs, admin tools).
    pub id: SessionId,
    /// SHA-256 of the cookie secret: the store's lookup key.
    pub token_hash: TokenHash,
    pub user_id: UserId,
    pub created_at: Timestamp,
    /// Last recorded activity. Written coalesced (see [`crate::ExpiryPolicy::touch_interval`]).
    pub last_seen_at: Timestamp,
    /// Hard limit that no activity extends: login + absolute timeout, or login + the
    /// remember-me lifetime.
    pub absolute_expires_at: Timestamp,
    /// When the session ends if nothing else happens, as of its last write:
    /// `min(absolute_expires_at, last_seen_at + idle)`. Stores use it for TTLs and sweeps.
    pub expires_at: Timestamp,
    /// "Stay logged in": a persistent cookie and the remember-me lifetime instead of idle and
    /// absolute timeouts.
    pub remember: bool,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// What the caller knows about a login that is about to create a session.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub user_id: UserId,
    pub remember: bool,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Longest user agent kept with a session; the rest is cut (it is display-only data).
pub(crate) const MAX_USER_AGENT: usize = 512;

/// A typed key-value map attached to a session, like Django's `request.session`.
pub type SessionData = serde_json::Map<String, serde_json::Value>;
