//! Tests beyond the conformance suite: concurrent migration, and deadlines against a closed
//! port, a server that never speaks, and a server that hangs mid-session.
//!
//! Every test that needs PostgreSQL gets an empty schema of its own, `sessiond_t_` + 16
//! random hex digits. Nothing drops a schema when its test ends (a `Drop` cannot await, and a
//! failed test's data is worth a look); instead the first store each test process makes drops
//! the `sessiond_t_` schemas whose first migration is more than an hour old, so they never
//! pile up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_core::{ChangeFeed, SessionStore, StoreError, ThrottleStore, UserId};
use sessiond_store_tests::service_or_skip;
use sessiond_store_tests::sessions::{session_at, T0};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{PostgresStore, MIGRATIONS};

const SCHEMA_PREFIX: &str = "sessiond_t_";
/// Test schemas older than this are dropped.
const SCHEMA_MAX_AGE: Duration = Duration::from_secs(3600);

pub fn url() -> String {
    std::env::var("SESSIOND_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn fresh_schema() -> String {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("the OS has randomness");
    format!("{SCHEMA_PREFIX}{:016x}", u64::from_be_bytes(random))
}

/// A store on an empty schema of its own (for the conformance suite).
pub async fn fresh_store() -> Result<PostgresStore, StoreError> {
    sweep_old_schemas().await;
    PostgresStore::connect_in_schema(&url(), &fresh_schema()).await
}

/// Once per test process, drops the test schemas migrated more than [`SCHEMA_MAX_AGE`] ago.
///
/// The age comes from the schema's own `schema_migrations`, not from its name, so a schema
/// another test (or crate) is using right now is never dropped, whatever it is called. A
/// schema without that table (being created right now, or left by a test killed in between)
/// is left alone. Best effort: any failure (no server, a schema another process drops at the
/// same time) is ignored, and the next run tries again.
async fn sweep_old_schemas() {
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if SWEPT.swap(true, Ordering::SeqCst) {
        return;
    }
    let sweep = async {
        let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT n.nspname::text FROM pg_namespace n \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'schema_migrations' \
                 WHERE starts_with(n.nspname, $1)",
                &[&SCHEMA_PREFIX],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            let old = client
                .query_one(
                    &format!(
                        "SELECT coalesce(min(applied_at) < \
                         (extract(epoch FROM now()) * 1000)::bigint - $1, false) \
                         FROM {quoted}.schema_migrations"
                    ),
                    &[&(SCHEMA_MAX_AGE.as_millis() as i64)],
                )
                .await
                .is_ok_and(|r| r.try_get::<_, bool>(0).unwrap_or(false));
            if old {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
                    .await;
            }
        }
        drop(client);
        let _ = driver.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), sweep).await;
}

#[test]
fn schema_names_are_checked() {
    for ok in [
        "s",
        "_s",
        "sessiond",
        "tenant_42",
        &fresh_schema(),
        &"a".repeat(63),
    ] {
        assert!(crate::check_schema(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "4x",
        "Upper",
        "a-b",
        "a b",
        "a\"b",
        "pg_temp",
        &"a".repeat(64),
    ] {
        assert!(
            matches!(crate::check_schema(bad), Err(StoreError::Config(_))),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_on_a_fresh_schema_migrate_once() {
    let schema = fresh_schema();
    sweep_old_schemas().await;
    let url = url();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, schema) = (url.clone(), schema.clone());
            tokio::spawn(async move { PostgresStore::connect_in_schema(&url, &schema).await })
        })
        .collect();
    let mut stores = Vec::new();
    for t in tasks {
        let Some(store) = service_or_skip("PostgreSQL", t.await.unwrap()) else {
            return;
        };
        stores.push(store);
    }
    let latest = MIGRATIONS.last().unwrap().0;
    for s in &stores {
        assert_eq!(s.schema(), Some(schema.as_str()));
        assert_eq!(s.schema_version().await.unwrap(), latest);
    }
    let rows: i64 = stores[0]
        .run(|c| {
            Box::pin(async move {
                crate::col(
                    &crate::query_one(&*c, "SELECT count(*) FROM schema_migrations", &[]).await?,
                    0,
                )
            })
        })
        .await
        .unwrap();
    assert_eq!(rows, MIGRATIONS.len() as i64, "each step recorded once");

    // All of them are one store: what one writes, the others read.
    let (t, rec) = session_at(1, T0);
    stores[0].create(&rec).await.unwrap();
    assert_eq!(stores[7].load(&t.hash()).await.unwrap(), Some(rec));

    // And connecting again later applies nothing.
    let again = PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap();
    assert_eq!(again.schema_version().await.unwrap(), latest);
}

/// Awaits `fut` and reports how long it took; panics if it takes 3 s (a hang).
async fn within_3s<T>(fut: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .expect("must fail fast, not hang");
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_unavailable_at_once() {
    let (made, took) = within_3s(PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/test",
    ))
    .await;
    assert!(matches!(made, Err(StoreError::Unavailable(_))), "{made:?}");
    assert!(took < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_unavailable_within_the_deadline() {
    // Accepts TCP connections and never says a word: the TCP connect succeeds, so only our
    // own deadline (not tokio-postgres' connect timeout) can end the startup exchange.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let (made, took) = within_3s(PostgresStore::connect(&format!(
        "postgres://postgres@{addr}/test"
    )))
    .await;
    silent.abort();
    match made {
        Err(StoreError::Unavailable(e)) => {
            assert!(e.to_string().contains("did not answer"), "{e}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(1400), "{took:?}");
}

/// A TCP proxy in front of PostgreSQL that can freeze: while frozen it forwards nothing in
/// either direction and keeps every connection open, like a server that hangs.
async fn freezable_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<AtomicBool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Swallowed, not delayed: a connection that was frozen mid-request is broken for
            // good, so a store that pooled it again would hang on it.
            if frozen.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&frozen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, Arc::clone(&flag)));
            tokio::spawn(pump(sr, cw, Arc::clone(&flag)));
        }
    });
    (addr, frozen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_mid_session_fails_calls_fast_and_the_store_recovers() {
    // Reach the test server through the proxy, keeping the rest of the test URL's config.
    let config: tokio_postgres::Config = url().parse().unwrap();
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(&port)) =
        (config.get_hosts().first(), config.get_ports().first())
    else {
        eprintln!("SKIP: the test URL is not a TCP address");
        return;
    };
    let Some(upstream) = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        let _ = service_or_skip::<(), _>("PostgreSQL", Err(format!("cannot resolve {host}")));
        return;
    };
    let (proxy, frozen) = freezable_proxy(upstream).await;
    let proxied = key_value_url(&config, proxy);

    let made = PostgresStore::connect_in_schema(&proxied, &fresh_schema()).await;
    let Some(store) = service_or_skip("PostgreSQL", made) else {
        return;
    };
    let (t, rec) = session_at(1, T0);
    store.create(&rec).await.unwrap();

    frozen.store(true, Ordering::SeqCst);
    let (loaded, took) = within_3s(store.load(&t.hash())).await;
    assert!(
        matches!(loaded, Err(StoreError::Unavailable(_))),
        "{loaded:?}"
    );
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    let (pinged, _) = within_3s(store.ping()).await;
    assert!(matches!(pinged, Err(StoreError::Unavailable(_))));

    // Once the server answers again, so does the store: the connections that timed out were
    // dropped, not handed to the next caller.
    frozen.store(false, Ordering::SeqCst);
    assert_eq!(store.load(&t.hash()).await.unwrap(), Some(rec));
    store.ping().await.unwrap();
    assert_eq!(store.list_for_user(UserId(1)).await.unwrap().len(), 1);
}

/// A `key=value` connection string to `addr` with the credentials and database of `config`
/// (values quoted, so any password survives).
pub(crate) fn key_value_url(config: &tokio_postgres::Config, addr: SocketAddr) -> String {
    fn quote(v: &str) -> String {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    let mut parts = vec![
        format!("host={}", addr.ip()),
        format!("port={}", addr.port()),
    ];
    if let Some(u) = config.get_user() {
        parts.push(format!("user={}", quote(u)));
    }
    if let Some(pw) = config.get_password() {
        parts.push(format!("password={}", quote(&String::from_utf8_lossy(pw))));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={}", quote(db)));
    }
    parts.join(" ")
}

/// A connection of its own to the store's database, as an operator's psql session would
/// be: the store's schema on the search path (the trigger functions find `generation`
/// through it).
async fn operator_session(store: &PostgresStore) -> tokio_postgres::Client {
    let schema = store.schema().unwrap().to_owned();
    let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap();
    client
}

/// A change of a user's admin flag or groups made straight in the database moves the
/// generation, so verification caches reload the user.
#[tokio::test]
async fn direct_changes_of_admin_or_groups_move_the_generation() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    use sessiond_core::UserStore;
    let u = store
        .create_user(&sessiond_store_tests::users::new_user("gina"))
        .await
        .unwrap();
    let client = operator_session(&store).await;
    let table = "users";
    for set in ["admin = true", "groups = ARRAY['ops']"] {
        let before = store.generation().await.unwrap();
        let sql = format!("UPDATE {table} SET {set} WHERE id = $1");
        client.execute(&sql, &[&u.id.0]).await.unwrap();
        assert_ne!(store.generation().await.unwrap(), before, "{set}");
    }
    let before = store.generation().await.unwrap();
    client
        .execute(
            &format!("UPDATE {table} SET email = 'g@example.com' WHERE id = $1"),
            &[&u.id.0],
        )
        .await
        .unwrap();
    assert_eq!(store.generation().await.unwrap(), before);
}

/// A group that breaks `Group`'s rule, written straight into the table (no sessiond path
/// can write one), makes the user's row corrupt, not a user with a group nobody could type.
#[tokio::test]
async fn a_stored_group_that_breaks_the_rule_is_corrupt() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    use sessiond_core::UserStore;
    let u = store
        .create_user(&sessiond_store_tests::users::new_user("hugo"))
        .await
        .unwrap();
    let client = operator_session(&store).await;
    let sql = "UPDATE users SET groups = ARRAY['ops', 'a,b'] WHERE id = $1";
    client.execute(sql, &[&u.id.0]).await.unwrap();
    assert!(matches!(
        store.user_by_id(u.id).await,
        Err(StoreError::Corrupt(e)) if e.contains("a,b")
    ));
}

/// A session level that no version writes, put straight into the table, makes the session
/// corrupt (loaded or listed), never a session of some level; a session from before levels
/// (the column's default) is a one-factor session.
#[tokio::test]
async fn an_unknown_session_level_is_corrupt() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let (t, rec) = session_at(1, T0);
    store.create(&rec).await.unwrap();
    let client = operator_session(&store).await;
    let hash = t.hash().as_bytes().to_vec();
    client
        .execute(
            "UPDATE sessions SET level = DEFAULT WHERE token_hash = $1",
            &[&hash],
        )
        .await
        .unwrap();
    assert_eq!(
        store.load(&t.hash()).await.unwrap().map(|s| s.level),
        Some(sessiond_core::AuthLevel::OneFactor)
    );
    for bad in [0_i64, 3, -1] {
        client
            .execute(
                "UPDATE sessions SET level = $1 WHERE token_hash = $2",
                &[&bad, &hash],
            )
            .await
            .unwrap();
        assert!(
            matches!(store.load(&t.hash()).await, Err(StoreError::Corrupt(_))),
            "{bad}"
        );
        assert!(matches!(
            store.list_for_user(UserId(1)).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}

/// Data that is not a JSON object, written straight into the table, is reported as corrupt
/// by a patch and left as it is (not merged into, not replaced).
#[tokio::test]
async fn a_patch_of_corrupt_data_is_refused_and_changes_nothing() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let (t, rec) =
        sessiond_store_tests::sessions::session_at(1, sessiond_store_tests::sessions::T0);
    store.create(&rec).await.unwrap();
    let client = operator_session(&store).await;
    let hash = t.hash().as_bytes().to_vec();
    let mut set = sessiond_core::SessionData::new();
    set.insert("k".into(), serde_json::json!(1));
    for bad in ["[1, 2]", "\"text\"", "42"] {
        client
            .execute(
                "UPDATE sessions SET data = $1::text::jsonb WHERE token_hash = $2",
                &[&bad, &hash],
            )
            .await
            .unwrap();
        assert!(
            matches!(
                store.patch_data(&t.hash(), &set, &["k".to_owned()]).await,
                Err(StoreError::Corrupt(_))
            ),
            "{bad}"
        );
        let row = client
            .query_one(
                "SELECT data::text = $1::text::jsonb::text FROM sessions WHERE token_hash = $2",
                &[&bad, &hash],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "{bad} left as it was");
    }
}

/// Expired throttle counters must not pile up with every username and address ever tried:
/// the sweeper's `purge_expired` removes them too, in bounded batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_sweeps_expired_throttle_counters() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let rows = || async {
        store
            .run(|c| {
                Box::pin(async move {
                    crate::col::<i64>(
                        &crate::query_one(&*c, "SELECT count(*) FROM throttle", &[]).await?,
                        0,
                    )
                })
            })
            .await
            .unwrap()
    };
    for i in 0..30 {
        store
            .throttle_hit(&format!("a:spray{i}"), T0, Duration::from_secs(60))
            .await
            .unwrap();
    }
    store
        .throttle_hit("a:live", T0, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(rows().await, 31);
    let later = T0.plus(Duration::from_secs(120));
    // Bounded: one batch of 10, then the rest.
    store.purge_expired(later, 10).await.unwrap();
    assert_eq!(rows().await, 21);
    store.purge_expired(later, 1000).await.unwrap();
    assert_eq!(rows().await, 1, "only the live counter is left");
    assert!(store.throttle_get("a:live", later).await.unwrap().is_some());
}

/// `throttle_apply` commits without waiting for the disk (`set_config(…, true)` in its
/// transaction), and that must end with the transaction: a connection the pool hands out
/// next, for a revoke, must wait for the flush again. Each round settles changes, then asks
/// every connection the pool holds (all of them checked out at once) for its setting, and
/// reads the changes back.
#[tokio::test]
async fn a_settlement_s_relaxed_commit_ends_with_its_transaction() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let window = Duration::from_secs(60);
    for round in 0..5 {
        let key = format!("a:settle{round}");
        store.throttle_hit(&key, T0, window).await.unwrap();
        store.throttle_hit(&key, T0, window).await.unwrap();
        let refund = [sessiond_core::ThrottleChange::Refund { key: &key }];
        store.throttle_apply(&refund, T0).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..crate::POOL_SIZE {
            held.push(store.pool.get().await.unwrap());
        }
        for c in &held {
            let row = c.query_one("SHOW synchronous_commit", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "on", "round {round}");
        }
        drop(held);
        let left = store.throttle_get(&key, T0).await.unwrap().unwrap();
        assert_eq!(left.count, 1, "the refund committed");
    }
}

/// Waits for the feed's next notification, up to `within`; `None` if none came.
async fn next_change(
    feed: &mut dyn ChangeFeed,
    within: Duration,
) -> Option<Result<(), StoreError>> {
    tokio::time::timeout(within, feed.changed()).await.ok()
}

/// Generous: a notification normally arrives within milliseconds of the commit.
const ARRIVES_WITHIN: Duration = Duration::from_secs(5);
/// How long a notification that must not come is waited for.
const QUIET_FOR: Duration = Duration::from_millis(500);

#[test]
fn the_migration_notifies_on_the_channel_the_feed_listens_to() {
    // The latest definition of the trigger function is the one in force.
    let (_, sql) = MIGRATIONS
        .iter()
        .rev()
        .find(|(_, sql)| sql.contains("FUNCTION sessiond_bump_generation()"))
        .unwrap();
    assert!(sql.contains(&format!("pg_notify('{}'", crate::feed::CHANNEL)));
}

/// A change made anywhere in the store's schema (another handle, hand-made SQL) is pushed;
/// one in another schema of the same database is not, nor a hand-made update of the
/// generation itself (the heartbeat's `generation` is what catches that one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_the_schema_are_pushed_and_no_others() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let mut feed = store.subscribe().await.unwrap().expect("PostgreSQL pushes");
    assert_eq!(
        feed.generation().await.unwrap(),
        store.generation().await.unwrap()
    );
    let schema = store.schema().unwrap();
    let other = PostgresStore::connect_in_schema(&url(), &fresh_schema())
        .await
        .unwrap();
    let same = PostgresStore::connect_in_schema(&url(), schema)
        .await
        .unwrap();

    // Another deployment's change: not ours.
    let (t, rec) = session_at(1, T0);
    other.create(&rec).await.unwrap();
    assert!(other.delete(&t.hash()).await.unwrap());
    assert!(next_change(&mut *feed, QUIET_FOR).await.is_none());

    // A change through another handle on the schema (another instance).
    same.create(&rec).await.unwrap();
    let start = Instant::now();
    assert!(same.delete(&t.hash()).await.unwrap());
    let got = next_change(&mut *feed, ARRIVES_WITHIN).await;
    assert!(matches!(got, Some(Ok(()))), "{got:?}");
    eprintln!("delete pushed after {:?}", start.elapsed());
    assert_eq!(
        feed.generation().await.unwrap(),
        store.generation().await.unwrap()
    );

    // A hand-made delete, as an operator's psql would do it.
    let (t2, rec2) = session_at(2, T0);
    store.create(&rec2).await.unwrap();
    let client = operator_session(&store).await;
    let hash = t2.hash().as_bytes().to_vec();
    let deleted = client
        .execute("DELETE FROM sessions WHERE token_hash = $1", &[&hash])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let got = next_change(&mut *feed, ARRIVES_WITHIN).await;
    assert!(matches!(got, Some(Ok(()))), "{got:?}");

    // A hand-made bump of the generation does not notify (how the server tests lose a
    // notification on purpose), and the feed's own read sees it.
    let before = feed.generation().await.unwrap();
    client
        .execute("UPDATE generation SET value = value + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    assert!(next_change(&mut *feed, QUIET_FOR).await.is_none());
    assert_eq!(feed.generation().await.unwrap(), before + 1);
    assert_eq!(store.generation().await.unwrap(), before + 1);
}

/// The server ending the feed's backend (an operator's `pg_terminate_backend`, a failover)
/// makes `changed` fail at once, so the cache turns off and subscribes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_feed_connection_fails_changed_promptly() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let mut feed = crate::feed::subscribe(&store.listen, store.tls.as_ref())
        .await
        .unwrap();
    let pid = feed.backend_pid().await;
    let client = operator_session(&store).await;
    let name: String = client
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "sessiond listen", "recognisable in pg_stat_activity");
    let waiting = tokio::spawn(async move {
        let got = feed.changed().await;
        (got, feed)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let (got, mut feed) = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("changed() must fail promptly, not hang")
        .unwrap();
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    eprintln!("terminated feed failed after {:?}", start.elapsed());
    // And stays failed; its heartbeat fails too.
    assert!(feed.changed().await.is_err());
    assert!(feed.generation().await.is_err());
    // A new subscription works.
    let mut again = store.subscribe().await.unwrap().unwrap();
    assert_eq!(
        again.generation().await.unwrap(),
        store.generation().await.unwrap()
    );
}

/// A dropped feed leaves no connection (nor task) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_feed_closes_its_connection() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let client = operator_session(&store).await;
    let alive = |pid: i32| {
        let client = &client;
        async move {
            client
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .unwrap()
                .is_some()
        }
    };
    // Dropped while idle, and dropped while a `changed` was waiting (the watcher's case).
    for waiting in [false, true] {
        let mut feed = crate::feed::subscribe(&store.listen, store.tls.as_ref())
            .await
            .unwrap();
        let pid = feed.backend_pid().await;
        assert!(alive(pid).await);
        if waiting {
            let _ = tokio::time::timeout(Duration::from_millis(50), feed.changed()).await;
        }
        drop(feed);
        let start = Instant::now();
        while alive(pid).await {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "backend {pid} still there 5 s after the feed was dropped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every login trims the user's sessions to the cap with a DELETE that usually deletes
/// nothing: such a DELETE must neither move the generation (which flushes every instance's
/// cache) nor notify. One that deletes does both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_of_nothing_moves_nothing_and_notifies_nobody() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let mut feed = store.subscribe().await.unwrap().unwrap();
    let (_, rec) = session_at(1, T0);
    store.create(&rec).await.unwrap();
    let before = store.generation().await.unwrap();
    assert_eq!(
        store.delete_oldest_for_user(UserId(1), 100).await.unwrap(),
        0
    );
    let (unknown, _) = session_at(1, T0);
    assert!(!store.delete(&unknown.hash()).await.unwrap());
    assert_eq!(store.generation().await.unwrap(), before);
    assert!(next_change(&mut *feed, QUIET_FOR).await.is_none());

    assert_eq!(store.delete_oldest_for_user(UserId(1), 0).await.unwrap(), 1);
    assert_ne!(store.generation().await.unwrap(), before);
    let got = next_change(&mut *feed, ARRIVES_WITHIN).await;
    assert!(matches!(got, Some(Ok(()))), "{got:?}");
}

/// A purge of sessions long expired by the database's clock moves no generation and
/// notifies nobody (`SessionStore::purge_expired`); its quiet is its own transaction's, so a
/// DELETE after it of a session just as long expired does both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_long_expired_sessions_notifies_nobody_and_only_it_is_quiet() {
    let Some(store) = service_or_skip("PostgreSQL", fresh_store().await) else {
        return;
    };
    let mut feed = store.subscribe().await.unwrap().unwrap();
    // T0 (2026-01-01): its sessions expired long before any clock this test runs on.
    let (_, a) = session_at(1, T0);
    let (b, rec_b) = session_at(1, T0);
    store.create(&a).await.unwrap();
    let before = store.generation().await.unwrap();
    assert_eq!(store.purge_expired(a.expires_at, 10).await.unwrap(), 1);
    assert_eq!(store.generation().await.unwrap(), before);
    assert!(next_change(&mut *feed, QUIET_FOR).await.is_none());

    store.create(&rec_b).await.unwrap();
    assert!(store.delete(&b.hash()).await.unwrap());
    assert_ne!(store.generation().await.unwrap(), before);
    let got = next_change(&mut *feed, ARRIVES_WITHIN).await;
    assert!(matches!(got, Some(Ok(()))), "{got:?}");
}
