use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sessiond_axum::SessionManager;
use sessiond_core::UserStore;

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
    pub hasher: Hasher,
    /// `Origin` value of the public URL, precomputed for the CSRF check.
    pub public_origin: String,
    pub metrics: Metrics,
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
        hasher: Hasher,
    ) -> Self {
        let public_origin = config.public_origin();
        Self(Arc::new(Inner {
            config,
            users,
            sessions,
            hasher,
            public_origin,
            metrics: Metrics::default(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
