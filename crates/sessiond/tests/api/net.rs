//! Issue 15, the network edge: slow and idle connections, the connection cap, CSRF origins
//! with a cookie domain, a SQLite file locked by another process, and forged audit lines;
//! and the one log line of a store failure during verification.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::Overrides;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::logfmt::field_names;

/// Reads until the server closes the connection (or `within` passes); returns what was read
/// and when the close came.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris: twenty connections that send half a request head, and one idle keep-alive
/// connection, are all closed by the server within its header-read timeout (here 1 s), while
/// other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_and_idle_connections_are_closed_by_the_header_timeout() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        "[server]\nheader_read_timeout = \"1s\"",
        Overrides::default(),
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // Half a request line, or a request line and some headers, never the blank line.
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /heal"
        } else {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n"
        };
        s.write_all(partial).await.unwrap();
        slow.push(s);
    }
    // An idle keep-alive connection: one full request, then silence.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Others are served while the slow ones hang.
    assert_eq!(
        app.bare_client()
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let start = Instant::now();
    for (i, s) in slow.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(4)).await;
        assert!(
            closed.is_some(),
            "half-sent request {i} still open after 4 s"
        );
    }
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(closed.is_some(), "idle keep-alive connection still open");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        start.elapsed()
    );
}

/// Past `max_connections`, a new connection is answered `503 overloaded` (JSON body) rather
/// than left waiting or exhausting descriptors; once connections end, clients are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_and_the_server_keeps_serving() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        "[server]\nheader_read_timeout = \"5s\"\nmax_connections = 4",
        Overrides::default(),
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // Let the server accept all four before the fifth arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&addr).await.unwrap();
        extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(3)).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains(r#""code":"overloaded""#), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        assert!(closed.is_some(), "the refused connection is closed");
    }
    drop(held);
    // The permits come back as the server notices the closes.
    let start = Instant::now();
    loop {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still refused after the held connections closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With a cookie domain, a sibling subdomain's page is not trusted to post to us:
/// only the public URL's origin and the listed `trusted_origins` are.
#[tokio::test]
async fn sibling_subdomains_are_refused_unless_listed_as_trusted_origins() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        r#"
public_url = "https://auth.example.test"
trusted_origins = ["https://portal.example.test"]
[cookie]
domain = "example.test"
"#,
        Overrides::default(),
    )
    .await;
    app.add_user("olga").await;
    let c = app.bare_client();
    let login = app.api_login(&c, "olga", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = set_cookies(login.headers())
        .into_iter()
        .find(|c| c.starts_with("__Secure-sessiond="))
        .unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let whoami = || {
        c.get(app.url("/api/session"))
            .header("cookie", &cookie)
            .send()
    };
    for origin in [
        "https://evil.example.test",
        "https://app.example.test",
        "https://example.test",
        "http://portal.example.test",
        "https://portal.example.test:8443",
    ] {
        let res = c
            .post(app.url("/api/logout"))
            .header("cookie", &cookie)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin}");
        assert_eq!(json(res).await["code"], "csrf_rejected", "{origin}");
        assert_eq!(whoami().await.unwrap().status(), StatusCode::OK, "{origin}");
    }
    let res = c
        .post(app.url("/api/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://portal.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(whoami().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

/// Another process holds SQLite's write lock (`BEGIN IMMEDIATE`): a login and a revoke each
/// answer `503 store_unavailable` within 2 s (docs/reference/security.md, "Store failures"),
/// not after the 5 s busy timeout; once the lock is gone both work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_answers_503_within_2s() {
    let app = spawn_app().await;
    app.add_user("pia").await;
    let c = app.bare_client();
    let first = app.api_login(&c, "pia", PASSWORD).await;
    assert_eq!(first.status(), StatusCode::OK);
    let token = session_cookie(&first).unwrap();
    let cookie = format!("__Host-sessiond={token}");
    let id = json(
        c.get(app.url("/api/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The lock, held by a real other process: the sqlite3 shell.
    let Some(mut holder) = lock_database(&app.db_path()) else {
        return;
    };

    let start = Instant::now();
    let res = app.api_login(&c, "pia", PASSWORD).await;
    let took = start.elapsed();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["code"], "store_unavailable");
    assert!(
        took < Duration::from_secs(2),
        "login answered after {took:?}"
    );

    let start = Instant::now();
    let res = c
        .delete(app.url(&format!("/api/sessions/{id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["code"], "store_unavailable");
    assert!(
        took < Duration::from_secs(2),
        "revoke answered after {took:?}"
    );

    drop(holder.stdin.take());
    let _ = holder.kill();
    let _ = holder.wait();
    let res = c
        .delete(app.url(&format!("/api/sessions/{id}")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.api_login(&c, "pia", PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// The real binary's default text log: a typed username such as `alice ip=1.2.3.4` (not even
/// a valid username) stays one quoted value; it plants no `ip=` field and no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_usernames_cannot_forge_audit_fields_in_the_text_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = sessiond_store_tests::services::spare_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database",
        ])
        .arg(format!("sqlite://{}", dir.path().join("log.db").display()))
        .env("SESSIOND_ADMIN_PASSWORD", "text log admin password")
        .env_remove("SESSIOND_LOG_FORMAT")
        .env("RUST_LOG", "sessiond::audit=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let c = reqwest::Client::new();
    let start = Instant::now();
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for typed in ["alice ip=1.2.3.4", "mallory event=\"login\" user=admin"] {
        let res = c
            .post(format!("{base}/api/login"))
            .json(&serde_json::json!({"username": typed, "password": "wrong password"}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("login_failed")).collect();
    assert_eq!(failed.len(), 2, "{log}");
    assert!(
        failed[0].contains(r#"user="alice ip=1.2.3.4""#),
        "{}",
        failed[0]
    );
    for line in &failed {
        assert_eq!(field_names(line), ["event", "user", "ip"], "{line}");
    }
    assert!(
        !log.lines()
            .any(|l| l.contains("event=\"login\"") || l.contains("event=login ")),
        "a forged line: {log}"
    );
}

/// A store failure during verification is logged once, with its cause: the real
/// binary, its session store a `redis-server` that is then killed, and one request whose
/// cookie must be looked up (well-formed, so the store is asked) answered `503`. Its log
/// has one line about it, and that line has the store's error, not a placeholder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_during_verification_is_logged_once_with_its_cause() {
    use sessiond_store_tests::services::{redis_server_available, spare_port, RedisServer};
    if !redis_server_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, redis_port) = (spare_port(), spare_port());
    let mut redis = RedisServer::start(redis_port, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("log.db").display()))
        .arg("--session-store")
        .arg(format!("redis://127.0.0.1:{redis_port}/0"))
        .env("SESSIOND_ADMIN_PASSWORD", "store failure admin password")
        .env_remove("SESSIOND_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = reqwest::Client::new();
    let start = Instant::now();
    while c.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.kill();
    let res = c
        .get(format!("{base}/api/session"))
        .header("cookie", format!("__Host-sessiond={}", "A".repeat(43)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["code"], "store_unavailable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // The request's lines (inside its span). Background tasks may also say once that the
    // store is gone, each in a line of its own outside any request: the sweeper when its
    // first tick comes after the kill, the verification cache when it cannot subscribe
    // again.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unavailable") && l.contains("request{"))
        .collect();
    assert_eq!(lines.len(), 1, "one line about the failure: {log}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    assert!(
        lines[0].contains(r#"cause="Some("#) && !lines[0].contains("verification failed"),
        "the line has the store's error: {}",
        lines[0]
    );
}

/// The address a login from behind our (loopback) proxy is recorded with, for `xff`.
async fn recorded_ip(app: &TestApp, name: &str, xff: &str) -> serde_json::Value {
    let c = app.bare_client();
    let res = c
        .post(app.url("/api/login"))
        .header("x-forwarded-for", xff)
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{xff}");
    let t = session_cookie(&res).unwrap();
    let list = json(
        c.get(app.url("/api/sessions"))
            .header("cookie", format!("__Host-sessiond={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mine = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()
        .clone();
    mine["ip"].clone()
}

/// One junk `X-Forwarded-For` entry left of the client does not discard the header (which
/// would record, and throttle, the proxy's address); junk where the walk stops never lets the
/// entries further left (the client's own words) be believed.
#[tokio::test]
async fn junk_forwarded_for_entries_are_skipped_safely() {
    let app = spawn_app().await;
    app.add_user("quinn").await;
    for (xff, ip) in [
        ("unknown, 198.51.100.7", "198.51.100.7"),
        ("_hidden,,198.51.100.8:4711", "198.51.100.8"),
        ("203.0.113.9, unknown", "127.0.0.1"),
        ("203.0.113.9, 127.0.0.1, unknown", "127.0.0.1"),
    ] {
        assert_eq!(recorded_ip(&app, "quinn", xff).await, ip, "{xff}");
    }
}

/// Addresses of one IPv6 /64 share their throttling counters: a guesser who rotates through
/// its /64 is backed off like one address, and another /64 is not.
#[tokio::test]
async fn ipv6_addresses_of_one_64_share_a_back_off() {
    let app = spawn_app().await;
    app.add_user("rosa").await;
    let c = app.bare_client();
    let login = |ip: String, pw: &'static str| {
        c.post(app.url("/api/login"))
            .header("x-forwarded-for", ip)
            .json(&serde_json::json!({ "username": "rosa", "password": pw }))
            .send()
    };
    for i in 1..=5 {
        let res = login(format!("2001:db8:7:7::{i:x}"), "wrong password")
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let res = login("2001:db8:7:7:ffff::6".into(), PASSWORD)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(res).await["code"], "throttled");
    let res = login("2001:db8:7:8::1".into(), PASSWORD).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "another /64 is not backed off"
    );
}

/// A body sent a byte at a time (the slow twin of a slow head): once the header-read timeout
/// has passed since the head, reading it fails and the server answers `400` with the JSON
/// body, freeing the connection, instead of waiting as long as the client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_is_cut_off() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        "[server]\nheader_read_timeout = \"1s\"",
        Overrides::default(),
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 200\r\n\r\n{\"username\":",
    )
    .await
    .unwrap();
    let start = Instant::now();
    // Another client is served meanwhile.
    let mut other = TcpStream::connect(&addr).await.unwrap();
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (served, _) = read_until_closed(&mut other, Duration::from_secs(2)).await;
    assert!(served.starts_with(b"HTTP/1.1 200"));
    // One more byte every 100 ms, while reading whatever the server answers.
    let (mut rd, mut wr) = s.split();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let answer = tokio::select! {
        got = read => got,
        () = trickle => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(5)) => panic!("no answer within 5 s"),
    };
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains(r#""code":"bad_request""#), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        start.elapsed()
    );
}

/// The header-read watchdog never cuts a request in flight: with a 1 s timeout, a login that
/// waits about as long for a locked database still gets its answer (`503`), not a closed
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_outlives_the_header_timeout() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        "[server]\nheader_read_timeout = \"1s\"",
        Overrides::default(),
    )
    .await;
    app.add_user("sam").await;
    let Some(mut holder) = lock_database(&app.db_path()) else {
        return;
    };
    // Idle for most of the timeout first, so the request starts late in a watchdog period.
    let c = app.bare_client();
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = Instant::now();
    let res = app.api_login(&c, "sam", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["code"], "store_unavailable");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    drop(holder.stdin.take());
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A real other process holding the database's write lock (the sqlite3 shell inside
/// `BEGIN IMMEDIATE`), once it holds it; `None` (skipped) without the shell, unless services
/// are required. Kill it to release the lock.
pub(crate) fn lock_database(db: &std::path::Path) -> Option<std::process::Child> {
    use std::io::{BufRead as _, Write as _};
    let mut holder = sessiond_store_tests::service_or_skip(
        "the sqlite3 shell",
        Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn(),
    )?;
    let stdin = holder.stdin.as_mut().unwrap();
    stdin
        .write_all(b"BEGIN IMMEDIATE;\nSELECT 'locked';\n")
        .unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    Some(holder)
}
