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
//! * **A watcher** keeps the epoch in step with the store. A store that pushes
//!   ([`SessionStore::subscribe`]: PostgreSQL `LISTEN`, Redis pub/sub) reports each change as
//!   it commits, and the epoch moves on when the notification arrives; every
//!   [`HEARTBEAT_EVERY`] the watcher also reads the generation over the subscription's own
//!   connection, which proves the connection alive and catches a change that came without a
//!   notification. Entries are served only while the last successful heartbeat *started*
//!   less than [`PUSH_FRESH_FOR`] ago, and not at all from the moment the subscription is lost
//!   until it is back and its first heartbeat has resynchronised the epoch. A store that does
//!   not push (SQLite, memory: a local read) is polled every [`POLL_EVERY`] instead, and
//!   entries are served only while the last successful poll started less than [`FRESH_FOR`]
//!   ago. Either way a store that stops answering (down, frozen) turns the cache off within
//!   that bound, so requests go to the store and fail closed.
//! * **Bounded**: at [`SessionManager::with_cache`]'s capacity the map is emptied, never
//!   grown. Only sessions that verified are cached (random tokens can't fill it).
//! * Expiry is re-evaluated from the cached record on every use; activity writes update the
//!   cached record too.
//! * **Quiet purges.** A purge that removes only sessions whose `expires_at` passed more than
//!   [`PURGE_GRACE`] ago by the store's clock leaves the generation alone
//!   ([`SessionStore::purge_expired`]), so a sweep does not flush every instance's cache once
//!   a batch. No cache can still serve such a session, for these reasons. A cached entry is
//!   the whole [`SessionRecord`]; its deadline, as [`ExpiryPolicy::evaluate`] judges it on
//!   every use, is `ExpiryPolicy::deadline(record, record.last_seen_at)`: the absolute
//!   deadline, or for a session not remembered the earlier of that and `last_seen_at + idle`.
//!   The store's `expires_at` is the same deadline as of the latest activity it recorded, and
//!   only ever grows: every touch keeps the later of the stored and the new values (`max`,
//!   `GREATEST`), whichever instance writes it. The cached `last_seen_at` is one the store
//!   had when the record was read, or one this instance's own activity write carried, which
//!   the store takes unless the session is gone; a write that fails drops the entry
//!   ([`Cache::forget`]), so the cache never keeps a later activity than the store received.
//!   So the cache's deadline is never later than the store's `expires_at`, and a session the
//!   store holds expired since `store clock - PURGE_GRACE` is refused here as soon as this
//!   instance's clock reads that time, that is whenever it is less than [`PURGE_GRACE`]
//!   behind the store's. An activity write still in flight when the purge comes (at most
//!   the store's operation timeout, 1 to 1.5 s) takes from that margin. This assumes the
//!   instances that share a store share its expiry policy (a longer `idle` on one instance
//!   would let its cache serve a session after another instance recorded its deadline).
//!
//! [`SessionManager::with_cache`]: crate::SessionManager::with_cache

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::manager::Counters;
use async_trait::async_trait;
use sessiond_core::{
    ChangeFeed, SessionData, SessionId, SessionRecord, SessionStore, StoreError, Timestamp,
    TokenHash, TokenHashState, UserId,
};
#[cfg(doc)]
use sessiond_core::{ExpiryPolicy, PURGE_GRACE};

/// How often the watcher asks a store that does not push for its generation.
pub const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long after the start of the last successful poll entries may still be served. With
/// [`POLL_EVERY`] and a fast store this leaves ample margin within the 100 ms bound
/// (docs/reference/sessions.md, "What ends a session").
pub const FRESH_FOR: Duration = Duration::from_millis(60);
/// How often the watcher of a pushing store reads the generation over the subscription's
/// connection: the only store request an idle instance makes (0.8 a second: the target is at
/// most one, docs/reference/performance.md).
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(1250);
/// How long after the start of the last successful heartbeat entries of a pushing store may
/// still be served: a heartbeat's round trip may take up to half a second before the cache
/// turns off, and a store that stops answering stops the cache within this bound, under the
/// 2 s the fail-closed promise allows (docs/reference/sessions.md, "The verification cache").
pub const PUSH_FRESH_FOR: Duration = Duration::from_millis(1750);
/// How long the watcher waits before subscribing again after a failure.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(100);

/// Records by token hash, each with the epoch it was read under.
type Entries = HashMap<[u8; 32], (u64, Arc<SessionRecord>), TokenHashState>;

#[derive(Debug)]
pub(crate) struct Cache {
    entries: Mutex<Entries>,
    capacity: usize,
    epoch: AtomicU64,
    /// Nanoseconds since `origin` at which the last successful poll or heartbeat started
    /// (0: none yet, or the cache is off).
    fresh_since: AtomicU64,
    /// How long after `fresh_since` entries may be served: [`FRESH_FOR`] when polling,
    /// [`PUSH_FRESH_FOR`] with a subscription.
    fresh_for: AtomicU64,
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
            fresh_for: AtomicU64::new(FRESH_FOR.as_nanos() as u64),
            origin: Instant::now(),
            counters,
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The epoch to tag a read with, or `None` when the cache must not be used now (no
    /// recent successful poll or heartbeat).
    pub(crate) fn epoch(&self) -> Option<u64> {
        let since = self.fresh_since.load(Ordering::Acquire);
        let fresh = since != 0
            && self.nanos().saturating_sub(since) < self.fresh_for.load(Ordering::Relaxed);
        fresh.then(|| self.epoch.load(Ordering::Acquire))
    }

    /// Stops serving until the next successful poll or heartbeat, and drops every entry from
    /// use (whatever changed meanwhile is unknown).
    fn off(&self) {
        self.fresh_since.store(0, Ordering::Release);
        self.bump();
    }

    /// A change reported by the store: every entry is dropped from use.
    fn changed_remotely(&self) {
        self.bump();
        (self.counters.epoch_changes_remote).fetch_add(1, Ordering::Relaxed);
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

    /// Drops the entry of `hash`, if any: its next verification reads the store.
    pub(crate) fn forget(&self, hash: &TokenHash) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(hash.as_bytes());
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Watches the store until the cache is gone: follows its notifications when it pushes,
/// polls its generation otherwise.
pub(crate) fn spawn_watcher(cache: &Arc<Cache>, store: Arc<dyn SessionStore>) {
    let weak: Weak<Cache> = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            if weak.strong_count() == 0 {
                return;
            }
            match store.subscribe().await {
                Ok(Some(feed)) => {
                    warned = false;
                    follow(&weak, feed).await;
                }
                Ok(None) => return poll(&weak, &*store).await,
                Err(e) => {
                    // Fail closed: nothing is served from the cache until a subscription
                    // works (a store that cannot subscribe, e.g. PostgreSQL behind a
                    // transaction-pooling proxy, gets no cache at all, only slower answers).
                    if !warned {
                        tracing::warn!(error = %e, "cannot subscribe to the session store's changes; the verification cache is off until it can");
                        warned = true;
                    }
                    if let Some(cache) = weak.upgrade() {
                        cache.off();
                        (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    });
}

/// Follows one subscription until it fails (the cache is then off) or the cache is gone.
async fn follow(weak: &Weak<Cache>, mut feed: Box<dyn ChangeFeed>) {
    if let Some(cache) = weak.upgrade() {
        cache
            .fresh_for
            .store(PUSH_FRESH_FOR.as_nanos() as u64, Ordering::Relaxed);
    }
    // The generation of the last heartbeat; the first one (at once) makes the cache fresh.
    let mut seen: Option<u64> = None;
    let mut next_beat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            changed = feed.changed() => {
                let Some(cache) = weak.upgrade() else { return };
                match changed {
                    Ok(()) => cache.changed_remotely(),
                    Err(e) => {
                        tracing::debug!(error = %e, "session store subscription lost");
                        cache.off();
                        (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            () = tokio::time::sleep_until(next_beat) => {
                let Some(cache) = weak.upgrade() else { return };
                let started = cache.nanos().max(1);
                next_beat = tokio::time::Instant::now() + HEARTBEAT_EVERY;
                // Bounded here too: past PUSH_FRESH_FOR the cache is off anyway, and a
                // connection that does not answer is replaced by a new subscription.
                match tokio::time::timeout(PUSH_FRESH_FOR, feed.generation()).await {
                    Ok(Ok(g)) => {
                        if seen.is_some_and(|s| s != g) {
                            // A change whose notification did not come.
                            cache.changed_remotely();
                        }
                        seen = Some(g);
                        cache.fresh_since.fetch_max(started, Ordering::AcqRel);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "session store heartbeat failed");
                        cache.off();
                        (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("session store heartbeat timed out");
                        cache.off();
                        (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }
}

/// Polls the generation of a store that does not push, until the cache is gone.
async fn poll(weak: &Weak<Cache>, store: &dyn SessionStore) {
    if let Some(cache) = weak.upgrade() {
        // A store that pushed before and polls now (a Redis replaced by one without RESP3)
        // gets the polling bound back.
        cache
            .fresh_for
            .store(FRESH_FOR.as_nanos() as u64, Ordering::Relaxed);
    }
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
                    cache.changed_remotely();
                }
                seen = Some(g);
                cache.fresh_since.fetch_max(started, Ordering::AcqRel);
            }
            Err(e) => {
                // Unreachable: stop serving from the cache (it goes stale within
                // FRESH_FOR anyway) and forget what we saw.
                tracing::debug!(error = %e, "session store generation unavailable");
                cache.off();
                (cache.counters.generation_poll_failures).fetch_add(1, Ordering::Relaxed);
                seen = None;
            }
        }
    }
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
        // Expired sessions are refused by their deadline already; no flush needed. (A `now`
        // ahead of the store's clock may end live sessions early: the store then moves its
        // generation, and the watcher flushes this cache too.)
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
    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        self.inner.count_active(now).await
    }
}

#[cfg(test)]
mod tests {
    //! The watcher of a pushing store, against a feed the test controls (the real feeds,
    //! PostgreSQL's and Redis's, are tested against their servers in their crates and in the
    //! server's multi-instance tests).
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::sync::mpsc;

    /// A feed whose notifications, generation and failures the test decides.
    #[derive(Debug)]
    struct Feed {
        events: mpsc::UnboundedReceiver<Result<(), StoreError>>,
        generation: Arc<AtomicU64>,
        hang: Arc<AtomicBool>,
    }

    #[async_trait]
    impl ChangeFeed for Feed {
        async fn changed(&mut self) -> Result<(), StoreError> {
            match self.events.recv().await {
                Some(e) => e,
                None => std::future::pending().await,
            }
        }
        async fn generation(&mut self) -> Result<u64, StoreError> {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(self.generation.load(Ordering::SeqCst))
        }
    }

    struct Harness {
        cache: Arc<Cache>,
        events: mpsc::UnboundedSender<Result<(), StoreError>>,
        generation: Arc<AtomicU64>,
        hang: Arc<AtomicBool>,
        follower: tokio::task::JoinHandle<()>,
    }

    fn start() -> Harness {
        let cache = Arc::new(Cache::new(10, Arc::new(Counters::default())));
        let (events, rx) = mpsc::unbounded_channel();
        let generation = Arc::new(AtomicU64::new(7));
        let hang = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            events: rx,
            generation: Arc::clone(&generation),
            hang: Arc::clone(&hang),
        };
        let weak = Arc::downgrade(&cache);
        let follower = tokio::spawn(async move { follow(&weak, Box::new(feed)).await });
        Harness {
            cache,
            events,
            generation,
            hang,
            follower,
        }
    }

    /// Waits (up to `within`) for `f` to hold; how long it took.
    async fn until(within: Duration, f: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < within, "not within {within:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        start.elapsed()
    }

    #[tokio::test]
    async fn the_first_heartbeat_turns_the_cache_on_and_a_notification_moves_the_epoch() {
        let h = start();
        until(Duration::from_millis(500), || h.cache.epoch().is_some()).await;
        let before = h.cache.epoch().unwrap();
        h.events.send(Ok(())).unwrap();
        until(Duration::from_millis(500), || {
            h.cache.epoch().is_some_and(|e| e != before)
        })
        .await;
        assert_eq!(
            h.cache.counters.epoch_changes_remote.load(Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn a_lost_subscription_turns_the_cache_off_at_once() {
        let h = start();
        until(Duration::from_millis(500), || h.cache.epoch().is_some()).await;
        h.events
            .send(Err(StoreError::Unavailable("connection closed".into())))
            .unwrap();
        until(Duration::from_millis(500), || h.cache.epoch().is_none()).await;
        // The follower gives up; the watcher subscribes anew (and the cache stays off until
        // that subscription's first heartbeat).
        tokio::time::timeout(Duration::from_secs(1), h.follower)
            .await
            .expect("the follower returns")
            .unwrap();
        assert!(h.cache.epoch().is_none());
    }

    #[tokio::test]
    async fn a_change_without_a_notification_is_caught_by_the_next_heartbeat() {
        let h = start();
        until(Duration::from_millis(500), || h.cache.epoch().is_some()).await;
        let before = h.cache.epoch().unwrap();
        h.generation.fetch_add(1, Ordering::SeqCst);
        let took = until(HEARTBEAT_EVERY + Duration::from_millis(500), || {
            h.cache.epoch().is_some_and(|e| e != before)
        })
        .await;
        assert!(
            took <= HEARTBEAT_EVERY + Duration::from_millis(500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_heartbeat_that_never_answers_turns_the_cache_off_within_its_bound() {
        let h = start();
        until(Duration::from_millis(500), || h.cache.epoch().is_some()).await;
        let since = Instant::now();
        h.hang.store(true, Ordering::SeqCst);
        // The last heartbeat started at most HEARTBEAT_EVERY before `since`, so entries
        // stop being served at most PUSH_FRESH_FOR after `since` (a little later for the
        // test's own polling).
        until(PUSH_FRESH_FOR + Duration::from_millis(250), || {
            h.cache.epoch().is_none()
        })
        .await;
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "{:?}",
            since.elapsed()
        );
        // And it stays off: the hung heartbeat's timeout ends the subscription.
        tokio::time::timeout(PUSH_FRESH_FOR * 3, h.follower)
            .await
            .expect("the follower returns")
            .unwrap();
        assert!(h.cache.epoch().is_none());
    }
}
