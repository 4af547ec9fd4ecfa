//! Crash safety (issue 15 §3): `kill -9` of the real `sessiond` binary in the middle of a
//! concurrent write load (logins, logouts, revokes, password changes) loses no change the
//! server acknowledged, on SQLite, on PostgreSQL and with sessions in Redis, and no ended
//! session ever comes back.
//!
//! The test keeps a model of what the server *acknowledged* (a 2xx received) for each user. A
//! request cut off by the kill is unknown: its effect may or may not have landed, and the model
//! only asserts what holds either way (a password is one of the two, never both; a session it
//! may have ended is no longer asserted valid, but one ended by an acknowledged change stays
//! ended for good).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::hash_blocking;
use sessiond_core::{NewUser, Password, UserStore, Username};
use sessiond_store_tests::services::{fresh_prefix, spare_port};

use crate::helpers::session_cookie;

/// Users driving the load at once, each from its own worker (and its own client address, so
/// the old-password checks never add up to a per-address back-off).
const USERS: usize = 4;
/// Kills of the server per store.
const KILLS: usize = 5;
/// Whether a password change cut off after its new hash was stored must also have ended the
/// user's other sessions (a change ends the other sessions *before* it writes the hash:
/// docs/reference/accounts.md, "Account changes").
const PASSWORD_CHANGE_IS_ATOMIC: bool = true;

/// A `sessiond serve` child process.
struct Server {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Server {
    /// Starts the binary on the stores `stores` name (`--database URL`, and
    /// `--session-store URL`) and waits until it answers `/readyz`.
    async fn start(stores: &[String], dir: &Path, n: usize) -> Server {
        let client = reqwest::Client::new();
        for _attempt in 0..5 {
            let port = spare_port();
            let log = dir.join(format!("server-{n}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .args(stores)
                // The stores are under test, not where hashes run: the worker process (the
                // default when a store server is on this host) runs at nice 19 in a group of
                // its own and crawls while other work loads the machine.
                .args(["--hash-worker", "threads"])
                .env("SESSIOND_ADMIN_PASSWORD", "crash test admin password")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut server = Server {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if server.child.try_wait().unwrap().is_some() {
                    break; // e.g. the port was taken meanwhile: try another
                }
                let ready = client.get(server.url("/readyz")).send().await;
                if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            eprintln!("sessiond did not become ready; its log:\n{log}");
            server.kill();
        }
        panic!("sessiond would not start on {stores:?}");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no shutdown hook, no flush, no chance to finish what is in flight.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Debug)]
struct Sess {
    token: String,
    id: String,
}

/// What the server acknowledged for one user.
#[derive(Debug)]
struct Account {
    name: String,
    ip: String,
    /// The password as of the last acknowledged change.
    password: String,
    /// Passwords an acknowledged change replaced: refused from then on.
    old_passwords: Vec<String>,
    /// A change cut off by a kill: the password is `password` or this one.
    in_doubt: Option<String>,
    /// Acknowledged logins not ended by an acknowledged change: must stay valid.
    live: Vec<Sess>,
    /// Sessions ended by an acknowledged logout, revoke or password change: must never come
    /// back.
    ended: Vec<Sess>,
    changes: usize,
    /// Cut-off password changes found landed / not landed after the restart.
    doubts: [usize; 2],
    /// The other sessions when a password change was cut off: if the new password landed,
    /// they should be gone too (counted here, not asserted).
    orphans: Vec<Sess>,
    /// Of those, still valid after a change that landed.
    outlived: usize,
}

/// Acknowledged operations of one load round, by kind.
#[derive(Default, Debug, Clone, Copy)]
struct Acked {
    logins: usize,
    logouts: usize,
    revokes: usize,
    passwords: usize,
    cut: usize,
}

impl Acked {
    fn add(&mut self, o: Acked) {
        self.logins += o.logins;
        self.logouts += o.logouts;
        self.revokes += o.revokes;
        self.passwords += o.passwords;
        self.cut += o.cut;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

fn cookie(s: &Sess) -> String {
    format!("__Host-sessiond={}", s.token)
}

/// The session a login or password change answered with.
async fn new_session(res: reqwest::Response) -> Option<Sess> {
    let token = session_cookie(&res)?;
    let body: serde_json::Value = res.json().await.ok()?;
    Some(Sess {
        token,
        id: body["session"]["id"].as_str()?.to_owned(),
    })
}

/// A refusal that says nothing was done (the hash pool is full, a back-off holds): try again.
fn busy(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

async fn login(
    c: &reqwest::Client,
    server_base: &str,
    a: &Account,
    password: &str,
) -> reqwest::Result<reqwest::Response> {
    c.post(format!("{server_base}/api/login"))
        .header("x-forwarded-for", &a.ip)
        .json(&serde_json::json!({
            "username": a.name,
            "password": password,
            "remember": a.changes % 2 == 0,
        }))
        .send()
        .await
}

/// One user's share of the load, until the server is killed under it (the first transport
/// error). Everything acknowledged goes into `a`; what was cut off goes into the doubt.
async fn drive(base: String, mut a: Account, progress: Arc<AtomicUsize>) -> (Account, Acked) {
    let c = client();
    let mut acked = Acked::default();
    let mut step = 0usize;
    let mut last = 0;
    loop {
        let now = acked.logins + acked.logouts + acked.revokes + acked.passwords;
        progress.fetch_add(now - last, Ordering::SeqCst);
        last = now;
        step += 1;
        let op = if a.live.len() < 2 { 0 } else { step % 6 };
        match op {
            // Log in (twice as often as anything else).
            0 | 4 => {
                let password = a.password.clone();
                let Ok(res) = login(&c, &base, &a, &password).await else {
                    acked.cut += 1; // a session may exist; no one knows its secret
                    return (a, acked);
                };
                if busy(res.status()) {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    continue;
                }
                assert_eq!(res.status(), StatusCode::OK, "{}: login", a.name);
                a.live
                    .push(new_session(res).await.expect("login answers a session"));
                acked.logins += 1;
            }
            // Log out the oldest session.
            1 => {
                let s = a.live.remove(0);
                let res = c
                    .post(format!("{base}/api/logout"))
                    .header("cookie", cookie(&s))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                        a.ended.push(s);
                        acked.logouts += 1;
                    }
                    // Cut off (or refused part-way): the session's fate is unknown.
                    Ok(r) if busy(r.status()) => {}
                    Ok(r) => panic!("{}: logout answered {}", a.name, r.status()),
                    Err(_) => {
                        acked.cut += 1;
                        return (a, acked);
                    }
                }
            }
            // Revoke the oldest session from the newest.
            2 => {
                let victim = a.live.remove(0);
                let by = a.live.last().unwrap().clone();
                let res = c
                    .delete(format!("{base}/api/sessions/{}", victim.id))
                    .header("cookie", cookie(&by))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                        a.ended.push(victim);
                        acked.revokes += 1;
                    }
                    Ok(r) if busy(r.status()) => {}
                    Ok(r) => panic!("{}: revoke answered {}", a.name, r.status()),
                    Err(_) => {
                        acked.cut += 1;
                        return (a, acked);
                    }
                }
            }
            // Log out every other session from the newest.
            5 => {
                let by = a.live.pop().unwrap();
                let res = c
                    .delete(format!("{base}/api/sessions?others=true"))
                    .header("cookie", cookie(&by))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::NO_CONTENT => {
                        a.ended.append(&mut a.live);
                        a.live.push(by);
                        acked.revokes += 1;
                    }
                    Ok(r) if busy(r.status()) => {
                        a.live.clear();
                        a.live.push(by);
                    }
                    Ok(r) => panic!("{}: revoking others answered {}", a.name, r.status()),
                    Err(_) => {
                        a.live.clear();
                        a.live.push(by);
                        acked.cut += 1;
                        return (a, acked);
                    }
                }
            }
            // Change the password from the newest session.
            3 => {
                let new = format!("{} password {}", a.name, a.changes + 1);
                let by = a.live.last().unwrap().clone();
                let res = c
                    .post(format!("{base}/api/password"))
                    .header("cookie", cookie(&by))
                    .header("x-forwarded-for", &a.ip)
                    .json(&serde_json::json!({
                        "current_password": a.password,
                        "new_password": new,
                    }))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == StatusCode::OK => {
                        // Every other session and the caller's old secret end; the caller
                        // goes on with the rotated one.
                        a.ended.append(&mut a.live);
                        a.live.push(new_session(r).await.expect("rotated session"));
                        a.old_passwords
                            .push(std::mem::replace(&mut a.password, new));
                        a.changes += 1;
                        acked.passwords += 1;
                    }
                    Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {}
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        // `overloaded` is refused before any work; `store_unavailable` may
                        // come part-way: treat both as cut off.
                        a.in_doubt = Some(new);
                        a.orphans = a.live.drain(..).filter(|s| s.id != by.id).collect();
                        a.changes += 1;
                        acked.cut += 1;
                        return (a, acked);
                    }
                    Ok(r) => panic!("{}: password change answered {}", a.name, r.status()),
                    Err(_) => {
                        // The password is the old or the new one; any session of the user
                        // may have ended.
                        a.in_doubt = Some(new);
                        a.orphans = a.live.drain(..).filter(|s| s.id != by.id).collect();
                        a.changes += 1;
                        acked.cut += 1;
                        return (a, acked);
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}

/// Logs in until the answer is not "busy"; the status.
async fn login_status(c: &reqwest::Client, base: &str, a: &mut Account, pw: &str) -> StatusCode {
    let start = Instant::now();
    loop {
        let res = login(c, base, a, pw).await.expect("server is up");
        let status = res.status();
        if !busy(status) {
            if status == StatusCode::OK {
                a.live.push(new_session(res).await.unwrap());
            }
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}: still {status}",
            a.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every acknowledged change of `a` against the restarted server; violations go to
/// `bad`.
async fn check(server: &Server, a: &mut Account, bad: &mut Vec<String>) {
    let c = client();
    let base = server.base.clone();
    if let Some(new) = a.in_doubt.take() {
        let orphans = std::mem::take(&mut a.orphans);
        // Exactly one of the two passwords works: the new hash was stored, or it was not.
        let old = a.password.clone();
        let s_new = login_status(&c, &base, a, &new).await;
        let s_old = login_status(&c, &base, a, &old).await;
        match (s_new, s_old) {
            (StatusCode::OK, StatusCode::UNAUTHORIZED) => {
                a.old_passwords
                    .push(std::mem::replace(&mut a.password, new));
                a.doubts[0] += 1;
                for o in orphans {
                    let res = c
                        .get(format!("{base}/api/session"))
                        .header("cookie", cookie(&o))
                        .send()
                        .await
                        .expect("server is up");
                    if res.status() == StatusCode::OK {
                        if PASSWORD_CHANGE_IS_ATOMIC {
                            bad.push(format!(
                                "{}: session {} outlived a password change that landed",
                                a.name, o.id
                            ));
                        }
                        eprintln!(
                            "NOTE {}: session {} outlived a password change the kill cut off \
                             after the new password was stored",
                            a.name, o.id
                        );
                        a.outlived += 1;
                    }
                }
            }
            (StatusCode::UNAUTHORIZED, StatusCode::OK) => a.doubts[1] += 1,
            other => bad.push(format!(
                "{}: a cut-off password change left new/old logins at {other:?}",
                a.name
            )),
        }
    } else {
        let pw = a.password.clone();
        let got = login_status(&c, &base, a, &pw).await;
        if got != StatusCode::OK {
            bad.push(format!("{}: the acknowledged password got {got}", a.name));
        }
        if let Some(old) = a.old_passwords.last().cloned() {
            let got = login_status(&c, &base, a, &old).await;
            if got != StatusCode::UNAUTHORIZED {
                bad.push(format!("{}: a replaced password got {got}", a.name));
            }
        }
    }
    for (sessions, want) in [
        (&a.live, StatusCode::OK),
        (&a.ended, StatusCode::UNAUTHORIZED),
    ] {
        for s in sessions {
            let res = c
                .get(format!("{base}/api/session"))
                .header("cookie", cookie(s))
                .send()
                .await
                .expect("server is up");
            let got = res.status();
            if got != want {
                let what = if want == StatusCode::OK {
                    "an acknowledged login"
                } else {
                    "an ended session"
                };
                bad.push(format!("{}: {what} ({}) answered {got}", a.name, s.id));
            } else if got == StatusCode::OK {
                let body: serde_json::Value = res.json().await.unwrap();
                assert_eq!(body["user"]["username"], a.name.as_str());
            }
        }
    }
}

/// Runs the load, kills the server `KILLS` times mid-load, and checks after every restart.
async fn kill_during_writes(label: &str, stores: &[String], users: Arc<dyn UserStore>) {
    let dir = tempfile::tempdir().unwrap();
    let mut accounts = Vec::new();
    for i in 0..USERS {
        let name = format!("crash{i}");
        let password = format!("{name} password 0");
        let phc = hash_blocking(&Password::new(password.clone()).unwrap()).unwrap();
        users
            .create_user(&NewUser {
                username: Username::parse(&name).unwrap(),
                name: name.clone(),
                email: format!("{name}@example.com"),
                groups: vec![],
                admin: false,
                password_hash: phc,
                created_at: sessiond::now(),
            })
            .await
            .unwrap();
        accounts.push(Account {
            name,
            ip: format!("203.0.113.{}", i + 1),
            password,
            old_passwords: Vec::new(),
            in_doubt: None,
            live: Vec::new(),
            ended: Vec::new(),
            changes: 0,
            doubts: [0, 0],
            orphans: Vec::new(),
            outlived: 0,
        });
    }
    drop(users);
    let started = Instant::now();
    let mut total = Acked::default();
    for round in 0..KILLS {
        let mut server = Server::start(stores, dir.path(), round).await;
        let progress = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = accounts
            .drain(..)
            .map(|a| tokio::spawn(drive(server.base.clone(), a, progress.clone())))
            .collect();
        // Kill at a different point of the load each round, once some work has been
        // acknowledged (however slow this machine is today), while every worker has a
        // request in flight.
        let target = 16 + usize::from(rand_byte() % 48);
        let load = Instant::now();
        // A worker that ended before the kill (a panic, shown at the join below, or a 503 it
        // treats like a cut) ends the round early.
        while progress.load(Ordering::SeqCst) < target && !workers.iter().any(|w| w.is_finished()) {
            assert!(
                load.elapsed() < Duration::from_secs(30),
                "{label}: the load made no progress; the server's log:\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        let wait = load.elapsed();
        let mut acked = Acked::default();
        for w in workers {
            let (a, n) = w.await.unwrap();
            acked.add(n);
            accounts.push(a);
        }
        eprintln!("{label}: round {round}: killed after {wait:?}; acknowledged {acked:?}");
        total.add(acked);
        let server = Server::start(stores, dir.path(), 100 + round).await;
        let mut bad = Vec::new();
        for a in &mut accounts {
            check(&server, a, &mut bad).await;
        }
        if !bad.is_empty() {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            panic!(
                "{label}: after kill {round}, acknowledged changes were lost:\n{}\n{log}",
                bad.join("\n")
            );
        }
    }
    let doubts = accounts
        .iter()
        .fold([0, 0], |d, a| [d[0] + a.doubts[0], d[1] + a.doubts[1]]);
    eprintln!(
        "{label}: {KILLS} kills in {:?}: {total:?}; {} sessions asserted ended; cut-off \
         password changes: {} landed, {} not; sessions that outlived a landed one: {}",
        started.elapsed(),
        accounts.iter().map(|a| a.ended.len()).sum::<usize>(),
        doubts[0],
        doubts[1],
        accounts.iter().map(|a| a.outlived).sum::<usize>(),
    );
    // The load did exercise every kind of change.
    assert!(
        total.logouts > 0 && total.revokes > 0 && total.passwords > 0,
        "{label}: {total:?}"
    );
}

fn rand_byte() -> u8 {
    let mut b = [0u8];
    getrandom::fill(&mut b).unwrap();
    b[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_nothing_acknowledged_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.db");
    let db = format!("sqlite://{}", path.display());
    let store = sessiond_store_sqlite::SqliteStore::open(&path).unwrap();
    kill_during_writes("sqlite", &["--database".into(), db], Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_nothing_acknowledged_on_postgres() {
    let url = std::env::var("SESSIOND_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // A schema of the test's own, created and migrated here.
    let schema = fresh_prefix();
    let made = sessiond_store_postgres::PostgresStore::connect_in_schema(&url, &schema).await;
    let Some(store) = sessiond_store_tests::service_or_skip("PostgreSQL", made) else {
        return;
    };
    let db = format!("{url}?application_name={schema}&options=-c%20search_path%3D{schema}");
    kill_during_writes("postgres", &["--database".into(), db], Arc::new(store)).await;
}

/// Sessions and throttling in Redis (users in SQLite): killing `sessiond` must not lose what
/// Redis acknowledged either (what Redis itself keeps through its own crash is its
/// persistence's business: docs/deployment.md, "Durability").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_nothing_acknowledged_on_sqlite_with_redis() {
    let redis = std::env::var("SESSIOND_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let probe = match sessiond_store_redis::RedisStore::connect(&redis).await {
        Ok(s) => sessiond_core::SessionStore::ping(&s).await,
        Err(e) => Err(e),
    };
    if sessiond_store_tests::service_or_skip("Redis", probe).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.db");
    let db = format!("sqlite://{}", path.display());
    let store = sessiond_store_sqlite::SqliteStore::open(&path).unwrap();
    let sessions = format!("{redis}?prefix={}", fresh_prefix());
    let args = ["--database".into(), db, "--session-store".into(), sessions];
    kill_during_writes("sqlite+redis", &args, Arc::new(store)).await;
}
