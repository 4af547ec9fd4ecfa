//! Logging in, and every change that must end sessions, free of HTTP.
//!
//! [`Auth`] ties together the users (your [`UserBackend`], or the built-in user store through
//! [`BuiltinUsers`]), the [`SessionManager`], the login throttle's counters
//! ([`ThrottleStore`]) and the password [`Hasher`] (argon2id on a bounded pool). Its methods
//! are the use cases a login system needs: [`Auth::log_in`], [`Auth::log_out`],
//! [`Auth::log_out_others`], [`Auth::change_password`], [`Auth::sessions_of`],
//! [`Auth::revoke`], and [`Auth::user_of`] (the user a verified session belongs to). None of
//! them reads a request or writes a response: the axum glue (`AuthSession`, `CurrentUser`)
//! and the sessiond server call them, and a CLI or a test can too.
//!
//! The order of the steps inside each is what makes them safe (the throttle reserves an
//! attempt before any password work; a login checks after creating its session that the
//! password it verified is still the user's; a password change ends the other sessions
//! before it writes the new hash): see each function's documentation.

mod backend;
mod changes;
mod client;
mod error;
mod login;
mod passkeys;
mod second_factor;
mod secret_box;
pub mod throttle;

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sessiond_core::{
    ExpiryPolicy, Memo, SessionId, SessionRecord, SessionStore, StoreError, ThrottleStore,
    Timestamp, UserId,
};

pub use backend::{AuthUser, BuiltinUsers, UserBackend};
pub use changes::{delete, disable, enable, end_sessions, set_password, PasswordChanged};
pub use client::ClientInfo;
pub use error::{AuthError, ChangeError};
pub use login::{LoggedIn, LoginAttempt};
pub use passkeys::{
    PasskeyChallenge, PasskeyConfigError, PasskeyInfo, CEREMONY_LIFETIME, MAX_PASSKEYS,
};
pub use second_factor::{
    totp_code, totp_matching_step, FactorKind, Raised, RecoveryCodes, SecondFactors, TotpSetup,
    RECOVERY_CODES, TOTP_DIGITS, TOTP_SETUP_LIFETIME, TOTP_SKEW_STEPS, TOTP_STEP_SECS,
};
pub use secret_box::{EncryptionKey, KeyError, WrongKey};
/// The WebAuthn types a passkey ceremony's answers arrive as (deserialise the browser's JSON
/// into them), and `Url` for [`SecondFactors::passkeys`].
pub mod webauthn {
    pub use webauthn_rs::prelude::{
        CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
        RequestChallengeResponse, Url,
    };
}
pub use throttle::MAX_NEW_DEVICES;

use axum::http::request::Parts;

use crate::csrf::{CsrfLayer, Origins};
use crate::password::{HashError, Hasher};
use crate::{ActiveSession, CookieConfig, LoginRedirect, SessionManager};

/// Users of verified sessions kept in memory at most (see [`Auth::user_of`]).
const USER_CACHE_CAPACITY: usize = 50_000;

/// Login and account use cases over a user backend `B` (cheap to clone: one `Arc`).
///
/// Built with [`Auth::builder`]. See the [module docs](self).
pub struct Auth<B: UserBackend = BuiltinUsers>(Arc<Inner<B>>);

impl<B: UserBackend> Clone for Auth<B> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<B: UserBackend> std::fmt::Debug for Auth<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("sessions", &self.0.core.sessions)
            .field("login_path", &self.0.core.login.login_path())
            .finish_non_exhaustive()
    }
}

struct Inner<B: UserBackend> {
    backend: B,
    core: Core,
    /// Users of verified sessions by id, each tagged with the session cache's epoch it was
    /// read under: served only while that epoch is current, so a change that moves the
    /// epoch (any session ended, any user changed through sessiond) is seen at once.
    users: Memo<UserId, (u64, Arc<B::User>)>,
    /// Second factors, when configured ([`AuthBuilder::second_factors`]).
    factors: Option<SecondFactors>,
}

/// The part of [`Auth`] that does not depend on the user backend (what the throttle needs).
pub(crate) struct Core {
    pub(crate) sessions: SessionManager,
    pub(crate) throttle: Arc<dyn ThrottleStore>,
    pub(crate) hasher: Hasher,
    pub(crate) counters: AuthCounters,
    max_sessions_per_user: Option<usize>,
    login: LoginRedirect,
    second_factor: LoginRedirect,
    pub(crate) device_cookie: CookieConfig,
    pub(crate) csrf: CsrfLayer,
    pub(crate) client_ip: ClientIp,
}

/// How the client's address is read from a request (see [`AuthBuilder::client_ip`]).
type ClientIp = Arc<dyn Fn(&Parts) -> Option<IpAddr> + Send + Sync>;

/// What logins did since the start (for metrics).
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// Logins that created a session.
    pub logins_succeeded: AtomicU64,
    /// Logins refused for their credentials (a wrong password, an unknown or disabled user).
    pub logins_failed: AtomicU64,
    /// Logins refused because the hashing pool was full.
    pub hash_overloaded: AtomicU64,
    /// Every authentication (password, TOTP, recovery code, passkey) by its result.
    pub outcome: crate::metrics::AuthOutcomes,
}

/// Builds an [`Auth`]: `Auth::builder(backend, sessions, throttle)`, then the options, then
/// [`AuthBuilder::build`].
#[must_use]
pub struct AuthBuilder<B> {
    backend: B,
    sessions: SessionManager,
    throttle: Arc<dyn ThrottleStore>,
    hasher: Option<Hasher>,
    max_sessions_per_user: Option<usize>,
    login_path: String,
    second_factor_path: String,
    device_cookie: Option<CookieConfig>,
    csrf: Origins,
    client_ip: Option<ClientIp>,
    factors: Option<SecondFactors>,
}

impl<B> std::fmt::Debug for AuthBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthBuilder")
            .field("sessions", &self.sessions)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field("login_path", &self.login_path)
            .field("csrf", &self.csrf)
            .finish_non_exhaustive()
    }
}

impl<B: UserBackend> AuthBuilder<B> {
    /// Enables second factors (TOTP and recovery codes; see [`SecondFactors`]). Without
    /// them every session stays at `one_factor` unless the app raises it otherwise.
    pub fn second_factors(mut self, factors: SecondFactors) -> Self {
        self.factors = Some(factors);
        self
    }

    /// How [`crate::AuthSession`] reads the client's address, which the login throttle
    /// counts per client. Default: the socket's peer (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`). Behind a reverse proxy that
    /// is the proxy, for every client: give the address your proxy vouches for instead, e.g.
    /// the last `X-Forwarded-For` entry it appended, and only when the peer is that proxy (a
    /// client can write any `X-Forwarded-For` of its own). `None` means unknown: the
    /// throttle then applies only its per-account counters.
    pub fn client_ip(
        mut self,
        read: impl Fn(&Parts) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.client_ip = Some(Arc::new(read));
        self
    }

    /// The origins whose unsafe requests `auth.layer()` lets through (its CSRF check, see
    /// [`crate::csrf`]). Default: [`Origins::same_host`], the request's own host; name the
    /// public origin (and any trusted ones) when a proxy rewrites `Host` or other sites must
    /// post here.
    pub fn csrf_origins(mut self, origins: Origins) -> Self {
        self.csrf = origins;
        self
    }

    /// The login throttle's device cookie (default: the session cookie's companion
    /// `{name}_device`, see [`CookieConfig::companion`]).
    pub fn device_cookie(mut self, cookie: CookieConfig) -> Self {
        self.device_cookie = Some(cookie);
        self
    }

    /// The password hashing pool to use (default: [`Hasher::for_this_machine`], threads of
    /// this process sized to the machine).
    pub fn hasher(mut self, hasher: Hasher) -> Self {
        self.hasher = Some(hasher);
        self
    }

    /// At most this many sessions per user: a login beyond it ends the user's oldest
    /// sessions (default: no cap).
    pub fn max_sessions_per_user(mut self, cap: Option<usize>) -> Self {
        self.max_sessions_per_user = cap;
        self
    }

    /// Where page navigations without a session are sent (with `?next=`; default `/login`).
    ///
    /// # Panics
    ///
    /// [`AuthBuilder::build`] panics if it is not a local path (see [`LoginRedirect::new`]).
    pub fn login_path(mut self, path: impl Into<String>) -> Self {
        self.login_path = path.into();
        self
    }

    /// Where page navigations of a `one_factor` session are sent when a route needs
    /// `two_factor` ([`crate::two_factor_required`], [`crate::TwoFactorUser`]), with
    /// `?next=`: the app's page that asks for a TOTP or recovery code (or offers enrolment
    /// to a user who has none). Default `/login/2fa`.
    ///
    /// # Panics
    ///
    /// [`AuthBuilder::build`] panics if it is not a local path (see [`LoginRedirect::new`]).
    pub fn second_factor_path(mut self, path: impl Into<String>) -> Self {
        self.second_factor_path = path.into();
        self
    }

    /// Starts the hashing pool unless one was given.
    pub fn build(self) -> Result<Auth<B>, HashError> {
        let hasher = match self.hasher {
            Some(h) => h,
            None => Hasher::for_this_machine()?,
        };
        let device_cookie = self
            .device_cookie
            .unwrap_or_else(|| self.sessions.cookie_config().companion("_device"));
        Ok(Auth(Arc::new(Inner {
            backend: self.backend,
            core: Core {
                device_cookie,
                sessions: self.sessions,
                throttle: self.throttle,
                hasher,
                counters: AuthCounters::default(),
                max_sessions_per_user: self.max_sessions_per_user,
                login: LoginRedirect::new(&self.login_path),
                second_factor: LoginRedirect::new(&self.second_factor_path),
                csrf: CsrfLayer::new(self.csrf),
                client_ip: self
                    .client_ip
                    .unwrap_or_else(|| Arc::new(crate::login::peer_ip)),
            },
            users: Memo::new(USER_CACHE_CAPACITY),
            factors: self.factors,
        })))
    }
}

impl<B: UserBackend> Auth<B> {
    /// Starts building: the users, the sessions, and where the login throttle keeps its
    /// counters (usually the session store: `Arc::new(store.clone())`).
    pub fn builder(
        backend: B,
        sessions: SessionManager,
        throttle: Arc<dyn ThrottleStore>,
    ) -> AuthBuilder<B> {
        AuthBuilder {
            backend,
            sessions,
            throttle,
            hasher: None,
            max_sessions_per_user: None,
            login_path: "/login".to_owned(),
            second_factor_path: "/login/2fa".to_owned(),
            device_cookie: None,
            csrf: Origins::same_host(),
            client_ip: None,
            factors: None,
        }
    }

    /// Starts building over one store that keeps the sessions and the throttle's counters
    /// (SQLite, PostgreSQL, Redis or memory), with the secure cookie defaults
    /// ([`CookieConfig::default`]) and the default expiry ([`ExpiryPolicy::default`]). For
    /// other cookie settings or expiry, or separate stores, use [`Auth::builder`].
    ///
    /// Call from within a tokio runtime.
    pub fn for_store<S>(backend: B, store: Arc<S>) -> AuthBuilder<B>
    where
        S: SessionStore + ThrottleStore + 'static,
    {
        let sessions = SessionManager::new(
            Arc::clone(&store) as Arc<dyn SessionStore>,
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        Self::builder(backend, sessions, store)
    }

    /// The user backend.
    pub fn backend(&self) -> &B {
        &self.0.backend
    }

    /// The session manager (verification, cookies, the session store).
    pub fn sessions(&self) -> &SessionManager {
        &self.0.core.sessions
    }

    /// The password hashing pool (to hash a new user's password, say).
    pub fn hasher(&self) -> &Hasher {
        &self.0.core.hasher
    }

    /// The login throttle's store.
    pub fn throttle_store(&self) -> &Arc<dyn ThrottleStore> {
        &self.0.core.throttle
    }

    /// What logins did since the start.
    pub fn counters(&self) -> &AuthCounters {
        &self.0.core.counters
    }

    /// How requests without a signed-in user are answered (the login page for page
    /// navigations, `401` otherwise).
    pub fn login_redirect(&self) -> &LoginRedirect {
        &self.0.core.login
    }

    /// How `one_factor` sessions are answered where `two_factor` is needed (the second-factor
    /// page for page navigations, `401 second_factor_required` otherwise).
    pub fn second_factor_redirect(&self) -> &LoginRedirect {
        &self.0.core.second_factor
    }

    pub(crate) fn core(&self) -> &Core {
        &self.0.core
    }

    /// The user a verified session belongs to: `None` (and the session ends) when the user
    /// is gone or not [`AuthUser::is_active`] any more. Disabling a user also ends their
    /// sessions; this is the backstop.
    ///
    /// Users are kept in memory under the session cache's epoch (see
    /// [`SessionManager::with_cache`]): an entry is served only while nothing changed since it
    /// was read, so the hot path of a logged-in request costs no user lookup. The epoch moves
    /// with every change of the session store (any session begun or ended, on any instance);
    /// a change your app makes to its own users table does not move it. So when you
    /// deactivate a user or change what your `User` holds, also end their sessions
    /// ([`Auth::end_sessions_of`]), as the built-in [`disable`] does: that is what makes every
    /// instance forget the user at once. Without the manager's cache, every request reads the
    /// user from the backend.
    pub async fn user_of(
        &self,
        session: &ActiveSession,
    ) -> Result<Option<Arc<B::User>>, StoreError> {
        let id = session.record().user_id;
        // The epoch the session was verified under, read before the session record was: a
        // user read now is at least as new as that.
        let epoch = session.cache_epoch();
        if let Some(user) = epoch.and_then(|e| {
            self.0
                .users
                .get(&id, |(at, u)| (*at == e).then(|| Arc::clone(u)))
        }) {
            return Ok(Some(user));
        }
        match self.0.backend.by_id(id).await? {
            Some(user) if user.is_active() => {
                let user = Arc::new(user);
                if let Some(e) = epoch {
                    self.0.users.insert(id, (e, Arc::clone(&user)));
                }
                Ok(Some(user))
            }
            _ => {
                self.sessions().end(session).await?;
                Ok(None)
            }
        }
    }

    /// Ends this session (logout). Ending one that already ended is not an error.
    pub async fn log_out(&self, session: &ActiveSession) -> Result<(), StoreError> {
        self.sessions().end(session).await
    }

    /// Ends every other session of this session's user ("log out everywhere else"); returns
    /// how many ended.
    pub async fn log_out_others(&self, session: &ActiveSession) -> Result<u64, StoreError> {
        let rec = session.record();
        end_sessions(self.store().as_ref(), rec.user_id, Some(&rec.id)).await
    }

    /// Ends every session of `user` (an admin's action, or after deactivating the user in
    /// your own users table: see [`Auth::user_of`]); returns how many ended.
    pub async fn end_sessions_of(&self, user: UserId) -> Result<u64, StoreError> {
        end_sessions(self.store().as_ref(), user, None).await
    }

    /// Ends every session of this session's user, this one included ("log out
    /// everywhere"); returns how many ended.
    pub async fn log_out_everywhere(&self, session: &ActiveSession) -> Result<u64, StoreError> {
        end_sessions(self.store().as_ref(), session.record().user_id, None).await
    }

    /// One page of a user's sessions, ordered by creation (then id), after the cursor
    /// `after` (the last item of the previous page), at most `limit` of them.
    pub async fn sessions_of(
        &self,
        user: UserId,
        after: Option<(Timestamp, SessionId)>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.store().list_page(Some(user), after, limit).await
    }

    /// Ends the session `id` if it is `user`'s (a user revoking one of their own sessions);
    /// `false` when there is no such session of theirs.
    pub async fn revoke(&self, user: UserId, id: &SessionId) -> Result<bool, StoreError> {
        self.store().delete_by_id(id, Some(user)).await
    }

    fn store(&self) -> &Arc<dyn SessionStore> {
        self.sessions().store()
    }
}
