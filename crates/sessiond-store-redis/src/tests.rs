//! The conformance suite against the real Redis on this machine, a real three-master Cluster
//! started for the test, and real failures (a killed and a frozen `redis-server`).

use std::process::Command;
use std::time::{Duration, Instant};

use sessiond_core::{SessionStore, StoreError, ThrottleStore};
use sessiond_store_tests::service_or_skip;
use sessiond_store_tests::services::{
    fresh_prefix, redis_server_available, spare_port, RedisServer as Server,
};

use crate::RedisStore;

fn redis_url() -> String {
    std::env::var("SESSIOND_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The standalone store, or why it is unavailable.
async fn standalone() -> Result<RedisStore, StoreError> {
    let store = RedisStore::connect(&format!("{}?prefix={}", redis_url(), fresh_prefix())).await?;
    store.ping().await?;
    Ok(store)
}

mod conformance {
    sessiond_store_tests::session_store_tests!(optional async {
        sessiond_store_tests::service_or_skip("Redis", super::standalone().await)
    });
    sessiond_store_tests::throttle_store_tests!(optional async {
        sessiond_store_tests::service_or_skip("Redis", super::standalone().await)
    });
}

/// A three-master Cluster of our own, up and agreed; its servers and its URL.
async fn start_cluster() -> (Vec<Server>, String) {
    let ports: Vec<u16> = (0..3).map(|_| spare_port()).collect();
    let servers: Vec<Server> = ports
        .iter()
        .map(|p| {
            Server::start(
                *p,
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            )
        })
        .collect();
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&hosts)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Wait until every node agrees the cluster is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "cluster did not become ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (servers, format!("redis+cluster://{}", hosts.join(",")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_real_three_master_cluster() {
    if !redis_server_available() {
        return;
    }
    let (_servers, url) = start_cluster().await;
    // Several prefixes: their slots spread over the three masters.
    let fresh = || {
        let url = url.clone();
        async move {
            let store = RedisStore::connect(&format!("{url}?prefix={}", fresh_prefix()))
                .await
                .unwrap();
            store.ping().await.unwrap();
            store
        }
    };
    sessiond_store_tests::run_session_suite(fresh).await;
    sessiond_store_tests::run_throttle_suite(fresh).await;
}

/// Data that is not a JSON object, written straight into Redis (after a compact session's
/// record; in a session of the format of before, its `d` field), is reported as corrupt by a
/// patch and left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_of_corrupt_data_is_refused_and_changes_nothing() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let hash = session_on(&store).await;
    let key = store.session_key(&hash);
    let record: Vec<u8> = store.query(redis::cmd("GET").arg(&key)).await.unwrap();
    let legacy = legacy_session(&store, 1, sessiond_store_tests::sessions::T0, None).await;
    let lkey = store.legacy_key(&legacy.0);
    let mut set = sessiond_core::SessionData::new();
    set.insert("k".into(), serde_json::json!(1));
    for bad in ["[1,2]", "{\"a\":", "42"] {
        let mut value = record.clone();
        value.extend_from_slice(bad.as_bytes());
        let _: () = store
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value.clone())
                    .arg("KEEPTTL"),
            )
            .await
            .unwrap();
        let _: () = store
            .query(redis::cmd("HSET").arg(&lkey).arg("d").arg(bad))
            .await
            .unwrap();
        for h in [hash, legacy.0] {
            assert!(
                matches!(
                    store.patch_data(&h, &set, &[]).await,
                    Err(StoreError::Corrupt(_))
                ),
                "{bad}"
            );
        }
        let stored: Vec<u8> = store.query(redis::cmd("GET").arg(&key)).await.unwrap();
        assert_eq!(stored, value);
        let stored: String = store
            .query(redis::cmd("HGET").arg(&lkey).arg("d"))
            .await
            .unwrap();
        assert_eq!(stored, bad);
    }
}

async fn session_on(store: &RedisStore) -> sessiond_core::TokenHash {
    let (t, rec) =
        sessiond_store_tests::sessions::session_at(1, sessiond_store_tests::sessions::T0);
    store.create(&rec).await.unwrap();
    t.hash()
}

/// Polls `f` until it succeeds, for at most `limit`; returns how long it took.
async fn until_ok(limit: Duration, store: &RedisStore) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if store.ping().await.is_ok() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("store did not recover within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_fast_and_heals_by_itself() {
    if !redis_server_available() {
        return;
    }
    let port = spare_port();
    let mut server = Server::start(port, &[]);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}/0?prefix={}",
        fresh_prefix()
    ))
    .await
    .unwrap();
    let hash = session_on(&store).await;
    assert!(store.load(&hash).await.unwrap().is_some());

    server.kill();
    let start = Instant::now();
    let err = store.load(&hash).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );

    server.restart();
    let healed = until_ok(Duration::from_secs(10), &store).await;
    eprintln!("redis restarted: store answered again after {healed:?}");
    // Nothing persisted (--save ""): the session is gone, and the store says so.
    assert!(store.load(&hash).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_instead_of_hanging() {
    if !redis_server_available() {
        return;
    }
    let port = spare_port();
    let server = Server::start(port, &[]);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}/0?prefix={}",
        fresh_prefix()
    ))
    .await
    .unwrap();
    let hash = session_on(&store).await;

    server.signal("-STOP");
    let start = Instant::now();
    let err = store.load(&hash).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );

    server.signal("-CONT");
    let healed = until_ok(Duration::from_secs(10), &store).await;
    eprintln!("redis resumed: store answered again after {healed:?}");
    assert!(
        store.load(&hash).await.unwrap().is_some(),
        "the session survived the pause"
    );
}

#[tokio::test]
async fn urls_are_checked_without_leaking_passwords() {
    for (url, needle) in [
        ("mysql://x", "expected redis://"),
        ("rediss+sentinel://127.0.0.1:26379/m", "Sentinel over TLS"),
        ("redis://127.0.0.1:6379#insecure", "#insecure"),
        ("rediss://127.0.0.1:6379#whatever", "#insecure"),
        (
            "redis://127.0.0.1:6379?ca=/etc/ca.pem",
            "ca= is for rediss://",
        ),
        (
            "rediss://127.0.0.1:6379?ca=/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        ("redis://127.0.0.1:6379/0?prefix=", "prefix"),
        ("redis://127.0.0.1:6379/0?db=2", "only query parameter"),
        ("redis+sentinel://127.0.0.1:26379", "master-name"),
        ("redis+cluster://", "host:port"),
    ] {
        let Err(e) = RedisStore::connect(url).await else {
            panic!("{url} accepted")
        };
        assert!(e.to_string().contains(needle), "{url}: {e}");
        // The operator's mistake, not a record that does not decode.
        assert!(matches!(e, StoreError::Config(_)), "{url}: {e:?}");
    }
    let Err(e) = RedisStore::connect("rediss+sentinel://user:hunter2@127.0.0.1/m").await else {
        panic!()
    };
    assert!(!e.to_string().contains("hunter2"));
    // A store on a closed port still constructs (lazily) and reports unavailable.
    let port = spare_port();
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .unwrap();
    let start = Instant::now();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(start.elapsed() < Duration::from_secs(2));
    let _ = service_or_skip::<(), &str>("nothing", Ok(()));
}

/// Memory per session on the shared Redis, a quick look: `cargo test -p sessiond-store-redis
/// --lib memory_per_session -- --ignored --nocapture` (the sizing guide's figure comes from a
/// Redis of its own: `sessiond-bench --redis-bytes-only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn memory_per_session() {
    let Ok(store) = standalone().await else {
        return;
    };
    let used = || async {
        let info: String = store
            .query(&redis::cmd("INFO").arg("memory").clone())
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap()
    };
    let before = used().await;
    let n = 20_000;
    for i in 0..n {
        let (_, mut rec) =
            sessiond_store_tests::sessions::session_at(i % 500, sessiond_store_tests::sessions::T0);
        rec.user_agent =
            Some("Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".into());
        store.create(&rec).await.unwrap();
    }
    let after = used().await;
    eprintln!(
        "{} bytes per session ({n} sessions, 500 users)",
        (after - before) / n
    );
    store.delete_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_a_real_sentinel() {
    if !redis_server_available() {
        return;
    }
    let master = Server::start(spare_port(), &[]);
    // A sentinel needs a config file it can rewrite.
    let sentinel_port = spare_port();
    let dir = std::env::temp_dir().join(format!(
        "sessiond-sentinel-{sentinel_port}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor sessiond 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds sessiond 2000\n",
            master.port
        ),
    )
    .unwrap();
    let mut sentinel = std::process::Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server --sentinel starts");
    struct Reap(std::process::Child, std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    // Wait until the sentinel knows the master.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &sentinel_port.to_string(),
                "sentinel",
                "get-master-addr-by-name",
                "sessiond",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&master.port.to_string()) {
            break;
        }
        if Instant::now() > deadline {
            let _ = sentinel.kill();
            panic!("sentinel did not learn the master");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _reap = Reap(sentinel, dir);
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/sessiond/0");
    let fresh = || {
        let url = url.clone();
        async move {
            let store = RedisStore::connect(&format!("{url}?prefix={}", fresh_prefix()))
                .await
                .unwrap();
            store.ping().await.unwrap();
            store
        }
    };
    sessiond_store_tests::run_session_suite(fresh).await;
    sessiond_store_tests::run_throttle_suite(fresh).await;
    // Notifications come over a connection to the master the sentinels name.
    let (a, b) = (fresh().await, fresh().await);
    let b = RedisStore {
        tag: a.tag.clone(),
        ..b
    };
    assert_notified(&a, &b).await;
}

/// Script calls (`EVALSHA` and `EVAL`) the server has run since its stats were reset.
fn script_calls(port: u16) -> u64 {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// "Log out everywhere" of a user with many sessions runs in batches of `REVOKE_BATCH`
/// (one script for all of them would hold the shared Redis for long: docs/performance.md,
/// "Revoke-all on Redis in batches"): the
/// number of script calls is the number of batches, each visiting at most `REVOKE_BATCH`
/// members, and every session but the kept one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_all_of_many_sessions_runs_in_bounded_batches() {
    if !redis_server_available() {
        return;
    }
    let port = spare_port();
    let _server = Server::start(port, &[]);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}/0?prefix={}",
        fresh_prefix()
    ))
    .await
    .unwrap();
    let total = 2 * crate::REVOKE_BATCH + 250;
    let mut kept = None;
    for i in 0..=total {
        let (_, rec) = sessiond_store_tests::sessions::session_at(
            7,
            sessiond_core::Timestamp::from_millis(
                sessiond_store_tests::sessions::T0.as_millis() + i as i64,
            ),
        );
        store.create(&rec).await.unwrap();
        if i == total / 2 {
            kept = Some(rec);
        }
    }
    let kept = kept.unwrap();
    // Loads the script first, so the count below has no NOSCRIPT retry in it.
    store
        .delete_for_user(sessiond_core::UserId(8), None)
        .await
        .unwrap();
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "config", "resetstat"])
        .output()
        .unwrap();
    let n = store
        .delete_for_user(sessiond_core::UserId(7), Some(&kept.id))
        .await
        .unwrap();
    assert_eq!(n, total as u64);
    // ceil(total / batch) batches with work, then one that finds nothing left.
    let batches = total.div_ceil(crate::REVOKE_BATCH) as u64 + 1;
    assert_eq!(script_calls(port), batches);
    let left = store.list_for_user(sessiond_core::UserId(7)).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, kept.id);
    assert_eq!(
        store
            .delete_for_user(sessiond_core::UserId(7), None)
            .await
            .unwrap(),
        1
    );
}

/// The measurement behind `REVOKE_BATCH` (run by hand: `cargo test -p sessiond-store-redis
/// --release -- --ignored --nocapture measure_revoke_all`): "log out everywhere" of one user
/// with 50,000 sessions, on a redis-server of its own; prints the script calls and the
/// longest time one of them held Redis (SLOWLOG, every command logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_revoke_all_of_50k() {
    if !redis_server_available() {
        return;
    }
    let port = spare_port();
    let _server = Server::start(port, &[]);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}/0?prefix={}",
        fresh_prefix()
    ))
    .await
    .unwrap();
    let total = 50_000;
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (w..total).step_by(8) {
                    let (_, rec) = sessiond_store_tests::sessions::session_at(
                        9,
                        sessiond_core::Timestamp::from_millis(
                            sessiond_store_tests::sessions::T0.as_millis() + i as i64,
                        ),
                    );
                    store.create(&rec).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    store
        .delete_for_user(sessiond_core::UserId(8), None)
        .await
        .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["config", "set", "slowlog-log-slower-than", "0"]);
    cli(&["config", "set", "slowlog-max-len", "100000"]);
    cli(&["slowlog", "reset"]);
    cli(&["config", "resetstat"]);
    let start = Instant::now();
    let n = store
        .delete_for_user(sessiond_core::UserId(9), None)
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(n, total as u64);
    // `SLOWLOG GET` entries: id, timestamp, microseconds, args…; the durations of EVALSHA.
    let log = cli(&["slowlog", "get", "100000"]);
    let lines: Vec<&str> = log.lines().collect();
    let mut longest = 0u64;
    for (i, l) in lines.iter().enumerate() {
        if l.eq_ignore_ascii_case("evalsha") && i >= 3 {
            longest = longest.max(lines[i - 1].trim().parse::<u64>().unwrap_or(0));
        }
    }
    eprintln!(
        "revoke-all of {total} sessions: {n} ended in {took:?}, {} script calls, longest {longest} µs",
        script_calls(port)
    );
}

/// `{p}:tidx` stays bounded: every counter write trims the entries whose window is over, and
/// the index expires with its longest counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throttle_index_shrinks_on_write_and_expires() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let t0 = sessiond_store_tests::sessions::T0;
    let index = format!("{}:tidx", store.tag);
    for i in 0..50 {
        store
            .throttle_hit(&format!("i:203.0.113.{i}"), t0, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let card = || async {
        store
            .query::<i64>(redis::cmd("ZCARD").arg(&index))
            .await
            .unwrap()
    };
    assert_eq!(card().await, 50);
    let ttl: i64 = store.query(redis::cmd("PTTL").arg(&index)).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "the index expires: PTTL {ttl}");
    // Two minutes later (the store's clock is the caller's), one more counter: the 50 whose
    // window is over leave the index.
    let later = t0.plus(Duration::from_secs(120));
    store
        .throttle_apply(
            &[sessiond_core::ThrottleChange::Hit {
                key: "i:198.51.100.1",
                window: Duration::from_secs(60),
            }],
            later,
        )
        .await
        .unwrap();
    assert_eq!(card().await, 1);
}

/// A user's set `{p}:u:<uid>` does not keep the hashes of sessions Redis dropped by TTL for
/// good: the next session of the user trims them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_set_sheds_sessions_that_expired_by_ttl() {
    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let t0 = sessiond_store_tests::sessions::T0;
    let set = store.key("u", "77");
    for _ in 0..40 {
        let (_, mut rec) = sessiond_store_tests::sessions::session_at(77, t0);
        // A remaining life of 1 s: Redis drops the session key by itself.
        rec.expires_at = rec.last_seen_at.plus(Duration::from_millis(1_000));
        store.create(&rec).await.unwrap();
    }
    let card = || async {
        store
            .query::<i64>(redis::cmd("ZCARD").arg(&set))
            .await
            .unwrap()
    };
    assert_eq!(card().await, 40);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (_, rec) = sessiond_store_tests::sessions::session_at(77, t0);
    store.create(&rec).await.unwrap();
    assert_eq!(card().await, 1, "only the live session is left");
    assert_eq!(
        store
            .list_for_user(sessiond_core::UserId(77))
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The level is two bits of a compact session's flags (0: one factor, 1: two), and the two
/// values that are no level are corrupt, never read as some level; so is any value of the
/// `f` field of the format of before but `2` (written only for two factors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_that_is_no_level_is_corrupt() {
    use sessiond_core::AuthLevel;
    use sessiond_store_tests::sessions::{session_at, T0};

    let Some(store) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let flags = |hash| {
        let store = store.clone();
        async move {
            let v: Vec<u8> = store
                .query(
                    redis::cmd("GETRANGE")
                        .arg(store.session_key(&hash))
                        .arg(25)
                        .arg(25),
                )
                .await
                .unwrap();
            (v[0] & crate::F_LEVEL_MASK) >> crate::F_LEVEL_SHIFT
        }
    };
    let (weak_t, weak) = session_at(1, T0);
    store.create(&weak).await.unwrap();
    assert_eq!(flags(weak_t.hash()).await, 0);
    let (strong_t, mut strong) = session_at(1, T0);
    strong.level = AuthLevel::TwoFactor;
    store.create(&strong).await.unwrap();
    assert_eq!(flags(strong_t.hash()).await, 1);
    assert_eq!(
        store.load(&strong_t.hash()).await.unwrap().unwrap().level,
        AuthLevel::TwoFactor
    );
    // A rotation back down.
    let (down_t, down) = session_at(1, T0);
    assert!(store.rotate(&strong_t.hash(), &down).await.unwrap());
    assert_eq!(flags(down_t.hash()).await, 0);
    assert_eq!(
        store.load(&down_t.hash()).await.unwrap().unwrap().level,
        AuthLevel::OneFactor
    );

    let key = store.session_key(&weak_t.hash());
    let v: Vec<u8> = store.query(redis::cmd("GET").arg(&key)).await.unwrap();
    for bad in [2u8, 3] {
        let mut v = v.clone();
        v[25] = v[25] & !crate::F_LEVEL_MASK | bad << crate::F_LEVEL_SHIFT;
        let _: () = store
            .query(redis::cmd("SET").arg(&key).arg(v).arg("KEEPTTL"))
            .await
            .unwrap();
        assert!(
            matches!(
                store.load(&weak_t.hash()).await,
                Err(StoreError::Corrupt(_))
            ),
            "{bad}"
        );
    }

    let (legacy, _) = legacy_session(&store, 1, T0, None).await;
    assert_eq!(
        store.load(&legacy).await.unwrap().unwrap().level,
        AuthLevel::OneFactor
    );
    let _: i64 = store
        .query(
            redis::cmd("HSET")
                .arg(store.legacy_key(&legacy))
                .arg("f")
                .arg("2"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.load(&legacy).await.unwrap().unwrap().level,
        AuthLevel::TwoFactor
    );
    for bad in ["0", "3", "two", ""] {
        let _: i64 = store
            .query(
                redis::cmd("HSET")
                    .arg(store.legacy_key(&legacy))
                    .arg("f")
                    .arg(bad),
            )
            .await
            .unwrap();
        assert!(
            matches!(store.load(&legacy).await, Err(StoreError::Corrupt(_))),
            "{bad:?}"
        );
    }
}

/// A CA (PEM file) and a server certificate it signed for `localhost` only, with its key.
fn test_ca(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (ca_file, leaf.pem(), key.serialize_pem())
}

/// `rediss://` against a `redis-server` with a TLS port and a certificate from a throwaway
/// CA: verified against `?ca=`, refused for a name the certificate does not hold, for another
/// CA and for the system's roots; `#insecure` connects anyway; plain `redis://` to the TLS
/// port gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_the_given_ca() {
    if !redis_server_available() {
        let _ = service_or_skip::<(), _>("redis-server", Err("not installed"));
        return;
    }
    let dir = std::env::temp_dir().join(format!("sessiond-rediss-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = test_ca(&dir, "main");
    let (other_ca, _, _) = test_ca(&dir, "other");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let tls_port = spare_port();
    let tls_port_text = tls_port.to_string();
    let _server = Server::start(
        spare_port(),
        &[
            "--tls-port",
            &tls_port_text,
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
            "--tls-ca-cert-file",
            ca.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let url = |host: &str, query: &str| {
        format!(
            "rediss://{host}:{tls_port}/0?prefix={}{query}",
            fresh_prefix()
        )
    };
    let ca_query = format!("&ca={}", ca.display());

    let store = RedisStore::connect(&url("localhost", &ca_query))
        .await
        .unwrap();
    let mut up = store.ping().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        up = store.ping().await;
    }
    up.unwrap();
    let (t, rec) =
        sessiond_store_tests::sessions::session_at(1, sessiond_store_tests::sessions::T0);
    store.create(&rec).await.unwrap();
    assert_eq!(store.load(&t.hash()).await.unwrap(), Some(rec));
    // The notification connection verifies the server the same way.
    assert_notified(&store, &store).await;

    let refused = [
        (
            "a name the certificate does not hold",
            url("127.0.0.1", &ca_query),
            "not valid for name",
        ),
        (
            "another CA",
            url("localhost", &format!("&ca={}", other_ca.display())),
            "UnknownIssuer",
        ),
        ("the system's roots", url("localhost", ""), "UnknownIssuer"),
        (
            "plain text to the TLS port",
            format!("redis://localhost:{tls_port}/0"),
            "",
        ),
    ];
    for (what, url, why) in refused {
        let store = RedisStore::connect(&url).await.unwrap();
        let got = store.ping().await;
        let Err(StoreError::Unavailable(e)) = got else {
            panic!("{what}: {got:?}")
        };
        let cause = e.to_string();
        assert!(cause.contains(why), "{what}: {cause}");
        // Nor does a notification connection get through.
        assert!(store.subscribe().await.is_err(), "{what}: subscribed");
    }
    // #insecure: no verification at all (the redis crate's meaning).
    let insecure = format!("{}#insecure", url("127.0.0.1", ""));
    RedisStore::connect(&insecure)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A feed of `a`: a session ended through `b` (another handle on the same prefix) arrives as
/// a notification, and the feed's own generation moved with it.
async fn assert_notified(a: &RedisStore, b: &RedisStore) {
    let mut feed = a.subscribe().await.unwrap().expect("redis pushes");
    let before = feed.generation().await.unwrap();
    let hash = session_on(b).await;
    assert!(b.delete(&hash).await.unwrap());
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .expect("the notification arrives")
        .unwrap();
    eprintln!("notified after {:?}", start.elapsed());
    let after = feed.generation().await.unwrap();
    assert!(after > before, "{before} → {after}");
    assert_eq!(after, b.generation().await.unwrap());
}

/// The ids of the notification connections of `store`'s prefix, from `CLIENT LIST` of the
/// server `store` talks to.
async fn feed_clients(store: &RedisStore) -> Vec<String> {
    let list: String = store.query(redis::cmd("CLIENT").arg("LIST")).await.unwrap();
    let prefix = store.tag.trim_start_matches('{').trim_end_matches('}');
    let name = format!("name={}-{prefix} ", crate::FEED_CLIENT_NAME);
    list.lines()
        .filter(|l| l.contains(&name))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_another_handle_is_notified_and_another_prefixs_is_not() {
    let Some(a) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let url = format!("{}?prefix={}", redis_url(), a.tag.trim_matches(['{', '}']));
    let b = RedisStore::connect(&url).await.unwrap();
    assert_notified(&a, &b).await;

    let mut feed = a.subscribe().await.unwrap().unwrap();
    let g = feed.generation().await.unwrap();
    // Another deployment's revocation: no notification here, and our generation stands.
    let other = standalone().await.unwrap();
    let hash = session_on(&other).await;
    assert!(other.delete(&hash).await.unwrap());
    // A login (no session removed) does not notify either: it must not flush caches.
    let _ = session_on(&b).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), feed.changed())
            .await
            .is_err(),
        "notified of a change that is not ours"
    );
    assert_eq!(feed.generation().await.unwrap(), g);
    // A revocation of many sessions is one script, one notification.
    for _ in 0..5 {
        let (_, rec) =
            sessiond_store_tests::sessions::session_at(7, sessiond_store_tests::sessions::T0);
        b.create(&rec).await.unwrap();
    }
    assert_eq!(
        b.delete_for_user(sessiond_core::UserId(7), None)
            .await
            .unwrap(),
        5
    );
    tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .expect("the notification arrives")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), feed.changed())
            .await
            .is_err(),
        "one script, one notification"
    );
    // The generation bumped by hand, without PUBLISH (how the server's tests simulate a lost
    // notification): no notification, but the heartbeat's read sees it.
    let _: i64 = a
        .query(redis::cmd("INCR").arg(format!("{}:gen", a.tag)))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), feed.changed())
            .await
            .is_err()
    );
    assert_eq!(feed.generation().await.unwrap(), g + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_notification_connection_is_reported_at_once_and_a_dropped_feed_closes_it() {
    let Some(a) = service_or_skip("Redis", standalone().await) else {
        return;
    };
    let mut feed = a.subscribe().await.unwrap().unwrap();
    feed.generation().await.unwrap();
    let ids = feed_clients(&a).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let _: i64 = a
        .query(redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&ids[0]))
        .await
        .unwrap();
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(2), feed.changed())
        .await
        .expect("the loss is reported, not waited out");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    eprintln!("killed connection reported after {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // And stays reported.
    assert!(feed.changed().await.is_err());
    drop(feed);

    // A new feed has its own connection; dropping it closes that connection.
    let feed = a.subscribe().await.unwrap().unwrap();
    assert_eq!(feed_clients(&a).await.len(), 1);
    drop(feed);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !feed_clients(&a).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dropped feed's connection stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_leaves_the_feeds_heartbeat_unanswered() {
    if !redis_server_available() {
        return;
    }
    let server = Server::start(spare_port(), &[]);
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{}/0?prefix={}",
        server.port,
        fresh_prefix()
    ))
    .await
    .unwrap();
    let mut feed = store.subscribe().await.unwrap().unwrap();
    feed.generation().await.unwrap();

    /// Resumes the server however the test ends.
    struct Thaw<'a>(&'a Server);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            self.0.signal("-CONT");
        }
    }
    server.signal("-STOP");
    let thaw = Thaw(&server);
    let start = Instant::now();
    // Bounded by the store itself (OP_TIMEOUT), under the cache's own PUSH_FRESH_FOR.
    let got = tokio::time::timeout(Duration::from_secs(5), feed.generation())
        .await
        .expect("bounded by the store");
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1750),
        "{:?}",
        start.elapsed()
    );
    drop(thaw);
    // Subscribing again works once it is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(mut f)) = store.subscribe().await {
            if f.generation().await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no feed after the thaw");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_on_a_real_three_master_cluster_reach_the_slot_owner() {
    if !redis_server_available() {
        return;
    }
    let (_servers, url) = start_cluster().await;
    // Several prefixes: their slots, so their feeds' nodes, spread over the three masters.
    for _ in 0..4 {
        let url = format!("{url}?prefix={}", fresh_prefix());
        let a = RedisStore::connect(&url).await.unwrap();
        let b = RedisStore::connect(&url).await.unwrap();
        assert_notified(&a, &b).await;
    }
}

/// A server that speaks no RESP3 (Redis before 6 answers `HELLO` with an unknown command):
/// no feed, so caches poll, rather than a subscription that fails forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_resp3_gets_polled() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    // One error per command read (each starts a RESP array: `*N`).
                    let commands = usize::from(buf[0] == b'*')
                        + buf[..n].windows(3).filter(|w| w == b"\r\n*").count();
                    for _ in 0..commands {
                        let err =
                            b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n";
                        if sock.write_all(err).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}/0?prefix={}",
        fresh_prefix()
    ))
    .await
    .unwrap();
    assert!(matches!(store.subscribe().await, Ok(None)));
}

mod compact;
use compact::legacy_session;
