//! The request's session, as [`crate::SessionLayer`] leaves it in every request's
//! extensions for the extractors and reads it back once the handler has answered.

use std::sync::{Arc, Mutex, OnceLock};

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};

use crate::data::PendingData;
use crate::{ActiveSession, SessionManager, SessionRejection};

/// The manager, the outcome of the request's verification (so a request verifies once,
/// whatever extractors it uses), and what the request leaves for after the handler: the
/// session data a [`crate::SessionMap`] changed, to be saved, and the cookies library code
/// asked for (a login's, a logout's), to be written on the response. One allocation per
/// request, in one extension (each insert into the extensions map costs a hash-map insert).
#[derive(Clone)]
pub(crate) struct RequestSession(Arc<Inner>);

struct Inner {
    manager: SessionManager,
    verified: OnceLock<Result<Option<ActiveSession>, SessionRejection>>,
    later: Mutex<Later>,
}

/// What the handler leaves for [`crate::SessionLayer`] to do once it has answered.
#[derive(Default)]
pub(crate) struct Later {
    /// Session data to save.
    pub(crate) data: Option<PendingData>,
    /// `Set-Cookie` values to append to the response, in the order they were asked for.
    pub(crate) cookies: Vec<HeaderValue>,
}

impl Later {
    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_none() && self.cookies.is_empty()
    }
}

impl RequestSession {
    pub(crate) fn new(manager: SessionManager) -> Self {
        Self(Arc::new(Inner {
            manager,
            verified: OnceLock::new(),
            later: Mutex::new(Later::default()),
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

    /// Keeps `data` to be saved once the handler has answered.
    pub(crate) fn save_later(&self, data: PendingData) {
        self.later().data = Some(data);
    }

    /// Appends `set_cookie` (a `Set-Cookie` value) to the response once the handler has
    /// answered, after the handler's own headers: for library code (a login, a logout) that
    /// runs inside a handler but does not build its response.
    pub(crate) fn set_cookie_later(&self, set_cookie: HeaderValue) {
        self.later().cookies.push(set_cookie);
    }

    /// What to do now that the handler has answered (empty for most requests).
    pub(crate) fn take_later(&self) -> Later {
        std::mem::take(&mut *self.later())
    }

    fn later(&self) -> std::sync::MutexGuard<'_, Later> {
        // A panic while holding it cannot leave `Later` half-changed (each change is one
        // assignment or push), so a poisoned lock is still good.
        self.0.later.lock().unwrap_or_else(|e| e.into_inner())
    }
}
