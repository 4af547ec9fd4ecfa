//! Running sessiond as a service (issue 19): `--version`, `config check`, graceful shutdown
//! on SIGTERM, progress of long CLI work, request ids in the logs, the systemd unit.

use std::process::{Command, Output, Stdio};

use sessiond_store_tests::services::spare_port;

fn sessiond(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
    cmd.args(args)
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_DATABASE")
        .env_remove("SESSIOND_SESSION_STORE")
        .env_remove("SESSIOND_ADMIN_PASSWORD")
        .env_remove("SESSIOND_ENCRYPTION_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("sessiond binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--version` names the git revision the binary was built from (`build.rs`).
#[test]
fn version_names_the_git_revision() {
    let out = sessiond(&["--version"], &[]);
    assert!(out.status.success());
    let line = text(&out.stdout);
    let line = line.trim_end();
    let expected_revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        line,
        format!(
            "sessiond {} (git {expected_revision})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// A valid configuration whose stores answer: exit 0, the effective settings printed, every
/// secret (the admin password, the encryption key, the store password) as `***`.
#[tokio::test]
async fn config_check_prints_the_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(
        &file,
        "public_url = \"https://auth.example.com\"\n\
         [session]\nidle_timeout = \"10m\"\n\
         [proxy]\ntrusted = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let key = "ab".repeat(32);
    let secrets = [
        ("SESSIOND_ADMIN_PASSWORD", "admin-hunter2-secret"),
        ("SESSIOND_ENCRYPTION_KEY", key.as_str()),
    ];
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let out = sessiond(
        &[
            "config",
            "check",
            "--config",
            file.to_str().unwrap(),
            "--database",
            &db,
        ],
        &secrets,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "public_url = \"https://auth.example.com\"",
        "idle_timeout = \"10m\"",
        "trusted = [\"10.0.0.0/8\"]",
        "# SESSIOND_ADMIN_PASSWORD = \"***\"",
        "# encryption key = \"***\"",
        "# configuration ok",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("# database: ok"), "{stdout}");
    for (_, secret) in secrets {
        assert!(!stdout.contains(secret), "a secret printed:\n{stdout}");
    }
    // A check leaves no files behind: the database is created by `serve`.
    assert!(!dir.path().join("s.db").exists());

    // A store URL with a password: shown redacted, the store reached (PostgreSQL trusts the
    // test's connections, so the password is not checked, only printed).
    if let Some(pg) = crate::shared::fresh_postgres().await {
        let pg = pg.replacen("://postgres@", "://postgres:pg-hunter2@", 1);
        let out = sessiond(&["config", "check", "--database", &pg], &[]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        assert!(stdout.contains("# database: ok"), "{stdout}");
        assert!(!stdout.contains("pg-hunter2"), "{stdout}");
    }
}

/// An invalid file: exit 1, one line naming the key, nothing printed as if it were valid.
#[test]
fn config_check_refuses_an_invalid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[session]\nidle_timeout = \"soon\"\n").unwrap();
    let out = sessiond(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid configuration: idle_timeout"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!text(&out.stdout).contains("configuration ok"));

    std::fs::write(&file, "no_such_key = 1\n").unwrap();
    let out = sessiond(
        &["config", "check", "--config", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no_such_key"), "{out:?}");
}

/// Unreachable stores: exit 1, each named with its (redacted) URL and its cause.
#[test]
fn config_check_names_each_unreachable_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("s.db").display());
    let (pg_port, redis_port) = (spare_port(), spare_port());
    let redis = format!("redis://:redis-hunter2@127.0.0.1:{redis_port}/0");
    let out = sessiond(
        &[
            "config",
            "check",
            "--database",
            &db,
            "--session-store",
            &redis,
        ],
        &[],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("# database: ok"), "{stdout}");
    assert!(stdout.contains("# session_store: FAILED"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "session_store redis://:***@127.0.0.1:{redis_port}/0: unreachable"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("refused"), "the cause: {stderr}");
    assert!(!stdout.contains("redis-hunter2") && !stderr.contains("redis-hunter2"));

    let pg = format!("postgres://sessiond:pg-hunter2@127.0.0.1:{pg_port}/sessiond");
    let out = sessiond(&["config", "check", "--database", &pg], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("database postgres://sessiond:***@127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stdout.contains("pg-hunter2") && !stderr.contains("pg-hunter2"));

    let missing = "sqlite:///nonexistent-dir-of-sessiond/s.db";
    let out = sessiond(&["config", "check", "--database", missing], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("neither does its directory"));
}

/// A `sessiond serve` child on a fresh SQLite database, ready; its stderr in `log`.
struct Served {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const ADMIN_PASSWORD: &str = "ops test admin password";

impl Served {
    async fn start(envs: &[(&str, &str)], file: Option<&str>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let port = spare_port();
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--database")
            .arg(format!("sqlite://{}", dir.path().join("s.db").display()))
            .args(["--hash-worker", "threads"])
            .env_remove("SESSIOND_CONFIG")
            .env_remove("SESSIOND_LOG_FORMAT")
            .env("SESSIOND_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(text) = file {
            let path = dir.path().join("sessiond.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut served = Served {
            child: cmd.spawn().unwrap(),
            port,
            log,
            _dir: dir,
        };
        let c = reqwest::Client::new();
        let start = std::time::Instant::now();
        while c.get(served.url("/readyz")).send().await.is_err() {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("sessiond exited ({status}): {}", served.log());
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(20));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        served
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {sig}");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM drains: requests in flight (logins whose bodies are still arriving, so they are
/// surely in flight when the signal lands) complete with their normal answer, new
/// connections are refused at once, an idle keep-alive connection is closed rather than
/// waited for, and the process exits 0 soon after the last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight_and_exits_0() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    let mut served = Served::start(&[], None).await;
    let addr = format!("127.0.0.1:{}", served.port);

    // An idle keep-alive connection, one request served on it.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // Logins in flight: the head and half the body sent.
    let body = format!(r#"{{"username":"admin","password":"{ADMIN_PASSWORD}"}}"#);
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{first}",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        in_flight.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    served.signal("TERM");
    let termed = Instant::now();

    // New connections are refused once the signal is handled.
    loop {
        match TcpStream::connect(&addr).await {
            // Refused once the listener is closed; a connection that was still in the
            // closing listener's backlog is reset instead.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(e) => panic!("{e}"),
            Ok(_) => {
                assert!(termed.elapsed() < Duration::from_secs(2), "still accepting");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // The idle connection is closed, not waited for.
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("the idle connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF on the idle connection");
    // The server is still there, waiting for the requests in flight.
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "{}",
        served.log()
    );

    // The bodies arrive: each login answers as usual.
    for s in &mut in_flight {
        s.write_all(rest.as_bytes()).await.unwrap();
    }
    for mut s in in_flight {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("the answer comes, then the connection closes")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("set-cookie: __host-sessiond="), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }

    // Then the process exits 0, promptly.
    let exited = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            termed.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM: {}",
            served.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "{exited}: {}", served.log());
    let log = served.log();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("sessiond stopped"), "{log}");
}

/// The JSON log lines of a server's log, parsed.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A failed login with `X-Request-Id` set, and the id its answer echoes.
async fn failed_login(served: &Served, id: Option<reqwest::header::HeaderValue>) -> String {
    // Each from another client address (believed from the loopback proxy), so the failures
    // never add up to a back-off.
    static N: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut req = reqwest::Client::new()
        .post(served.url("/api/login"))
        .header("x-forwarded-for", format!("198.51.100.{n}"))
        .json(&serde_json::json!({"username": format!("user{n}"), "password": "not the password"}));
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    res.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// Waits for the server's log to have a `login_failed` audit event under `id`; returns it.
async fn audit_event(served: &Served, id: &str) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let found = json_lines(&served.log()).into_iter().find(|l| {
            l["event"] == "login_failed"
                && l["request_id"] == id
                && l["target"] == "sessiond::audit"
        });
        if let Some(line) = found {
            return line;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "no audit event with request_id {id:?}: {}",
            served.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Behind a trusted proxy (loopback, the default `proxy.trusted`), a sane `X-Request-Id` is
/// the request's id: echoed on the answer and the `request_id` of its JSON log lines and audit
/// events, at the top level. Hostile values (spaces and quotes that would plant fields,
/// control characters, bytes beyond ASCII, a huge value) are replaced by an id of our own
/// and never reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_a_trusted_proxy_reach_json_logs_and_audit_events() {
    use reqwest::header::HeaderValue;
    let served = Served::start(&[("SESSIOND_LOG_FORMAT", "json")], None).await;

    let echoed = failed_login(&served, Some(HeaderValue::from_static("edge-7f3a:42"))).await;
    assert_eq!(echoed, "edge-7f3a:42");
    let line = audit_event(&served, "edge-7f3a:42").await;
    assert!(line["user"].as_str().unwrap().starts_with("user"), "{line}");
    assert!(line.get("span").is_none(), "flat: {line}");

    // Without the header: an id made here, still in the log and on the answer.
    let made = failed_login(&served, None).await;
    assert!(
        made.len() >= 13 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    audit_event(&served, &made).await;
    let other = failed_login(&served, None).await;
    assert_ne!(made, other, "ids are unique");

    let huge = "a".repeat(10_000);
    let hostile = [
        HeaderValue::from_static("x\" event=\"login\" user=\"root"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_str(&huge).unwrap(),
        HeaderValue::from_static(""),
    ];
    for value in hostile {
        let id = failed_login(&served, Some(value.clone())).await;
        assert_ne!(id.as_bytes(), value.as_bytes());
        audit_event(&served, &id).await;
    }
    let log = served.log();
    for needle in ["root", "tab", "caf", &huge[..200]] {
        assert!(!log.contains(needle), "{needle:?} reached the log: {log}");
    }
}

/// From a peer that is not a trusted proxy, `X-Request-Id` is ignored: the id is ours, in the
/// log and on the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_from_an_untrusted_peer_is_replaced() {
    let served = Served::start(
        &[("SESSIOND_LOG_FORMAT", "json")],
        Some("[proxy]\ntrusted = [\"10.0.0.0/8\"]\n"),
    )
    .await;
    let forged = reqwest::header::HeaderValue::from_static("forged-by-the-client");
    let id = failed_login(&served, Some(forged)).await;
    assert_ne!(id, "forged-by-the-client");
    audit_event(&served, &id).await;
    assert!(!served.log().contains("forged-by-the-client"));
}

/// The text log shows the id too, in the request's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_log_shows_the_request_id() {
    let served = Served::start(&[], None).await;
    let forged = reqwest::header::HeaderValue::from_static("text-log-id-1");
    failed_login(&served, Some(forged)).await;
    let start = std::time::Instant::now();
    while !served
        .log()
        .lines()
        .any(|l| l.contains("request{request_id=text-log-id-1}") && l.contains("login_failed"))
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{}",
            served.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A SQLite file at `path` holding `n` sessions long expired.
async fn store_expired_sessions(path: &std::path::Path, n: i64) {
    use sessiond_core::{SessionStore as _, Timestamp};
    let store = sessiond_store_sqlite::SqliteStore::open(path).unwrap();
    for i in 0..n {
        let (_, mut old) = sessiond_store_tests::sessions::session_at(1, Timestamp::from_millis(0));
        old.expires_at = Timestamp::from_millis(1 + i);
        store.create(&old).await.unwrap();
    }
}

/// `session purge` off a terminal (cron, a pipe): no progress bar drawn, only plain lines on
/// stderr (one a second, so none for a quick purge), and a summary with the count, the time
/// and the rate.
#[tokio::test]
async fn session_purge_off_a_terminal_prints_plain_progress_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    store_expired_sessions(&path, 2_500).await;
    let db = format!("sqlite://{}", path.display());
    let out = sessiond(&["session", "purge", "--database", &db], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let summary = stdout.trim_end();
    assert!(
        summary.starts_with("removed 2500 expired session(s) in ") && summary.ends_with("/s)"),
        "{summary}"
    );
    assert!(!stderr.contains('\x1b'), "no terminal drawing: {stderr:?}");
    for line in stderr.lines() {
        assert!(line.starts_with("sessiond: purge: "), "{line:?}");
    }
}

/// `session purge` started while a real other process (the sqlite3 shell inside `BEGIN
/// IMMEDIATE`) holds the write lock for 2.5 s, longer than a write's 1 s budget: it waits
/// for the lock (opening the store waits up to 10 s) and removes every expired session once
/// the lock is gone. (A batch that meets a lock later, half-way through a purge, is tried
/// again: `server::with_retries`, tested in `server.rs`; checked here it passes without the
/// retries too, since the open is what waits.)
#[tokio::test]
async fn session_purge_started_under_another_process_s_write_lock_finishes_once_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    store_expired_sessions(&path, 500).await;
    let Some(mut holder) = super::net::lock_database(&path) else {
        return;
    };
    let db = format!("sqlite://{}", path.display());
    let purge = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["session", "purge", "--database", &db])
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_DATABASE")
        .env_remove("SESSIOND_SESSION_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Twice the budget: the first try and at least one retry meet the lock.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    drop(holder.stdin.take());
    let _ = holder.kill();
    let _ = holder.wait();
    let out = purge.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("removed 500 expired session(s) in "),
        "{stdout} / {stderr}"
    );
}

/// `examples/sessiond.service` is a unit systemd accepts without a warning, and its exposure
/// (`systemd-analyze security`) stays low. Skipped, with a notice, where systemd-analyze is
/// not installed.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sessiond.service"
    ))
    .unwrap();
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: systemd-analyze is not installed; examples/sessiond.service unchecked");
        return;
    }
    // verify wants the binary ExecStart names to exist: the one under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessiond.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/sessiond", env!("CARGO_BIN_EXE_sessiond")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    // It exits 0 on unknown keys and bad values, only saying so: any word about the unit
    // is a failure.
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("sessiond.service"), "{stderr}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0: {stdout}{}",
        text(&out.stderr)
    );
}

/// `session purge` of a backlog (30,000 sessions long expired, more than the store's 20,000
/// threshold) beside a live one: the store clears the table at once and puts the live one
/// back (`purge_by_truncation` in sessiond-store-sqlite), so the command's one batch removes
/// all 30,000; the live session comes back whole, and the table keeps its trigger, so a later
/// revoke still moves the generation.
#[tokio::test]
async fn session_purge_clears_a_backlog_at_once_and_keeps_the_live_session() {
    use sessiond_core::{SessionStore as _, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = sessiond_store_sqlite::SqliteStore::open(&path).unwrap();
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let (live_token, live) = sessiond_store_tests::sessions::session_at(1, now);
    store.create(&live).await.unwrap();
    // The backlog in one statement (30,000 `create`s would take seconds): random hashes,
    // 22-character ids, deadlines in 1970.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
         INSERT INTO sessions (token_hash, id, user_id, created_at, last_seen_at,
                               absolute_expires_at, expires_at, remember)
         SELECT randomblob(32), hex(randomblob(11)), 1, i, i, i + 1000, i + 1000, 0 FROM n",
    )
    .unwrap();
    // Moved by a change of the schema only: the trigger's drop and remake (a purge row by
    // row leaves it).
    let schema_version = || -> i64 {
        raw.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap()
    };
    let schema_before = schema_version();
    let db = format!("sqlite://{}", path.display());
    let out = sessiond(&["session", "purge", "--database", &db], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_ne!(schema_version(), schema_before, "cleared at once");
    assert!(
        stdout.starts_with("removed 30000 expired session(s) in "),
        "{stdout} / {stderr}"
    );
    assert_eq!(
        store.load(&live_token.hash()).await.unwrap().as_ref(),
        Some(&live)
    );
    let (sessions, trigger): (i64, i64) = raw
        .query_row(
            "SELECT (SELECT count(*) FROM sessions), \
                    (SELECT count(*) FROM sqlite_master WHERE type = 'trigger' \
                     AND name = 'sessions_gone')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((sessions, trigger), (1, 1));
    let before = store.generation().await.unwrap();
    assert!(store.delete(&live_token.hash()).await.unwrap());
    assert_ne!(store.generation().await.unwrap(), before);
}
