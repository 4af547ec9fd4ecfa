use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    NewUser, SessionData, SessionId, SessionRecord, StoreError, ThrottleRecord, Timestamp,
    TokenHash, User, UserCredentials, UserId, Username,
};

/// How long after its deadline (`expires_at`) a session must have been expired, by the
/// store's clock, for [`SessionStore::purge_expired`] to remove it without moving the
/// generation. It covers the clock skew between an instance and the store, and an activity
/// write still on its way to the store (bounded by the store's operation timeout, at most
/// 1.5 s): a verification cache whose clock is behind the store's by less than the grace
/// less that write's time refuses such a session by its own deadline check (the argument:
/// `sessiond-axum`'s `cache.rs`, "Quiet purges").
pub const PURGE_GRACE: Duration = Duration::from_secs(5);

/// Where sessions live. Implementations: memory, SQLite, PostgreSQL, Redis.
///
/// Every method takes a [`TokenHash`], never a secret. Every behaviour here is pinned by the
/// conformance suite in `sessiond-store-tests`; a store is done when that suite passes against
/// the real service.
///
/// Stores do not judge expiry: [`SessionStore::load`] may return a session whose deadline
/// passed but that was not swept yet, and the caller applies [`crate::ExpiryPolicy`].
#[async_trait]
pub trait SessionStore: Send + Sync + Debug + 'static {
    /// Inserts a new session.
    async fn create(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The session with this hash, if any.
    async fn load(&self, hash: &TokenHash) -> Result<Option<SessionRecord>, StoreError>;

    /// Records activity. Must be a no-op when the session is gone, so a coalesced write racing
    /// with a logout can never bring the session back.
    async fn touch(
        &self,
        hash: &TokenHash,
        last_seen_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Deletes one session; `true` if it existed.
    async fn delete(&self, hash: &TokenHash) -> Result<bool, StoreError>;

    /// Atomically inserts `new` and deletes `old`: no moment where both or neither are valid.
    ///
    /// Only while `old` still exists: when it is gone (logged out, revoked, its user's
    /// password reset meanwhile) nothing is inserted and the answer is `false`, so a rotation
    /// racing with a revocation can never carry the revoked session on under a new secret.
    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError>;

    /// A user's sessions, oldest first.
    async fn list_for_user(&self, user: UserId) -> Result<Vec<SessionRecord>, StoreError>;

    /// Every session, oldest first (admin listing).
    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError>;

    /// Deletes the session with this public id, only if it belongs to `owner` when given.
    async fn delete_by_id(&self, id: &SessionId, owner: Option<UserId>)
        -> Result<bool, StoreError>;

    /// Deletes every session of `user` except `keep`; returns how many went.
    async fn delete_for_user(
        &self,
        user: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError>;

    /// Deletes every session; returns how many went.
    async fn delete_all(&self) -> Result<u64, StoreError>;

    /// Ends the oldest sessions of `user` (by `created_at`, then id) so that at most
    /// `keep_newest` remain; returns how many went. The per-user session cap: a login that
    /// would exceed it ends the oldest first. This default lists and deletes one by one;
    /// stores that can do it in one statement override it.
    async fn delete_oldest_for_user(
        &self,
        user: UserId,
        keep_newest: usize,
    ) -> Result<u64, StoreError> {
        let all = self.list_for_user(user).await?;
        let excess = all.len().saturating_sub(keep_newest);
        let mut n = 0;
        for s in all.iter().take(excess) {
            n += u64::from(self.delete_by_id(&s.id, Some(user)).await?);
        }
        Ok(n)
    }

    /// One page of `user`'s sessions (or every session with `None`), ordered by
    /// `(created_at, id)`, starting after the cursor `after` (the last item of the previous
    /// page), at most `limit` of them. This default pages over the full lists; SQL stores
    /// override it with an indexed range query.
    async fn list_page(
        &self,
        user: Option<UserId>,
        after: Option<(Timestamp, SessionId)>,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let all = match user {
            Some(u) => self.list_for_user(u).await?,
            None => self.list_all().await?,
        };
        Ok(all
            .into_iter()
            .filter(|s| {
                after
                    .as_ref()
                    .is_none_or(|(t, id)| (s.created_at, s.id.as_str()) > (*t, id.as_str()))
            })
            .take(limit)
            .collect())
    }

    /// Deletes up to `limit` sessions whose `expires_at` is at or before `now`. Bounded so a
    /// sweep never holds the store for long; call again while it returns `limit` or more.
    /// A store may remove more than `limit` in one call where a backlog goes faster at once
    /// than in batches and still holds the store briefly (SQLite clears a table of long-expired
    /// sessions beside few live ones that way: `sessiond-store-sqlite`, `purge_by_truncation`).
    ///
    /// Moves the [generation](SessionStore::generation) when it removes a session whose
    /// `expires_at` is later than the store's own clock less [`PURGE_GRACE`] (a `now` ahead of
    /// that clock ended it early), and otherwise should leave it alone: a session whose
    /// deadline passed that long ago is refused by every verification cache's own deadline
    /// check already, so removing it changes no answer, and a sweep that moved the generation
    /// would flush every instance's cache once a batch. The store's clock: the database
    /// server's (PostgreSQL), the machine's that holds the file (SQLite), the process's
    /// (memory). Memory, SQLite and PostgreSQL keep this (the conformance suite's
    /// `purge.rs`); a store that moves the generation on every purge is correct but slower
    /// during sweeps.
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError>;

    /// The session's key-value data (empty if never saved); `None` if the session is gone.
    /// Kept apart from [`SessionRecord`] so verification never pays for it.
    async fn load_data(&self, hash: &TokenHash) -> Result<Option<SessionData>, StoreError>;

    /// Replaces the session's data. A no-op returning `false` when the session is gone: like
    /// [`SessionStore::touch`], a late save never resurrects a revoked session.
    async fn save_data(&self, hash: &TokenHash, data: &SessionData) -> Result<bool, StoreError>;

    /// Changes some keys of the session's data in one atomic step: sets every key of `set`
    /// to its value, removes every key of `remove` (a key in both ends up removed), and keeps
    /// every other key as stored at that moment. A no-op returning `false` when the session
    /// is gone: like [`SessionStore::save_data`], a patch never recreates a revoked session.
    ///
    /// This is what makes concurrent requests of one session safe: each saves only the keys
    /// it changed, so two requests changing different keys both keep their change, where two
    /// whole-map saves would lose one. No default: a load, merge and save would not be atomic
    /// and would lose exactly those changes.
    async fn patch_data(
        &self,
        hash: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError>;

    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A number that changes, atomically with the change, whenever a session ends before its
    /// time (delete, rotation, revocation, a purge that reached a session not expired for
    /// [`PURGE_GRACE`] yet: see [`SessionStore::purge_expired`]) or, in a store that also holds the users, a
    /// user's password, disabled flag, admin flag, groups or existence changes, whoever made
    /// the change (this process, another instance, the CLI, a hand-made change in the
    /// database). A sessions-only store (Redis) cannot see user changes; the ones made through
    /// sessiond end sessions, which it does see.
    /// Verification caches watch it to stay coherent across processes. It may also change
    /// when nothing relevant did (a spurious change only costs a cache flush); it must never
    /// stay the same across a relevant change.
    async fn generation(&self) -> Result<u64, StoreError>;

    /// Subscribes to the store's change notifications: a [`ChangeFeed`] that reports every
    /// change of [`SessionStore::generation`] as it commits, so verification caches learn of
    /// a revocation made elsewhere without polling. `Ok(None)`: this store does not push, and
    /// caches poll [`SessionStore::generation`] instead (SQLite and memory, where a poll is a
    /// local read of microseconds). No default, so a wrapper of a store cannot silently drop
    /// its notifications: it forwards this like every other method.
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError>;

    /// How many sessions have an `expires_at` after `now` (a gauge of active sessions, read
    /// now and then off the request path, never per request). `None`: the store cannot
    /// count. A count walks the expiry index, so it costs time in proportion to the
    /// sessions; call it every few seconds at most.
    async fn count_active(&self, now: Timestamp) -> Result<Option<u64>, StoreError> {
        let _ = now;
        Ok(None)
    }
}

/// A live subscription to a store's change notifications ([`SessionStore::subscribe`]):
/// PostgreSQL `LISTEN`, Redis pub/sub.
///
/// Its owner (the verification cache's watcher) waits on [`ChangeFeed::changed`] and, every
/// heartbeat, reads [`ChangeFeed::generation`] over the same connection. The heartbeat proves
/// the connection alive (a notification connection can hang without closing), and catches a
/// change whose notification never came: one made without notifying, such as a hand-made
/// update of the generation itself. Any error means the subscription is lost: the owner stops
/// trusting what it cached and subscribes again.
#[async_trait]
pub trait ChangeFeed: Send + Debug {
    /// Waits for the next notification that the generation changed. Must be cancel-safe: the
    /// owner selects on it together with its heartbeat timer, and a notification that arrived
    /// while no call was waiting is returned by the next call.
    async fn changed(&mut self) -> Result<(), StoreError>;

    /// The store's generation (as [`SessionStore::generation`]), read over the subscription's
    /// own connection.
    async fn generation(&mut self) -> Result<u64, StoreError>;
}

/// Failure counters (login throttling, device cookies), shared by every instance.
///
/// A capability of its own beside [`SessionStore`]: the counters live in the session store's
/// backend, but nothing that verifies or ends sessions needs them, so a wrapper of a session
/// store (the verification cache's) does not have to forward them. Every store of this
/// workspace implements both; the conformance suite pins each behaviour
/// (`sessiond-store-tests`, `throttle.rs`).
#[async_trait]
pub trait ThrottleStore: Send + Sync + Debug + 'static {
    /// Counts one more event under `key` (login throttling, device cookies), atomically
    /// across instances: a counter whose window is over (or none) starts again at 1 with a
    /// window of `window` from `now`; otherwise it is incremented and its window kept.
    /// Returns the counter after the change.
    async fn throttle_hit(
        &self,
        key: &str,
        now: Timestamp,
        window: Duration,
    ) -> Result<ThrottleRecord, StoreError>;

    /// The counter under `key`, if its window is still open at `now`.
    async fn throttle_get(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<ThrottleRecord>, StoreError>;

    /// [`Self::throttle_get`] for each of `keys`, in their order: one login checks several
    /// counters before any password work, and a store that can read them in one round trip
    /// (PostgreSQL: one query) overrides this default, which asks for them one by one.
    async fn throttle_get_many(
        &self,
        keys: &[&str],
        now: Timestamp,
    ) -> Result<Vec<Option<ThrottleRecord>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.throttle_get(key, now).await?);
        }
        Ok(out)
    }

    /// Every counter whose window is open at `now`, by key.
    async fn throttle_list(
        &self,
        now: Timestamp,
    ) -> Result<Vec<(String, ThrottleRecord)>, StoreError>;

    /// Removes a counter; `true` if it existed.
    async fn throttle_delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Applies several counter changes, each exactly as [`Self::throttle_hit`] or
    /// [`Self::throttle_delete`] would: one login's bookkeeping in one call, which the stores
    /// make one transaction (SQLite: one commit, one fsync, instead of one per change).
    /// Changes to one key apply in the order given; changes to different keys are
    /// independent, so a store may reorder those (PostgreSQL sorts them, so concurrent calls
    /// lock rows in one order).
    ///
    /// For changes whose loss errs on the strict side only (refunds, the counters a right
    /// password clears, device registrations): a store may commit them without waiting for
    /// the disk, so a crash of the store's machine may lose the last of them (PostgreSQL
    /// does, for at most 0.6 s; docs/deployment.md, "Durability"). Failures that must
    /// count go through [`Self::throttle_reserve`] or [`Self::throttle_hit`].
    async fn throttle_apply(
        &self,
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Compare-and-apply, the step that makes login throttling atomic: in one atomic step
    /// across every instance, if each of `expected`'s keys still meets its [`ThrottleExpect`]
    /// (on the counter as [`Self::throttle_get`] would answer at `now`), applies `changes` as
    /// [`Self::throttle_apply`] would and returns `true`; otherwise changes nothing and
    /// returns `false` (the caller reads again, decides again, and retries).
    ///
    /// The throttle reads the counters, decides with the pure rules of [`crate::Counter`],
    /// and reserves the attempt with this call *before* any password work: of many parallel
    /// attempts that read the same counters only one can reserve, so no burst gets past the
    /// limit (the conformance suite checks it with a parallel burst). No default: a
    /// check-then-act one would let bursts through.
    async fn throttle_reserve(
        &self,
        expected: &[(&str, ThrottleExpect)],
        changes: &[ThrottleChange<'_>],
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// What [`ThrottleStore::throttle_reserve`] expects of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleExpect {
    /// Exactly this counter (`None`: absent, or its window is over). For a counter at or
    /// past its threshold, whose verdict depends on every field.
    Exactly(Option<ThrottleRecord>),
    /// A live count (0 when absent or over) below this. For a counter below its threshold:
    /// it cannot hold an attempt back until it reaches the threshold, so any count below it
    /// gives the same verdict, and attempts far from the limit never conflict.
    Below(u64),
}

impl ThrottleExpect {
    /// Whether `current` (as [`ThrottleStore::throttle_get`] answers) meets this.
    pub fn holds(&self, current: Option<ThrottleRecord>) -> bool {
        match *self {
            Self::Exactly(e) => current == e,
            Self::Below(n) => current.map_or(0, |r| r.count) < n,
        }
    }
}

/// One change of [`ThrottleStore::throttle_apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleChange<'a> {
    /// As [`ThrottleStore::throttle_hit`].
    Hit {
        /// The counter.
        key: &'a str,
        /// How long a fresh window lasts.
        window: Duration,
    },
    /// As [`ThrottleStore::throttle_delete`].
    Delete {
        /// The counter.
        key: &'a str,
    },
    /// Gives back one event of a live counter (an attempt reserved as a failure that turned
    /// out not to be one): its count goes down by one, its window and latest time stay; a
    /// counter that reaches zero is removed. Nothing happens to a missing or expired one.
    Refund {
        /// The counter.
        key: &'a str,
    },
}

impl ThrottleChange<'_> {
    /// For stores that apply the changes elsewhere (a writer thread, a transaction): the key
    /// as an owned string, and what to do to it (a hit with the end of the fresh window it
    /// opens at `now`).
    pub fn to_op_at(&self, now: Timestamp) -> (String, ThrottleOp) {
        match *self {
            Self::Hit { key, window } => (
                key.to_owned(),
                ThrottleOp::Hit(now.plus(window).as_millis()),
            ),
            Self::Delete { key } => (key.to_owned(), ThrottleOp::Delete),
            Self::Refund { key } => (key.to_owned(), ThrottleOp::Refund),
        }
    }
}

/// An owned [`ThrottleChange`] for stores that apply it elsewhere (see
/// [`ThrottleChange::to_op_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleOp {
    /// A hit; a fresh window ends at this many milliseconds.
    Hit(i64),
    /// See [`ThrottleChange::Delete`].
    Delete,
    /// See [`ThrottleChange::Refund`].
    Refund,
}

/// Where users live (SQLite or PostgreSQL; never Redis).
#[async_trait]
pub trait UserStore: Send + Sync + Debug + 'static {
    /// Creates a user; [`StoreError::Conflict`] if the username (case-insensitively) exists.
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError>;

    /// Creates `new` only if there are no users at all, atomically, so several instances
    /// starting at once create the first admin exactly once.
    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError>;

    /// Looks a user up by name, case-insensitively, with the password hash.
    async fn user_by_name(&self, name: &Username) -> Result<Option<UserCredentials>, StoreError>;

    /// Looks a user up by id (without the password hash).
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;

    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;

    /// Replaces the password hash; `false` if no such user.
    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError>;

    /// Replaces the password hash only if it is still `expected` (compare-and-set, atomic in
    /// the store); `false` if it changed meanwhile or there is no such user. A change that
    /// verified a password against `expected` writes with this, so it can never overwrite a
    /// reset that landed after its verification (an admin's reset is never silently undone).
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        phc: &str,
    ) -> Result<bool, StoreError>;

    /// `false` if no such user.
    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError>;

    /// `false` if no such user.
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError>;
}
