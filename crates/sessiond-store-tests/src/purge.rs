//! Which purges move the generation ([`SessionStore::purge_expired`]): one that removes a
//! session not yet expired by the store's clock, or expired for less than [`PURGE_GRACE`],
//! moves it; one that removes only sessions expired longer ago leaves it alone, so a sweep does
//! not flush every instance's verification cache once a batch.
//!
//! Run by [`crate::conformance_tests!`] (memory, SQLite, PostgreSQL), not by
//! [`crate::session_store_tests!`] alone: Redis still moves the generation on every purge that
//! removes a session, which is correct, only slower during sweeps.
//!
//! Unlike the rest of the suite these read the wall clock: the rule is relative to the
//! store's own clock (the same machine's in tests), which a `now` passed in cannot move.

use std::time::{Duration, SystemTime};

use sessiond_core::{SessionRecord, SessionStore, SessionToken, Timestamp, PURGE_GRACE};

use crate::sessions::session_at;

/// The idle timeout of the suite's policy: a session started at `t` expires at `t + IDLE`.
const IDLE: Duration = Duration::from_secs(1800);

fn wall_clock() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A session of `user` whose deadline is `expires_at`, with its secret.
fn expiring_at(user: i64, expires_at: Timestamp) -> (SessionToken, SessionRecord) {
    let (t, r) = session_at(user, expires_at.minus(IDLE));
    assert_eq!(r.expires_at, expires_at);
    (t, r)
}

pub async fn a_purge_of_long_expired_sessions_leaves_the_generation_alone<S: SessionStore>(
    store: S,
) {
    let now = wall_clock();
    // Expired an hour ago, a minute ago, and ten seconds more than the grace ago (ten
    // seconds of margin for a slow test between this clock reading and the purge).
    for ago in [3_600, 60, PURGE_GRACE.as_secs() + 10] {
        let (_, r) = expiring_at(1, now.minus(Duration::from_secs(ago)));
        store.create(&r).await.unwrap();
    }
    let (live_t, live) = session_at(1, now);
    store.create(&live).await.unwrap();
    let before = store.generation().await.unwrap();
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 2);
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 1);
    assert_eq!(
        store.generation().await.unwrap(),
        before,
        "a purge of sessions expired long ago moved the generation"
    );
    // Nothing left to remove: nothing moves either.
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 0);
    assert_eq!(store.generation().await.unwrap(), before);
    assert!(store.load(&live_t.hash()).await.unwrap().is_some());
}

pub async fn a_purge_within_the_grace_moves_the_generation<S: SessionStore>(store: S) {
    let now = wall_clock();
    // Expired a second ago: a verification cache whose clock is a few seconds behind the
    // store's may still take it for valid, so its removal must reach every cache.
    for ago in [3_600, 1] {
        let (_, r) = expiring_at(1, now.minus(Duration::from_secs(ago)));
        store.create(&r).await.unwrap();
    }
    let before = store.generation().await.unwrap();
    assert_eq!(store.purge_expired(now, 10).await.unwrap(), 2);
    assert_ne!(
        store.generation().await.unwrap(),
        before,
        "a purge of a session expired within the grace left the generation unchanged"
    );
}

pub async fn a_purge_ahead_of_the_store_clock_moves_the_generation<S: SessionStore>(store: S) {
    let now = wall_clock();
    // Live by the store's clock; the caller's `now`, an hour ahead of it, ends it early.
    let (gone, r) = expiring_at(1, now.plus(IDLE));
    store.create(&r).await.unwrap();
    let before = store.generation().await.unwrap();
    assert_eq!(
        store
            .purge_expired(now.plus(Duration::from_secs(3_600)), 10)
            .await
            .unwrap(),
        1
    );
    assert_ne!(
        store.generation().await.unwrap(),
        before,
        "a purge that ended a live session left the generation unchanged"
    );
    assert!(store.load(&gone.hash()).await.unwrap().is_none());
}
