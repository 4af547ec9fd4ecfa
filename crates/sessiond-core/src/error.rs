/// A storage backend failed. Carries its cause for the log; callers decide the status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or answered with an error. Callers fail closed.
    #[error("session store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A uniqueness constraint was violated (e.g. a username that already exists).
    #[error("already exists")]
    Conflict,
    /// Stored data could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store was given a configuration it cannot work with (a malformed URL, an
    /// unsupported scheme, an invalid option): the operator's to fix, found when the store is
    /// opened, before anything is read. The message names the setting, never a password.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Wraps a failure of the store's service or connection as [`StoreError::Unavailable`].
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable(Box::new(e))
    }
}

/// User input that breaks a rule of docs/reference/accounts.md, "Usernames and passwords";
/// the message is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("username must be 1 to 64 characters: letters, digits, '.', '_', '-' or '@' (not '.' or '..' alone)")]
    /// A username outside the rule.
    Username,
    #[error("password must be at least 8 bytes long")]
    /// A new password under [`crate::Password::MIN_BYTES`].
    PasswordTooShort,
    #[error("password must be at most 1024 bytes long")]
    /// A password over [`crate::Password::MAX_BYTES`].
    PasswordTooLong,
    #[error("password must not contain NUL bytes")]
    /// A password with a NUL byte.
    PasswordNul,
    #[error(
        "group {0:?}: 1 to 64 bytes, no commas or control characters, no spaces at either end"
    )]
    /// A group name outside the rule (the name as given).
    Group(String),
}
