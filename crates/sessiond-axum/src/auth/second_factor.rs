//! Second factors (docs/reference/second-factor.md): TOTP (RFC 6238) and recovery codes,
//! and raising a session's [`AuthLevel`] from `one_factor` to `two_factor`.
//!
//! The rules, each enforced here and by the store's atomic steps:
//!
//! * Enrolment changes nothing until it is confirmed with a code from the new secret; the
//!   confirmation replaces the recovery codes and ends the user's other sessions.
//! * A TOTP code is accepted for the current 30-second step or one step either side (clock
//!   skew), and once: the step it matched is recorded with a compare-and-set, so a replay, even
//!   racing on another instance, is refused.
//! * Wrong codes go through the login throttle, on the same counters as passwords (a guess is a
//!   guess; the device cookie of a browser that logged in before keeps its own budget).
//! * Raising the level rotates the session: a new secret, the old cookie dead.
//! * A user who has enrolled a factor manages factors only from a `two_factor` session.
//! * Secrets are encrypted at rest ([`EncryptionKey`]); a secret that does not decrypt is an
//!   error, never a skipped check.

use std::sync::Arc;

use sessiond_core::{
    AuthLevel, FactorStore, FactorSummary, NewSession, Password, RecoveryHash, SessionRecord,
    SessionToken, UserId,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};

use super::client::ClientInfo;
use super::error::AuthError;
use super::secret_box::EncryptionKey;
use super::{end_sessions, throttle, Auth, AuthUser, UserBackend};
use crate::metrics::{AuthMethod, AuthResult};
use crate::ActiveSession;

/// Seconds per TOTP step (RFC 6238's default, what every authenticator app uses).
pub const TOTP_STEP_SECS: i64 = 30;
/// Digits per TOTP code.
pub const TOTP_DIGITS: usize = 6;
/// Steps accepted either side of the current one (clock skew).
pub const TOTP_SKEW_STEPS: i64 = 1;
/// Bytes of a new TOTP secret (160 bits, RFC 4226's recommendation for HMAC-SHA-1).
const TOTP_SECRET_BYTES: usize = 20;
/// How long a TOTP setup may wait for its confirmation.
pub const TOTP_SETUP_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (shown in groups of four): 16 of a 32-letter alphabet, 80
/// bits, so even with their SHA-256 in hand nobody can search the codes out.
const RECOVERY_LEN: usize = 16;
/// Crockford's base32: no `I`, `L`, `O` or `U`, and those typed anyway read as `1`, `1`, `0`
/// (codes are read off paper).
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Second factors for an [`Auth`]: where they are stored, the key that encrypts TOTP secrets,
/// and the issuer name authenticator apps show. Given to
/// [`AuthBuilder::second_factors`](super::AuthBuilder::second_factors).
#[derive(Clone, Debug)]
pub struct SecondFactors {
    pub(crate) store: Arc<dyn FactorStore>,
    pub(crate) key: EncryptionKey,
    pub(crate) issuer: String,
    /// The WebAuthn relying party, when passkeys are on ([`SecondFactors::passkeys`]).
    pub(crate) passkeys: Option<super::passkeys::RelyingParty>,
}

impl SecondFactors {
    /// Factors in `store` (the built-in SQLite and PostgreSQL stores and the memory store
    /// implement [`FactorStore`]), TOTP secrets encrypted with `key`. Keep the key: without
    /// it no TOTP code can be checked (recovery codes still work).
    pub fn new(store: Arc<dyn FactorStore>, key: EncryptionKey) -> Self {
        Self {
            store,
            key,
            issuer: "sessiond".to_owned(),
            passkeys: None,
        }
    }

    /// The issuer name authenticator apps show next to the account (default `sessiond`; a
    /// `:` is replaced, as the `otpauth` URI format reserves it).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = issuer.into().replace(':', " ");
        self
    }

    /// The factor store.
    pub fn store(&self) -> &Arc<dyn FactorStore> {
        &self.store
    }
}

/// The RFC 6238 code of `secret` for time step `step` (SHA-1, six digits).
pub fn totp_code(secret: &[u8], step: i64) -> String {
    totp(secret, "").generate((step.max(0) * TOTP_STEP_SECS) as u64)
}

fn totp(secret: &[u8], account: &str) -> TOTP {
    // Unchecked: the label may hold any username (the checked constructor refuses `:`); the
    // URI encodes it.
    TOTP::new_unchecked(
        Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP_SECS as u64,
        secret.to_vec(),
        None,
        account.to_owned(),
    )
}

/// The step within ±[`TOTP_SKEW_STEPS`] of `now_step` whose code is `code`, if any. Compares
/// in constant time and tries every step, so the timing tells nothing about which step (or
/// how many digits) matched.
pub fn totp_matching_step(secret: &[u8], code: &str, now_step: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for step in now_step - TOTP_SKEW_STEPS..=now_step + TOTP_SKEW_STEPS {
        let expected = totp_code(secret, step);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// What TOTP setup hands the user: the secret (base32, as authenticator apps take it by
/// hand) and the `otpauth://` URI (for a QR code). Until it is confirmed it is only pending.
#[derive(Clone, serde::Serialize)]
pub struct TotpSetup {
    /// The secret in base32 without padding.
    pub secret: String,
    /// `otpauth://totp/ISSUER:USER?secret=…&issuer=ISSUER`.
    pub uri: String,
}

impl std::fmt::Debug for TotpSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSetup(<redacted>)")
    }
}

/// A fresh set of recovery codes, shown to the user once (only their hashes are stored).
#[derive(Clone, serde::Serialize)]
pub struct RecoveryCodes(pub Vec<String>);

impl std::fmt::Debug for RecoveryCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryCodes({} codes, redacted)", self.0.len())
    }
}

/// A session raised (or replaced) by a second-factor step: the new secret and record. Set
/// its cookie (see [`crate::SessionManager::session_cookie`]); the old one is dead.
#[derive(Debug)]
pub struct Raised {
    /// The new session's secret.
    pub token: SessionToken,
    /// The new session (level [`AuthLevel::TwoFactor`]).
    pub record: SessionRecord,
}

/// Which second factor a step presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorKind {
    /// A six-digit TOTP code.
    Totp,
    /// A recovery code (spent by its use).
    Recovery,
}

impl FactorKind {
    fn as_str(self) -> &'static str {
        match self {
            FactorKind::Totp => "totp",
            FactorKind::Recovery => "recovery_code",
        }
    }
}

/// The hash a recovery code is stored under: SHA-256 over the user id and the code as typed,
/// case-folded, without spaces and dashes, with Crockford's look-alikes read as digits.
pub(crate) fn recovery_hash(user: UserId, code: &str) -> RecoveryHash {
    let normal: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    let mut h = Sha256::new();
    h.update(b"sessiond recovery code v1\0");
    h.update(user.0.to_be_bytes());
    h.update(normal.as_bytes());
    h.finalize().into()
}

fn new_recovery_codes(user: UserId) -> (RecoveryCodes, Vec<RecoveryHash>) {
    let mut codes = Vec::with_capacity(RECOVERY_CODES);
    let mut hashes = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let mut raw = [0u8; RECOVERY_LEN];
        getrandom::fill(&mut raw).expect("the OS CSPRNG is available");
        // 256 is a multiple of 32: `% 32` is unbiased.
        let letters: Vec<u8> = raw
            .iter()
            .map(|b| RECOVERY_ALPHABET[usize::from(b % 32)])
            .collect();
        let code = letters
            .chunks(4)
            .map(|c| std::str::from_utf8(c).expect("ASCII"))
            .collect::<Vec<_>>()
            .join("-");
        hashes.push(recovery_hash(user, &code));
        codes.push(code);
    }
    (RecoveryCodes(codes), hashes)
}

impl<B: UserBackend> Auth<B> {
    /// The second factors, if configured.
    pub fn second_factors(&self) -> Option<&SecondFactors> {
        self.0.factors.as_ref()
    }

    fn factors(&self) -> Result<&SecondFactors, AuthError> {
        self.0.factors.as_ref().ok_or_else(|| {
            AuthError::SecondFactorUnavailable(
                "second factors are not configured (no encryption key)".into(),
            )
        })
    }

    /// What second factors `user` has (none when second factors are not configured).
    pub async fn factors_of(&self, user: UserId) -> Result<FactorSummary, AuthError> {
        match &self.0.factors {
            Some(f) => Ok(f.store.factor_summary(user).await?),
            None => Ok(FactorSummary::default()),
        }
    }

    /// Refuses a one-factor session of a user who has a second factor
    /// ([`AuthError::SecondFactorRequired`]): managing factors (and, in the server, the admin
    /// pages) needs the strongest proof the user can give.
    pub async fn require_level_for(&self, session: &ActiveSession) -> Result<(), AuthError> {
        if session.record().level < AuthLevel::TwoFactor
            && self.factors_of(session.record().user_id).await?.any()
        {
            return Err(AuthError::SecondFactorRequired);
        }
        Ok(())
    }

    /// Starts TOTP enrolment after checking the user's password again (under the login
    /// throttle): a fresh secret, stored encrypted as *pending*. Nothing changes for the user
    /// until [`Auth::totp_confirm`].
    pub async fn totp_setup(
        &self,
        session: &ActiveSession,
        user: &B::User,
        password: String,
        client: &ClientInfo,
    ) -> Result<TotpSetup, AuthError> {
        let factors = self.factors()?;
        self.require_level_for(session).await?;
        self.reauthenticate(session, user, password, client).await?;
        let mut secret = vec![0u8; TOTP_SECRET_BYTES];
        getrandom::fill(&mut secret).expect("the OS CSPRNG is available");
        let sealed = factors.key.seal(user.id(), &secret);
        if !factors
            .store
            .totp_begin(user.id(), &sealed, self.sessions().now())
            .await?
        {
            return Err(AuthError::SessionEnded);
        }
        let mut t = totp(&secret, user.username());
        t.issuer = Some(factors.issuer.clone());
        tracing::info!(target: "sessiond::audit", event = "totp_setup_started", user = %user.username());
        Ok(TotpSetup {
            secret: t.get_secret_base32(),
            uri: t.get_url(),
        })
    }

    /// Checks the user's password (a re-authentication before a sensitive change), under
    /// the login throttle like a login.
    async fn reauthenticate(
        &self,
        session: &ActiveSession,
        user: &B::User,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), AuthError> {
        let attempt = throttle::Attempt::new(user.username(), client.ip.as_deref(), None);
        let owners = attempt.owners(Some(session.record().id.as_str()));
        let check = async {
            let password =
                Password::presented(password).map_err(|e| AuthError::Invalid(e.to_string()))?;
            let (_, phc) = self
                .backend()
                .by_username(user.username())
                .await?
                .filter(|(u, _)| u.id() == user.id())
                .ok_or(AuthError::SessionEnded)?;
            if self.hasher().verify(password, phc).await?.matches {
                Ok(())
            } else {
                tracing::info!(target: "sessiond::audit", event = "reauthentication_failed", user = %user.username());
                Err(AuthError::InvalidCredentials)
            }
        };
        throttle::guarded(self.core(), &attempt, owners, check).await
    }

    /// Confirms TOTP enrolment with a code from the pending secret: it becomes the user's
    /// factor, a fresh set of recovery codes replaces the old one, this session is raised to
    /// `two_factor` (rotated: set the new cookie) and the user's other sessions end.
    pub async fn totp_confirm(
        &self,
        session: &ActiveSession,
        user: &B::User,
        code: &str,
    ) -> Result<(Raised, RecoveryCodes), AuthError> {
        let factors = self.factors()?;
        self.require_level_for(session).await?;
        let id = user.id();
        let now = self.sessions().now();
        let Some((pending, issued)) = factors.store.totp_state(id).await?.and_then(|s| s.pending)
        else {
            return Err(AuthError::Invalid("no TOTP setup is pending".into()));
        };
        if now.as_millis() - issued.as_millis() > TOTP_SETUP_LIFETIME.as_millis() as i64 {
            return Err(AuthError::Invalid(
                "the TOTP setup expired; start it again".into(),
            ));
        }
        let secret = factors.key.open(id, &pending).map_err(|e| {
            tracing::error!(user = %user.username(), "{e}");
            AuthError::SecondFactorUnavailable(e.to_string())
        })?;
        let Some(step) = totp_matching_step(&secret, code, now_step(now)) else {
            return Err(AuthError::InvalidSecondFactor);
        };
        let (codes, hashes) = new_recovery_codes(id);
        if !factors
            .store
            .totp_confirm(id, &pending, step, &hashes)
            .await?
        {
            return Err(AuthError::Conflict(
                "the TOTP setup changed meanwhile; start it again".into(),
            ));
        }
        tracing::info!(target: "sessiond::audit", event = "second_factor_enrolled", factor = "totp", user = %user.username());
        let raised = self.raise_to_two_factor(session, id).await?;
        end_sessions(
            self.sessions().store().as_ref(),
            id,
            Some(&raised.record.id),
        )
        .await?;
        Ok((raised, codes))
    }

    /// The second step of a login: checks a TOTP code or spends a recovery code for the
    /// session's user and raises the session to `two_factor` (a rotation: set the new
    /// cookie). Wrong codes are throttled like wrong passwords and answer
    /// [`AuthError::InvalidSecondFactor`]; a code already used (here or on another instance)
    /// is wrong.
    pub async fn verify_second_factor(
        &self,
        session: &ActiveSession,
        user: &B::User,
        kind: FactorKind,
        code: &str,
        client: &ClientInfo,
        device_cookie: Option<&str>,
    ) -> Result<Raised, AuthError> {
        let factors = self.factors()?;
        let id = user.id();
        let attempt = throttle::Attempt::new(user.username(), client.ip.as_deref(), device_cookie);
        let owners = attempt.owners(Some(session.record().id.as_str()));
        let check = async {
            let ok = match kind {
                FactorKind::Totp => {
                    let Some(active) = factors.store.totp_state(id).await?.and_then(|s| s.active)
                    else {
                        return Err(AuthError::Invalid("no TOTP factor is enrolled".into()));
                    };
                    let secret = factors.key.open(id, &active).map_err(|e| {
                        tracing::error!(user = %user.username(), "{e}; the user can sign in with a recovery code, or an admin can reset their factors");
                        AuthError::SecondFactorUnavailable(e.to_string())
                    })?;
                    let now = now_step(self.sessions().now());
                    match totp_matching_step(&secret, code, now) {
                        // Recorded atomically: of two uses of one code, one wins.
                        Some(step) => factors.store.totp_use_step(id, step).await?,
                        None => false,
                    }
                }
                FactorKind::Recovery => {
                    factors
                        .store
                        .recovery_use(id, &recovery_hash(id, code))
                        .await?
                }
            };
            if ok {
                Ok(())
            } else {
                tracing::info!(target: "sessiond::audit", event = "second_factor_failed", factor = kind.as_str(), user = %user.username(), ip = ?client.ip);
                Err(AuthError::InvalidSecondFactor)
            }
        };
        let r = match throttle::guarded(self.core(), &attempt, owners, check).await {
            Ok(_) => self.raise_to_two_factor(session, id).await,
            Err(e) => Err(e),
        };
        let method = match kind {
            FactorKind::Totp => AuthMethod::Totp,
            FactorKind::Recovery => AuthMethod::Recovery,
        };
        self.core()
            .counters
            .outcome
            .record(method, AuthResult::of(&r));
        let raised = r?;
        tracing::info!(target: "sessiond::audit", event = "second_factor_used", factor = kind.as_str(), user = %user.username(), session = %raised.record.id);
        Ok(raised)
    }

    /// Replaces the session by one at `two_factor` (same user, client, "remember me" and
    /// session data).
    pub(crate) async fn raise_to_two_factor(
        &self,
        session: &ActiveSession,
        user: UserId,
    ) -> Result<Raised, AuthError> {
        let rec = session.record();
        let fresh = NewSession {
            user_id: user,
            remember: rec.remember,
            ip: rec.ip.clone(),
            user_agent: rec.user_agent.clone(),
            level: AuthLevel::TwoFactor,
        };
        let store = self.sessions().store();
        // The session's data (an app's `SessionMap`) goes along: the user is the same, only
        // the proof grew. Read before the rotation ends the old record.
        let data = store.load_data(&rec.token_hash).await?;
        let (token, record) = self
            .sessions()
            .rotate(fresh, session)
            .await?
            .ok_or(AuthError::SessionEnded)?;
        if let Some(data) = data.filter(|d| !d.is_empty()) {
            store.save_data(&record.token_hash, &data).await?;
        }
        Ok(Raised { token, record })
    }

    /// A fresh set of recovery codes (the old set dies); needs a `two_factor` session when
    /// the user has a factor.
    pub async fn regenerate_recovery_codes(
        &self,
        session: &ActiveSession,
        user: &B::User,
    ) -> Result<RecoveryCodes, AuthError> {
        let factors = self.factors()?;
        self.require_level_for(session).await?;
        let (codes, hashes) = new_recovery_codes(user.id());
        if !factors.store.recovery_replace(user.id(), &hashes).await? {
            return Err(AuthError::SessionEnded);
        }
        tracing::info!(target: "sessiond::audit", event = "recovery_codes_regenerated", user = %user.username());
        Ok(codes)
    }

    /// Removes the user's TOTP factor (from a `two_factor` session); the user's other
    /// sessions end.
    pub async fn totp_remove(
        &self,
        session: &ActiveSession,
        user: &B::User,
    ) -> Result<bool, AuthError> {
        let factors = self.factors()?;
        self.require_level_for(session).await?;
        let removed = factors.store.totp_remove(user.id()).await?;
        if removed {
            tracing::info!(target: "sessiond::audit", event = "second_factor_removed", factor = "totp", user = %user.username());
            end_sessions(
                self.sessions().store().as_ref(),
                user.id(),
                Some(&session.record().id),
            )
            .await?;
        }
        Ok(removed)
    }

    /// Removes every second factor of `user` and ends all their sessions (an admin's reset
    /// for a user who lost their device and their recovery codes). Sessions end first: if
    /// that fails, the factors stay and the error is reported.
    pub async fn reset_second_factors(&self, user: UserId) -> Result<bool, AuthError> {
        let factors = self.factors()?;
        let store = self.sessions().store();
        end_sessions(store.as_ref(), user, None).await?;
        let removed = factors.store.factors_reset(user).await?;
        end_sessions(store.as_ref(), user, None).await?;
        tracing::info!(target: "sessiond::audit", event = "second_factors_reset", user_id = user.0, removed);
        Ok(removed)
    }
}

fn now_step(now: sessiond_core::Timestamp) -> i64 {
    now.as_millis().div_euclid(1000 * TOTP_STEP_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows: the 8-digit values' last six digits are the six-digit
    /// codes (the same HOTP value, truncated mod 10^6).
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59i64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            let t = TOTP::new_unchecked(
                Algorithm::SHA1,
                8,
                0,
                30,
                secret.to_vec(),
                None,
                String::new(),
            );
            assert_eq!(t.generate(time as u64), eight, "8 digits at {time}");
            assert_eq!(
                totp_code(secret, time / 30),
                eight[2..],
                "6 digits at {time}"
            );
        }
    }

    #[test]
    fn codes_match_within_one_step_of_skew_and_only_well_formed() {
        let secret = b"12345678901234567890";
        let now = 1111111111 / 30;
        for delta in -1..=1 {
            let code = totp_code(secret, now + delta);
            assert_eq!(totp_matching_step(secret, &code, now), Some(now + delta));
        }
        for delta in [-3, -2, 2, 3] {
            let code = totp_code(secret, now + delta);
            assert_eq!(totp_matching_step(secret, &code, now), None, "{delta}");
        }
        let code = totp_code(secret, now);
        for bad in ["", "12345", "1234567", "abcdef", &format!("{code}0")] {
            assert_eq!(totp_matching_step(secret, bad, now), None, "{bad:?}");
        }
        assert_eq!(
            totp_matching_step(secret, &format!(" {code} "), now),
            Some(now)
        );
    }

    #[test]
    fn recovery_codes_are_80_bits_and_typed_loosely() {
        let (codes, hashes) = new_recovery_codes(UserId(3));
        assert_eq!(codes.0.len(), RECOVERY_CODES);
        for (code, hash) in codes.0.iter().zip(&hashes) {
            assert_eq!(code.len(), 19, "{code}");
            assert_eq!(recovery_hash(UserId(3), code), *hash);
            let sloppy = code.to_lowercase().replace('-', " ");
            assert_eq!(recovery_hash(UserId(3), &sloppy), *hash);
            let misread = code.replace('0', "O").replace('1', "l");
            assert_eq!(recovery_hash(UserId(3), &misread), *hash);
            assert_ne!(recovery_hash(UserId(4), code), *hash, "bound to the user");
        }
        let unique: std::collections::HashSet<_> = codes.0.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);
    }
}
