//! What every request handler shares: the configuration, the stores, the library's `Auth`
//! (users, sessions, throttle, hashing pool), and the memos of answers already computed.

use std::ops::Deref;
use std::sync::Arc;

use axum::body::Bytes;
use sessiond_axum::csrf::{DoubleSubmit, Origins};
use sessiond_axum::{Auth, BuiltinUsers, SessionManager};
use sessiond_core::{Memo, SessionRecord, ThrottleStore, TokenHashState, User, UserStore};

use crate::config::Config;
use crate::forward_auth::identity::IdentityCache;
use crate::forward_auth::target::TargetCache;
use crate::metrics::Metrics;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// The state's parts. Tests reach the stores (`users`, `sessions`, `throttle`) and `auth`
/// (its counters); the rest is the crate's own.
#[derive(Debug)]
pub struct Inner {
    pub(crate) config: Config,
    /// Logins, password checks, the throttle and the account changes: the library's, used as
    /// any app uses them (the server keeps no copy of its own).
    pub auth: Auth<BuiltinUsers>,
    pub users: Arc<dyn UserStore>,
    pub sessions: SessionManager,
    /// The login throttle's counters (in the session store's backend).
    pub throttle: Arc<dyn ThrottleStore>,
    /// The origins whose unsafe requests pass the CSRF check: the public URL's and
    /// `trusted_origins`.
    pub(crate) origins: Origins,
    /// The login form's double-submit CSRF token, in `config.csrf_cookie`.
    pub(crate) login_csrf: DoubleSubmit,
    /// Forward-auth targets already resolved against the configuration.
    pub(crate) targets: TargetCache,
    /// Forward-auth identity headers by user object.
    pub(crate) identities: IdentityCache,
    /// `GET /api/session` bodies by the record and user objects they were rendered from.
    pub(crate) session_bodies: SessionBodies,
    /// The server's measurements (request durations, forward-auth decisions, store calls),
    /// served on the metrics listener with the library's.
    pub(crate) metrics: Arc<Metrics>,
}

/// Rendered `GET /api/session` bodies, one per session.
///
/// This is the verify endpoint's whole body, and rendering it (JSON, three RFC 3339
/// timestamps) is the largest item of session-specific work on that path (docs/performance.md,
/// "`GET /api/session` bodies"). The body is a pure
/// function of the session record, the user and the expiry policy (fixed for the process),
/// and the caches hand out the *same* objects until something changes: the session cache the
/// same `Arc<SessionRecord>` until an activity write or a reload makes a new one, the user
/// cache the same `Arc<User>` until any change moves its epoch on. So an entry is served only
/// while both are the very objects it was rendered from (`Arc::ptr_eq`; the entry holds them,
/// so their addresses cannot be reused meanwhile). Verification always runs first: an entry
/// is never a way to reach a revoked session, it only spares re-rendering an answer already
/// decided.
#[derive(Debug)]
pub(crate) struct SessionBodies(Memo<[u8; 32], RenderedBody, TokenHashState>);

#[derive(Debug)]
pub(crate) struct RenderedBody {
    record: Arc<SessionRecord>,
    user: Arc<User>,
    body: Bytes,
}

impl Default for SessionBodies {
    /// At most 16,384 bodies (a few hundred bytes each).
    fn default() -> Self {
        Self(Memo::new(16_384))
    }
}

impl SessionBodies {
    pub(crate) fn get_or_render<E>(
        &self,
        record: &Arc<SessionRecord>,
        user: &Arc<User>,
        render: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Bytes, E> {
        let key = *record.token_hash.as_bytes();
        let hit = self.0.get(&key, |e| {
            (Arc::ptr_eq(&e.record, record) && Arc::ptr_eq(&e.user, user)).then(|| e.body.clone())
        });
        if let Some(body) = hit {
            return Ok(body);
        }
        let body = Bytes::from(render()?);
        self.0.insert(
            key,
            RenderedBody {
                record: Arc::clone(record),
                user: Arc::clone(user),
                body: body.clone(),
            },
        );
        Ok(body)
    }
}

impl AppState {
    /// The state of a server over `auth` (whose backend is the built-in user store).
    pub fn new(config: Config, auth: Auth<BuiltinUsers>) -> Self {
        Self::with_metrics(config, auth, Arc::default())
    }

    /// [`AppState::new`] with the measurements the stores were wrapped with.
    pub(crate) fn with_metrics(
        config: Config,
        auth: Auth<BuiltinUsers>,
        metrics: Arc<Metrics>,
    ) -> Self {
        // The configuration has validated both as origins (`Config::public_origin`,
        // `trusted_origins`), so neither can fail here.
        let own = Origins::new(&config.public_origin());
        let origins = (config.trusted_origins.iter())
            .fold(own, |o, t| o.and_then(|o| o.trust(t)))
            .expect("the configuration validated the public URL and trusted_origins");
        let login_csrf = DoubleSubmit::new(config.csrf_cookie.clone());
        Self(Arc::new(Inner {
            config,
            users: Arc::clone(auth.backend().store()),
            sessions: auth.sessions().clone(),
            throttle: Arc::clone(auth.throttle_store()),
            auth,
            origins,
            login_csrf,
            targets: TargetCache::default(),
            identities: IdentityCache::default(),
            session_bodies: SessionBodies::default(),
            metrics,
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use sessiond_core::{SessionId, SessionToken, Timestamp, UserId, Username};

    use super::*;

    fn record(token: &SessionToken, last_seen_ms: i64) -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            id: SessionId::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
            token_hash: token.hash(),
            user_id: UserId(1),
            created_at: Timestamp::from_millis(0),
            last_seen_at: Timestamp::from_millis(last_seen_ms),
            absolute_expires_at: Timestamp::from_millis(10_000_000),
            expires_at: Timestamp::from_millis(1_000_000),
            remember: false,
            ip: None,
            user_agent: None,
            level: Default::default(),
        })
    }

    fn user() -> Arc<User> {
        Arc::new(User {
            id: UserId(1),
            username: Username::parse("alice").unwrap(),
            name: String::new(),
            email: String::new(),
            groups: Vec::new(),
            admin: false,
            disabled: false,
            created_at: Timestamp::from_millis(0),
        })
    }

    /// A body is reused only for the very record and user objects it was rendered from: a
    /// new record (an activity write) or a reloaded user renders again.
    #[test]
    fn session_bodies_follow_the_record_and_user_objects() {
        let bodies = SessionBodies::default();
        let render = |text: &str| {
            let v = text.as_bytes().to_vec();
            move || Ok::<_, ()>(v)
        };
        let token = SessionToken::generate();
        let (r1, u1) = (record(&token, 1), user());
        let a = bodies.get_or_render(&r1, &u1, render("one")).unwrap();
        let b = bodies.get_or_render(&r1, &u1, render("ignored")).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"one"[..], &b"one"[..]));
        let r2 = record(&token, 2);
        let c = bodies.get_or_render(&r2, &u1, render("two")).unwrap();
        assert_eq!(&c[..], b"two");
        let u2 = user();
        let d = bodies.get_or_render(&r2, &u2, render("three")).unwrap();
        assert_eq!(&d[..], b"three");
        assert_eq!(bodies.get_or_render(&r2, &u2, render("x")).unwrap(), d);
    }
}
