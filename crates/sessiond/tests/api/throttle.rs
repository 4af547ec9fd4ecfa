//! Brute-force resistance (issue 6): back-offs per (account, IP) and per IP, the per-account
//! ceiling that spares device-cookie holders, shared across instances, managed from the CLI,
//! and a 64-way flood of failing logins against the real binary.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::config::Overrides;

use crate::helpers::*;

/// A login from `ip` (as our trusted loopback proxy reports it), with `extra` cookies.
async fn attempt(
    app: &TestApp,
    c: &reqwest::Client,
    name: &str,
    pw: &str,
    ip: &str,
) -> reqwest::Response {
    c.post(app.url("/api/login"))
        .header("x-forwarded-for", ip)
        .json(&serde_json::json!({ "username": name, "password": pw }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pair_backs_off_and_every_attempt_meanwhile_is_refused() {
    let app = spawn_app().await;
    app.add_user("pam").await;
    let c = app.bare_client();
    for i in 0..5 {
        let res = attempt(&app, &c, "pam", "wrong password", "198.51.100.1").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Backed off: the right password gets the same 429 as a wrong one.
    for pw in [PASSWORD, "wrong password"] {
        let res = attempt(&app, &c, "pam", pw, "198.51.100.1").await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1).contains(&retry), "{retry}");
        assert_eq!(json(res).await["code"], "throttled");
    }
    // Another address is not affected; neither is the HTML form's message.
    assert_eq!(
        attempt(&app, &c, "pam", PASSWORD, "198.51.100.2")
            .await
            .status(),
        StatusCode::OK
    );
    // Once the back-off is over, the right password works and the pair starts over.
    app.advance(Duration::from_secs(2));
    assert_eq!(
        attempt(&app, &c, "pam", PASSWORD, "198.51.100.1")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        attempt(&app, &c, "pam", "wrong password", "198.51.100.1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // The back-off grows with repeats: 5 more failures (after a reset) lock again, then
    // each further failure doubles it.
    for _ in 0..4 {
        attempt(&app, &c, "pam", "wrong password", "198.51.100.1").await;
    }
    let res = attempt(&app, &c, "pam", "wrong password", "198.51.100.1").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    app.advance(Duration::from_secs(1));
    assert_eq!(
        attempt(&app, &c, "pam", "wrong password", "198.51.100.1")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let res = attempt(&app, &c, "pam", "wrong password", "198.51.100.1").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "2");
}

#[tokio::test]
async fn one_address_spraying_many_accounts_backs_off() {
    let app = spawn_app().await;
    app.add_user("quin").await;
    let c = app.bare_client();
    for i in 0..20 {
        let res = attempt(
            &app,
            &c,
            &format!("nobody{i}"),
            "wrong password",
            "198.51.100.9",
        )
        .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let res = attempt(&app, &c, "quin", PASSWORD, "198.51.100.9").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        attempt(&app, &c, "quin", PASSWORD, "198.51.100.10")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_account_ceiling_never_locks_out_a_browser_with_the_device_cookie() {
    let app = spawn_app().await;
    app.add_user("rae").await;
    // The real user logged in before: their browser holds the device cookie.
    let browser = app.client();
    assert_eq!(
        attempt(&app, &browser, "rae", PASSWORD, "192.0.2.50")
            .await
            .status(),
        StatusCode::OK
    );

    // A distributed guesser: 100 failures from 100 addresses.
    let c = app.bare_client();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (c, url) = (c.clone(), app.url("/api/login"));
        tasks.push(tokio::spawn(async move {
            for i in (0..100).filter(|i| i % 4 == worker) {
                let res = c
                    .post(&url)
                    .header(
                        "x-forwarded-for",
                        format!("10.9.{}.{}", i / 200, i % 200 + 1),
                    )
                    .json(&serde_json::json!({ "username": "rae", "password": "guess" }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Now the account is shut for clients without its device cookie, even with the password…
    let res = attempt(&app, &app.bare_client(), "rae", PASSWORD, "203.0.113.77").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 3000
    );
    // …but the real user's browser, presenting its device cookie, logs in.
    assert_eq!(
        attempt(&app, &browser, "rae", PASSWORD, "203.0.113.78")
            .await
            .status(),
        StatusCode::OK
    );
    // A forged or foreign device cookie doesn't help.
    let res = app
        .bare_client()
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "203.0.113.79")
        .header(
            "cookie",
            "__Host-sessiond_device=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .json(&serde_json::json!({ "username": "rae", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn throttling_is_shared_by_instances_and_managed_from_the_cli() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let a = spawn_app_in(dir.clone(), Overrides::default()).await;
    let b = spawn_app_in(dir.clone(), Overrides::default()).await;
    a.add_user("sid").await;
    for _ in 0..5 {
        attempt(
            &a,
            &a.bare_client(),
            "sid",
            "wrong password",
            "198.51.100.20",
        )
        .await;
    }
    assert_eq!(
        attempt(&b, &b.bare_client(), "sid", PASSWORD, "198.51.100.20")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(args)
            .env("SESSIOND_DATABASE", db_url(dir.path()))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["throttle", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pair = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["kind"] == "account+ip")
        .unwrap();
    assert_eq!(pair["account"], "sid");
    assert_eq!(pair["ip"], "198.51.100.20");
    assert_eq!(pair["failures"], 5);
    assert!(pair["locked_until"].is_string());
    assert!(String::from_utf8(run(&["throttle", "list"]).stdout)
        .unwrap()
        .contains("198.51.100.20"));

    let out = run(&["throttle", "clear", "--ip", "198.51.100.20"]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("cleared 2 counter(s)"),
        "pair and ip"
    );
    assert_eq!(
        attempt(&a, &a.bare_client(), "sid", PASSWORD, "198.51.100.20")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_login_form_says_when_to_come_back() {
    let app = spawn_app().await;
    app.add_user("tom").await;
    let c = app.client();
    for _ in 0..6 {
        app.form_login(&c, "tom", "wrong password").await;
    }
    let res = app.form_login(&c, "tom", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Too many failed attempts"));
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

/// The real binary under a 64-way flood of failing logins over many accounts and
/// addresses: it stays up, its memory stays bounded, and verification keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failing_logins_leaves_verification_answering() {
    let dir = tempfile::tempdir().unwrap();
    let port = sessiond_store_tests::services::spare_port();
    let base = format!("http://127.0.0.1:{port}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(
        Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database",
            ])
            .arg(format!(
                "sqlite://{}",
                dir.path().join("flood.db").display()
            ))
            .env("SESSIOND_ADMIN_PASSWORD", "flood admin password")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let client = reqwest::Client::new();
    let start = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = client
        .post(format!("{base}/api/login"))
        .json(&serde_json::json!({ "username": "admin", "password": "flood admin password" }))
        .send()
        .await
        .unwrap();
    let token = session_cookie(&res).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for w in 0..64u32 {
        let (stop, client, url) = (
            stop.clone(),
            reqwest::Client::new(),
            format!("{base}/api/login"),
        );
        flood.push(tokio::spawn(async move {
            let (mut n, mut overloaded) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .post(&url)
                    .header("x-forwarded-for", format!("10.{}.{}.{}", w, (n / 250) % 250, n % 250 + 1))
                    .json(&serde_json::json!({ "username": format!("user{w}x{n}"), "password": "wrong guess" }))
                    .send()
                    .await;
                if let Ok(r) = res {
                    assert!(matches!(r.status().as_u16(), 401 | 429 | 503), "{}", r.status());
                    overloaded += u64::from(r.status() == StatusCode::SERVICE_UNAVAILABLE);
                }
                n += 1;
            }
            (n, overloaded)
        }));
    }
    let mut latencies = Vec::new();
    let mut peak_rss = 0;
    let flood_for = Duration::from_secs(8);
    let t0 = Instant::now();
    while t0.elapsed() < flood_for {
        let s = Instant::now();
        let res = client
            .get(format!("{base}/api/session"))
            .header("cookie", format!("__Host-sessiond={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "verification failed during the flood"
        );
        latencies.push(s.elapsed());
        peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut logins, mut overloaded) = (0, 0);
    for f in flood {
        let (n, o) = f.await.unwrap();
        logins += n;
        overloaded += o;
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "flood: {logins} failing logins ({overloaded} refused 503 overloaded) in {flood_for:?}; \
         GET /api/session x{}: p50 {:?}, p99 {:?}, max {:?}; peak RSS {} MiB",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap(),
        peak_rss / 1024
    );
    assert!(peak_rss > 0, "RSS was read");
    assert!(peak_rss < 400 * 1024, "peak RSS {peak_rss} KiB");
    assert!(latencies.len() > 50, "verification kept answering");
}
