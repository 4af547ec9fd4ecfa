//! Differential tests of what sessiond decides against what real proxies and back ends then
//! serve (issue 15 #1, #11, #13, #14), judged by the content that reaches the client: a
//! protected file's secret marker in a response to someone the rules refuse is a leak,
//! whatever status sessiond or the proxy answered.
//!
//! The proxies are real nginx and Caddy, configured from `examples/` (templated with test
//! ports only); behind them: the proxy's own file serving (nginx `root`, Caddy
//! `file_server`), Python's `http.server` (a real normalising upstream: it decodes `%2F` and
//! resolves `..`), and `lenient::lenient_path`, an upstream that reads paths in every lenient
//! way known at once. Every path of a generated corpus of hostile spellings goes through each
//! pair, anonymously and as a logged-in user outside the `ops` group.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond::hash_blocking;
use sessiond::Overrides;
use sessiond_core::{NewUser, Password, Username};
use sessiond_store_tests::services::spare_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::lenient::lenient_path;
use crate::proxies::{installed, start_caddy, start_nginx, Backend, Proxy};

const RULES: &str = r#"
public_url = "http://auth.example.test:{proxy}"

[cookie]
domain = "example.test"
secure = false          # the test talks plain HTTP to the proxies

[[access.rules]]
domain = "public.example.test"
policy = "bypass"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/public"
policy = "bypass"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/deny"
policy = "deny"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/ops"
policy = "authenticated"
groups = ["ops"]
"#;

/// What each protected file holds: a marker that cannot occur by chance.
const PUBLIC: &str = "PUBLIC-OK-5e1a9c";
const DENY: &str = "SECRET-DENY-d41f07";
const OPS: &str = "SECRET-OPS-9a3c51";
const PRIVATE: &str = "SECRET-PRIVATE-77b2e4";

/// The files every back end serves (`/private` falls under the default rule: authenticated).
fn docroot() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, body) in [
        ("public/index.txt", PUBLIC),
        ("deny/secret.txt", DENY),
        ("ops/secret.txt", OPS),
        ("private/secret.txt", PRIVATE),
    ] {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, format!("{body}\n")).unwrap();
    }
    dir
}

/// The corpus: the protected files, reached from under the bypass prefix or from the root,
/// with `..` and `/` in every spelling back ends are known to read as such, and the
/// protected directories' own names spelled in ways some back end reads as the same name.
fn corpus() -> Vec<String> {
    const TARGETS: [(&str, &str); 3] = [
        ("deny", "secret.txt"),
        ("ops", "secret.txt"),
        ("private", "secret.txt"),
    ];
    // `..` spelled every way: plain, escaped in any case, half escaped, escaped twice,
    // overlong UTF-8, wide full stops, with a NUL, a space or a parameter behind it.
    const UPS: &[&str] = &[
        "..",
        "%2e%2e",
        "%2E%2E",
        "%2e.",
        ".%2e",
        "%2E.",
        ".%2E",
        "%252e%252e",
        "%252E%252E",
        "..%00",
        "..%20",
        "..;",
        "..;x",
        "%c0%ae%c0%ae",
        "%EF%BC%8E%EF%BC%8E",
        "...",
    ];
    // `/` spelled every way.
    const SEPS: &[&str] = &[
        "/",
        "//",
        "///",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "\\",
        "/./",
        "/%2e/",
        ";x/",
        "/;x/",
        "%252f",
        "%c0%af",
        "%EF%BC%8F",
    ];
    // The protected directory's name, as back ends that fold case, drop trailing dots and
    // spaces, drop parameters or decode letters read it.
    const NAMES: &[&str] = &[
        "{d}",
        "{D}",
        "{d}.",
        "{d}%2e",
        "{d}%20",
        "{d};x",
        "{d}%00",
        "{d}%09",
        "{d}%3b",
        "%{h}{t}",
        "{d}%EF%BC%8E",
        "{d}...",
    ];
    const LEADS: &[&str] = &[
        "/", "//", "///", "/./", "/%2f", "/%2F", "/%5c", "\\", "/;x/", "/%2e/", "/%252f",
    ];
    const FILES: &[&str] = &[
        "{f}",
        "{f}.",
        "{f}%20",
        "{f}%00",
        "{f};x",
        "{f}/",
        "{f}%2f",
        "{f}::$DATA",
        "{f}%3f",
    ];
    let mut out = BTreeSet::new();
    for (dir, file) in TARGETS {
        let target = format!("{dir}/{file}");
        for pre in ["/public", "/public/x", ""] {
            for up in UPS {
                for sep in SEPS {
                    out.insert(format!("{pre}/{up}{sep}{target}"));
                    out.insert(format!("{pre}{sep}{up}/{target}"));
                }
            }
        }
        let (first, rest) = dir.split_at(1);
        for name in NAMES {
            let name = name
                .replace("{d}", dir)
                .replace("{D}", &dir.to_ascii_uppercase())
                .replace("{h}", &format!("{:02X}", first.as_bytes()[0]))
                .replace("{t}", rest);
            for lead in LEADS {
                out.insert(format!("{lead}{name}/{file}"));
            }
            for sep in SEPS {
                out.insert(format!("/{name}{sep}{file}"));
            }
        }
        for f in FILES {
            out.insert(format!("/{dir}/{}", f.replace("{f}", file)));
        }
    }
    out.into_iter().collect()
}

/// The markers a response must never carry for this identity.
fn refused(identity: &str) -> &'static [&'static str] {
    match identity {
        "anonymous" => &[DENY, OPS, PRIVATE],
        "bob" => &[DENY, OPS],
        other => panic!("unknown identity {other}"),
    }
}

/// One request over a fresh connection, exactly as written (no client library would send
/// these paths unchanged: URL parsers resolve `..` and `\`). Returns the status (0 if none
/// was read) and the whole response.
async fn raw_get(port: u16, target: &str, host: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n{extra}Connection: close\r\n\r\n"
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // A proxy that closes first is fine: what was read is what the client got.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Python's `http.server` serving `root`.
async fn python_http_server(root: &Path) -> (Process, SocketAddr) {
    let port = spare_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(root)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 starts");
    wait_for_port(port, "python3 -m http.server").await;
    (Process(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// An upstream that serves `root` by [`lenient_path`], and at `…/whoami` the request's
/// headers as a CGI/WSGI app sees them (`HTTP_` + upper case, `-` and `_` alike).
async fn lenient_upstream(root: PathBuf) -> SocketAddr {
    use axum::extract::Request;
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(move |req: Request| {
        let root = root.clone();
        async move {
            let raw = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let path = lenient_path(&raw);
            if path.ends_with("/whoami") {
                let mut cgi = serde_json::Map::new();
                for (name, value) in req.headers() {
                    let key = format!(
                        "HTTP_{}",
                        name.as_str().to_ascii_uppercase().replace('-', "_")
                    );
                    let values = cgi.entry(key).or_insert_with(|| serde_json::json!([]));
                    values
                        .as_array_mut()
                        .unwrap()
                        .push(String::from_utf8_lossy(value.as_bytes()).into());
                }
                return (StatusCode::OK, serde_json::Value::Object(cgi).to_string());
            }
            match std::fs::read_to_string(root.join(path.trim_start_matches('/'))) {
                Ok(body) => (StatusCode::OK, body),
                Err(_) => (StatusCode::NOT_FOUND, String::new()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Logs `name` in at sessiond itself; the `Cookie` header line that carries the session.
async fn login(app: &TestApp, name: &str) -> String {
    let res = app.api_login(&app.bare_client(), name, PASSWORD).await;
    assert_eq!(res.status(), 200, "login of {name}");
    let cookie = set_cookies(res.headers())
        .into_iter()
        .find(|c| c.starts_with("sessiond="))
        .expect("session cookie");
    format!("Cookie: {}\r\n", cookie.split(';').next().unwrap())
}

/// Everything the tests below share: sessiond with the rules, its users' cookies, the
/// back ends, and one proxy per proxy × back end pair.
struct Setup {
    _app: TestApp,
    _docroot: tempfile::TempDir,
    _python: Process,
    python: SocketAddr,
    lenient: SocketAddr,
    /// `Cookie:` lines of bob (groups: dev) and olga (groups: ops).
    bob: String,
    olga: String,
    /// (label, proxy).
    proxies: Vec<(String, Proxy)>,
}

async fn setup() -> Option<Setup> {
    if !installed("nginx") || !installed("caddy") || !installed("python3") {
        return None;
    }
    let ports: Vec<u16> = (0..6).map(|_| spare_port()).collect();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        &RULES.replace("{proxy}", &ports[0].to_string()),
        Overrides::default(),
    )
    .await;
    app.add_user("bob").await;
    let phc = hash_blocking(&Password::new(PASSWORD.into()).unwrap()).unwrap();
    app.state
        .users
        .create_user(&NewUser {
            username: Username::parse("olga").unwrap(),
            name: "Olga".into(),
            email: "olga@example.com".into(),
            groups: vec![sessiond_core::Group::parse("ops").unwrap()],
            admin: false,
            password_hash: phc,
            created_at: sessiond::now(),
        })
        .await
        .unwrap();
    let bob = login(&app, "bob").await;
    let olga = login(&app, "olga").await;
    let sessiond: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    let docroot = docroot();
    let (python_process, python) = python_http_server(docroot.path()).await;
    let lenient = lenient_upstream(docroot.path().to_owned()).await;
    let files = Backend::Files(docroot.path().to_owned());
    let proxies = vec![
        (
            "nginx root".to_owned(),
            start_nginx(ports[0], sessiond, &files),
        ),
        (
            "nginx → http.server".to_owned(),
            start_nginx(ports[1], sessiond, &Backend::Upstream(python)),
        ),
        (
            "nginx → lenient".to_owned(),
            start_nginx(ports[2], sessiond, &Backend::Upstream(lenient)),
        ),
        (
            "caddy file_server".to_owned(),
            start_caddy(ports[3], sessiond, &files),
        ),
        (
            "caddy → http.server".to_owned(),
            start_caddy(ports[4], sessiond, &Backend::Upstream(python)),
        ),
        (
            "caddy → lenient".to_owned(),
            start_caddy(ports[5], sessiond, &Backend::Upstream(lenient)),
        ),
    ];
    for (_, p) in &proxies {
        p.wait_up().await;
    }
    Some(Setup {
        _app: app,
        _docroot: docroot,
        _python: python_process,
        python,
        lenient,
        bob,
        olga,
        proxies,
    })
}

/// Runs `jobs` (port, target, host, extra header lines) 16 at a time; their responses in the
/// same order.
async fn run_all(jobs: Vec<(u16, String, String, String)>) -> Vec<(u16, String)> {
    let jobs = Arc::new(Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (jobs, results) = (Arc::clone(&jobs), Arc::clone(&results));
        workers.push(tokio::spawn(async move {
            loop {
                let Some((i, (port, target, host, extra))) = jobs.lock().unwrap().pop() else {
                    return;
                };
                let got = raw_get(port, &target, &host, &extra).await;
                results.lock().unwrap().push((i, got));
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_path_spelling_reaches_a_protected_file_through_any_proxy_and_back_end() {
    let Some(s) = setup().await else { return };
    let corpus = corpus();
    assert!(corpus.len() > 1_500, "corpus of {}", corpus.len());

    // The corpus is a real attack: sent straight to the normalising back ends (no proxy, no
    // sessiond), many of its paths reach a protected file that the path does not name.
    let mut bare = Vec::new();
    for upstream in [s.python, s.lenient] {
        for path in &corpus {
            bare.push((
                upstream.port(),
                path.clone(),
                "app.example.test".into(),
                String::new(),
            ));
        }
    }
    let bare = run_all(bare).await;
    let reaching = |from: &[(u16, String)]| {
        from.iter()
            .filter(|(_, body)| [DENY, OPS, PRIVATE].iter().any(|m| body.contains(m)))
            .count()
    };
    let (python_hits, lenient_hits) = (
        reaching(&bare[..corpus.len()]),
        reaching(&bare[corpus.len()..]),
    );
    eprintln!(
        "corpus: {} paths; served a protected file when sent straight to http.server: {python_hits}, to the lenient upstream: {lenient_hits}",
        corpus.len()
    );
    assert!(
        python_hits >= 100 && lenient_hits >= 1_000,
        "the corpus lost its teeth"
    );

    // Controls: every pair serves the files that the rules allow, to whom they allow them.
    for (label, p) in &s.proxies {
        let host = format!("app.example.test:{}", p.port);
        for (path, who, cookie, marker, served) in [
            ("/public/index.txt", "anonymous", "", PUBLIC, true),
            ("/private/secret.txt", "bob", s.bob.as_str(), PRIVATE, true),
            ("/ops/secret.txt", "olga", s.olga.as_str(), OPS, true),
            ("/private/secret.txt", "anonymous", "", PRIVATE, false),
            ("/ops/secret.txt", "bob", s.bob.as_str(), OPS, false),
            ("/deny/secret.txt", "olga", s.olga.as_str(), DENY, false),
            ("/DENY/secret.txt", "olga", s.olga.as_str(), DENY, false),
        ] {
            let (status, body) = raw_get(p.port, path, &host, cookie).await;
            assert_eq!(
                body.contains(marker),
                served,
                "{label}: {path} as {who}: {status}\n{body}"
            );
        }
    }

    // The corpus through every pair, anonymously and as bob (not in ops).
    let mut jobs = Vec::new();
    let mut labels = Vec::new();
    for (label, p) in &s.proxies {
        for (who, cookie) in [("anonymous", ""), ("bob", s.bob.as_str())] {
            for path in &corpus {
                jobs.push((
                    p.port,
                    path.clone(),
                    format!("app.example.test:{}", p.port),
                    cookie.to_owned(),
                ));
                labels.push((label.as_str(), who, path.as_str()));
            }
        }
    }
    let started = Instant::now();
    let results = run_all(jobs).await;
    let mut leaks = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for ((label, who, path), (status, body)) in labels.iter().zip(&results) {
        *statuses.entry(*status).or_default() += 1;
        if refused(who).iter().any(|m| body.contains(m)) {
            leaks.push(format!("{label}: {path} as {who} → {status}"));
        }
    }
    eprintln!(
        "{} requests through {} proxy × back end pairs in {:.1?}: statuses {statuses:?}; leaks: {}",
        results.len(),
        s.proxies.len(),
        started.elapsed(),
        leaks.len()
    );
    assert!(
        leaks.is_empty(),
        "{} protected responses reached someone the rules refuse, e.g.:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(30)].join("\n")
    );
}

/// nginx picks the server block by the host of an absolute-form request line, not by the
/// `Host` header; the host the rules are checked for must be the one nginx (or Caddy)
/// actually serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_the_rules_see_is_the_host_the_proxy_serves() {
    let Some(s) = setup().await else { return };
    for (label, p) in &s.proxies {
        let port = p.port;
        let app = |path: &str| format!("http://app.example.test:{port}{path}");
        for (target, host, who, cookie, marker) in [
            // bob is not in ops: another host's default rule must not let him in.
            (
                app("/ops/secret.txt"),
                "other.example.test",
                "bob",
                s.bob.as_str(),
                OPS,
            ),
            (
                app("/ops/secret.txt"),
                "auth.example.test",
                "bob",
                s.bob.as_str(),
                OPS,
            ),
            // Anonymous, with the Host of a host-wide bypass rule.
            (
                app("/private/secret.txt"),
                "public.example.test",
                "anonymous",
                "",
                PRIVATE,
            ),
            (
                app("/deny/secret.txt"),
                "public.example.test",
                "anonymous",
                "",
                DENY,
            ),
        ] {
            for host in [host.to_owned(), format!("{host}:{port}")] {
                let (status, body) = raw_get(port, &target, &host, cookie).await;
                assert!(
                    !body.contains(marker),
                    "{label}: GET {target} with Host: {host} as {who} → {status}\n{body}"
                );
            }
        }
        // The same absolute form with a matching Host still works.
        let (status, body) = raw_get(
            port,
            &app("/private/secret.txt"),
            &format!("app.example.test:{port}"),
            &s.bob,
        )
        .await;
        assert!(body.contains(PRIVATE), "{label}: {status}\n{body}");
    }
}

/// Identity headers reach the app only as sessiond set them, under every spelling an app
/// server may map onto the same name (`Remote_User` is `HTTP_REMOTE_USER` to WSGI/CGI, like
/// `Remote-User`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_identity_headers_never_reach_the_app_in_any_spelling() {
    let Some(s) = setup().await else { return };
    let forged = "Remote_User: admin\r\nREMOTE_USER: admin\r\nremote_groups: ops\r\n\
                  Remote_Email: admin@example.test\r\nRemote_Name: Admin\r\nRemote-User: admin\r\n\
                  Remote-Groups: ops\r\n";
    for (label, p) in s.proxies.iter().filter(|(l, _)| l.ends_with("lenient")) {
        let host = format!("app.example.test:{}", p.port);
        for (path, cookie, user, groups) in [
            ("/private/whoami", s.bob.as_str(), "bob", "dev"),
            ("/public/whoami", "", "", ""),
        ] {
            let (status, body) = raw_get(p.port, path, &host, &format!("{cookie}{forged}")).await;
            assert_eq!(status, 200, "{label}: {path}\n{body}");
            let json: serde_json::Value =
                serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            for (key, want) in [
                ("HTTP_REMOTE_USER", user),
                ("HTTP_REMOTE_GROUPS", groups),
                (
                    "HTTP_REMOTE_EMAIL",
                    if user.is_empty() {
                        ""
                    } else {
                        "bob@example.com"
                    },
                ),
                (
                    "HTTP_REMOTE_NAME",
                    if user.is_empty() { "" } else { "bob Example" },
                ),
            ] {
                let seen = json[key].as_array().cloned().unwrap_or_default();
                assert!(
                    seen.iter().all(|v| v == want),
                    "{label}: {path}: the app read {key} as {seen:?}, sessiond said {want:?}"
                );
            }
        }
    }
}

/// Forward auth answers the proxies over their own connection; through the public auth host
/// anyone could ask it about made-up targets, and `/metrics` is for the operator. Neither is
/// reachable through the examples, in any spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_auth_and_metrics_are_not_reachable_through_the_auth_host() {
    let Some(s) = setup().await else { return };
    let asks = "X-Forwarded-Proto: http\r\nX-Forwarded-Host: app.example.test\r\n\
                X-Forwarded-Uri: /private/secret.txt\r\nX-Original-URL: http://app.example.test/private/secret.txt\r\n";
    for (label, p) in &s.proxies {
        let host = format!("auth.example.test:{}", p.port);
        for path in [
            "/api/authz/forward-auth",
            "/api/authz/auth-request",
            "/api/verify",
            "/metrics",
            "/API/authz/forward-auth",
            "/api/authz/forward-auth?x=1",
            "//api/authz/forward-auth",
            "/api//authz/forward-auth",
            "/api/./authz/forward-auth",
            "/api/authz/%66orward-auth",
            "/api/authz%2fforward-auth",
            "/%6detrics",
            "/metrics/",
            "//metrics",
        ] {
            let (status, response) =
                raw_get(p.port, path, &host, &format!("{}{asks}", s.bob)).await;
            let lower = response.to_ascii_lowercase();
            assert!(
                !lower.contains("remote-user:")
                    && !lower.contains("forward auth")
                    && !response.contains("# TYPE"),
                "{label}: {path} reached sessiond's forward auth or metrics → {status}\n{response}"
            );
        }
        // The auth host still serves sessiond's own pages.
        let (status, _) = raw_get(p.port, "/healthz", &host, "").await;
        assert_eq!(status, 200, "{label}: /healthz");
    }
}
