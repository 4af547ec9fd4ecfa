//! Why an account use case refused or failed, in the domain's words. An app answers each with
//! `AuthError::status` / `code` / `message` (or `IntoResponse`: the JSON error body); a CLI
//! prints them.

use sessiond_core::{StoreError, Username};

use crate::password::HashError;

/// Why a login or a password change did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Unknown user, disabled user or wrong password: one answer for all three.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Input no password check is made for (too long, control characters, too weak).
    #[error("{0}")]
    Invalid(String),
    /// The session making the change ended meanwhile.
    #[error("authentication required")]
    SessionEnded,
    /// The change lost to a newer one (an admin's reset); the message says what to do.
    #[error("{0}")]
    Conflict(String),
    /// A back-off or ceiling of the login throttle holds.
    #[error("too many failed attempts; try again in {retry_after} s")]
    Throttled {
        /// Whole seconds until the next attempt may be made (at least 1).
        retry_after: u64,
    },
    /// The password hashing pool failed or is full ([`HashError::Overloaded`]).
    #[error(transparent)]
    Hash(#[from] HashError),
    /// A store failed: callers fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A TOTP code or recovery code was wrong, or already used.
    #[error("invalid second factor")]
    InvalidSecondFactor,
    /// The session is `one_factor` and the action needs `two_factor` (the user has a second
    /// factor: managing factors, the admin pages, a `two_factor` access rule).
    #[error("this needs a second factor: verify one first")]
    SecondFactorRequired,
    /// Second factors cannot be checked here: not configured, or the encryption key does not
    /// match the stored secrets (the message says which; the cause is logged).
    #[error("{0}")]
    SecondFactorUnavailable(String),
    /// A store answered something it cannot have meant.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change would leave no enabled admin: nobody could administer the server any more
    /// (short of editing the database).
    #[error("refused: {0} is the last enabled admin (make another user an admin first)")]
    LastAdmin(Username),
}
