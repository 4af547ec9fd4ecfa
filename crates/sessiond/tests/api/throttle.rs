//! Brute-force resistance (issue 6): back-offs per (account, IP) and per IP, the per-account
//! ceiling that spares device-cookie holders, shared across instances, managed from the CLI,
//! and a 64-way flood of failing logins against the real binary.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::Overrides;

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
    // The back-off is 1 s: on a loaded machine five hashes can take longer than that, and a
    // running clock would end it before the test looks.
    app.freeze();
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

/// A server on `stores` (its own database directory).
async fn app_on(stores: &crate::shared::Stores) -> TestApp {
    let over = Overrides {
        database: stores.database.clone(),
        session_store: stores.session_store.clone(),
        ..Overrides::default()
    };
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), over).await
}

/// Issue 15 #4: the throttle was check-then-act, so a burst of parallel wrong passwords for
/// one account all read "under the limit" and were all hashed (12 of 12 where 10 was the
/// limit). Now each attempt is reserved atomically before any hashing: of 30 at once, at
/// most the pair's threshold (5) get to a password check, on every store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_burst_of_wrong_passwords_is_hashed_at_most_the_limit_on_every_store() {
    for stores in crate::shared::deployments().await {
        let app = app_on(&stores).await;
        let user = format!("burst{}", stores.label.replace('+', ""));
        app.add_user(&user).await;
        let c = app.bare_client();
        let start = Arc::new(tokio::sync::Barrier::new(30));
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (c, url, user, start) =
                    (c.clone(), app.url("/api/login"), user.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    c.post(url)
                        .header("x-forwarded-for", "198.51.100.30")
                        .json(&serde_json::json!({ "username": user, "password": format!("wrong {i}") }))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let (mut hashed, mut throttled) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                StatusCode::UNAUTHORIZED => hashed += 1,
                StatusCode::TOO_MANY_REQUESTS => throttled += 1,
                other => panic!("{}: unexpected {other}", stores.label),
            }
        }
        let failed = app
            .state
            .auth
            .counters()
            .logins_failed
            .load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{}: {hashed} checked, {throttled} throttled", stores.label);
        assert!(
            hashed <= 5,
            "{}: {hashed} of 30 parallel wrong passwords were checked (limit 5)",
            stores.label
        );
        assert_eq!(
            failed, hashed,
            "{}: every 401 was one failed check",
            stores.label
        );
        assert_eq!(hashed + throttled, 30);
        // The counters say exactly what happened: 5 failures for the pair.
        let pair = app
            .state
            .throttle
            .throttle_get(&format!("p:{user}|198.51.100.30"), app.state.sessions.now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pair.count, hashed, "{}", stores.label);
    }
}

/// A right password gives the reservation back: a user who mistypes four times and then
/// logs in leaves no address or account failures behind for it, and the pair starts over.
#[tokio::test]
async fn a_successful_login_gives_its_reservation_back() {
    let app = spawn_app().await;
    app.add_user("rita").await;
    let c = app.bare_client();
    for _ in 0..2 {
        attempt(&app, &c, "rita", "wrong password", "198.51.100.40").await;
    }
    let res = attempt(&app, &c, "rita", PASSWORD, "198.51.100.40").await;
    assert_eq!(res.status(), StatusCode::OK);
    let store = &app.state.throttle;
    let now = app.state.sessions.now();
    let get = |k: &'static str| store.throttle_get(k, now);
    assert_eq!(get("p:rita|198.51.100.40").await.unwrap(), None);
    assert_eq!(
        get("i:198.51.100.40").await.unwrap().map(|r| r.count),
        Some(2)
    );
    assert_eq!(get("a:rita").await.unwrap().map(|r| r.count), Some(2));
    // A request refused before any password check (a bad password field) costs nothing.
    let res = c
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "198.51.100.40")
        .json(&serde_json::json!({ "username": "rita", "password": "x".repeat(5000) }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        get("i:198.51.100.40").await.unwrap().map(|r| r.count),
        Some(2)
    );
    assert_eq!(get("a:rita").await.unwrap().map(|r| r.count), Some(2));
    assert_eq!(get("p:rita|198.51.100.40").await.unwrap(), None);
}

/// Issue 15 #3: `POST /api/password` checked the current password with no throttle; 40
/// parallel wrong attempts by one user filled the hashing pool and the admin's right login
/// got `503 overloaded`. The current password now counts on the login counters (so at most
/// the pair's threshold are checked) and the admin gets in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_are_throttled_and_never_crowd_out_a_login() {
    let app = spawn_app().await;
    app.add_user("mallory").await;
    app.add_user_with("boss", PASSWORD, true).await;
    let me = app.client();
    assert_eq!(
        app.api_login(&me, "mallory", PASSWORD).await.status(),
        StatusCode::OK
    );
    let start = Arc::new(tokio::sync::Barrier::new(41));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (me, url, start) = (me.clone(), app.url("/api/password"), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                me.post(url)
                    .header("x-forwarded-for", "198.51.100.50")
                    .json(&serde_json::json!({
                        "current_password": format!("guess number {i}"),
                        "new_password": "a brand new password",
                    }))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    start.wait().await;
    // While the guesses are in flight: the admin, from elsewhere.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let admin = app
        .bare_client()
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "198.51.100.51")
        .json(&serde_json::json!({ "username": "boss", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .status();
    let (mut checked, mut throttled) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admin,
        StatusCode::OK,
        "the admin's login during the guesses"
    );
    assert!(
        checked <= 5,
        "{checked} current-password guesses were checked"
    );
    assert_eq!(checked + throttled, 40);
    // Throttled like a login: the right current password is refused too while backed off,
    // and the same account's logins from that address are backed off as well.
    let res = me
        .post(app.url("/api/password"))
        .header("x-forwarded-for", "198.51.100.50")
        .json(&serde_json::json!({ "current_password": PASSWORD, "new_password": "a brand new password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(res).await["code"], "throttled");
    assert_eq!(
        attempt(
            &app,
            &app.bare_client(),
            "mallory",
            PASSWORD,
            "198.51.100.50"
        )
        .await
        .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // After the back-off (1 s after the 5th failure), the right password changes it.
    app.advance(Duration::from_secs(2));
    let res = me
        .post(app.url("/api/password"))
        .header("x-forwarded-for", "198.51.100.50")
        .json(&serde_json::json!({ "current_password": PASSWORD, "new_password": "a brand new password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// The HTML form's password change is throttled the same way.
#[tokio::test]
async fn the_password_form_is_throttled_too() {
    let app = spawn_app().await;
    app.add_user("wendy").await;
    let me = app.client();
    assert_eq!(
        app.api_login(&me, "wendy", PASSWORD).await.status(),
        StatusCode::OK
    );
    let html = me
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_from(&html);
    let mut statuses = Vec::new();
    for i in 0..7 {
        let res = me
            .post(app.url("/password"))
            .header("x-forwarded-for", "198.51.100.60")
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("current_password", &format!("guess number {i}")),
                ("new_password", "a brand new password"),
                ("confirm_password", "a brand new password"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
}

/// The reservation must not make honest parallel logins fight: 16 right logins of one
/// account at once, from 16 addresses, all get in (none `429` for losing reservation races,
/// which an exact compare on the shared account counter caused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_right_logins_of_one_account_all_get_in() {
    for stores in crate::shared::deployments().await {
        let app = app_on(&stores).await;
        app.add_user("crowd").await;
        let c = app.bare_client();
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (c, url, start) = (c.clone(), app.url("/api/login"), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    c.post(url)
                        .header("x-forwarded-for", format!("198.51.100.{}", 100 + i))
                        .json(&serde_json::json!({ "username": "crowd", "password": PASSWORD }))
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK, "{}", stores.label);
        }
        // Every reservation was given back.
        let now = app.state.sessions.now();
        let account = app
            .state
            .throttle
            .throttle_get("a:crowd", now)
            .await
            .unwrap();
        assert_eq!(account, None, "{}", stores.label);
    }
}
