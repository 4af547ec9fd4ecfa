use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sessiond_axum::SessionManager;
use sessiond_core::{ThrottleStore, UserStore};

use crate::config::Config;
use crate::password::Hasher;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub users: Arc<dyn UserStore>,
    pub sessions: SessionManager,
    /// The login throttle's counters (in the session store's backend).
    pub throttle: Arc<dyn ThrottleStore>,
    pub hasher: Hasher,
    /// `Origin` value of the public URL, precomputed for the CSRF check.
    pub public_origin: String,
    pub metrics: Metrics,
    /// Users of verified sessions, kept under the session cache's coherence (an entry is
    /// served only while `SessionManager::cache_epoch` is the one it was read under).
    pub user_cache: UserCache,
    /// Forward-auth targets already resolved against the configuration.
    pub targets: crate::forwarded::TargetCache,
    /// Forward-auth identity headers by user object.
    pub identities: crate::routes::IdentityCache,
    /// `GET /api/session` bodies by the record and user objects they were rendered from.
    pub session_bodies: crate::routes::SessionBodies,
}

/// A bounded map of users by id, tagged with the session cache's epoch.
#[derive(Debug, Default)]
pub struct UserCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<sessiond_core::UserId, (u64, Arc<sessiond_core::User>)>,
    >,
}

impl UserCache {
    const CAPACITY: usize = 50_000;

    pub fn get(&self, id: sessiond_core::UserId, epoch: u64) -> Option<Arc<sessiond_core::User>> {
        let m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&id)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, u)| Arc::clone(u))
    }

    pub fn put(&self, epoch: u64, user: Arc<sessiond_core::User>) {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= Self::CAPACITY {
            m.clear();
        }
        m.insert(user.id, (epoch, user));
    }
}

/// Server-level counters (the session manager keeps its own).
#[derive(Debug, Default)]
pub struct Metrics {
    pub logins_succeeded: AtomicU64,
    pub logins_failed: AtomicU64,
    pub hash_overloaded: AtomicU64,
}

impl AppState {
    pub fn new(
        config: Config,
        users: Arc<dyn UserStore>,
        sessions: SessionManager,
        throttle: Arc<dyn ThrottleStore>,
        hasher: Hasher,
    ) -> Self {
        let public_origin = config.public_origin();
        Self(Arc::new(Inner {
            config,
            users,
            sessions,
            throttle,
            hasher,
            public_origin,
            metrics: Metrics::default(),
            user_cache: UserCache::default(),
            targets: crate::forwarded::TargetCache::default(),
            identities: crate::routes::IdentityCache::default(),
            session_bodies: crate::routes::SessionBodies::default(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
