//! Many instances on one store (issue 4): what one instance changes, every other sees at once,
//! and when the store is gone every instance fails closed and heals by itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::Overrides;
use sessiond_store_tests::services::{
    fresh_prefix, redis_server_available, spare_port, RedisServer,
};

use crate::helpers::*;

/// A deployment's stores: the database URL (`None`: the test's SQLite file) and the session
/// store URL (`None`: the database).
#[derive(Clone, Debug)]
pub(crate) struct Stores {
    pub(crate) label: &'static str,
    pub(crate) database: Option<String>,
    pub(crate) session_store: Option<String>,
}

fn redis_url() -> String {
    std::env::var("SESSIOND_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn postgres_url() -> String {
    std::env::var("SESSIOND_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A PostgreSQL database URL of the test's own: a fresh schema (created and migrated here),
/// and an application name to find its connections by.
pub(crate) async fn fresh_postgres() -> Option<String> {
    let schema = fresh_prefix();
    let made =
        sessiond_store_postgres::PostgresStore::connect_in_schema(&postgres_url(), &schema).await;
    sessiond_store_tests::service_or_skip("PostgreSQL", made)?;
    Some(format!(
        "{}?application_name={schema}&options=-c%20search_path%3D{schema}",
        postgres_url()
    ))
}

async fn redis_up() -> bool {
    let probe = sessiond_store_redis::RedisStore::connect(&redis_url()).await;
    let up = match probe {
        Ok(s) => sessiond_core::SessionStore::ping(&s).await.map(|_| ()),
        Err(e) => Err(e),
    };
    sessiond_store_tests::service_or_skip("Redis", up).is_some()
}

/// Every combination this machine can run: SQLite alone, SQLite + Redis, PostgreSQL alone,
/// PostgreSQL + Redis.
pub(crate) async fn deployments() -> Vec<Stores> {
    let redis = redis_up().await;
    let fresh_redis = || Some(format!("{}?prefix={}", redis_url(), fresh_prefix()));
    let mut v = vec![Stores {
        label: "sqlite",
        database: None,
        session_store: None,
    }];
    if redis {
        v.push(Stores {
            label: "sqlite+redis",
            database: None,
            session_store: fresh_redis(),
        });
    }
    if let Some(pg) = fresh_postgres().await {
        v.push(Stores {
            label: "postgres",
            database: Some(pg),
            session_store: None,
        });
    }
    if redis {
        if let Some(pg) = fresh_postgres().await {
            v.push(Stores {
                label: "postgres+redis",
                database: Some(pg),
                session_store: fresh_redis(),
            });
        }
    }
    v
}

/// Two servers on the same stores (and the same SQLite file, when SQLite).
async fn pair(stores: &Stores) -> (TestApp, TestApp) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let over = || Overrides {
        database: stores.database.clone(),
        session_store: stores.session_store.clone(),
        ..Overrides::default()
    };
    let a = spawn_app_in(dir.clone(), over()).await;
    let b = spawn_app_in(dir, over()).await;
    (a, b)
}

/// A client of `app` presenting `token`.
async fn status_on(app: &TestApp, token: &str) -> StatusCode {
    app.bare_client()
        .get(app.url("/api/session"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls A until it refuses `token`; the time from the change on B to the refusal on A.
async fn refused_within(app: &TestApp, token: &str, since: Instant) -> Duration {
    loop {
        if status_on(app, token).await == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn what_one_instance_changes_every_other_sees_at_once() {
    for stores in deployments().await {
        let label = stores.label;
        let (a, b) = pair(&stores).await;
        // The deployment is the one the label names (not a silent fallback to SQLite).
        let users = format!("{:?}", a.state.users);
        let sessions = format!("{:?}", a.state.sessions.store());
        let (want_users, want_sessions) = match label {
            "sqlite" => ("SqliteStore", "SqliteStore"),
            "sqlite+redis" => ("SqliteStore", "RedisStore"),
            "postgres" => ("PostgresStore", "PostgresStore"),
            _ => ("PostgresStore", "RedisStore"),
        };
        // (Through the metrics' `Timed` wrapper: `Timed { inner: SqliteStore … }`.)
        let backend = |debug: &str| debug.trim_start_matches("Timed { inner: ").to_owned();
        assert!(
            backend(&users).starts_with(want_users),
            "{label}: users in {users}"
        );
        assert!(
            backend(&sessions).starts_with(want_sessions),
            "{label}: sessions in {sessions}"
        );
        a.add_user("fay").await;
        let bound = Duration::from_millis(100);

        // A login on A is valid on B.
        let on_a = a.client();
        let token = session_cookie(&a.api_login(&on_a, "fay", PASSWORD).await).unwrap();
        assert_eq!(status_on(&b, &token).await, StatusCode::OK, "{label}");

        // Logout on B: refused on A.
        let res = b
            .bare_client()
            .post(b.url("/api/logout"))
            .header("cookie", format!("__Host-sessiond={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        // The bound runs from the moment B has made the change.
        let start = Instant::now();
        let took = refused_within(&a, &token, start).await;
        assert!(took < bound, "{label}: logout seen after {took:?}");

        // Revoke on B (by id): refused on A.
        let t1 = session_cookie(&a.api_login(&a.client(), "fay", PASSWORD).await).unwrap();
        let on_b = b.client();
        b.api_login(&on_b, "fay", PASSWORD).await;
        let id = json(
            a.bare_client()
                .get(a.url("/api/session"))
                .header("cookie", format!("__Host-sessiond={t1}"))
                .send()
                .await
                .unwrap(),
        )
        .await["session"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            on_b.delete(b.url(&format!("/api/sessions/{id}")))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NO_CONTENT
        );
        let start = Instant::now();
        let took = refused_within(&a, &t1, start).await;
        assert!(took < bound, "{label}: revoke seen after {took:?}");

        // Password change on B: A refuses the user's other sessions.
        let t2 = session_cookie(&a.api_login(&a.client(), "fay", PASSWORD).await).unwrap();
        let res = on_b
            .post(b.url("/api/password"))
            .json(&serde_json::json!({ "current_password": PASSWORD, "new_password": "fay's new password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let start = Instant::now();
        let took = refused_within(&a, &t2, start).await;
        assert!(took < bound, "{label}: password change seen after {took:?}");
        assert_eq!(
            a.api_login(&a.client(), "fay", PASSWORD).await.status(),
            StatusCode::UNAUTHORIZED
        );

        // Disable on B: A refuses.
        let t3 =
            session_cookie(&a.api_login(&a.client(), "fay", "fay's new password").await).unwrap();
        let user = b
            .state
            .users
            .user_by_name(&sessiond_core::Username::parse("fay").unwrap())
            .await
            .unwrap()
            .unwrap()
            .user;
        sessiond::accounts::disable(
            b.state.users.as_ref(),
            b.state.sessions.store().as_ref(),
            user.id,
        )
        .await
        .unwrap();
        let start = Instant::now();
        let took = refused_within(&a, &t3, start).await;
        assert!(took < bound, "{label}: disable seen after {took:?}");
        eprintln!("{label}: changes on B refused on A within {bound:?}");
    }
}

/// A server whose session store is a `redis-server` of the test's own.
async fn app_on_own_redis() -> Option<(TestApp, RedisServer)> {
    if !redis_server_available() {
        return None;
    }
    let port = spare_port();
    // Append-only file: a restarted Redis still has the sessions.
    let redis = RedisServer::start(port, &["--appendonly", "yes", "--appendfsync", "always"]);
    let over = Overrides {
        session_store: Some(format!(
            "redis://127.0.0.1:{port}/0?prefix={}",
            fresh_prefix()
        )),
        ..Overrides::default()
    };
    Some((
        spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), over).await,
        redis,
    ))
}

async fn timed(req: reqwest::RequestBuilder) -> (StatusCode, String, Duration) {
    let start = Instant::now();
    let res = req.timeout(Duration::from_secs(10)).send().await.unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    (status, body, start.elapsed())
}

/// While the store is gone: every verifying route answers 503 within 2 s, never 200, and
/// readiness says so.
async fn assert_fails_closed(app: &TestApp, token: &str, what: &str) {
    let c = app.bare_client();
    let cookie = format!("__Host-sessiond={token}");
    for path in ["/api/session", "/api/sessions"] {
        let (status, body, took) = timed(c.get(app.url(path)).header("cookie", &cookie)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what} {path}: {body}"
        );
        assert!(body.contains("\"code\":\"store_unavailable\""), "{body}");
        assert!(
            took < Duration::from_secs(2),
            "{what} {path}: answered after {took:?}"
        );
    }
    let (status, _, took) = timed(c.get(app.url("/")).header("cookie", &cookie)).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: account page"
    );
    assert!(took < Duration::from_secs(2));
    let (status, _, took) = timed(c.get(app.url("/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: readyz");
    assert!(took < Duration::from_secs(2));
    // A login cannot create a session either: 503, not 200 and not 401.
    let (status, _, _) = timed(
        c.post(app.url("/api/login"))
            .json(&serde_json::json!({ "username": "gus", "password": PASSWORD })),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: login");
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

/// From `since` (the store killed or frozen) until 2 s later, every answer for `token` comes
/// within 2 s and is a 200 (from the cache, which a pushing store's heartbeat keeps fresh for
/// up to 1.75 s) or a 503, never a 200 after a 503; from 2 s on, only 503s. When the first
/// 503 came.
async fn fails_closed_by(app: &TestApp, token: &str, since: Instant, what: &str) -> Duration {
    let c = app.bare_client();
    let cookie = format!("__Host-sessiond={token}");
    let mut first_503 = None;
    while since.elapsed() < Duration::from_millis(2300) {
        let sent = since.elapsed();
        let (status, body, took) =
            timed(c.get(app.url("/api/session")).header("cookie", &cookie)).await;
        assert!(
            took < Duration::from_secs(2),
            "{what}: answered after {took:?}"
        );
        match status {
            StatusCode::OK => {
                assert!(first_503.is_none(), "{what}: a 200 after a 503");
                assert!(
                    sent < Duration::from_secs(2),
                    "{what}: a 200 {sent:?} after the store stopped"
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                first_503.get_or_insert(sent);
            }
            other => panic!("{what}: {other} {body}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first_503.expect("no 503 at all")
}

/// Verifies `token` on `app` until the cache answers (the first heartbeat has made it fresh
/// and the record is cached); how long that took.
async fn cached(app: &TestApp, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        let hits = app
            .state
            .sessions
            .counters()
            .cache_hits
            .load(Ordering::Relaxed);
        assert_eq!(status_on(app, token).await, StatusCode::OK);
        if app
            .state
            .sessions
            .counters()
            .cache_hits
            .load(Ordering::Relaxed)
            > hits
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not served from the cache within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the session answers 200 again; the time it took.
async fn heals(app: &TestApp, token: &str) -> Duration {
    let start = Instant::now();
    loop {
        if status_on(app, token).await == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no recovery within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_session_store_fails_closed_and_heals_without_a_restart() {
    let Some((app, mut redis)) = app_on_own_redis().await else {
        return;
    };
    app.add_user("gus").await;
    let token = session_cookie(&app.api_login(&app.client(), "gus", PASSWORD).await).unwrap();
    assert_eq!(status_on(&app, &token).await, StatusCode::OK);

    redis.kill();
    let first_503 = fails_closed_by(&app, &token, Instant::now(), "killed").await;
    // The cache's notification connection closes with the server: off at once (the 2 s
    // bound is for a store that hangs).
    eprintln!("redis killed: first 503 after {first_503:?}");
    assert_fails_closed(&app, &token, "killed").await;

    redis.restart();
    let took = heals(&app, &token).await;
    eprintln!("redis killed and restarted: first good answer {took:?} after the restart");
    assert_eq!(
        app.client()
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_frozen_session_store_fails_closed_and_heals_without_a_restart() {
    let Some((app, redis)) = app_on_own_redis().await else {
        return;
    };
    app.add_user("gus").await;
    let token = session_cookie(&app.api_login(&app.client(), "gus", PASSWORD).await).unwrap();
    // Cached first: the cache, not only the store's own timeout, must stop serving it.
    assert!(cached(&app, &token).await < Duration::from_secs(5));

    redis.signal("-STOP");
    let first_503 = fails_closed_by(&app, &token, Instant::now(), "frozen").await;
    eprintln!("redis frozen: first 503 after {first_503:?}");
    assert_fails_closed(&app, &token, "frozen").await;

    redis.signal("-CONT");
    let took = heals(&app, &token).await;
    eprintln!("redis frozen and resumed: first good answer {took:?} after SIGCONT");
}

#[tokio::test]
async fn postgres_connections_terminated_under_load_heal_by_themselves() {
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = spawn_app_in(
        Arc::new(tempfile::tempdir().unwrap()),
        Overrides {
            database: Some(db.clone()),
            ..Overrides::default()
        },
    )
    .await;
    app.add_user("hal").await;
    let token = session_cookie(&app.api_login(&app.client(), "hal", PASSWORD).await).unwrap();
    // Warm the pool: several connections in use at once.
    let warm: Vec<_> = (0..8).map(|_| status_on(&app, &token)).collect();
    for s in futures_join(warm).await {
        assert_eq!(s, StatusCode::OK);
    }

    // What an operator's `pg_terminate_backend`, a failover or a restart does to the pool.
    let app_name = db
        .split("application_name=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let (client, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app_name],
        )
        .await
        .unwrap();
    if killed == 0 {
        let rows = client
            .query(
                "SELECT coalesce(application_name, ''), state FROM pg_stat_activity",
                &[],
            )
            .await
            .unwrap();
        let names: Vec<(String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        panic!("no backends of {app_name} among {names:?}");
    }
    let start = Instant::now();
    // Until the pool has replaced its dead connections, a request may fail closed (503);
    // it never answers anything else. A dead connection is found out when it is next used
    // (or checked out, once its connection task has seen the close), so after the first good
    // answer another of the pool's dead connections may still fail one request each: at most
    // the pool's size (16) of them. Healed means: then 50 good answers in a row.
    let mut first_ok = None;
    let (mut late_failures, mut good_in_a_row) = (0, 0);
    while start.elapsed() < Duration::from_secs(10) && good_in_a_row < 50 {
        match status_on(&app, &token).await {
            StatusCode::OK => {
                first_ok.get_or_insert(start.elapsed());
                good_in_a_row += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                good_in_a_row = 0;
                if first_ok.is_some() {
                    late_failures += 1;
                    assert!(
                        late_failures <= 16,
                        "503s after having healed: more than one per pooled connection"
                    );
                }
            }
            other => panic!("{other} while the pool heals"),
        }
    }
    assert_eq!(good_in_a_row, 50, "the pool did not stay healed");
    let healed = first_ok.expect("never healed");
    eprintln!("postgres backends terminated ({killed}): first good answer after {healed:?}");
}

async fn futures_join<F: std::future::Future>(v: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in v {
        out.push(f.await);
    }
    out
}

// PostgreSQL pushes invalidations (`LISTEN`/`NOTIFY`): the failure modes of that path, on a
// real server. Each instance's notification connection shows in `pg_stat_activity` as its
// application name + " listen".

/// Two servers on one fresh PostgreSQL schema, A's connections named `<schema>_a`, B's
/// `<schema>_b`, and an operator's connection on the schema.
struct PgPair {
    a: TestApp,
    b: TestApp,
    /// A's notification connection's application name.
    a_listen: String,
    op: tokio_postgres::Client,
}

async fn pg_pair() -> Option<PgPair> {
    let db = fresh_postgres().await?;
    let schema = db
        .split("application_name=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let named = |suffix: &str| {
        db.replace(
            &format!("application_name={schema}&"),
            &format!("application_name={schema}_{suffix}&"),
        )
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let over = |url: String| Overrides {
        database: Some(url),
        ..Overrides::default()
    };
    let a = spawn_app_in(dir.clone(), over(named("a"))).await;
    let b = spawn_app_in(dir, over(named("b"))).await;
    let (op, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    op.batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap();
    a.add_user("ivy").await;
    Some(PgPair {
        a,
        b,
        a_listen: format!("{schema}_a listen"),
        op,
    })
}

impl PgPair {
    async fn login_on_a(&self) -> String {
        session_cookie(&self.a.api_login(&self.a.client(), "ivy", PASSWORD).await).unwrap()
    }

    /// Ends the session on B (a logout there).
    async fn logout_on_b(&self, token: &str) {
        let res = self
            .b
            .bare_client()
            .post(self.b.url("/api/logout"))
            .header("cookie", format!("__Host-sessiond={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    /// The server process of A's notification connection, once there is one (up to 5 s).
    async fn a_listen_pid(&self) -> i32 {
        let start = Instant::now();
        loop {
            let row = self
                .op
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    &[&self.a_listen],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no connection named {:?}",
                self.a_listen
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn a_counter(
        &self,
        pick: fn(&sessiond_axum::Counters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        pick(self.a.state.sessions.counters()).load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether A answered `token` from its verification cache.
    async fn status_on_a_cached(&self, token: &str) -> (StatusCode, bool) {
        let hits = self.a_counter(|c| &c.cache_hits);
        let status = status_on(&self.a, token).await;
        (status, self.a_counter(|c| &c.cache_hits) > hits)
    }

    /// Waits (up to `within`) until A serves `token` from its cache: only then does a
    /// refusal on A show that the change reached A's cache, not that A asked the store.
    async fn cached_on_a(&self, token: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let (status, cached) = self.status_on_a_cached(token).await;
            assert_eq!(status, StatusCode::OK);
            if cached {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "A's cache not serving within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls `app` until it refuses `token`; the time since `since`. Fails past `bound`.
async fn refused_by(app: &TestApp, token: &str, since: Instant, bound: Duration) -> Duration {
    loop {
        if status_on(app, token).await == StatusCode::UNAUTHORIZED {
            return since.elapsed();
        }
        let took = since.elapsed();
        assert!(
            took < bound,
            "still accepted after {took:?} (bound {bound:?})"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Generous: a notification normally arrives within milliseconds of the commit (the
/// benchmark measures it); without one, the next heartbeat (up to 1.25 s) would catch it.
const PUSHED_WITHIN: Duration = Duration::from_millis(500);

#[tokio::test]
async fn postgres_pushes_a_revoke_to_the_other_instance() {
    let Some(p) = pg_pair().await else {
        return;
    };
    let mut took = Vec::new();
    for _ in 0..5 {
        let token = p.login_on_a().await;
        p.cached_on_a(&token, Duration::from_secs(5)).await;
        let remote = p.a_counter(|c| &c.epoch_changes_remote);
        p.logout_on_b(&token).await;
        took.push(refused_by(&p.a, &token, Instant::now(), PUSHED_WITHIN).await);
        assert!(
            p.a_counter(|c| &c.epoch_changes_remote) > remote,
            "pushed, not polled"
        );
    }
    took.sort();
    eprintln!(
        "postgres: revoke on B refused on A after {took:?} (median {:?})",
        took[took.len() / 2]
    );
}

#[tokio::test]
async fn postgres_a_killed_notification_connection_fails_closed_and_resubscribes() {
    let Some(p) = pg_pair().await else {
        return;
    };
    let live = p.login_on_a().await;
    let revoked = p.login_on_a().await;
    p.cached_on_a(&live, Duration::from_secs(5)).await;
    p.cached_on_a(&revoked, Duration::from_secs(5)).await;
    let pid = p.a_listen_pid().await;

    let killed =
        p.op.query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
    assert!(killed.get::<_, bool>(0));
    // Revoked at once: its notification may well have gone to the dead connection. A's
    // cache turned off when the connection ended, so A asks the store.
    p.logout_on_b(&revoked).await;
    let took = refused_by(&p.a, &revoked, Instant::now(), PUSHED_WITHIN).await;
    eprintln!("postgres: revoke right after the kill refused on A after {took:?}");

    // Through the resubscription: never the revoked session, always the live one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(status_on(&p.a, &revoked).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_on(&p.a, &live).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new notification connection, and the cache serves again.
    assert_ne!(p.a_listen_pid().await, pid);
    p.cached_on_a(&live, Duration::from_secs(5)).await;
    assert_eq!(status_on(&p.a, &revoked).await, StatusCode::UNAUTHORIZED);
    // And pushes again.
    let token = p.login_on_a().await;
    p.cached_on_a(&token, Duration::from_secs(5)).await;
    p.logout_on_b(&token).await;
    refused_by(&p.a, &token, Instant::now(), PUSHED_WITHIN).await;
}

/// Sends SIGCONT to a stopped process when dropped, so a failing test never leaves a
/// PostgreSQL backend stopped.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        let guard = Self(pid);
        signal(pid, "-STOP");
        guard
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok || std::thread::panicking(), "kill {sig} {pid} failed");
}

#[tokio::test]
async fn postgres_a_paused_notification_backend_turns_the_cache_off_and_heals() {
    let Some(p) = pg_pair().await else {
        return;
    };
    let live = p.login_on_a().await;
    let revoked = p.login_on_a().await;
    p.cached_on_a(&live, Duration::from_secs(5)).await;
    let pid = p.a_listen_pid().await;

    // The backend stops answering but its connection stays open: only the heartbeat can
    // tell.
    let stopped = Stopped::stop(pid);
    let since = Instant::now();
    loop {
        let (status, cached) = p.status_on_a_cached(&live).await;
        assert_eq!(status, StatusCode::OK);
        if !cached {
            break;
        }
        let took = since.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "A's cache still on after {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "postgres: notification backend stopped, A's cache off after {:?}",
        since.elapsed()
    );
    // Answered from the store (or from a cache a new subscription has put right): the live
    // session stays valid, the one revoked now is refused at once.
    p.logout_on_b(&revoked).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(status_on(&p.a, &revoked).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_on(&p.a, &live).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    drop(stopped);
    // Healed: a notification connection other than the stopped one, a cache that serves,
    // and the stopped backend gone (A dropped that connection).
    p.cached_on_a(&live, Duration::from_secs(5)).await;
    assert_ne!(p.a_listen_pid().await, pid);
    assert_eq!(status_on(&p.a, &revoked).await, StatusCode::UNAUTHORIZED);
    let start = Instant::now();
    while p
        .op
        .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "backend {pid} left behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn postgres_a_lost_notification_is_caught_by_the_heartbeat() {
    let Some(p) = pg_pair().await else {
        return;
    };
    let token = p.login_on_a().await;
    p.cached_on_a(&token, Duration::from_secs(5)).await;
    let hash = sessiond_core::SessionToken::parse(&token)
        .unwrap()
        .hash()
        .as_bytes()
        .to_vec();
    // A session ended with the triggers off (no bump, no notification), then the generation
    // moved by hand (no notification either): only the heartbeat's read can see it.
    p.op.batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await
        .unwrap();
    let deleted =
        p.op.execute("DELETE FROM sessions WHERE token_hash = $1", &[&hash])
            .await
            .unwrap();
    p.op.batch_execute("COMMIT").await.unwrap();
    assert_eq!(deleted, 1);
    p.op.execute("UPDATE generation SET value = value + 1 WHERE id = 1", &[])
        .await
        .unwrap();
    // Within one heartbeat (1.25 s), with a margin.
    let took = refused_by(&p.a, &token, Instant::now(), Duration::from_millis(2500)).await;
    eprintln!("postgres: change without a notification refused on A after {took:?}");
}

/// A login trims the user's sessions to the cap with a DELETE that usually deletes nothing;
/// that must not flush the other instances' caches (nor notify them).
#[tokio::test]
async fn postgres_logins_elsewhere_leave_the_cache_alone() {
    let Some(p) = pg_pair().await else {
        return;
    };
    let token = p.login_on_a().await;
    p.cached_on_a(&token, Duration::from_secs(5)).await;
    let remote = p.a_counter(|c| &c.epoch_changes_remote);
    for _ in 0..3 {
        p.b.api_login(&p.b.client(), "ivy", PASSWORD).await;
    }
    // Long enough for a notification to arrive, shorter than a heartbeat.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.a_counter(|c| &c.epoch_changes_remote), remote);
    assert_eq!(p.status_on_a_cached(&token).await, (StatusCode::OK, true));
}

/// Push invalidation on Redis (issue 20): two servers on a `redis-server` of the test's own,
/// one prefix; the prefix, for raw commands.
async fn pair_on_own_redis() -> Option<(TestApp, TestApp, RedisServer, String)> {
    if !redis_server_available() {
        return None;
    }
    let redis = RedisServer::start(spare_port(), &[]);
    let prefix = fresh_prefix();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let over = || Overrides {
        session_store: Some(format!(
            "redis://127.0.0.1:{}/0?prefix={prefix}",
            redis.port
        )),
        ..Overrides::default()
    };
    let a = spawn_app_in(dir.clone(), over()).await;
    let b = spawn_app_in(dir, over()).await;
    Some((a, b, redis, prefix))
}

/// A raw command to the test's own Redis (bypassing the store and its scripts).
fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The client ids of the notification connections of `prefix` (`CLIENT SETNAME` of the
/// store's feeds).
fn feed_clients(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let name = format!("name={}-{prefix} ", sessiond_store_redis::FEED_CLIENT_NAME);
    redis_cli(redis, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| l.contains(&name))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_owned))
        .collect()
}

/// Logs out `token` through `app` (another instance than the one that will be asked).
async fn log_out_on(app: &TestApp, token: &str) {
    let res = app
        .bare_client()
        .post(app.url("/api/logout"))
        .header("cookie", format!("__Host-sessiond={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn redis_push_a_logout_on_b_is_refused_on_a_at_once_and_idle_instances_barely_ask() {
    let Some((a, b, redis, _)) = pair_on_own_redis().await else {
        return;
    };
    a.add_user("ida").await;
    let mut took = Vec::new();
    for _ in 0..10 {
        let token = session_cookie(&a.api_login(&a.client(), "ida", PASSWORD).await).unwrap();
        cached(&a, &token).await;
        let remote = a
            .state
            .sessions
            .counters()
            .epoch_changes_remote
            .load(Ordering::Relaxed);
        log_out_on(&b, &token).await;
        let start = Instant::now();
        took.push(refused_within(&a, &token, start).await);
        // By notification: A's watcher saw the change (no polling happens).
        assert!(
            a.state
                .sessions
                .counters()
                .epoch_changes_remote
                .load(Ordering::Relaxed)
                > remote
        );
    }
    took.sort();
    eprintln!(
        "redis push: logout on B refused on A after {:?} (median), {:?} (max) of 10",
        took[5], took[9]
    );
    assert!(took[9] < Duration::from_millis(500), "{took:?}");

    // Idle: the heartbeats (one per instance every 1.25 s) are all either instance asks.
    let commands = || -> u64 {
        redis_cli(&redis, &["INFO", "stats"])
            .lines()
            .find_map(|l| {
                l.strip_prefix("total_commands_processed:")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap()
    };
    let before = commands();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Less the INFO that reads the count.
    let asked = commands() - before - 1;
    let per_instance = asked as f64 / 5.0 / 2.0;
    eprintln!(
        "redis push: idle, {asked} commands in 5 s from 2 instances ({per_instance:.2}/s each)"
    );
    assert!(per_instance <= 1.0, "{asked} commands in 5 s");
}

#[tokio::test]
async fn redis_push_a_killed_notification_connection_refuses_the_next_revoke_and_recovers() {
    let Some((a, b, redis, prefix)) = pair_on_own_redis().await else {
        return;
    };
    a.add_user("ida").await;
    let mut token = session_cookie(&a.api_login(&a.client(), "ida", PASSWORD).await).unwrap();
    cached(&a, &token).await;
    let mut feeds = feed_clients(&redis, &prefix);
    assert_eq!(feeds.len(), 2, "one feed per instance: {feeds:?}");
    // Three rounds: a loss found only by the next heartbeat (up to 1.25 s later) would meet
    // the bound below by luck now and then, not three times in a row.
    for round in 0..3 {
        // Both instances lose their notification connection; B's revocation then notifies
        // nobody, and A must refuse it anyway.
        for id in &feeds {
            redis_cli(&redis, &["CLIENT", "KILL", "ID", id]);
        }
        log_out_on(&b, &token).await;
        let took = refused_within(&a, &token, Instant::now()).await;
        eprintln!("redis push: feed killed, logout on B refused on A after {took:?}");
        assert!(took < Duration::from_millis(500), "round {round}: {took:?}");

        // Subscribed again (new connections), and caching again.
        token = session_cookie(&a.api_login(&a.client(), "ida", PASSWORD).await).unwrap();
        let back = cached(&a, &token).await;
        eprintln!("redis push: caching again {back:?} after the kill");
        let now = feed_clients(&redis, &prefix);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(
            now.iter().all(|id| !feeds.contains(id)),
            "{feeds:?} {now:?}"
        );
        feeds = now;
    }
    let again = token;
    // And the new subscription carries notifications.
    log_out_on(&b, &again).await;
    let took = refused_within(&a, &again, Instant::now()).await;
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn redis_push_a_lost_notification_is_caught_by_the_heartbeat() {
    let Some((a, _b, redis, prefix)) = pair_on_own_redis().await else {
        return;
    };
    a.add_user("ida").await;
    let token = session_cookie(&a.api_login(&a.client(), "ida", PASSWORD).await).unwrap();
    cached(&a, &token).await;
    let id = json(
        a.bare_client()
            .get(a.url("/api/session"))
            .header("cookie", format!("__Host-sessiond={token}"))
            .send()
            .await
            .unwrap(),
    )
    .await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The session removed by hand, past the scripts: no generation bump, no notification.
    // Its key is `{p}:s:` and the 16 bytes its id encodes (the id of a login's session is
    // derived from its hash, so no `{p}:i:` key maps it): built in Lua from the id's bytes in
    // hex, since a key of raw bytes does not fit on a command line.
    let tag = format!("{{{prefix}}}");
    let id = sessiond_core::SessionId::parse(&id).unwrap();
    let hex: String = id
        .to_bytes()
        .expect("a derived id encodes 16 bytes")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        redis_cli(
            &redis,
            &[
                "EVAL",
                "return redis.call('DEL', ARGV[1] .. ARGV[2]:gsub('..', \
                 function(h) return string.char(tonumber(h, 16)) end))",
                "0",
                &format!("{tag}:s:"),
                &hex,
            ]
        ),
        "1"
    );
    assert_eq!(
        redis_cli(&redis, &["EXISTS", &format!("{tag}:i:{id}")]),
        "0"
    );
    // A still serves it from its cache: nothing told it.
    assert_eq!(status_on(&a, &token).await, StatusCode::OK);
    // The generation moved without a notification: the next heartbeat (every 1.25 s) sees it.
    redis_cli(&redis, &["INCR", &format!("{tag}:gen")]);
    let start = Instant::now();
    loop {
        if status_on(&a, &token).await == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "still served 2.5 s after the generation moved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "redis push: a change without notification refused after {:?}",
        start.elapsed()
    );
}
