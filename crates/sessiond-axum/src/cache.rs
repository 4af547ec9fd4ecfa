//! The verification cache: verified session records kept in process, coherent with the
//! store across processes.
//!
//! A cache is allowed only if a revocation made anywhere is honoured at once on the instance
//! that made it and within 100 ms everywhere else, the cache is bounded, and nothing is served
//! from it while the store is unreachable (docs/reference/sessions.md, "The verification
//! cache"). How this one keeps those promises:
//!
//! * **Epochs.** Every entry carries the epoch current *before* its record was read from the
//!   store; it is served only while the epoch is unchanged. The epoch moves on after every
//!   early end of a session made through this process ([`WatchedStore`]) and whenever the
//!   store's own [`SessionStore::generation`] changes (another instance, the CLI). Reading
//!   the epoch before the store and bumping it after the write closes the race where a
//!   request reads a session just before it is revoked and caches it just after.
//! * **A watcher** polls the generation every [`POLL_EVERY`]. Entries are served only while
//!   the last successful poll *started* less than [`FRESH_FOR`] ago: a change committed
//!   elsewhere is seen within that bound, and a store that stops answering (down, frozen)
//!   turns the cache off within it, so requests go to the store and fail closed.
//! * **Bounded**: at [`SessionManager::with_cache`]'s capacity the map is emptied, never
//!   grown. Only sessions that verified are cached (random tokens can't fill it).
//! * Expiry is re-evaluated from the cached record on every use; activity writes update the
//!   cached record too.
//!
//! [`SessionManager::with_cache`]: crate::SessionManager::with_cache

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::manager::Counters;
use async_trait::async_trait;
use sessiond_core::{
    SessionData, SessionId, SessionRecord, SessionStore, StoreError, Timestamp, TokenHash,
    TokenHashState, UserId,
};

/// How often the watcher asks the store for its generation.
pub const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long after the start of the last successful poll entries may still be served. With
/// [`POLL_EVERY`] and a fast store this leaves ample margin within the 100 ms bound
/// (docs/reference/sessions.md, "What ends a session").
pub const FRESH_FOR: Duration = Duration::from_millis(60);

/// Records by token hash, each with the epoch it was read under.
type Entries = HashMap<[u8; 32], (u64, Arc<SessionRecord>), TokenHashState>;

#[derive(Debug)]
pub(crate) struct Cache {
    entries: Mutex<Entries>,
    capacity: usize,
    epoch: AtomicU64,
    /// Nanoseconds since `origin` at which the last successful poll started (0: none yet).
    fresh_since: AtomicU64,
    origin: Instant,
    /// The manager's counters (epoch changes, failed polls).
    counters: Arc<Counters>,
}

impl Cache {
    pub(crate) fn new(capacity: usize, counters: Arc<Counters>) -> Self {
        Self {
            entries: Mutex::new(HashMap::default()),
            capacity: capacity.max(1),
            epoch: AtomicU64::new(1),
            fresh_since: AtomicU64::new(0),
            origin: Instant::now(),
            counters,
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The epoch to tag a read with, or `None` when the cache must not be used now (no
    /// recent successful poll).
    pub(crate) fn epoch(&self) -> Option<u64> {
        let since = self.fresh_since.load(Ordering::Acquire);
        let fresh = since != 0 && self.nanos().saturating_sub(since) < FRESH_FOR.as_nanos() as u64;
        fresh.then(|| self.epoch.load(Ordering::Acquire))
    }

    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The record cached under `epoch` (the caller's [`Self::epoch`], read once per
    /// verification).
    pub(crate) fn get(&self, hash: &TokenHash, now: u64) -> Option<Arc<SessionRecord>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(hash.as_bytes()) {
            Some((e, rec)) if *e == now => Some(Arc::clone(rec)),
            _ => None,
        }
    }

    pub(crate) fn put(&self, epoch: u64, record: Arc<SessionRecord>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(*record.token_hash.as_bytes(), (epoch, record));
    }

    /// Keeps a cached record's activity in step with the store's.
    pub(crate) fn touched(&self, hash: &TokenHash, last_seen_at: Timestamp, expires_at: Timestamp) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rec)) = entries.get_mut(hash.as_bytes()) {
            let mut r = SessionRecord::clone(rec);
            r.last_seen_at = r.last_seen_at.max(last_seen_at);
            r.expires_at = r.expires_at.max(expires_at);
            *rec = Arc::new(r);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Polls the store's generation until the cache is gone.
pub(crate) fn spawn_watcher(cache: &Arc<Cache>, store: Arc<dyn SessionStore>) {
    let weak: Weak<Cache> = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut seen: Option<u64> = None;
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cache) = weak.upgrade() else { return };
            let started = cache.nanos().max(1);
            match store.generation().await {
                Ok(g) => {
                    if seen.is_some_and(|s| s != g) {
                        cache.bump();
                        (cache.counters.epoch_changes_remote).fetch_add(1, Ordering::Relaxed);
                    }
                    seen = Some(g);
                    cache.fresh_since.fetch_max(started, Ordering::AcqRel);
                }
                Err(e) => {
                    // Unreachable: stop serving from the cache (it goes stale within
                    // FRESH_FOR anyway) and forget what we saw.
                    tracing::debug!(error = %e, "session store generation unavailable");
                    cache.fresh_since.store(0, Ordering::Release);
                    cache.bump();
                    (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                    seen = None;
                }
            }
        }
    });
}

/// A store that tells the cache about every early end of a session made through it, after
/// the store has made it.
pub(crate) struct WatchedStore {
    pub(crate) inner: Arc<dyn SessionStore>,
    pub(crate) cache: Arc<Cache>,
}

/// Shows as the store it wraps (logs and tests name the backend).
impl std::fmt::Debug for WatchedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl WatchedStore {
    fn changed<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        // Bumped on errors too: a write that failed half-way may still have happened.
        self.cache.bump();
        (self.cache.counters.epoch_changes_local).fetch_add(1, Ordering::Relaxed);
        r
    }
}

#[async_trait]
impl SessionStore for WatchedStore {
    async fn create(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.inner.create(s).await
    }
    async fn load(&self, h: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.load(h).await
    }
    async fn touch(&self, h: &TokenHash, l: Timestamp, e: Timestamp) -> Result<(), StoreError> {
        self.inner.touch(h, l, e).await
    }
    async fn delete(&self, h: &TokenHash) -> Result<bool, StoreError> {
        let r = self.inner.delete(h).await;
        self.changed(r)
    }
    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        let r = self.inner.rotate(old, new).await;
        self.changed(r)
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
        let r = self.inner.delete_by_id(id, owner).await;
        self.changed(r)
    }
    async fn delete_for_user(
        &self,
        u: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        let r = self.inner.delete_for_user(u, keep).await;
        self.changed(r)
    }
    async fn delete_all(&self) -> Result<u64, StoreError> {
        let r = self.inner.delete_all().await;
        self.changed(r)
    }
    async fn delete_oldest_for_user(&self, u: UserId, keep: usize) -> Result<u64, StoreError> {
        let r = self.inner.delete_oldest_for_user(u, keep).await;
        // Every login calls this; flushing the cache when nothing ended would empty it at
        // the rate of logins.
        if matches!(r, Ok(0)) {
            return r;
        }
        self.changed(r)
    }
    async fn list_page(
        &self,
        u: Option<UserId>,
        after: Option<(Timestamp, SessionId)>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        self.inner.list_page(u, after, limit).await
    }
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        // Expired sessions are refused by their deadline already; no flush needed.
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
    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        self.inner.count_active(now).await
    }
}
