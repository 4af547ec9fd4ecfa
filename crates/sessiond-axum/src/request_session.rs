//! The request's session, as [`crate::SessionLayer`] leaves it in every request's
//! extensions for the extractors and reads it back once the handler has answered.

use std::sync::{Arc, Mutex, OnceLock};

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use crate::data::PendingData;
use crate::{ActiveSession, SessionManager, SessionRejection};

/// The manager, the outcome of the request's verification (so a request verifies once,
/// whatever extractors it uses), and the session data a [`crate::SessionMap`] extracted
/// during the request leaves to be saved after the response. One allocation per request,
/// in one extension (each insert into the extensions map costs a hash-map insert).
#[derive(Clone)]
pub(crate) struct RequestSession(Arc<Inner>);

struct Inner {
    manager: SessionManager,
    verified: OnceLock<Result<Option<ActiveSession>, SessionRejection>>,
    pending: Mutex<Pending>,
}

/// What is left to do once the handler has answered.
#[derive(Default)]
pub(crate) struct Pending {
    /// Session data a [`crate::SessionMap`] changed.
    pub(crate) data: Option<PendingData>,
    /// `Set-Cookie` values a login, logout or password change asked for.
    pub(crate) cookies: Vec<HeaderValue>,
}

impl RequestSession {
    pub(crate) fn new(manager: SessionManager) -> Self {
        Self(Arc::new(Inner {
            manager,
            verified: OnceLock::new(),
            pending: Mutex::new(Pending::default()),
        }))
    }

    /// The request's, or [`SessionRejection::MissingManager`] when the app forgot the layer.
    pub(crate) fn of(parts: &Parts) -> Result<&Self, SessionRejection> {
        parts
            .extensions
            .get::<Self>()
            .ok_or(SessionRejection::MissingManager)
    }

    pub(crate) fn manager(&self) -> &SessionManager {
        &self.0.manager
    }

    /// The request's session, verified on first use: later calls get the same outcome.
    pub(crate) async fn verified(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<ActiveSession>, SessionRejection> {
        if let Some(r) = self.0.verified.get() {
            return r.clone();
        }
        let out = self.0.manager.verify(headers).await;
        let out = out.map_err(|e| SessionRejection::StoreUnavailable(Arc::new(e)));
        let _ = self.0.verified.set(out.clone());
        out
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `data` to be saved once the handler has answered.
    pub(crate) fn save_later(&self, data: PendingData) {
        self.pending().data = Some(data);
    }

    /// Keeps a `Set-Cookie` value for the response.
    pub(crate) fn set_cookie_later(&self, cookie: HeaderValue) {
        self.pending().cookies.push(cookie);
    }

    /// What is left to do now that the handler has answered.
    pub(crate) fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending())
    }
}
