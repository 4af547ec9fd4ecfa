//! Passkeys (WebAuthn, with `webauthn-rs`): registration, use as a second factor after a
//! password, and passwordless login with a discoverable passkey (docs/reference/
//! second-factor.md, "Passkeys").
//!
//! Every ceremony is two requests: *start* hands the browser a challenge, *finish* checks
//! what the authenticator signed. The ceremony's state (the challenge) must survive between
//! them on whichever instance gets the second request, so it travels with the client sealed
//! under the deployment's [`EncryptionKey`] (ChaCha20-Poly1305: the client can neither read
//! nor alter it), bound to its purpose and, for a signed-in user, to the session. It lasts
//! five minutes and is spent by its first use (a marker in the throttle store, atomic across
//! instances), so a captured answer cannot be replayed.
//!
//! Every passkey ceremony asks for user verification (a PIN or biometric on the
//! authenticator): a passkey alone is two factors, so it raises a session to `two_factor`,
//! and a passwordless login starts at `two_factor`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sessiond_core::{AuthLevel, NewSession, StoredPasskey, UserId};
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::client::ClientInfo;
use super::error::AuthError;
use super::login::LoggedIn;
use super::second_factor::Raised;
use super::{end_sessions, throttle, Auth, AuthUser, SecondFactors, UserBackend};
use crate::metrics::{AuthMethod, AuthResult};
use crate::ActiveSession;

/// Passkeys one user may register.
pub const MAX_PASSKEYS: usize = 20;
/// How long a ceremony may take between its start and its finish.
pub const CEREMONY_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Longest passkey name kept.
const MAX_NAME_CHARS: usize = 64;

/// Why passkeys could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("passkeys: {0}")]
pub struct PasskeyConfigError(String);

/// What the browser needs to run a ceremony, and the sealed state to send back with its
/// answer. `options` goes to `navigator.credentials.create()` / `.get()` (e.g. through
/// `PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey)`).
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyChallenge {
    /// The WebAuthn options (JSON, as `webauthn-rs` writes them: `{"publicKey": {…}}`).
    pub options: serde_json::Value,
    /// The ceremony's sealed state: post it back with the authenticator's answer.
    pub ceremony: String,
}

/// A registered passkey as a user sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyInfo {
    /// The credential id, base64url (to name it for removal).
    pub id: String,
    /// The name the user gave it.
    pub name: String,
    /// When it was registered (RFC 3339).
    pub created_at: String,
    /// When it last signed in (RFC 3339), if ever.
    pub last_used_at: Option<String>,
}

impl From<&StoredPasskey> for PasskeyInfo {
    fn from(k: &StoredPasskey) -> Self {
        Self {
            id: b64(&k.credential_id),
            name: k.name.clone(),
            created_at: k.created_at.to_rfc3339().to_string(),
            last_used_at: k.last_used_at.map(|t| t.to_rfc3339().to_string()),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The WebAuthn relying party: built once, shared.
#[derive(Clone)]
pub(crate) struct RelyingParty(Arc<Webauthn>);

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelyingParty")
    }
}

impl SecondFactors {
    /// Whether passkeys are on ([`SecondFactors::passkeys`]).
    pub fn passkeys_enabled(&self) -> bool {
        self.passkeys.is_some()
    }

    /// Enables passkeys for the relying party `rp_id` (a host name: the public URL's host, or
    /// the cookie domain to share passkeys across its subdomains; `localhost` works for
    /// development), whose pages are served from `origin` (`https://auth.example.com`, or
    /// `http://localhost:PORT`). `rp_name` is what authenticators show.
    pub fn passkeys(
        mut self,
        rp_id: &str,
        origin: &Url,
        rp_name: &str,
    ) -> Result<Self, PasskeyConfigError> {
        let webauthn = WebauthnBuilder::new(rp_id, origin)
            .map_err(|e| PasskeyConfigError(format!("relying party {rp_id} at {origin}: {e}")))?
            .rp_name(rp_name)
            // The cookie domain's subdomains share the relying party.
            .allow_subdomains(true)
            .build()
            .map_err(|e| PasskeyConfigError(e.to_string()))?;
        self.passkeys = Some(RelyingParty(Arc::new(webauthn)));
        Ok(self)
    }
}

/// The user handle passkeys carry for a user id: fixed, opaque to the authenticator.
fn user_handle(id: UserId) -> Uuid {
    Uuid::from_u64_pair(0x5e55_10d0_0000_0001, id.0 as u64)
}

/// What a sealed ceremony holds.
#[derive(Serialize, Deserialize)]
struct Ceremony {
    /// `register`, `second` or `login`.
    purpose: String,
    /// The session that started it (registration and second factor), by public id.
    session: Option<String>,
    /// Ms since the epoch after which it is refused.
    expires: i64,
    /// Spent by the first finish.
    nonce: String,
    /// `webauthn-rs`'s state.
    state: serde_json::Value,
}

const CEREMONY_AAD: &[u8] = b"sessiond passkey ceremony v1";

fn invalid(what: &str) -> AuthError {
    AuthError::Invalid(format!("passkey: {what}"))
}

impl<B: UserBackend> Auth<B> {
    fn relying_party(&self) -> Result<(&SecondFactors, &Webauthn), AuthError> {
        let factors = self.0.factors.as_ref().ok_or_else(|| {
            AuthError::SecondFactorUnavailable("second factors are not configured".into())
        })?;
        let rp = factors.passkeys.as_ref().ok_or_else(|| {
            AuthError::SecondFactorUnavailable("passkeys are not configured".into())
        })?;
        Ok((factors, &rp.0))
    }

    fn seal_ceremony(
        &self,
        factors: &SecondFactors,
        purpose: &str,
        session: Option<&ActiveSession>,
        state: serde_json::Value,
    ) -> String {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS CSPRNG is available");
        let c = Ceremony {
            purpose: purpose.to_owned(),
            session: session.map(|s| s.record().id.as_str().to_owned()),
            expires: self.sessions().now().as_millis() + CEREMONY_LIFETIME.as_millis() as i64,
            nonce: b64(&nonce),
            state,
        };
        let plain = serde_json::to_vec(&c).expect("a ceremony serialises");
        b64(&factors.key.seal_for(CEREMONY_AAD, &plain))
    }

    /// Opens a ceremony for `purpose` (and `session`), and spends it.
    async fn open_ceremony<T: serde::de::DeserializeOwned>(
        &self,
        factors: &SecondFactors,
        sealed: &str,
        purpose: &str,
        session: Option<&ActiveSession>,
    ) -> Result<T, AuthError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed.trim())
            .map_err(|_| invalid("malformed ceremony"))?;
        let plain = factors
            .key
            .open_for(CEREMONY_AAD, &bytes)
            .map_err(|_| invalid("unknown ceremony (start again)"))?;
        let c: Ceremony =
            serde_json::from_slice(&plain).map_err(|_| invalid("unknown ceremony"))?;
        let now = self.sessions().now();
        if c.purpose != purpose || c.session.as_deref() != session.map(|s| s.record().id.as_str()) {
            return Err(invalid("the ceremony is for another step (start again)"));
        }
        if now.as_millis() > c.expires {
            return Err(invalid("the ceremony expired (start again)"));
        }
        // Spent by its first use, atomically across instances: the counter's first hit.
        let spent = self
            .throttle_store()
            .throttle_hit(&format!("wc:{}", c.nonce), now, CEREMONY_LIFETIME)
            .await?;
        if spent.count != 1 {
            return Err(invalid("the ceremony was used already (start again)"));
        }
        serde_json::from_value(c.state).map_err(|_| invalid("unknown ceremony"))
    }

    /// The user's passkeys.
    pub async fn passkeys_of(&self, user: UserId) -> Result<Vec<PasskeyInfo>, AuthError> {
        let Some(factors) = &self.0.factors else {
            return Ok(Vec::new());
        };
        Ok(factors
            .store
            .passkeys_of(user)
            .await?
            .iter()
            .map(PasskeyInfo::from)
            .collect())
    }

    async fn webauthn_keys(
        &self,
        factors: &SecondFactors,
        user: UserId,
    ) -> Result<Vec<(StoredPasskey, Passkey)>, AuthError> {
        let stored = factors.store.passkeys_of(user).await?;
        stored
            .into_iter()
            .map(|s| {
                let key: Passkey = serde_json::from_str(&s.data).map_err(|e| {
                    AuthError::Internal(format!("a stored passkey does not parse: {e}"))
                })?;
                Ok((s, key))
            })
            .collect()
    }

    /// Starts registering a passkey for the signed-in user (from a `two_factor` session
    /// when the user has a factor already). The passkey is created discoverable, so it can
    /// also sign in without a password.
    pub async fn passkey_register_start(
        &self,
        session: &ActiveSession,
        user: &B::User,
    ) -> Result<PasskeyChallenge, AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        self.require_level_for(session).await?;
        let existing = self.webauthn_keys(factors, user.id()).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(AuthError::Conflict(format!(
                "at most {MAX_PASSKEYS} passkeys per user: remove one first"
            )));
        }
        let exclude = existing.iter().map(|(_, k)| k.cred_id().clone()).collect();
        let (ccr, state): (CreationChallengeResponse, PasskeyRegistration) = webauthn
            .start_passkey_registration(
                user_handle(user.id()),
                user.username(),
                user.username(),
                Some(exclude),
            )
            .map_err(|e| AuthError::Internal(format!("passkey registration: {e}")))?;
        let mut options = serde_json::to_value(&ccr).expect("the options serialise");
        // Discoverable (a resident key), so the same passkey serves passwordless login.
        options["publicKey"]["authenticatorSelection"]["residentKey"] = "required".into();
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = true.into();
        let state = serde_json::to_value(&state).expect("the state serialises");
        Ok(PasskeyChallenge {
            options,
            ceremony: self.seal_ceremony(factors, "register", Some(session), state),
        })
    }

    /// Finishes registering a passkey: it is stored under `name`, this session is raised to
    /// `two_factor` (the authenticator verified the user; set the new cookie) and the user's
    /// other sessions end, as after any change of factors.
    pub async fn passkey_register_finish(
        &self,
        session: &ActiveSession,
        user: &B::User,
        ceremony: &str,
        credential: &RegisterPublicKeyCredential,
        name: &str,
    ) -> Result<(Raised, PasskeyInfo), AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        self.require_level_for(session).await?;
        let name = name.trim();
        if name.chars().any(char::is_control) || name.chars().count() > MAX_NAME_CHARS {
            return Err(AuthError::Invalid(format!(
                "a passkey name has at most {MAX_NAME_CHARS} characters and no control characters"
            )));
        }
        let name = if name.is_empty() { "Passkey" } else { name };
        let state: PasskeyRegistration = self
            .open_ceremony(factors, ceremony, "register", Some(session))
            .await?;
        let passkey = webauthn
            .finish_passkey_registration(credential, &state)
            .map_err(|e| invalid(&format!("registration refused ({e})")))?;
        let stored = StoredPasskey {
            credential_id: passkey.cred_id().to_vec(),
            user_id: user.id(),
            name: name.to_owned(),
            data: serde_json::to_string(&passkey).expect("a passkey serialises"),
            created_at: self.sessions().now(),
            last_used_at: None,
        };
        match factors.store.passkey_add(&stored, MAX_PASSKEYS).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(AuthError::Conflict(format!(
                    "at most {MAX_PASSKEYS} passkeys per user: remove one first"
                )))
            }
            Err(sessiond_core::StoreError::Conflict) => {
                return Err(AuthError::Conflict(
                    "this passkey is registered already".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(target: "sessiond::audit", event = "second_factor_enrolled", factor = "passkey", user = %user.username());
        let raised = self.raise_to_two_factor(session, user.id()).await?;
        end_sessions(
            self.sessions().store().as_ref(),
            user.id(),
            Some(&raised.record.id),
        )
        .await?;
        Ok((raised, PasskeyInfo::from(&stored)))
    }

    /// Removes one of the user's passkeys (base64url id), from a `two_factor` session; the
    /// user's other sessions end.
    pub async fn passkey_remove(
        &self,
        session: &ActiveSession,
        user: &B::User,
        id: &str,
    ) -> Result<bool, AuthError> {
        let factors = self.0.factors.as_ref().ok_or_else(|| {
            AuthError::SecondFactorUnavailable("second factors are not configured".into())
        })?;
        self.require_level_for(session).await?;
        let Ok(credential_id) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id) else {
            return Ok(false);
        };
        let removed = factors
            .store
            .passkey_remove(user.id(), &credential_id)
            .await?;
        if removed {
            tracing::info!(target: "sessiond::audit", event = "second_factor_removed", factor = "passkey", user = %user.username());
            end_sessions(
                self.sessions().store().as_ref(),
                user.id(),
                Some(&session.record().id),
            )
            .await?;
        }
        Ok(removed)
    }

    /// Starts using a passkey as the second factor of a `one_factor` session.
    pub async fn passkey_second_factor_start(
        &self,
        session: &ActiveSession,
        user: &B::User,
    ) -> Result<PasskeyChallenge, AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        let keys: Vec<Passkey> = self
            .webauthn_keys(factors, user.id())
            .await?
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        if keys.is_empty() {
            return Err(AuthError::Invalid("no passkey is registered".into()));
        }
        let (rcr, state): (RequestChallengeResponse, PasskeyAuthentication) = webauthn
            .start_passkey_authentication(&keys)
            .map_err(|e| AuthError::Internal(format!("passkey authentication: {e}")))?;
        let state = serde_json::to_value(&state).expect("the state serialises");
        Ok(PasskeyChallenge {
            options: serde_json::to_value(&rcr).expect("the options serialise"),
            ceremony: self.seal_ceremony(factors, "second", Some(session), state),
        })
    }

    /// Finishes the passkey step of a login: raises the session to `two_factor` (set the new
    /// cookie). A refused assertion counts on the login throttle like a wrong code.
    pub async fn passkey_second_factor_finish(
        &self,
        session: &ActiveSession,
        user: &B::User,
        ceremony: &str,
        credential: &PublicKeyCredential,
        client: &ClientInfo,
        device_cookie: Option<&str>,
    ) -> Result<Raised, AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        let state: PasskeyAuthentication = self
            .open_ceremony(factors, ceremony, "second", Some(session))
            .await?;
        let attempt = throttle::Attempt::new(user.username(), client.ip.as_deref(), device_cookie);
        let owners = attempt.owners(Some(session.record().id.as_str()));
        let check = async {
            match webauthn.finish_passkey_authentication(credential, &state) {
                Ok(result) if result.user_verified() => {
                    self.record_passkey_use(factors, user.id(), &result).await
                }
                Ok(_) | Err(_) => {
                    tracing::info!(target: "sessiond::audit", event = "second_factor_failed", factor = "passkey", user = %user.username(), ip = ?client.ip);
                    Err(AuthError::InvalidSecondFactor)
                }
            }
        };
        let r = match throttle::guarded(self.core(), &attempt, owners, check).await {
            Ok(_) => self.raise_to_two_factor(session, user.id()).await,
            Err(e) => Err(e),
        };
        self.core()
            .counters
            .outcome
            .record(AuthMethod::Passkey, AuthResult::of(&r));
        let raised = r?;
        tracing::info!(target: "sessiond::audit", event = "second_factor_used", factor = "passkey", user = %user.username(), session = %raised.record.id);
        Ok(raised)
    }

    /// Stores a passkey's new signature counter and last use.
    async fn record_passkey_use(
        &self,
        factors: &SecondFactors,
        user: UserId,
        result: &webauthn_rs::prelude::AuthenticationResult,
    ) -> Result<(), AuthError> {
        let keys = self.webauthn_keys(factors, user).await?;
        let Some((stored, mut key)) = keys
            .into_iter()
            .find(|(_, k)| k.cred_id() == result.cred_id())
        else {
            // Removed meanwhile: the assertion no longer stands for the user.
            return Err(AuthError::InvalidSecondFactor);
        };
        key.update_credential(result);
        let data = serde_json::to_string(&key).expect("a passkey serialises");
        factors
            .store
            .passkey_update(user, &stored.credential_id, &data, self.sessions().now())
            .await?;
        Ok(())
    }

    /// Starts a passwordless login: the browser offers the passkeys it holds for this site.
    pub async fn passkey_login_start(&self) -> Result<PasskeyChallenge, AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        let (mut rcr, state): (RequestChallengeResponse, DiscoverableAuthentication) = webauthn
            .start_discoverable_authentication()
            .map_err(|e| AuthError::Internal(format!("passkey login: {e}")))?;
        // A modal prompt (a button "sign in with a passkey"), not the autofill UI that
        // `webauthn-rs` asks for by default.
        rcr.mediation = None;
        let state = serde_json::to_value(&state).expect("the state serialises");
        Ok(PasskeyChallenge {
            options: serde_json::to_value(&rcr).expect("the options serialise"),
            ceremony: self.seal_ceremony(factors, "login", None, state),
        })
    }

    /// Finishes a passwordless login: the passkey's owner gets a new session at
    /// `two_factor` (rotating the presented one, as a password login does). A passkey that is
    /// unknown, another user's, or whose user is inactive gets
    /// [`AuthError::InvalidCredentials`]. Not throttled: an assertion is a signature, which
    /// cannot be guessed, and each ceremony is spent by its first use.
    pub async fn passkey_login_finish(
        &self,
        ceremony: &str,
        credential: &PublicKeyCredential,
        remember: bool,
        client: ClientInfo,
        presented: Option<&ActiveSession>,
    ) -> Result<LoggedIn<B::User>, AuthError> {
        let r = self
            .passkey_login(ceremony, credential, remember, client, presented)
            .await;
        self.core()
            .counters
            .outcome
            .record(AuthMethod::Passkey, AuthResult::of(&r));
        r
    }

    async fn passkey_login(
        &self,
        ceremony: &str,
        credential: &PublicKeyCredential,
        remember: bool,
        client: ClientInfo,
        presented: Option<&ActiveSession>,
    ) -> Result<LoggedIn<B::User>, AuthError> {
        let (factors, webauthn) = self.relying_party()?;
        let state: DiscoverableAuthentication =
            self.open_ceremony(factors, ceremony, "login", None).await?;
        let refused = |why: &str| {
            tracing::info!(target: "sessiond::audit", event = "login_failed", method = "passkey", reason = why, ip = ?client.ip);
            AuthError::InvalidCredentials
        };
        let (handle, cred_id) = webauthn
            .identify_discoverable_authentication(credential)
            .map_err(|_| refused("no user handle"))?;
        let Some(stored) = factors.store.passkey_by_credential(cred_id).await? else {
            return Err(refused("unknown passkey"));
        };
        if user_handle(stored.user_id) != handle {
            return Err(refused("user handle mismatch"));
        }
        let Some(user) = self.backend().by_id(stored.user_id).await? else {
            return Err(refused("user gone"));
        };
        let key: Passkey = serde_json::from_str(&stored.data)
            .map_err(|e| AuthError::Internal(format!("a stored passkey does not parse: {e}")))?;
        let result = match webauthn.finish_discoverable_authentication_v2(credential, state, &key) {
            Ok(r) if r.user_verified() => r,
            _ => return Err(refused("assertion refused")),
        };
        // The active check comes after the signature check, as for passwords.
        if !user.is_active() {
            return Err(refused("user inactive"));
        }
        self.record_passkey_use(factors, stored.user_id, &result)
            .await?;
        let new = NewSession {
            user_id: user.id(),
            remember,
            ip: client.ip,
            user_agent: client.user_agent,
            level: AuthLevel::TwoFactor,
        };
        let (token, record) = self.sessions().begin(new, presented).await?;
        self.cap_sessions(&user).await?;
        tracing::info!(target: "sessiond::audit", event = "login", method = "passkey", user = %user.username(), session = %record.id, ip = ?record.ip);
        self.core()
            .counters
            .logins_succeeded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(LoggedIn {
            user,
            token,
            record,
            device: None,
        })
    }
}
