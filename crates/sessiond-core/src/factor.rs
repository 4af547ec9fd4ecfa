//! Second factors: the authentication level a session carries and the store contract for a
//! user's TOTP secret, recovery codes and passkeys (docs/reference/second-factor.md).

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{StoreError, Timestamp, UserId};

/// How a session was authenticated. Ordered: `OneFactor < TwoFactor`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthLevel {
    /// A password (or a passkey that did not verify the user).
    #[default]
    OneFactor,
    /// A password and a second factor, or a user-verifying passkey alone.
    TwoFactor,
}

impl AuthLevel {
    /// The name used in JSON answers and access rules: `one_factor` or `two_factor`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthLevel::OneFactor => "one_factor",
            AuthLevel::TwoFactor => "two_factor",
        }
    }

    /// The number stores keep: 1 or 2.
    pub fn as_i64(self) -> i64 {
        match self {
            AuthLevel::OneFactor => 1,
            AuthLevel::TwoFactor => 2,
        }
    }

    /// The inverse of [`AuthLevel::as_i64`]; `None` for any other number.
    pub fn from_i64(n: i64) -> Option<Self> {
        match n {
            1 => Some(AuthLevel::OneFactor),
            2 => Some(AuthLevel::TwoFactor),
            _ => None,
        }
    }
}

/// SHA-256 of a recovery code. Recovery codes are random (at least 50 bits), so a fast hash
/// is enough: there is no dictionary to run through, unlike passwords.
pub type RecoveryHash = [u8; 32];

/// A user's TOTP factor as stored. The store only ever sees ciphertexts: the library
/// encrypts secrets with the deployment's key before they reach a store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TotpState {
    /// The confirmed secret, encrypted; `None` if no TOTP factor is active.
    pub active: Option<Vec<u8>>,
    /// The last time step (Unix time ÷ 30 s) whose code was accepted: a code of this step or
    /// an earlier one is refused (RFC 6238 §5.2, a code is used once).
    pub last_step: i64,
    /// A secret handed out by setup and not yet confirmed, encrypted, with when it was issued.
    /// Until it is confirmed nothing changes for the user.
    pub pending: Option<(Vec<u8>, Timestamp)>,
}

/// A registered passkey (WebAuthn credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPasskey {
    /// The credential id the authenticator chose (unique across all users).
    pub credential_id: Vec<u8>,
    /// Whose passkey it is.
    pub user_id: UserId,
    /// The name the user gave it.
    pub name: String,
    /// The credential as the WebAuthn library serialises it (public key, counter, flags).
    pub data: String,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When it last signed in, if ever.
    pub last_used_at: Option<Timestamp>,
}

/// What second factors a user has, for pages, policies and the CLI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FactorSummary {
    /// A confirmed TOTP factor.
    pub totp: bool,
    /// Unspent recovery codes.
    pub recovery_codes: u32,
    /// Registered passkeys.
    pub passkeys: u32,
}

impl FactorSummary {
    /// Whether the user has enrolled a second factor (recovery codes alone do not count:
    /// they back up a factor).
    pub fn any(&self) -> bool {
        self.totp || self.passkeys > 0
    }
}

/// Where second factors live: beside the users (SQLite, PostgreSQL, memory). Every change is
/// atomic in the store, so two instances racing on one code or one recovery code can never
/// both win.
#[async_trait]
pub trait FactorStore: Send + Sync + Debug + 'static {
    /// What factors `user` has (all zero for an unknown user).
    async fn factor_summary(&self, user: UserId) -> Result<FactorSummary, StoreError>;

    /// The user's TOTP state; `None` if there is neither an active nor a pending secret.
    async fn totp_state(&self, user: UserId) -> Result<Option<TotpState>, StoreError>;

    /// Stores `secret` (a ciphertext) as the pending TOTP secret, replacing an earlier
    /// pending one; an active factor is left as it is. `false` if there is no such user.
    async fn totp_begin(
        &self,
        user: UserId,
        secret: &[u8],
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Atomically, if the pending secret is still `pending`: makes it the active secret with
    /// `last_step = step` (the confirming code cannot be replayed), clears the pending one and
    /// replaces all recovery codes by `recovery`. `false` (and no change) otherwise.
    async fn totp_confirm(
        &self,
        user: UserId,
        pending: &[u8],
        step: i64,
        recovery: &[RecoveryHash],
    ) -> Result<bool, StoreError>;

    /// Records that a code of time step `step` was accepted: `true` only if an active factor
    /// exists and its `last_step < step`, then `last_step = step`. Compare-and-set in the
    /// store: of two requests using one code, exactly one gets `true`.
    async fn totp_use_step(&self, user: UserId, step: i64) -> Result<bool, StoreError>;

    /// Removes the TOTP factor (active and pending); `true` if there was one.
    async fn totp_remove(&self, user: UserId) -> Result<bool, StoreError>;

    /// Spends the recovery code whose hash is `hash`: `true` exactly once, for one caller.
    async fn recovery_use(&self, user: UserId, hash: &RecoveryHash) -> Result<bool, StoreError>;

    /// Replaces all of the user's recovery codes by `hashes`, atomically (the old set dies).
    /// `false` if there is no such user.
    async fn recovery_replace(
        &self,
        user: UserId,
        hashes: &[RecoveryHash],
    ) -> Result<bool, StoreError>;

    /// Registers a passkey, unless the user already has `max_per_user` (`Ok(false)`).
    /// [`StoreError::Conflict`] if the credential id is registered already (to anyone).
    async fn passkey_add(
        &self,
        key: &StoredPasskey,
        max_per_user: usize,
    ) -> Result<bool, StoreError>;

    /// The user's passkeys, oldest first.
    async fn passkeys_of(&self, user: UserId) -> Result<Vec<StoredPasskey>, StoreError>;

    /// The passkey with this credential id, whoever owns it (passwordless login).
    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<StoredPasskey>, StoreError>;

    /// Replaces a passkey's stored data (its signature counter moves) and its last use.
    /// `false` if the user has no such passkey.
    async fn passkey_update(
        &self,
        user: UserId,
        credential_id: &[u8],
        data: &str,
        used_at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Removes one of the user's passkeys; `false` if the user has no such passkey.
    async fn passkey_remove(&self, user: UserId, credential_id: &[u8]) -> Result<bool, StoreError>;

    /// Removes every factor of the user (TOTP, recovery codes, passkeys), atomically; `true`
    /// if there was any. Deleting a user removes its factors as well.
    async fn factors_reset(&self, user: UserId) -> Result<bool, StoreError>;
}
