//! [`SessionStore`] behaviours.

use std::sync::Arc;
use std::time::Duration;

use sessiond_core::{
    AuthLevel, ExpiryPolicy, NewSession, SessionData, SessionId, SessionRecord, SessionStore,
    SessionToken, StoreError, Timestamp, UserId,
};

/// A fixed, arbitrary "now" (2026-01-01) so tests never read a clock.
pub const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

pub fn policy() -> ExpiryPolicy {
    ExpiryPolicy {
        idle: Duration::from_secs(1800),
        absolute: Duration::from_secs(12 * 3600),
        remember: Duration::from_secs(30 * 86400),
    }
}

/// A session for `user` starting at `at`, with its secret.
pub fn session_at(user: i64, at: Timestamp) -> (SessionToken, SessionRecord) {
    let token = SessionToken::generate();
    let rec = policy().start(
        NewSession {
            user_id: UserId(user),
            remember: false,
            ip: Some("203.0.113.7".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into()),
            level: Default::default(),
        },
        token.hash(),
        at,
    );
    (token, rec)
}

fn session(user: i64) -> (SessionToken, SessionRecord) {
    session_at(user, T0)
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + ms)
}

fn ids(v: &[SessionRecord]) -> Vec<SessionId> {
    v.iter().map(|s| s.id.clone()).collect()
}

pub async fn create_then_load_round_trips<S: SessionStore>(store: S) {
    let (t, mut rec) = session(1);
    rec.remember = true;
    store.create(&rec).await.unwrap();
    assert_eq!(store.load(&t.hash()).await.unwrap(), Some(rec));

    // Optional fields round-trip as absent.
    let (t2, mut rec2) = session(1);
    rec2.ip = None;
    rec2.user_agent = None;
    store.create(&rec2).await.unwrap();
    assert_eq!(store.load(&t2.hash()).await.unwrap(), Some(rec2));
}

pub async fn load_of_unknown_hash_is_none<S: SessionStore>(store: S) {
    let (_, rec) = session(1);
    store.create(&rec).await.unwrap();
    assert_eq!(
        store.load(&SessionToken::generate().hash()).await.unwrap(),
        None
    );
}

pub async fn duplicate_hash_is_a_conflict<S: SessionStore>(store: S) {
    let (_, rec) = session(1);
    store.create(&rec).await.unwrap();
    let mut again = rec.clone();
    again.id = SessionId::generate();
    assert!(matches!(
        store.create(&again).await,
        Err(StoreError::Conflict)
    ));
}

pub async fn touch_records_activity_and_never_goes_back<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    store.create(&rec).await.unwrap();
    store
        .touch(&t.hash(), at(60_000), at(1_860_000))
        .await
        .unwrap();
    let got = store.load(&t.hash()).await.unwrap().unwrap();
    assert_eq!(got.last_seen_at, at(60_000));
    assert_eq!(got.expires_at, at(1_860_000));
    // A late, older write (two instances, coalesced) must not move activity backwards.
    store
        .touch(&t.hash(), at(30_000), at(1_830_000))
        .await
        .unwrap();
    let got = store.load(&t.hash()).await.unwrap().unwrap();
    assert_eq!(got.last_seen_at, at(60_000));
    assert_eq!(got.expires_at, at(1_860_000));
    // Nothing else changed.
    assert_eq!(got.created_at, rec.created_at);
    assert_eq!(got.absolute_expires_at, rec.absolute_expires_at);
}

pub async fn touch_after_delete_does_not_resurrect<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    store.create(&rec).await.unwrap();
    assert!(store.delete(&t.hash()).await.unwrap());
    store
        .touch(&t.hash(), at(60_000), at(1_860_000))
        .await
        .unwrap();
    assert_eq!(store.load(&t.hash()).await.unwrap(), None);
    assert!(store.list_for_user(UserId(1)).await.unwrap().is_empty());
}

pub async fn delete_reports_whether_it_existed<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    let (t2, rec2) = session(1);
    store.create(&rec).await.unwrap();
    store.create(&rec2).await.unwrap();
    assert!(store.delete(&t.hash()).await.unwrap());
    assert!(!store.delete(&t.hash()).await.unwrap());
    assert_eq!(store.load(&t.hash()).await.unwrap(), None);
    assert_eq!(store.load(&t2.hash()).await.unwrap(), Some(rec2));
}

pub async fn rotate_swaps_old_for_new<S: SessionStore>(store: S) {
    let (old_t, old) = session(1);
    store.create(&old).await.unwrap();
    let (new_t, new) = session_at(1, at(1_000));
    assert!(store.rotate(&old_t.hash(), &new).await.unwrap());
    assert_eq!(store.load(&old_t.hash()).await.unwrap(), None);
    assert_eq!(store.load(&new_t.hash()).await.unwrap(), Some(new.clone()));
    assert_eq!(
        ids(&store.list_for_user(UserId(1)).await.unwrap()),
        vec![new.id]
    );
}

/// A session's authentication level is kept: a two-factor session loads as two-factor, a
/// rotation from a one-factor session to a two-factor record (how a second factor raises the
/// level: a new secret, never an update in place) leaves only the two-factor session, and
/// every listing carries each session's own level.
pub async fn the_level_round_trips_and_a_rotation_raises_it<S: SessionStore>(store: S) {
    let (strong_t, mut strong) = session(1);
    strong.level = AuthLevel::TwoFactor;
    store.create(&strong).await.unwrap();
    assert_eq!(
        store.load(&strong_t.hash()).await.unwrap(),
        Some(strong.clone())
    );

    let (old_t, old) = session_at(1, at(1_000));
    assert_eq!(old.level, AuthLevel::OneFactor);
    store.create(&old).await.unwrap();
    assert_eq!(
        store.load(&old_t.hash()).await.unwrap().map(|s| s.level),
        Some(AuthLevel::OneFactor)
    );
    let (new_t, mut raised) = session_at(1, at(2_000));
    raised.level = AuthLevel::TwoFactor;
    assert!(store.rotate(&old_t.hash(), &raised).await.unwrap());
    assert_eq!(store.load(&old_t.hash()).await.unwrap(), None);
    assert_eq!(
        store.load(&new_t.hash()).await.unwrap(),
        Some(raised.clone())
    );

    // A one-factor session beside them: each keeps its own level in every listing.
    let (_, weak) = session_at(1, at(3_000));
    store.create(&weak).await.unwrap();
    let all = vec![strong, raised, weak];
    assert_eq!(store.list_for_user(UserId(1)).await.unwrap(), all);
    assert_eq!(store.list_all().await.unwrap(), all);
    assert_eq!(
        store.list_page(Some(UserId(1)), None, 10).await.unwrap(),
        all
    );
    assert_eq!(store.list_page(None, None, 2).await.unwrap(), all[..2]);
}

/// A rotation of a session that is gone (revoked, logged out) fails and inserts nothing:
/// it must never carry a revoked session on under a new secret.
pub async fn rotate_when_old_is_gone_inserts_nothing<S: SessionStore>(store: S) {
    let (new_t, new) = session(1);
    assert!(!store
        .rotate(&SessionToken::generate().hash(), &new)
        .await
        .unwrap());
    assert_eq!(store.load(&new_t.hash()).await.unwrap(), None);
    // Revoked a moment before: same answer.
    let (old_t, old) = session(1);
    store.create(&old).await.unwrap();
    assert_eq!(store.delete_for_user(UserId(1), None).await.unwrap(), 1);
    assert!(!store.rotate(&old_t.hash(), &new).await.unwrap());
    assert_eq!(store.load(&new_t.hash()).await.unwrap(), None);
    assert!(store.list_for_user(UserId(1)).await.unwrap().is_empty());
}

/// A rotation racing with a revocation of every session of the user: whatever the order,
/// no session of the user survives both (the revocation either removes the rotated session,
/// or came first and the rotation refused), and exactly one of a rotation and a single
/// delete of the old session wins.
pub async fn rotate_racing_with_revocation_never_revives<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    for round in 0..20 {
        let (old_t, old) = session(1);
        store.create(&old).await.unwrap();
        let (new_t, new) = session_at(1, at(round));
        let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
        let rotator = tokio::spawn(async move { s1.rotate(&old_t.hash(), &new).await.unwrap() });
        let revoker =
            tokio::spawn(async move { s2.delete_for_user(UserId(1), None).await.unwrap() });
        let (rotated, revoked) = (rotator.await.unwrap(), revoker.await.unwrap());
        assert!(revoked >= 1, "round {round}: the revocation found nothing");
        assert!(
            store.list_for_user(UserId(1)).await.unwrap().is_empty(),
            "round {round}: a session survived the revocation (rotated: {rotated})"
        );
        assert_eq!(store.load(&new_t.hash()).await.unwrap(), None);

        let (old_t, old) = session(1);
        store.create(&old).await.unwrap();
        let (new_t, new) = session_at(1, at(round));
        let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
        let h = old_t.hash();
        let rotator = tokio::spawn(async move { s1.rotate(&h, &new).await.unwrap() });
        let deleter = tokio::spawn(async move { s2.delete(&h).await.unwrap() });
        let (rotated, deleted) = (rotator.await.unwrap(), deleter.await.unwrap());
        assert!(
            rotated ^ deleted,
            "round {round}: rotated {rotated}, deleted {deleted}"
        );
        assert_eq!(store.load(&new_t.hash()).await.unwrap().is_some(), rotated);
        store.delete_for_user(UserId(1), None).await.unwrap();
    }
}

/// The per-user cap: the oldest sessions go first, other users are untouched.
pub async fn delete_oldest_for_user_keeps_the_newest<S: SessionStore>(store: S) {
    let recs: Vec<_> = (0..7).map(|i| session_at(1, at(i * 1_000))).collect();
    // Created out of order: the store orders by creation time, not by insertion.
    for (_, r) in recs.iter().rev() {
        store.create(r).await.unwrap();
    }
    let (_, other) = session_at(2, at(0));
    store.create(&other).await.unwrap();
    assert_eq!(store.delete_oldest_for_user(UserId(1), 7).await.unwrap(), 0);
    assert_eq!(store.delete_oldest_for_user(UserId(1), 4).await.unwrap(), 3);
    assert_eq!(
        ids(&store.list_for_user(UserId(1)).await.unwrap()),
        ids(&recs[3..].iter().map(|(_, r)| r.clone()).collect::<Vec<_>>())
    );
    for (t, _) in &recs[..3] {
        assert_eq!(store.load(&t.hash()).await.unwrap(), None);
    }
    assert_eq!(store.delete_oldest_for_user(UserId(1), 0).await.unwrap(), 4);
    assert!(store.list_for_user(UserId(1)).await.unwrap().is_empty());
    assert_eq!(
        ids(&store.list_for_user(UserId(2)).await.unwrap()),
        vec![other.id]
    );
}

/// Pages give every session exactly once, in `(created_at, id)` order, per user or for all.
pub async fn list_page_returns_each_session_once<S: SessionStore>(store: S) {
    let mut mine = Vec::new();
    for i in 0..23 {
        // Several sessions share a creation time: the id breaks the tie.
        let (_, r) = session_at(1, at(i / 3));
        store.create(&r).await.unwrap();
        mine.push(r);
        let (_, o) = session_at(2, at(i));
        store.create(&o).await.unwrap();
    }
    mine.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
    for (user, total) in [(Some(UserId(1)), 23), (None, 46)] {
        for limit in [1, 5, 23, 100] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = store.list_page(user, after.clone(), limit).await.unwrap();
                assert!(page.len() <= limit);
                if let Some(last) = page.last() {
                    after = Some((last.created_at, last.id.clone()));
                }
                let done = page.len() < limit;
                got.extend(page);
                if done {
                    break;
                }
            }
            assert_eq!(got.len(), total, "user {user:?}, limit {limit}");
            let mut seen = std::collections::HashSet::new();
            assert!(got.iter().all(|s| seen.insert(s.id.clone())), "duplicates");
            assert!(
                got.windows(2)
                    .all(|w| (w[0].created_at, w[0].id.as_str())
                        < (w[1].created_at, w[1].id.as_str()))
            );
            if user.is_some() {
                assert_eq!(ids(&got), ids(&mine));
            }
        }
    }
}

pub async fn list_for_user_is_per_user_and_oldest_first<S: SessionStore>(store: S) {
    let (_, b) = session_at(1, at(2_000));
    let (_, a) = session_at(1, at(1_000));
    let (_, other) = session_at(2, at(500));
    for r in [&b, &a, &other] {
        store.create(r).await.unwrap();
    }
    assert_eq!(
        ids(&store.list_for_user(UserId(1)).await.unwrap()),
        vec![a.id.clone(), b.id.clone()]
    );
    assert_eq!(
        ids(&store.list_for_user(UserId(2)).await.unwrap()),
        vec![other.id.clone()]
    );
    assert!(store.list_for_user(UserId(3)).await.unwrap().is_empty());
    assert_eq!(
        ids(&store.list_all().await.unwrap()),
        vec![other.id, a.id, b.id]
    );
}

pub async fn delete_by_id_respects_the_owner<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    store.create(&rec).await.unwrap();
    // Another user cannot delete it...
    assert!(!store.delete_by_id(&rec.id, Some(UserId(2))).await.unwrap());
    assert!(store.load(&t.hash()).await.unwrap().is_some());
    // ...its owner can...
    assert!(store.delete_by_id(&rec.id, Some(UserId(1))).await.unwrap());
    assert!(store.load(&t.hash()).await.unwrap().is_none());
    // ...and an admin (no owner filter) can.
    let (t2, rec2) = session(1);
    store.create(&rec2).await.unwrap();
    assert!(store.delete_by_id(&rec2.id, None).await.unwrap());
    assert!(store.load(&t2.hash()).await.unwrap().is_none());
    assert!(!store
        .delete_by_id(&SessionId::generate(), None)
        .await
        .unwrap());
}

pub async fn delete_for_user_can_keep_one<S: SessionStore>(store: S) {
    let recs: Vec<_> = (0..3).map(|i| session_at(1, at(i))).collect();
    let (ot, other) = session(2);
    for (_, r) in &recs {
        store.create(r).await.unwrap();
    }
    store.create(&other).await.unwrap();
    let keep = &recs[1].1;
    assert_eq!(
        store
            .delete_for_user(UserId(1), Some(&keep.id))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ids(&store.list_for_user(UserId(1)).await.unwrap()),
        vec![keep.id.clone()]
    );
    assert_eq!(store.delete_for_user(UserId(1), None).await.unwrap(), 1);
    assert!(store.list_for_user(UserId(1)).await.unwrap().is_empty());
    for (t, _) in &recs {
        assert!(store.load(&t.hash()).await.unwrap().is_none());
    }
    assert!(
        store.load(&ot.hash()).await.unwrap().is_some(),
        "other users keep theirs"
    );
}

pub async fn delete_all_empties_the_store<S: SessionStore>(store: S) {
    let (t1, a) = session(1);
    let (t2, b) = session(2);
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    assert_eq!(store.delete_all().await.unwrap(), 2);
    assert!(store.load(&t1.hash()).await.unwrap().is_none());
    assert!(store.load(&t2.hash()).await.unwrap().is_none());
    assert!(store.list_all().await.unwrap().is_empty());
}

pub async fn purge_removes_only_expired_in_bounded_batches<S: SessionStore>(store: S) {
    // Five sessions expired (deadline 30 min after T0), one still live.
    let mut expired = Vec::new();
    for i in 0..5 {
        let (t, r) = session_at(1, at(i));
        store.create(&r).await.unwrap();
        expired.push(t);
    }
    let (live_t, live) = session(1);
    let live = SessionRecord {
        expires_at: at(10 * 3_600_000),
        ..live
    };
    store.create(&live).await.unwrap();
    let now = at(3_600_000);
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 2);
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 2);
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 1);
    assert_eq!(store.purge_expired(now, 2).await.unwrap(), 0);
    for t in &expired {
        assert!(store.load(&t.hash()).await.unwrap().is_none());
    }
    assert!(store.load(&live_t.hash()).await.unwrap().is_some());
    // A deadline exactly at `now` counts as expired.
    assert_eq!(store.purge_expired(live.expires_at, 10).await.unwrap(), 1);
}

pub async fn count_active_counts_sessions_before_their_deadline<S: SessionStore>(store: S) {
    // Three sessions expired (deadline 30 min after T0 + i), two live.
    for i in 0..3 {
        let (_, r) = session_at(1, at(i));
        store.create(&r).await.unwrap();
    }
    for user in [1, 2] {
        let (_, live) = session(user);
        let live = SessionRecord {
            expires_at: at(10 * 3_600_000),
            ..live
        };
        store.create(&live).await.unwrap();
    }
    // `None`: a store that cannot count (the default); a store that counts must be right.
    if let Some(n) = store.count_active(at(3_600_000)).await.unwrap() {
        assert_eq!(n, 2);
        // A deadline exactly at `now` is past.
        assert_eq!(
            store.count_active(at(10 * 3_600_000)).await.unwrap(),
            Some(0)
        );
    }
}

pub async fn racing_touches_never_undo_a_delete<S: SessionStore>(store: S) {
    let store = Arc::new(store);
    for round in 0..10 {
        let (t, rec) = session(1);
        store.create(&rec).await.unwrap();
        let hash = t.hash();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let s = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                for j in 0..5 {
                    let ms = (round * 100 + i * 10 + j) * 1_000;
                    s.touch(&hash, at(ms), at(ms + 1_800_000)).await.unwrap();
                }
            }));
        }
        let s = Arc::clone(&store);
        let deleter = tokio::spawn(async move { s.delete(&hash).await.unwrap() });
        for task in tasks {
            task.await.unwrap();
        }
        assert!(deleter.await.unwrap());
        assert_eq!(
            store.load(&hash).await.unwrap(),
            None,
            "round {round}: a touch resurrected the session"
        );
    }
}

pub async fn ping_answers<S: SessionStore>(store: S) {
    store.ping().await.unwrap();
}

fn sample_data() -> SessionData {
    let mut d = SessionData::new();
    d.insert("cart".into(), serde_json::json!([1, 2, 3]));
    d.insert("theme".into(), serde_json::json!("dark"));
    d.insert(
        "nested".into(),
        serde_json::json!({ "a": { "b": null }, "n": 1.5 }),
    );
    d
}

pub async fn data_round_trips_and_goes_with_the_session<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    let (other_t, other) = session(1);
    store.create(&rec).await.unwrap();
    store.create(&other).await.unwrap();
    assert_eq!(
        store.load_data(&t.hash()).await.unwrap(),
        Some(SessionData::new()),
        "empty until saved"
    );
    assert!(store.save_data(&t.hash(), &sample_data()).await.unwrap());
    assert_eq!(
        store.load_data(&t.hash()).await.unwrap(),
        Some(sample_data())
    );
    assert_eq!(
        store.load_data(&other_t.hash()).await.unwrap(),
        Some(SessionData::new()),
        "per session"
    );
    // Saving data changes nothing else about the session.
    assert_eq!(store.load(&t.hash()).await.unwrap(), Some(rec));
    // Replaced whole, not merged.
    let mut small = SessionData::new();
    small.insert("theme".into(), serde_json::json!("light"));
    assert!(store.save_data(&t.hash(), &small).await.unwrap());
    assert_eq!(
        store.load_data(&t.hash()).await.unwrap(),
        Some(small.clone())
    );

    assert!(store.delete(&t.hash()).await.unwrap());
    assert_eq!(store.load_data(&t.hash()).await.unwrap(), None);
    assert!(
        !store.save_data(&t.hash(), &small).await.unwrap(),
        "a late save must not resurrect"
    );
    assert_eq!(store.load(&t.hash()).await.unwrap(), None);
    assert_eq!(
        store
            .load_data(&SessionToken::generate().hash())
            .await
            .unwrap(),
        None
    );
}

pub async fn rotation_starts_with_empty_data<S: SessionStore>(store: S) {
    let (old_t, old) = session(1);
    store.create(&old).await.unwrap();
    store
        .save_data(&old_t.hash(), &sample_data())
        .await
        .unwrap();
    let (new_t, new) = session(1);
    store.rotate(&old_t.hash(), &new).await.unwrap();
    assert_eq!(
        store.load_data(&new_t.hash()).await.unwrap(),
        Some(SessionData::new())
    );
    assert_eq!(store.load_data(&old_t.hash()).await.unwrap(), None);
}

fn data_of(pairs: &[(&str, serde_json::Value)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

pub async fn a_data_patch_changes_only_its_keys<S: SessionStore>(store: S) {
    let (t, rec) = session(1);
    let (other_t, other) = session(1);
    store.create(&rec).await.unwrap();
    store.create(&other).await.unwrap();
    let h = t.hash();

    // On data never saved: starts from the empty map.
    let first = data_of(&[("theme", serde_json::json!("dark"))]);
    assert!(store.patch_data(&h, &first, &[]).await.unwrap());
    assert_eq!(store.load_data(&h).await.unwrap(), Some(first));

    // Values a lossy JSON re-encoding would change (an empty array, an integer past 2^53, a
    // float, a nested null, text outside ASCII) must come back exactly, untouched or set.
    let mut stored = sample_data();
    stored.insert("empty".into(), serde_json::json!([]));
    stored.insert("big".into(), serde_json::json!(12_345_678_901_234_567_u64));
    stored.insert("gone".into(), serde_json::json!("bye"));
    assert!(store.save_data(&h, &stored).await.unwrap());

    let set = data_of(&[
        ("theme", serde_json::json!("light")),
        (
            "fresh",
            serde_json::json!({ "list": [], "ratio": 0.123_456_789_012_345_67 }),
        ),
        // A null value is a value: stored, not taken for "remove the key".
        ("nothing", serde_json::Value::Null),
        ("both", serde_json::json!(1)),
        ("naïve.key \"quoted\" $[0]", serde_json::json!("ünïcødé")),
    ]);
    let remove = keys(&["gone", "both", "never-there"]);
    assert!(store.patch_data(&h, &set, &remove).await.unwrap());

    let mut want = stored.clone();
    want.remove("gone");
    for (k, v) in &set {
        if k != "both" {
            want.insert(k.clone(), v.clone());
        }
    }
    assert_eq!(
        store.load_data(&h).await.unwrap(),
        Some(want.clone()),
        "set keys set, removed keys removed (a key in both removed), the rest exactly as stored"
    );

    // An empty patch of a live session succeeds and changes nothing.
    assert!(store
        .patch_data(&h, &SessionData::new(), &[])
        .await
        .unwrap());
    assert_eq!(store.load_data(&h).await.unwrap(), Some(want));

    // Removing every key leaves an empty map, not a missing session.
    let every: Vec<String> = store
        .load_data(&h)
        .await
        .unwrap()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(store
        .patch_data(&h, &SessionData::new(), &every)
        .await
        .unwrap());
    assert_eq!(store.load_data(&h).await.unwrap(), Some(SessionData::new()));

    // Only this session's data; the record untouched.
    assert_eq!(
        store.load_data(&other_t.hash()).await.unwrap(),
        Some(SessionData::new())
    );
    assert_eq!(store.load(&h).await.unwrap(), Some(rec));
}

pub async fn concurrent_data_patches_of_different_keys_all_land<S: SessionStore>(store: S) {
    const WRITERS: usize = 4;
    let store = Arc::new(store);
    for round in 0..15 {
        let (t, rec) = session(1);
        store.create(&rec).await.unwrap();
        let h = t.hash();
        // Each writer removes a key of its own too: removals must not be lost either.
        let base: SessionData = (0..WRITERS)
            .map(|i| (format!("old{i}"), serde_json::json!(i)))
            .chain([("kept".to_owned(), serde_json::json!("as is"))])
            .collect();
        assert!(store.save_data(&h, &base).await.unwrap());
        let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (s, start) = (Arc::clone(&store), Arc::clone(&start));
                tokio::spawn(async move {
                    let set = data_of(&[(&format!("new{i}"), serde_json::json!([round, i]))]);
                    start.wait().await;
                    s.patch_data(&h, &set, &[format!("old{i}")]).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap());
        }
        let want: SessionData = (0..WRITERS)
            .map(|i| (format!("new{i}"), serde_json::json!([round, i])))
            .chain([("kept".to_owned(), serde_json::json!("as is"))])
            .collect();
        assert_eq!(
            store.load_data(&h).await.unwrap(),
            Some(want),
            "round {round}: a concurrent patch was lost"
        );
    }
}

pub async fn a_data_patch_never_recreates_a_session<S: SessionStore>(store: S) {
    let one = data_of(&[("k", serde_json::json!("v"))]);

    // Deleted.
    let (t, rec) = session(1);
    store.create(&rec).await.unwrap();
    assert!(store.save_data(&t.hash(), &sample_data()).await.unwrap());
    assert!(store.delete(&t.hash()).await.unwrap());
    assert!(!store
        .patch_data(&t.hash(), &one, &keys(&["cart"]))
        .await
        .unwrap());
    assert_eq!(store.load(&t.hash()).await.unwrap(), None);
    assert_eq!(store.load_data(&t.hash()).await.unwrap(), None);

    // Never existed.
    let stranger = SessionToken::generate().hash();
    assert!(!store.patch_data(&stranger, &one, &[]).await.unwrap());
    assert_eq!(store.load(&stranger).await.unwrap(), None);
    assert_eq!(store.load_data(&stranger).await.unwrap(), None);

    // Rotated away: the old secret's late patch reaches neither session.
    let (old_t, old) = session(1);
    store.create(&old).await.unwrap();
    let (new_t, new) = session(1);
    assert!(store.rotate(&old_t.hash(), &new).await.unwrap());
    assert!(!store.patch_data(&old_t.hash(), &one, &[]).await.unwrap());
    assert_eq!(store.load_data(&old_t.hash()).await.unwrap(), None);
    assert_eq!(
        store.load_data(&new_t.hash()).await.unwrap(),
        Some(SessionData::new())
    );
    assert!(store
        .list_for_user(UserId(1))
        .await
        .unwrap()
        .iter()
        .all(|s| s.id != old.id));

    // Racing with the delete: whatever the order, the session stays gone.
    let store = Arc::new(store);
    for round in 0..10 {
        let (t, rec) = session(2);
        store.create(&rec).await.unwrap();
        let h = t.hash();
        let patchers: Vec<_> = (0..4)
            .map(|i| {
                let s = Arc::clone(&store);
                tokio::spawn(async move {
                    for j in 0..5 {
                        let set = data_of(&[(&format!("k{i}-{j}"), serde_json::json!(round))]);
                        s.patch_data(&h, &set, &[]).await.unwrap();
                    }
                })
            })
            .collect();
        let s = Arc::clone(&store);
        let deleter = tokio::spawn(async move { s.delete(&h).await.unwrap() });
        for p in patchers {
            p.await.unwrap();
        }
        assert!(deleter.await.unwrap());
        assert_eq!(
            store.load(&h).await.unwrap(),
            None,
            "round {round}: resurrected"
        );
        assert_eq!(
            store.load_data(&h).await.unwrap(),
            None,
            "round {round}: data left"
        );
    }
}

pub async fn every_early_end_of_a_session_changes_the_generation<S: SessionStore>(store: S) {
    let (t1, r1) = session(1);
    let (t2, r2) = session(1);
    let (_, r3) = session(2);
    for r in [&r1, &r2, &r3] {
        store.create(r).await.unwrap();
    }
    // Touches and creates may or may not change it; every early end must.
    store
        .touch(&t1.hash(), at(60_000), at(1_860_000))
        .await
        .unwrap();
    let mut last = store.generation().await.unwrap();
    let mut changed = |what: &str, now: u64| {
        assert_ne!(now, last, "{what} left the generation unchanged");
        last = now;
    };
    store.delete(&t1.hash()).await.unwrap();
    changed("delete", store.generation().await.unwrap());
    let (_, r5) = session(1);
    store.rotate(&t2.hash(), &r5).await.unwrap();
    changed("rotate", store.generation().await.unwrap());
    store.delete_by_id(&r5.id, None).await.unwrap();
    changed("delete_by_id", store.generation().await.unwrap());
    store.delete_for_user(UserId(2), None).await.unwrap();
    changed("delete_for_user", store.generation().await.unwrap());
    // A purge whose `now` is ahead of the store's clock ends a session early. By the wall
    // clock, not T0: a purge of sessions expired long ago by the store's clock need not move
    // the generation (`purge.rs`). Started a minute ago and so live for 29 more minutes, a
    // store that keeps sessions for their remaining lifetime (Redis TTLs) still holds it
    // when the purge comes: a deadline only 1 ms after the last activity let Redis drop it
    // first under load, and a session dropped by its TTL is an expiry, not an early end.
    let wall = Timestamp::from_system_time(std::time::SystemTime::now());
    let (_, old) = session_at(4, wall.minus(Duration::from_secs(60)));
    store.create(&old).await.unwrap();
    assert_eq!(
        store
            .purge_expired(wall.plus(Duration::from_secs(1800)), 10)
            .await
            .unwrap(),
        1
    );
    changed("purge_expired", store.generation().await.unwrap());
    let (_, r6) = session(5);
    store.create(&r6).await.unwrap();
    store.delete_all().await.unwrap();
    changed("delete_all", store.generation().await.unwrap());
}
