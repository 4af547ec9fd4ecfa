use std::collections::BTreeMap;
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
/// Loaded from the store on first access (verification never pays for it). After the handler
/// has answered, the keys the request changed, and only those, are written to the store in
/// one atomic patch ([`SessionStore::patch_data`]); a request that changed nothing writes
/// nothing. Inserting a value equal to the one loaded, or inserting then removing a key that
/// was not there, is no change. Values are anything serde can handle. Extracting it requires
/// a valid session (else `401`), and needs the [`crate::SessionLayer`] (`manager.layer()`).
///
/// # Concurrent requests of one session
///
/// A browser sends several requests of one session at once (tabs, parallel `fetch`es), each
/// with its own `SessionMap`. Writes are per key, last writer wins:
///
/// - requests that change different keys all keep their change (one request's save never
///   puts back the other keys as it had loaded them);
/// - when two requests set the same key, the one that finishes last decides its value;
/// - a read-modify-write of one key is not atomic across requests: two concurrent requests
///   that both read a counter `n = 1` and insert `n + 1` store `2`, not `3`: the
///   increment counts once. Django's sessions behave the same way. Keep what must not lose
///   updates (balances, stock) in your own tables, under a transaction.
///
/// A session revoked during the request is never recreated by the save.
///
/// [`SessionStore::patch_data`]: sessiond_core::SessionStore::patch_data
#[derive(Clone, Debug)]
pub struct SessionMap {
    inner: Arc<Mutex<State>>,
    manager: SessionManager,
}

#[derive(Debug)]
struct State {
    hash: TokenHash,
    /// The request's view: as loaded, with its own changes applied.
    map: Option<SessionData>,
    /// The value each key this request changed had when loaded (`None`: absent). What the
    /// save writes is decided against these, so a change undone within the request is none.
    before: BTreeMap<String, Option<serde_json::Value>>,
}

impl State {
    /// Notes that `key` is about to change in `map`, keeping its loaded value the first time.
    fn touching(
        map: &SessionData,
        before: &mut BTreeMap<String, Option<serde_json::Value>>,
        key: &str,
    ) {
        if !before.contains_key(key) {
            before.insert(key.to_owned(), map.get(key).cloned());
        }
    }

    /// The keys to set and to remove: those whose value now differs from the loaded one.
    fn patch(&self) -> Option<(SessionData, Vec<String>)> {
        let map = self.map.as_ref()?;
        let mut set = SessionData::new();
        let mut remove = Vec::new();
        for (key, was) in &self.before {
            match (map.get(key), was) {
                (now, was) if now == was.as_ref() => {}
                (Some(now), _) => {
                    set.insert(key.clone(), now.clone());
                }
                (None, _) => remove.push(key.clone()),
            }
        }
        (!set.is_empty() || !remove.is_empty()).then_some((set, remove))
    }
}

/// A map that may need saving when the request is done.
pub(crate) struct PendingData(Arc<Mutex<State>>);

impl PendingData {
    pub(crate) async fn save(self, manager: &SessionManager) {
        let state = self.0.lock().await;
        let Some((set, remove)) = state.patch() else {
            return;
        };
        // After the response: nobody else can tell of the failure. A `false` (the session
        // ended meanwhile) is fine: a patch never recreates it.
        if let Err(e) = manager.store().patch_data(&state.hash, &set, &remove).await {
            let cause = std::error::Error::source(&e);
            tracing::error!(error = %e, cause = ?cause, "session data not saved");
        }
    }
}

impl SessionMap {
    async fn with<T>(
        &self,
        f: impl FnOnce(&mut SessionData, &mut BTreeMap<String, Option<serde_json::Value>>) -> T,
    ) -> Result<T, SessionRejection> {
        let mut state = self.inner.lock().await;
        if state.map.is_none() {
            let loaded = self
                .manager
                .store()
                .load_data(&state.hash)
                .await
                .map_err(|e| SessionRejection::StoreUnavailable(Arc::new(e)))?;
            // Gone meanwhile (revoked): behave as an empty map; its save changes nothing.
            state.map = Some(loaded.unwrap_or_default());
        }
        let State { map, before, .. } = &mut *state;
        Ok(f(map.as_mut().expect("loaded above"), before))
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

    /// Sets `key`. Saved when the request is done, unless equal to the value loaded.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionRejection> {
        let value = serde_json::to_value(value).map_err(|_| SessionRejection::InvalidData)?;
        self.with(|m, before| {
            State::touching(m, before, key);
            m.insert(key.to_owned(), value);
        })
        .await
    }

    /// Removes `key`, returning its value. Saved when the request is done, if the key was
    /// there when loaded.
    pub async fn remove(&self, key: &str) -> Result<Option<serde_json::Value>, SessionRejection> {
        self.with(|m, before| {
            State::touching(m, before, key);
            m.remove(key)
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
                before: BTreeMap::new(),
            })),
            manager: request.manager().clone(),
        };
        request.save_later(PendingData(Arc::clone(&map.inner)));
        parts.extensions.insert(map.clone());
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{header, Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use serde_json::json;
    use sessiond_core::{
        ExpiryPolicy, NewSession, SessionData, SessionStore, SessionToken, UserId,
    };
    use sessiond_store_memory::MemoryStore;
    use tokio::sync::Barrier;
    use tower::ServiceExt;

    use super::SessionMap;
    use crate::{CookieConfig, SessionManager};

    /// An app over a fresh memory store whose handlers all load the data, then wait at
    /// `meet` (so requests sent together have all loaded before any saves), then change it.
    async fn app(meet: Arc<Barrier>) -> (Router, Arc<MemoryStore>, SessionToken) {
        let store = Arc::new(MemoryStore::new());
        let manager = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let m1 = Arc::clone(&meet);
        let m2 = Arc::clone(&meet);
        let m3 = meet;
        let app = Router::new()
            .route(
                "/set/{key}",
                get(|Path(key): Path<String>, data: SessionMap| async move {
                    let _: Option<u32> = data.get(&key).await.unwrap();
                    m1.wait().await;
                    data.insert(&key, format!("by {key}")).await.unwrap();
                }),
            )
            .route(
                "/remove/{key}",
                get(|Path(key): Path<String>, data: SessionMap| async move {
                    let _: Option<u32> = data.get(&key).await.unwrap();
                    m2.wait().await;
                    assert!(data.remove(&key).await.unwrap().is_some());
                }),
            )
            .route(
                "/inc",
                get(|data: SessionMap| async move {
                    let n: u32 = data.get("n").await.unwrap().unwrap_or(0);
                    m3.wait().await;
                    data.insert("n", n + 1).await.unwrap();
                }),
            )
            .layer(manager.layer());
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();
        (app, store, token)
    }

    async fn call(app: &Router, token: &SessionToken, path: String) -> StatusCode {
        let req = Request::get(path)
            .header(
                header::COOKIE,
                format!("__Host-sessiond={}", token.expose()),
            )
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    }

    fn data(pairs: &[(&str, serde_json::Value)]) -> SessionData {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_changing_different_keys_both_keep_their_change() {
        let (app, store, token) = app(Arc::new(Barrier::new(2))).await;
        let h = token.hash();
        let start = data(&[("old", json!(1)), ("kept", json!([]))]);
        assert!(store.save_data(&h, &start).await.unwrap());
        for round in 0..20 {
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            // Both have loaded the data before either saves (the barrier in the handler):
            // two whole-map saves would lose one key.
            let (ra, rb) = tokio::join!(
                tokio::spawn({
                    let (app, token) = (app.clone(), token.clone());
                    async move { call(&app, &token, format!("/set/{a}")).await }
                }),
                tokio::spawn({
                    let (app, token) = (app.clone(), token.clone());
                    async move { call(&app, &token, format!("/set/{b}")).await }
                }),
            );
            assert_eq!(ra.unwrap(), StatusCode::OK);
            assert_eq!(rb.unwrap(), StatusCode::OK);
        }
        let stored = store.load_data(&h).await.unwrap().unwrap();
        let mut want = start;
        for round in 0..20 {
            for k in [format!("a{round}"), format!("b{round}")] {
                want.insert(k.clone(), json!(format!("by {k}")));
            }
        }
        assert_eq!(stored, want);

        // A removal and an insert of another key, concurrently: both land.
        let (rr, rs) = tokio::join!(
            call(&app, &token, "/remove/old".into()),
            call(&app, &token, "/set/new".into()),
        );
        assert_eq!((rr, rs), (StatusCode::OK, StatusCode::OK));
        let stored = store.load_data(&h).await.unwrap().unwrap();
        want.remove("old");
        want.insert("new".into(), json!("by new"));
        assert_eq!(stored, want);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_modify_write_of_one_key_by_concurrent_requests_counts_once() {
        // The documented limit (as in Django): per-key last writer wins, so two requests that
        // both read `n` before either writes store the same `n + 1`.
        let (app, store, token) = app(Arc::new(Barrier::new(2))).await;
        let (r1, r2) = tokio::join!(
            call(&app, &token, "/inc".into()),
            call(&app, &token, "/inc".into())
        );
        assert_eq!((r1, r2), (StatusCode::OK, StatusCode::OK));
        let stored = store.load_data(&token.hash()).await.unwrap().unwrap();
        assert_eq!(stored, data(&[("n", json!(1))]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_real_changes_are_written() {
        let store = Arc::new(MemoryStore::new());
        let manager = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        // The handler loads, lets the test change the store behind its back, then makes
        // changes that undo themselves: if it wrote anything, the test's change would go.
        let loaded = Arc::new(Barrier::new(2));
        let changed = Arc::new(Barrier::new(2));
        let (l, c) = (Arc::clone(&loaded), Arc::clone(&changed));
        let app = Router::new()
            .route(
                "/noop",
                get(move |data: SessionMap| async move {
                    let k: Option<u32> = data.get("k").await.unwrap();
                    l.wait().await;
                    c.wait().await;
                    data.insert("k", k).await.unwrap(); // the value it had
                    data.insert("tmp", 1).await.unwrap();
                    data.remove("tmp").await.unwrap(); // inserted, then removed
                    data.remove("absent").await.unwrap(); // was never there
                    data.insert("k", 7).await.unwrap();
                    data.insert("k", k).await.unwrap(); // changed, then changed back
                }),
            )
            .layer(manager.layer());
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();
        let h = token.hash();
        assert!(store
            .save_data(&h, &data(&[("k", json!(1))]))
            .await
            .unwrap());
        let request = tokio::spawn({
            let (app, token) = (app.clone(), token.clone());
            async move { call(&app, &token, "/noop".into()).await }
        });
        loaded.wait().await;
        let behind = data(&[
            ("k", json!(2)),
            ("tmp", json!("theirs")),
            ("absent", json!(3)),
        ]);
        assert!(store.save_data(&h, &behind).await.unwrap());
        changed.wait().await;
        assert_eq!(request.await.unwrap(), StatusCode::OK);
        assert_eq!(store.load_data(&h).await.unwrap(), Some(behind));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_never_recreates_a_session_revoked_during_the_request() {
        let store = Arc::new(MemoryStore::new());
        let manager = SessionManager::new(
            store.clone(),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let loaded = Arc::new(Barrier::new(2));
        let revoked = Arc::new(Barrier::new(2));
        let (l, r) = (Arc::clone(&loaded), Arc::clone(&revoked));
        let app = Router::new()
            .route(
                "/set",
                get(move |data: SessionMap| async move {
                    let _: Option<u32> = data.get("x").await.unwrap();
                    l.wait().await;
                    r.wait().await;
                    data.insert("x", 1).await.unwrap();
                }),
            )
            .layer(manager.layer());
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();
        let h = token.hash();
        let request = tokio::spawn({
            let (app, token) = (app.clone(), token.clone());
            async move { call(&app, &token, "/set".into()).await }
        });
        // The handler has verified the session and loaded its data: revoke, then let it
        // insert.
        loaded.wait().await;
        assert!(store.delete(&h).await.unwrap());
        revoked.wait().await;
        assert_eq!(request.await.unwrap(), StatusCode::OK);
        assert_eq!(store.load(&h).await.unwrap(), None);
        assert_eq!(store.load_data(&h).await.unwrap(), None);
        assert!(store.list_all().await.unwrap().is_empty());
    }
}
