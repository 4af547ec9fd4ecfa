use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderValue};
use sessiond_core::{
    ExpiryPolicy, NewSession, SessionRecord, SessionStore, SessionToken, StoreError, Timestamp,
    Verdict,
};

use crate::cache::{spawn_watcher, Cache, WatchedStore};
use crate::cookies::{find_cookie, CookieConfig, CookieLookup};

type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Verifies, starts and ends sessions on one store. Cheap to clone.
#[derive(Clone)]
pub struct SessionManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    cookie: CookieConfig,
    policy: ExpiryPolicy,
    clock: Clock,
    counters: Arc<Counters>,
    /// Sessions whose activity write is on its way. Until it lands, every concurrent request
    /// still reads the old `last_seen_at` and would ask for a write too; this set turns that
    /// herd into one write. Bounded by the writes in flight.
    touching: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// The verification cache, when enabled (see `cache.rs`).
    cache: Option<Arc<Cache>>,
}

/// What the manager has done since it started (for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests whose cookie was checked against the store.
    pub verifications: AtomicU64,
    /// Verifications the cache could not answer, so the store was read (a miss, or the cache
    /// off because its last poll of the store is too old).
    pub store_reads: AtomicU64,
    /// Coalesced activity writes issued.
    pub activity_writes: AtomicU64,
    /// Sessions started.
    pub sessions_started: AtomicU64,
    /// Verifications the cache answered (no store read).
    pub cache_hits: AtomicU64,
    /// Epoch changes after an early end of a session made through this process: every
    /// cached entry is dropped from use at once.
    pub epoch_changes_local: AtomicU64,
    /// Changes of the store's generation the watcher saw (revocations and user changes made
    /// by other instances or the CLI, propagated to this process's cache).
    pub epoch_changes_remote: AtomicU64,
    /// Polls of the store's generation, heartbeats and subscriptions that failed, and
    /// subscriptions lost (the cache stops serving until a poll, or a new subscription's
    /// first heartbeat, succeeds).
    pub generation_poll_failures: AtomicU64,
}

impl fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionManager")
            .field("store", &self.inner.store)
            .field("cookie", &self.inner.cookie)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

/// A verified session: the record, and the secret it was presented with (kept so values such
/// as a CSRF token can be bound to it; never logged).
#[derive(Clone, Debug)]
pub struct ActiveSession {
    token: SessionToken,
    record: Arc<SessionRecord>,
    /// The cache epoch the verification ran under (see [`SessionManager::cache_epoch`]).
    epoch: Option<u64>,
}

impl ActiveSession {
    /// The session's record: its public id, user, deadlines, client.
    pub fn record(&self) -> &SessionRecord {
        &self.record
    }

    /// The record as shared with the verification cache: the same object on every request
    /// until the session changes (an activity write or a reload makes a new one), so a
    /// rendering of it can be memoised by identity (`Arc::ptr_eq`).
    pub fn shared_record(&self) -> &Arc<SessionRecord> {
        &self.record
    }

    /// The secret the request presented (what the cookie holds; redacted in `Debug`).
    pub fn token(&self) -> &SessionToken {
        &self.token
    }

    /// The cache epoch this session was verified under, read before its record was (`None`:
    /// nothing could be served from a cache then). Caches built on the session cache's
    /// coherence may tag and check reads made for this request with it instead of reading
    /// the clock again: a change that moved the epoch on since is seen exactly as if the
    /// request had run a moment earlier.
    pub fn cache_epoch(&self) -> Option<u64> {
        self.epoch
    }
}

impl SessionManager {
    /// A manager over `store`, writing cookies as `cookie` says and deciding expiry by
    /// `policy`. Add [`SessionManager::with_cache`] to keep verified sessions in memory.
    pub fn new(store: Arc<dyn SessionStore>, cookie: CookieConfig, policy: ExpiryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cookie,
                policy,
                clock: Arc::new(|| Timestamp::from_system_time(SystemTime::now())),
                counters: Arc::default(),
                touching: Arc::default(),
                cache: None,
            }),
        }
    }

    /// Replaces the wall clock (tests that move time).
    pub fn with_clock(self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                store: Arc::clone(&inner.store),
                cookie: inner.cookie.clone(),
                policy: inner.policy,
                clock: Arc::new(clock),
                counters: Arc::clone(&inner.counters),
                touching: Arc::clone(&inner.touching),
                cache: inner.cache.clone(),
            }),
        }
    }

    /// Keeps verified sessions in process (at most `capacity`), coherent with the store across
    /// processes; see the `cache` module docs for how the bounds of
    /// docs/reference/sessions.md, "The verification cache", are kept. Call from within a
    /// tokio runtime: it starts the task that watches the store.
    pub fn with_cache(self, capacity: usize) -> Self {
        let inner = &self.inner;
        let cache = Arc::new(Cache::new(capacity, Arc::clone(&inner.counters)));
        spawn_watcher(&cache, Arc::clone(&inner.store));
        let store: Arc<dyn SessionStore> = Arc::new(WatchedStore {
            inner: Arc::clone(&inner.store),
            cache: Arc::clone(&cache),
        });
        Self {
            inner: Arc::new(Inner {
                store,
                cookie: inner.cookie.clone(),
                policy: inner.policy,
                clock: Arc::clone(&inner.clock),
                counters: Arc::clone(&inner.counters),
                touching: Arc::clone(&inner.touching),
                cache: Some(cache),
            }),
        }
    }

    /// For caches built on this one's coherence (e.g. of users): the epoch to tag a read
    /// with, taken *before* the read, or `None` when nothing may be served from a cache now.
    /// An entry is valid while this returns the epoch it was tagged with.
    pub fn cache_epoch(&self) -> Option<u64> {
        self.inner.cache.as_ref().and_then(|c| c.epoch())
    }

    /// Sessions in the verification cache (for metrics).
    pub fn cached_sessions(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, |c| c.len())
    }

    /// The layer that makes this manager available to the extractors and saves session data.
    pub fn layer(&self) -> crate::SessionLayer {
        crate::SessionLayer::new(self.clone())
    }

    /// The manager's clock (the system clock, unless a test gave another).
    pub fn now(&self) -> Timestamp {
        (self.inner.clock)()
    }

    /// The session store (as given to [`SessionManager::new`]).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The expiry policy: idle, absolute and remember-me lifetimes.
    pub fn policy(&self) -> &ExpiryPolicy {
        &self.inner.policy
    }

    /// How the session cookie is named and written.
    pub fn cookie_config(&self) -> &CookieConfig {
        &self.inner.cookie
    }

    /// What verification did since the start (for metrics).
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The session the request's cookie names, if it is valid now.
    ///
    /// An absent, duplicated, malformed, unknown or expired cookie is "no session" and creates
    /// nothing. A store error is returned, never mistaken for "no session" or for a session:
    /// callers fail closed.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Option<ActiveSession>, StoreError> {
        let CookieLookup::One(value) = find_cookie(headers, self.inner.cookie.name()) else {
            return Ok(None);
        };
        let Some(token) = SessionToken::parse(value) else {
            return Ok(None);
        };
        let hash = token.hash();
        self.inner
            .counters
            .verifications
            .fetch_add(1, Ordering::Relaxed);
        // One epoch read per verification, before the cache and before any store read: a
        // revocation landing after it moves the epoch on, so an entry put below under it is
        // never served, and everything served here is as of this moment.
        let epoch = self.cache_epoch();
        let cached = match (&self.inner.cache, epoch) {
            (Some(cache), Some(e)) => cache.get(&hash, e),
            _ => None,
        };
        let record = match cached {
            Some(hit) => {
                self.inner
                    .counters
                    .cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                hit
            }
            None => {
                self.inner
                    .counters
                    .store_reads
                    .fetch_add(1, Ordering::Relaxed);
                let Some(record) = self.inner.store.load(&hash).await? else {
                    return Ok(None);
                };
                let record = Arc::new(record);
                if let (Some(cache), Some(epoch)) = (&self.inner.cache, epoch) {
                    cache.put(epoch, Arc::clone(&record));
                }
                record
            }
        };
        // The store found the row by this hash; compare again in constant time so a store
        // that matched loosely (a prefix, a collation) can never hand out someone's session.
        if record.token_hash != hash {
            return Ok(None);
        }
        let now = self.now();
        match self.inner.policy.evaluate(&record, now) {
            Verdict::Expired(_) => Ok(None),
            Verdict::Valid { touch } => {
                if touch {
                    self.touch_later(&record, now);
                }
                Ok(Some(ActiveSession {
                    token,
                    record,
                    epoch,
                }))
            }
        }
    }

    /// The coalesced activity write, off the request's path. A failure only costs a little
    /// accuracy in "last seen", so it is logged, not surfaced.
    fn touch_later(&self, record: &SessionRecord, now: Timestamp) {
        let hash = record.token_hash;
        let touching = Arc::clone(&self.inner.touching);
        if !touching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*hash.as_bytes())
        {
            return; // another request's write for this session is already on its way
        }
        self.inner
            .counters
            .activity_writes
            .fetch_add(1, Ordering::Relaxed);
        let store = Arc::clone(&self.inner.store);
        let expires_at = self.inner.policy.deadline(record, now);
        let cache = self.inner.cache.clone();
        if let Some(cache) = &cache {
            cache.touched(&hash, now, expires_at);
        }
        tokio::spawn(async move {
            if let Err(e) = store.touch(&hash, now, expires_at).await {
                tracing::warn!(error = %e, "session activity write failed");
                // The cached record carries an activity the store did not get: dropped, so
                // the cache never judges a session by a later deadline than the store's (a
                // purge of sessions long expired by the store's deadline flushes no cache:
                // `cache.rs`, "Quiet purges").
                if let Some(cache) = &cache {
                    cache.forget(&hash);
                }
            }
            touching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(hash.as_bytes());
        });
    }

    /// Starts a session with a fresh secret. A session the request presented (`replacing`)
    /// ends in the same atomic step: every login gets a new token, and an id planted before
    /// login is never adopted.
    ///
    /// When the presented session was ended meanwhile (revoked between its verification and
    /// now), the rotation does nothing and a fresh session is created instead: a login proves
    /// the password again, so it may start a session, but the revoked one is never carried on.
    #[tracing::instrument(level = "debug", skip_all, fields(user = new.user_id.0))]
    pub async fn begin(
        &self,
        new: NewSession,
        replacing: Option<&ActiveSession>,
    ) -> Result<(SessionToken, SessionRecord), StoreError> {
        let token = SessionToken::generate();
        let record = self.inner.policy.start(new, token.hash(), self.now());
        let rotated = match replacing {
            Some(old) => {
                self.inner
                    .store
                    .rotate(&old.record.token_hash, &record)
                    .await?
            }
            None => false,
        };
        if !rotated {
            self.inner.store.create(&record).await?;
        }
        self.inner
            .counters
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        Ok((token, record))
    }

    /// Replaces `old` by a session with a fresh secret (and the same user), atomically, only
    /// while `old` still exists: `None` when it was ended meanwhile. For changes made *by* a
    /// session (a password change), which must not outlive a revocation that raced with them.
    #[tracing::instrument(level = "debug", skip_all, fields(user = new.user_id.0))]
    pub async fn rotate(
        &self,
        new: NewSession,
        old: &ActiveSession,
    ) -> Result<Option<(SessionToken, SessionRecord)>, StoreError> {
        let token = SessionToken::generate();
        let record = self.inner.policy.start(new, token.hash(), self.now());
        if !self
            .inner
            .store
            .rotate(&old.record.token_hash, &record)
            .await?
        {
            return Ok(None);
        }
        self.inner
            .counters
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        Ok(Some((token, record)))
    }

    /// Ends a session on the server.
    pub async fn end(&self, session: &ActiveSession) -> Result<(), StoreError> {
        self.inner
            .store
            .delete(&session.record.token_hash)
            .await
            .map(|_| ())
    }

    /// The `Set-Cookie` for a new session: persistent until the session's hard limit when
    /// "stay logged in" was chosen, else a browser-session cookie.
    pub fn session_cookie(&self, token: &SessionToken, record: &SessionRecord) -> HeaderValue {
        // The lifetime from the session's start (cookies are set as the session begins).
        let max_age = record
            .remember
            .then(|| record.absolute_expires_at.since(record.created_at));
        self.inner
            .cookie
            .build(self.inner.cookie.name(), token.expose(), max_age)
    }

    /// The `Set-Cookie` that removes the session cookie.
    pub fn removal_cookie(&self) -> HeaderValue {
        self.inner.cookie.removal(self.inner.cookie.name())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
    use std::time::Duration;

    use async_trait::async_trait;
    use axum::http::{header, HeaderMap};
    use sessiond_core::{
        ChangeFeed, ExpiryPolicy, NewSession, SessionData, SessionId, SessionRecord, SessionToken,
        StoreError, TokenHash, UserId,
    };
    use sessiond_store_memory::MemoryStore;

    use super::*;
    use crate::CookieConfig;

    /// The memory store, with activity writes that fail while `fail_touches` is set.
    #[derive(Debug, Default)]
    struct FailingTouches {
        inner: MemoryStore,
        fail_touches: AtomicBool,
        failed: AtomicUsize,
    }

    #[async_trait]
    impl SessionStore for FailingTouches {
        async fn create(&self, s: &SessionRecord) -> Result<(), StoreError> {
            self.inner.create(s).await
        }
        async fn load(&self, h: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
            self.inner.load(h).await
        }
        async fn touch(&self, h: &TokenHash, l: Timestamp, e: Timestamp) -> Result<(), StoreError> {
            if self.fail_touches.load(Ordering::SeqCst) {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable("touch refused by the test".into()));
            }
            self.inner.touch(h, l, e).await
        }
        async fn delete(&self, h: &TokenHash) -> Result<bool, StoreError> {
            self.inner.delete(h).await
        }
        async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
            self.inner.rotate(old, new).await
        }
        async fn list_for_user(&self, u: UserId) -> Result<Vec<SessionRecord>, StoreError> {
            self.inner.list_for_user(u).await
        }
        async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
            self.inner.list_all().await
        }
        async fn delete_by_id(
            &self,
            id: &SessionId,
            owner: Option<UserId>,
        ) -> Result<bool, StoreError> {
            self.inner.delete_by_id(id, owner).await
        }
        async fn delete_for_user(
            &self,
            u: UserId,
            keep: Option<&SessionId>,
        ) -> Result<u64, StoreError> {
            self.inner.delete_for_user(u, keep).await
        }
        async fn delete_all(&self) -> Result<u64, StoreError> {
            self.inner.delete_all().await
        }
        async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
            self.inner.purge_expired(now, limit).await
        }
        async fn load_data(&self, h: &TokenHash) -> Result<Option<SessionData>, StoreError> {
            self.inner.load_data(h).await
        }
        async fn save_data(&self, h: &TokenHash, d: &SessionData) -> Result<bool, StoreError> {
            self.inner.save_data(h, d).await
        }
        async fn patch_data(
            &self,
            h: &TokenHash,
            set: &SessionData,
            remove: &[String],
        ) -> Result<bool, StoreError> {
            self.inner.patch_data(h, set, remove).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.inner.ping().await
        }
        async fn generation(&self) -> Result<u64, StoreError> {
            self.inner.generation().await
        }
        async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
            self.inner.subscribe().await
        }
    }

    fn headers(t: &SessionToken) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("__Host-sessiond={}", t.expose()).parse().unwrap(),
        );
        h
    }

    /// A cached record whose activity write failed is dropped: otherwise the cache would judge
    /// the session by a later deadline than the store's, and a purge of sessions long expired
    /// by the store's deadline (which moves no generation) would leave it served here.
    #[tokio::test]
    async fn a_failed_activity_write_drops_the_cached_record() {
        const MIN: i64 = 60_000;
        let store = Arc::new(FailingTouches::default());
        // An hour ago by the wall clock: by the end the session is long expired by the
        // store's clock too, so the purge below is a quiet one.
        let start = Timestamp::from_system_time(SystemTime::now()).as_millis() - 60 * MIN;
        let clock = Arc::new(AtomicI64::new(start));
        let manager = {
            let clock = Arc::clone(&clock);
            SessionManager::new(
                store.clone(),
                CookieConfig::default(),
                ExpiryPolicy::default(),
            )
            .with_clock(move || Timestamp::from_millis(clock.load(Ordering::SeqCst)))
            .with_cache(100)
        };
        // Wait for the watcher's first poll, then cache the session.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let new = NewSession {
            user_id: UserId(1),
            remember: false,
            ip: None,
            user_agent: None,
            level: Default::default(),
        };
        let (token, rec) = manager.begin(new, None).await.unwrap();
        assert_eq!(rec.expires_at, Timestamp::from_millis(start + 30 * MIN));
        assert!(manager.verify(&headers(&token)).await.unwrap().is_some());
        assert_eq!(manager.cached_sessions(), 1);

        // Ten minutes later a verification's activity write fails: the store keeps the
        // deadline it had (start + 30 min).
        store.fail_touches.store(true, Ordering::SeqCst);
        clock.store(start + 10 * MIN, Ordering::SeqCst);
        assert!(manager.verify(&headers(&token)).await.unwrap().is_some());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.failed.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "no activity write");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;

        // Past the store's deadline, before the one the failed write would have given: the
        // purge removes the session without moving the generation, and the cache must not
        // serve it on.
        clock.store(start + 35 * MIN, Ordering::SeqCst);
        let generation = store.generation().await.unwrap();
        assert_eq!(
            store
                .purge_expired(Timestamp::from_millis(start + 35 * MIN), 10)
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.generation().await.unwrap(), generation);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(manager.verify(&headers(&token)).await.unwrap().is_none());
    }
}
