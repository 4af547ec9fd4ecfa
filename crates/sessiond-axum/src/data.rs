use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sessiond_core::{SessionData, TokenHash};
use tokio::sync::Mutex;

use crate::request_session::RequestSession;
use crate::{RequireSession, SessionManager, SessionRejection};

/// The typed key-value map of the request's session, like Django's `request.session`.
///
/// Loaded from the store on first access (verification never pays for it) and saved once,
/// after the handler has answered, only if something was changed. Values are anything serde
/// can handle. Extracting it requires a valid session (else `401`), and needs the
/// [`crate::SessionLayer`] (`manager.layer()`).
#[derive(Clone, Debug)]
pub struct SessionMap {
    inner: Arc<Mutex<State>>,
    manager: SessionManager,
}

#[derive(Debug)]
struct State {
    hash: TokenHash,
    map: Option<SessionData>,
    dirty: bool,
}

/// A map that may need saving when the request is done.
pub(crate) struct PendingData(Arc<Mutex<State>>);

impl PendingData {
    pub(crate) async fn save(self, manager: &SessionManager) {
        let state = self.0.lock().await;
        if !state.dirty {
            return;
        }
        if let Some(map) = &state.map {
            // After the response: nobody else can tell of the failure.
            if let Err(e) = manager.store().save_data(&state.hash, map).await {
                let cause = std::error::Error::source(&e);
                tracing::error!(error = %e, cause = ?cause, "session data not saved");
            }
        }
    }
}

impl SessionMap {
    async fn with<T>(
        &self,
        f: impl FnOnce(&mut SessionData, &mut bool) -> T,
    ) -> Result<T, SessionRejection> {
        let mut state = self.inner.lock().await;
        if state.map.is_none() {
            let loaded = self
                .manager
                .store()
                .load_data(&state.hash)
                .await
                .map_err(|e| SessionRejection::StoreUnavailable(Arc::new(e)))?;
            // Gone meanwhile (revoked): behave as an empty map that will not be saved.
            state.map = Some(loaded.unwrap_or_default());
        }
        let State { map, dirty, .. } = &mut *state;
        Ok(f(map.as_mut().expect("loaded above"), dirty))
    }

    /// The value under `key`, if present and of type `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionRejection> {
        self.with(|m, _| {
            m.get(key)
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
        })
        .await
    }

    /// Sets `key`. Saved when the request is done.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionRejection> {
        let value = serde_json::to_value(value).map_err(|_| SessionRejection::InvalidData)?;
        self.with(|m, dirty| {
            if m.get(key) != Some(&value) {
                m.insert(key.to_owned(), value);
                *dirty = true;
            }
        })
        .await
    }

    /// Removes `key`, returning its value. Saved when the request is done.
    pub async fn remove(&self, key: &str) -> Result<Option<serde_json::Value>, SessionRejection> {
        self.with(|m, dirty| {
            let old = m.remove(key);
            *dirty |= old.is_some();
            old
        })
        .await
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionMap {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(existing) = parts.extensions.get::<SessionMap>() {
            return Ok(existing.clone());
        }
        let RequireSession(session) = RequireSession::from_request_parts(parts, state).await?;
        let request = RequestSession::of(parts)?;
        let map = SessionMap {
            inner: Arc::new(Mutex::new(State {
                hash: session.record().token_hash,
                map: None,
                dirty: false,
            })),
            manager: request.manager().clone(),
        };
        request.save_later(PendingData(Arc::clone(&map.inner)));
        parts.extensions.insert(map.clone());
        Ok(map)
    }
}
