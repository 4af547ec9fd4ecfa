//! # sessiond-core
//!
//! The pure heart of sessiond: what a session *is*, how its secret is made and hashed, when it
//! expires, and the traits a storage backend implements. It does no IO and knows no async
//! runtime: the current time is always a parameter, so every decision is a pure function that a
//! table test can pin down.
//!
//! ## Design
//!
//! * A session is identified by a [`SessionToken`]: 256 bits from the OS CSPRNG, sent to the
//!   browser in a cookie and **never stored**. Stores key sessions by its SHA-256, a
//!   [`TokenHash`]. A dump of the database therefore yields no usable cookie, and because the
//!   hash needs no server-side key, every instance and every restart agrees on it.
//! * Each session also has a public [`SessionId`], derived one-way from the hash
//!   ([`SessionId::for_hash`]) so that it reveals nothing of the secret, which is what APIs,
//!   logs and admin tools show.
//! * [`ExpiryPolicy::evaluate`] decides, from a [`SessionRecord`] and `now`, whether the session
//!   is valid, expired (idle or absolute), and whether its activity timestamp is due for a
//!   write. Activity writes are coalesced: at most one per `touch_interval`, which is at most
//!   half the idle timeout, so a session used at least every half idle-timeout never idles out.
//! * [`SessionStore`], [`ThrottleStore`], [`UserStore`] and [`FactorStore`] are the storage
//!   contracts, one per concern; `sessiond-store-tests` holds the conformance suite every implementation must pass.
//!
//! ## Architecture invariants
//!
//! * No IO here beyond reading the OS CSPRNG for new secrets; time comes in as an argument.
//! * Stores only ever see a [`TokenHash`], never a [`SessionToken`].
//! * Secret-bearing types ([`SessionToken`], [`Password`]) redact themselves in `Debug`.

#![warn(missing_docs)]

mod error;
mod expiry;
mod factor;
mod memo;
mod session;
mod store;
mod throttle;
mod time;
mod token;
mod user;

pub use error::{StoreError, ValidationError};
pub use expiry::{Expired, ExpiryPolicy, Verdict};
pub use factor::{AuthLevel, FactorStore, FactorSummary, RecoveryHash, StoredPasskey, TotpState};
pub use memo::Memo;
pub use session::{NewSession, SessionData, SessionRecord};
pub use store::{
    ChangeFeed, SessionStore, ThrottleChange, ThrottleExpect, ThrottleOp, ThrottleStore, UserStore,
    PURGE_GRACE,
};
pub use throttle::{retry_after, Counter, ThrottleRecord, MAX_BACKOFF};
pub use time::{Rfc3339, Timestamp};
pub use token::{
    SessionId, SessionToken, TokenHash, TokenHashHasher, TokenHashState, TOKEN_BYTES, TOKEN_LEN,
};
pub use user::{Group, NewUser, Password, User, UserCredentials, UserId, Username};
