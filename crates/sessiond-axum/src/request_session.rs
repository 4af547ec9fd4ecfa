//! The request's session, as [`crate::SessionLayer`] leaves it in every request's
//! extensions for the extractors and reads it back once the handler has answered.

use std::sync::{Arc, Mutex, OnceLock};

use axum::http::request::Parts;
use axum::http::HeaderMap;

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
    pending: Mutex<Option<PendingData>>,
}

impl RequestSession {
    pub(crate) fn new(manager: SessionManager) -> Self {
        Self(Arc::new(Inner {
            manager,
            verified: OnceLock::new(),
            pending: Mutex::new(None),
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
        *self.0.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(data);
    }

    /// The data to save now that the handler has answered, if a handler took a map.
    pub(crate) fn take_pending(&self) -> Option<PendingData> {
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}
