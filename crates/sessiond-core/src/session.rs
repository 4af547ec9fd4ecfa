use crate::{AuthLevel, SessionId, Timestamp, TokenHash, UserId};

/// A session as stored. Holds the hash of the secret, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public identifier (APIs, logs, admin tools).
    pub id: SessionId,
    /// SHA-256 of the cookie secret: the store's lookup key.
    pub token_hash: TokenHash,
    /// Whose session it is.
    pub user_id: UserId,
    /// When it began (the login).
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
    /// The client's address at login, if known (for the user's session list).
    pub ip: Option<String>,
    /// The `User-Agent` at login, if any.
    pub user_agent: Option<String>,
    /// How the session was authenticated. Raising it is a rotation (a new secret), never an
    /// update in place.
    pub level: AuthLevel,
}

/// What the caller knows about a login that is about to create a session.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Who logged in.
    pub user_id: UserId,
    /// "Stay logged in" was chosen (see [`SessionRecord::remember`]).
    pub remember: bool,
    /// The client's address, if known.
    pub ip: Option<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// How the user authenticated.
    pub level: AuthLevel,
}

/// Longest user agent kept with a session; the rest is cut (it is display-only data).
pub(crate) const MAX_USER_AGENT: usize = 512;

/// A typed key-value map attached to a session, like Django's `request.session`.
pub type SessionData = serde_json::Map<String, serde_json::Value>;
