//! The compact format, and the sessions an older sessiond wrote in the hash format of before:
//! still valid, changed and ended after the upgrade.

use sessiond_core::{
    AuthLevel, SessionData, SessionId, SessionRecord, SessionStore, SessionToken, StoreError,
    Timestamp, TokenHash, UserId,
};
use sessiond_store_tests::service_or_skip;
use sessiond_store_tests::sessions::{session_at, T0};

use super::standalone;
use crate::RedisStore;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + ms)
}

/// A session written exactly as sessiond wrote them before the compact format (its `create`
/// script, command for command), with a random id as sessions had then, and `data` as its
/// `save_data` wrote it.
pub(super) async fn legacy_session(
    store: &RedisStore,
    user: i64,
    start: Timestamp,
    data: Option<&str>,
) -> (TokenHash, SessionRecord) {
    let (t, mut rec) = session_at(user, start);
    rec.id = SessionId::generate();
    legacy_write(store, &rec, data).await;
    (t.hash(), rec)
}

pub(super) async fn legacy_write(store: &RedisStore, rec: &SessionRecord, data: Option<&str>) {
    let tag = &*store.tag;
    let hex = rec.token_hash.to_hex();
    let sk = format!("{tag}:s:{hex}");
    let ttl = (rec.expires_at.as_millis() - rec.last_seen_at.as_millis()).max(1);
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.cmd("HSET")
        .arg(&sk)
        .arg("id")
        .arg(rec.id.as_str())
        .arg("uid")
        .arg(rec.user_id.0)
        .arg("c")
        .arg(rec.created_at.as_millis())
        .arg("l")
        .arg(rec.last_seen_at.as_millis())
        .arg("a")
        .arg(rec.absolute_expires_at.as_millis())
        .arg("e")
        .arg(rec.expires_at.as_millis())
        .arg("r")
        .arg(i64::from(rec.remember));
    if let Some(ip) = &rec.ip {
        pipe.cmd("HSET").arg(&sk).arg("ip").arg(ip);
    }
    if let Some(ua) = &rec.user_agent {
        pipe.cmd("HSET").arg(&sk).arg("ua").arg(ua);
    }
    if rec.level != AuthLevel::OneFactor {
        pipe.cmd("HSET").arg(&sk).arg("f").arg(rec.level.as_i64());
    }
    if let Some(d) = data {
        pipe.cmd("HSET").arg(&sk).arg("d").arg(d);
    }
    pipe.cmd("PEXPIRE").arg(&sk).arg(ttl);
    pipe.cmd("SET")
        .arg(format!("{tag}:i:{}", rec.id.as_str()))
        .arg(&hex)
        .arg("PX")
        .arg(ttl);
    pipe.cmd("ZADD")
        .arg(format!("{tag}:u:{}", rec.user_id.0))
        .arg(rec.created_at.as_millis())
        .arg(&hex);
    pipe.cmd("ZADD")
        .arg(format!("{tag}:exp"))
        .arg(rec.expires_at.as_millis())
        .arg(&hex);
    let mut conn = store.conn.clone();
    let _: redis::Value = pipe.query_async(&mut conn).await.unwrap();
}

/// Every key of the store's prefix, as bytes.
async fn keys(store: &RedisStore) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = store
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}:*", store.tag))
                    .arg("COUNT")
                    .arg(1000),
            )
            .await
            .unwrap();
        out.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    out.sort();
    out
}

async fn pttl(store: &RedisStore, key: impl redis::ToRedisArgs) -> i64 {
    store.query(redis::cmd("PTTL").arg(key)).await.unwrap()
}

fn data(pairs: &[(&str, serde_json::Value)]) -> SessionData {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Sessions an older sessiond wrote (hash format, random ids, hex members in the indexes)
/// stay valid after the upgrade, and every operation works on them: verify, touch, data
/// load/save/patch, list, revoke by id / by user / all, rotate, delete, purge, count. Nothing
/// of theirs is left behind once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_the_format_of_before_stay_valid_and_every_operation_works_on_them() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let tag = store.tag.to_string();
    let (a, a_rec) = legacy_session(
        &store,
        1,
        at(0),
        Some(r#"{"k":1,"big":12345678901234567890}"#),
    )
    .await;
    let (b, b_rec) = legacy_session(&store, 1, at(1), None).await;
    let (c, c_rec) = legacy_session(&store, 1, at(2), None).await;
    let (d, d_rec) = legacy_session(&store, 2, at(3), None).await;
    let (strong, mut strong_rec) = {
        let (t, mut r) = session_at(3, at(4));
        r.id = SessionId::generate();
        r.level = AuthLevel::TwoFactor;
        r.remember = true;
        r.ip = None;
        (t.hash(), r)
    };
    legacy_write(&store, &strong_rec, None).await;
    // A compact one beside them.
    let (e_t, e_rec) = session_at(1, at(5));
    store.create(&e_rec).await.unwrap();

    // Verify: each record as it was written.
    for (h, r) in [
        (a, &a_rec),
        (b, &b_rec),
        (c, &c_rec),
        (d, &d_rec),
        (strong, &strong_rec),
    ] {
        assert_eq!(store.load(&h).await.unwrap().as_ref(), Some(r));
    }
    assert_eq!(store.load(&e_t.hash()).await.unwrap(), Some(e_rec.clone()));

    // Data: load, save, patch (the numbers cjson would mangle stay exact).
    assert_eq!(
        store.load_data(&a).await.unwrap(),
        Some(data(&[
            ("k", serde_json::json!(1)),
            ("big", serde_json::from_str("12345678901234567890").unwrap())
        ]))
    );
    assert_eq!(store.load_data(&b).await.unwrap(), Some(SessionData::new()));
    assert!(store
        .patch_data(&a, &data(&[("p", serde_json::json!([]))]), &["k".into()])
        .await
        .unwrap());
    assert_eq!(
        store.load_data(&a).await.unwrap(),
        Some(data(&[
            ("big", serde_json::from_str("12345678901234567890").unwrap()),
            ("p", serde_json::json!([]))
        ]))
    );
    assert!(store
        .save_data(&b, &data(&[("x", serde_json::json!("y"))]))
        .await
        .unwrap());
    assert_eq!(
        store.load_data(&b).await.unwrap(),
        Some(data(&[("x", serde_json::json!("y"))]))
    );
    assert!(store
        .patch_data(&c, &data(&[("n", serde_json::json!(2))]), &[])
        .await
        .unwrap());
    assert_eq!(
        store.load_data(&c).await.unwrap(),
        Some(data(&[("n", serde_json::json!(2))]))
    );

    // Touch: activity moves forward only, the deadline index and both TTLs follow.
    let before = pttl(&store, format!("{tag}:s:{}", a.to_hex())).await;
    store
        .touch(&a, at(600_000), at(600_000 + 3_600_000))
        .await
        .unwrap();
    let got = store.load(&a).await.unwrap().unwrap();
    assert_eq!(
        (got.last_seen_at, got.expires_at),
        (at(600_000), at(4_200_000))
    );
    assert!(pttl(&store, format!("{tag}:s:{}", a.to_hex())).await > before);
    assert!(pttl(&store, format!("{tag}:i:{}", a_rec.id.as_str())).await > before);
    let score: f64 = store
        .query(
            redis::cmd("ZSCORE")
                .arg(format!("{tag}:exp"))
                .arg(a.to_hex()),
        )
        .await
        .unwrap();
    assert_eq!(score as i64, at(4_200_000).as_millis());
    store
        .touch(&a, at(300_000), at(300_000 + 1_800_000))
        .await
        .unwrap();
    let again = store.load(&a).await.unwrap().unwrap();
    assert_eq!(
        (again.last_seen_at, again.expires_at),
        (at(600_000), at(4_200_000))
    );
    assert_eq!(again.created_at, a_rec.created_at);

    // Lists: the user's, oldest first, old and compact together; and everyone's.
    let ids = |v: Vec<SessionRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_for_user(UserId(1)).await.unwrap()),
        vec![
            a_rec.id.clone(),
            b_rec.id.clone(),
            c_rec.id.clone(),
            e_rec.id.clone()
        ]
    );
    assert_eq!(store.list_all().await.unwrap().len(), 6);
    assert_eq!(store.count_active(at(1)).await.unwrap(), Some(6));

    // Revoke by id: the owner is checked; the id's key and the index entries go with it.
    let g0 = store.generation().await.unwrap();
    assert!(!store
        .delete_by_id(&b_rec.id, Some(UserId(2)))
        .await
        .unwrap());
    assert!(store
        .delete_by_id(&b_rec.id, Some(UserId(1)))
        .await
        .unwrap());
    assert_eq!(store.load(&b).await.unwrap(), None);
    assert!(store.generation().await.unwrap() > g0);
    assert!(!store.delete_by_id(&b_rec.id, None).await.unwrap());
    assert!(store.delete_by_id(&strong_rec.id, None).await.unwrap());
    assert_eq!(store.load(&strong).await.unwrap(), None);

    // Rotate: the old session goes, the new one is compact.
    let (c2_t, c2_rec) = session_at(1, at(6));
    assert!(store.rotate(&c, &c2_rec).await.unwrap());
    assert_eq!(store.load(&c).await.unwrap(), None);
    assert_eq!(
        store.load(&c2_t.hash()).await.unwrap(),
        Some(c2_rec.clone())
    );
    assert!(!store.rotate(&c, &session_at(1, at(7)).1).await.unwrap());
    // A new session may not take the hash of an old one.
    strong_rec.token_hash = d;
    strong_rec.id = SessionId::for_hash(&d);
    assert!(matches!(
        store.create(&strong_rec).await,
        Err(StoreError::Conflict)
    ));

    // Revoke all of a user's but one, kept by an old id; then by a compact id.
    let (f, _) = legacy_session(&store, 1, at(8), None).await;
    assert_eq!(
        store
            .delete_for_user(UserId(1), Some(&a_rec.id))
            .await
            .unwrap(),
        3,
        "e, c2 and f"
    );
    assert_eq!(store.load(&f).await.unwrap(), None);
    assert_eq!(
        ids(store.list_for_user(UserId(1)).await.unwrap()),
        vec![a_rec.id.clone()]
    );
    let (g, _) = legacy_session(&store, 1, at(9), None).await;
    let (h_t, h_rec) = session_at(1, at(10));
    store.create(&h_rec).await.unwrap();
    assert_eq!(
        store
            .delete_for_user(UserId(1), Some(&h_rec.id))
            .await
            .unwrap(),
        2,
        "a and g"
    );
    assert_eq!(store.load(&a).await.unwrap(), None);
    assert_eq!(store.load(&g).await.unwrap(), None);
    assert!(store.load(&h_t.hash()).await.unwrap().is_some());

    // Delete by hash.
    assert!(store.delete(&d).await.unwrap());
    assert!(!store.delete(&d).await.unwrap());

    // Purge: an old session past its deadline goes, a live one stays.
    let (p, p_rec) = legacy_session(&store, 4, at(0), None).await;
    let (q, _) = {
        let (t, mut r) = session_at(4, at(0));
        r.id = SessionId::generate();
        r.expires_at = at(10 * 3_600_000);
        legacy_write(&store, &r, None).await;
        (t.hash(), r)
    };
    assert_eq!(store.purge_expired(p_rec.expires_at, 10).await.unwrap(), 1);
    assert_eq!(store.load(&p).await.unwrap(), None);
    assert!(store.load(&q).await.unwrap().is_some());

    // All: old and compact alike; nothing of theirs is left but the generation.
    assert_eq!(store.delete_all().await.unwrap(), 2, "h and q");
    assert_eq!(store.load(&q).await.unwrap(), None);
    assert_eq!(keys(&store).await, vec![format!("{tag}:gen").into_bytes()]);
}

/// A session with a derived id (every session a login makes) is one string key and two
/// index entries, no `{p}:i:` key; a session with an id of its own gets one, which follows
/// the session's TTL and goes with it. Both are found by id, owner checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_id_needs_no_id_key_and_an_id_of_its_own_gets_one() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let tag = store.tag.to_string();
    let (t, rec) = session_at(1, at(0));
    assert_eq!(rec.id, SessionId::for_hash(&t.hash()));
    store.create(&rec).await.unwrap();
    let key = store.session_key(&t.hash());
    let mut want = vec![
        format!("{tag}:exp").into_bytes(),
        key.clone(),
        format!("{tag}:u:1").into_bytes(),
    ];
    want.sort();
    assert_eq!(keys(&store).await, want);
    let kind: String = store.query(redis::cmd("TYPE").arg(&key)).await.unwrap();
    assert_eq!(kind, "string");

    let (own_t, mut own) = session_at(1, at(1));
    own.id = SessionId::generate();
    store.create(&own).await.unwrap();
    let id_key = format!("{tag}:i:{}", own.id.as_str());
    let mapped: Vec<u8> = store.query(redis::cmd("GET").arg(&id_key)).await.unwrap();
    assert_eq!(mapped, SessionId::bytes_for_hash(&own_t.hash()));
    assert_eq!(store.load(&own_t.hash()).await.unwrap(), Some(own.clone()));
    let ttl0 = pttl(&store, &id_key).await;
    assert!(ttl0 > 0);
    store
        .touch(&own_t.hash(), at(600_000), at(600_000 + 3_600_000))
        .await
        .unwrap();
    assert!(pttl(&store, &id_key).await > ttl0 + 1_000_000);
    assert!(pttl(&store, store.session_key(&own_t.hash())).await > ttl0 + 1_000_000);
    // The same id again: a conflict, whatever the hash.
    let (_, mut dup) = session_at(1, at(2));
    dup.id = own.id.clone();
    assert!(matches!(
        store.create(&dup).await,
        Err(StoreError::Conflict)
    ));
    // An id of its own that is another session's derived id: a conflict too.
    let (_, mut taken) = session_at(1, at(2));
    taken.id = rec.id.clone();
    assert!(matches!(
        store.create(&taken).await,
        Err(StoreError::Conflict)
    ));
    // The derived id of a session whose key holds a session with an id of its own is not
    // that session's id.
    assert!(!store
        .delete_by_id(&SessionId::for_hash(&own_t.hash()), None)
        .await
        .unwrap());
    assert!(store.load(&own_t.hash()).await.unwrap().is_some());

    // Revoke by id: both kinds, owner checked.
    for (id, hash) in [(&own.id, own_t.hash()), (&rec.id, t.hash())] {
        assert!(!store.delete_by_id(id, Some(UserId(2))).await.unwrap());
        assert!(store.delete_by_id(id, Some(UserId(1))).await.unwrap());
        assert_eq!(store.load(&hash).await.unwrap(), None);
        assert!(!store.delete_by_id(id, None).await.unwrap());
    }
    assert_eq!(keys(&store).await, vec![format!("{tag}:gen").into_bytes()]);
}

/// Data follows a compact session's record in its value: saving and patching rewrite it
/// there and keep the key's TTL; a touch rewrites the times in place and keeps the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lives_after_the_record_and_keeps_the_ttl() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let (t, rec) = session_at(1, at(0));
    store.create(&rec).await.unwrap();
    let h = t.hash();
    let key = store.session_key(&h);
    let len = |store: RedisStore, key: Vec<u8>| async move {
        store
            .query::<usize>(redis::cmd("STRLEN").arg(key))
            .await
            .unwrap()
    };
    let bare = len(store.clone(), key.clone()).await;
    let big = "x".repeat(3000);
    assert!(store
        .save_data(&h, &data(&[("big", serde_json::json!(big))]))
        .await
        .unwrap());
    // `{"big":"…"}`
    assert_eq!(len(store.clone(), key.clone()).await, bare + 3000 + 10);
    let ttl = pttl(&store, &key).await;
    assert!(ttl > 1_700_000, "{ttl}");
    assert!(store
        .patch_data(&h, &data(&[("n", serde_json::json!(1))]), &["big".into()])
        .await
        .unwrap());
    assert_eq!(
        store.load_data(&h).await.unwrap(),
        Some(data(&[("n", serde_json::json!(1))]))
    );
    assert!(pttl(&store, &key).await > 1_700_000);
    store
        .touch(&h, at(60_000), at(60_000 + 1_800_000))
        .await
        .unwrap();
    assert_eq!(
        store.load_data(&h).await.unwrap(),
        Some(data(&[("n", serde_json::json!(1))]))
    );
    let got = store.load(&h).await.unwrap().unwrap();
    assert_eq!(
        (got.last_seen_at, got.expires_at),
        (at(60_000), at(1_860_000))
    );
    // Emptied data is `{}`, not "none": still a session with its record intact.
    assert!(store.save_data(&h, &SessionData::new()).await.unwrap());
    assert_eq!(store.load_data(&h).await.unwrap(), Some(SessionData::new()));
    assert_eq!(len(store.clone(), key.clone()).await, bare + 2);
    assert_eq!(store.load(&h).await.unwrap(), Some(got));
}

/// Records round-trip exactly through the compact format, whatever their fields: addresses
/// that are not the canonical text of one are kept as text, a user agent longer than one
/// read is read in two, times before 1970 and far ahead fit, and the level and remember
/// flags come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_the_compact_format() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let mut cases = Vec::new();
    for ip in [
        None,
        Some("203.0.113.54"),
        Some("2001:db8::1"),
        Some("::ffff:192.0.2.1"),
        Some("2001:DB8::1"),
        Some("203.000.113.054"),
        Some("unknown"),
        Some(""),
    ] {
        let (t, mut r) = session_at(1, at(0));
        r.ip = ip.map(str::to_owned);
        cases.push((t, r));
    }
    for ua in [
        None,
        Some(String::new()),
        Some("é".repeat(600)),
        Some("u".repeat(40_000)),
    ] {
        let (t, mut r) = session_at(2, at(0));
        r.user_agent = ua;
        r.remember = true;
        r.level = AuthLevel::TwoFactor;
        cases.push((t, r));
    }
    for (uid, created) in [
        (i64::MAX, -86_400_000),
        (i64::MIN, 0),
        (0, (1 << 47) - 10_000_000_000),
    ] {
        let token = SessionToken::generate();
        let r = SessionRecord {
            id: SessionId::for_hash(&token.hash()),
            token_hash: token.hash(),
            user_id: UserId(uid),
            created_at: Timestamp::from_millis(created),
            last_seen_at: Timestamp::from_millis(created + 1),
            absolute_expires_at: Timestamp::from_millis(created + 7_200_000),
            expires_at: Timestamp::from_millis(created + 3_600_000),
            remember: false,
            ip: Some("192.0.2.1".into()),
            user_agent: None,
            level: AuthLevel::OneFactor,
        };
        cases.push((token, r));
    }
    for (t, r) in &cases {
        store.create(r).await.unwrap();
        assert_eq!(
            store.load(&t.hash()).await.unwrap().as_ref(),
            Some(r),
            "{r:?}"
        );
        assert_eq!(
            crate::decode(&crate::encode(r, false).unwrap()).unwrap(),
            *r
        );
    }
    // A timestamp out of the six bytes' range is refused, never wrapped.
    let (t, mut r) = session_at(1, at(0));
    r.absolute_expires_at = Timestamp::from_millis(1 << 47);
    assert!(matches!(
        store.create(&r).await,
        Err(StoreError::Corrupt(_))
    ));
    let (ok_t, ok) = session_at(1, at(0));
    store.create(&ok).await.unwrap();
    assert!(store
        .touch(&ok_t.hash(), at(1), Timestamp::from_millis(1 << 47))
        .await
        .is_err());
    assert_eq!(store.load(&ok_t.hash()).await.unwrap(), Some(ok));
    assert_eq!(store.load(&t.hash()).await.unwrap(), None);
}

/// One session in the compact format against one of before: its value is the documented
/// layout, byte for byte, and its keys (`MEMORY USAGE`) take a quarter of the memory of the
/// keys of before (the index entries are in the bench's figure: `sessiond-bench
/// --redis-bytes-only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_session_is_a_fraction_of_one_of_before() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let usage = |key: Vec<u8>| {
        let store = store.clone();
        async move {
            store
                .query::<Option<u64>>(
                    redis::cmd("MEMORY")
                        .arg("USAGE")
                        .arg(key)
                        .arg("SAMPLES")
                        .arg(0),
                )
                .await
                .unwrap()
                .unwrap_or(0)
        }
    };
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
    let (t, mut rec) = session_at(1, at(0));
    rec.user_agent = Some(ua.into());
    store.create(&rec).await.unwrap();
    let compact = usage(store.session_key(&t.hash())).await;
    let (old, old_rec) = {
        let (t, mut r) = session_at(1, at(0));
        r.id = SessionId::generate();
        r.user_agent = Some(ua.into());
        legacy_write(&store, &r, None).await;
        (t.hash(), r)
    };
    let before = usage(store.legacy_key(&old).into_bytes()).await
        + usage(format!("{}:i:{}", store.tag, old_rec.id.as_str()).into_bytes()).await;
    eprintln!("one session's keys: {compact} B compact, {before} B before");
    // The value: 60 fixed bytes (format, four times, flags, length, hash), the uid (length
    // and "1"), the IPv4 address (length and 4 bytes), the user agent (length and 70).
    let strlen: usize = store
        .query(redis::cmd("STRLEN").arg(store.session_key(&t.hash())))
        .await
        .unwrap();
    assert_eq!(strlen, 60 + 2 + 5 + 1 + ua.len());
    assert!(compact * 4 < before, "{compact} vs {before}");
}
