//! Real reverse proxies in front of a real upstream (issue 5): nginx `auth_request` and Caddy
//! `forward_auth`, configured like the files in `examples/`, walking the whole flow a browser
//! would: redirect to login with the right `rd`, login, the upstream sees the user, API calls
//! get 401, rules deny or bypass, logout ends access on the next request; and a `two_factor`
//! rule (issue 18): a one-factor session is sent to the second-factor step and, after a TOTP
//! code, back to the app.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sessiond::Overrides;
use sessiond_store_tests::services::spare_port;

use crate::helpers::*;

const RULES: &str = r#"
public_url = "http://auth.example.test:{proxy}"

[cookie]
domain = "example.test"
secure = false          # the test talks plain HTTP to the proxy

[[access.rules]]
domain = "app.example.test"
path_prefix = "/public"
policy = "bypass"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/forbidden"
policy = "deny"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/ops"
policy = "authenticated"
groups = ["ops"]

[[access.rules]]
domain = "app.example.test"
path_prefix = "/dev"
policy = "authenticated"
groups = ["dev"]

[[access.rules]]
domain = "app.example.test"
path_prefix = "/vault"
policy = "two_factor"
"#;

/// An upstream app that echoes what it was told about the user, and the cookies it got.
async fn echo_upstream() -> SocketAddr {
    use axum::http::HeaderMap;
    let app = axum::Router::new().fallback(|h: HeaderMap| async move {
        let get = |n: &str| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        axum::Json(serde_json::json!({
            "remote_user": get("remote-user"),
            "remote_groups": get("remote-groups"),
            "remote_email": get("remote-email"),
            "cookie": get("cookie"),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub struct Proxy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    pub name: &'static str,
}

/// What the protected app is: an upstream server, or files the proxy serves itself (nginx
/// `root`, Caddy `file_server`).
pub enum Backend {
    Upstream(SocketAddr),
    Files(std::path::PathBuf),
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn installed(bin: &str) -> bool {
    // Only whether it runs at all: `--version` is understood, or refused, by each of them.
    let found = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok();
    if !found && sessiond_store_tests::services_required() {
        panic!("{bin} is required (SESSIOND_REQUIRE_SERVICES=1) but not installed");
    }
    if !found {
        eprintln!("SKIP: {bin} not installed");
    }
    found
}

/// The example config with this test's host names and ports filled in, and the app's
/// `upstream` line replaced by `files` when the proxy serves files itself.
fn example(
    name: &str,
    sessiond: SocketAddr,
    backend: &Backend,
    upstream: &str,
    files: &str,
) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains(upstream), "{name} no longer has {upstream:?}");
    let text = match backend {
        Backend::Upstream(addr) => text.replace("127.0.0.1:8080", &addr.to_string()),
        Backend::Files(dir) => text.replace(
            upstream,
            &files.replace("{dir}", &dir.display().to_string()),
        ),
    };
    text.replace("example.com", "example.test")
        .replace("127.0.0.1:7444", &sessiond.to_string())
}

pub fn start_nginx(port: u16, sessiond: SocketAddr, backend: &Backend) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let site = example(
        "nginx.conf",
        sessiond,
        backend,
        "proxy_pass http://127.0.0.1:8080;",
        "root {dir};",
    )
    .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    // The example is a site file; wrap it in a minimal main config of the test's own.
    let conf = format!(
        "daemon off;\nmaster_process off;\nuser root;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            &d,
            "-c",
            &format!("{d}/nginx.conf"),
            "-e",
            &format!("{d}/error.log"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    Proxy {
        child,
        port,
        dir,
        name: "nginx",
    }
}

pub fn start_caddy(port: u16, sessiond: SocketAddr, backend: &Backend) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let sites = example(
        "Caddyfile",
        sessiond,
        backend,
        "reverse_proxy 127.0.0.1:8080",
        "root * {dir}\n\tfile_server",
    )
    .replace(
        "auth.example.test {",
        &format!("http://auth.example.test:{port} {{"),
    )
    .replace(
        "app.example.test {",
        &format!("http://app.example.test:{port} {{"),
    );
    let global = format!(
        "{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {}\n}}\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("Caddyfile"), format!("{global}{sites}")).unwrap();
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.path().join("Caddyfile"))
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy starts");
    Proxy {
        child,
        port,
        dir,
        name: "caddy",
    }
}

impl Proxy {
    /// A browser-like client that resolves our test host names to the proxy.
    pub fn client(&self, jar: bool) -> reqwest::Client {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        reqwest::Client::builder()
            .cookie_store(jar)
            .redirect(reqwest::redirect::Policy::none())
            .resolve("app.example.test", addr)
            .resolve("auth.example.test", addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A browser-like client that follows redirects (as a browser does, `303` after a form
    /// post becomes a `GET`), with a cookie jar.
    pub fn following_client(&self) -> reqwest::Client {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            .resolve("app.example.test", addr)
            .resolve("auth.example.test", addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub fn app(&self, path: &str) -> String {
        format!("http://app.example.test:{}{path}", self.port)
    }

    pub fn auth(&self, path: &str) -> String {
        format!("http://auth.example.test:{}{path}", self.port)
    }

    pub async fn wait_up(&self) {
        let c = self.client(false);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if c.get(self.auth("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        panic!("{} did not come up: {log}", self.name);
    }
}

async fn walk(proxy: &Proxy, app: &TestApp) {
    let name = proxy.name;
    let browser = proxy.client(true);
    let html = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";

    // 1. Not logged in: the proxy sends the browser to the login page, with the target as rd.
    let res = browser
        .get(proxy.app("/page?x=1"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "{name}: redirect to login");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let rd = format!("http://app.example.test:{}/page?x=1", proxy.port);
    let rd_enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    assert_eq!(
        location,
        proxy.auth(&format!("/login?rd={rd_enc}")),
        "{name}"
    );

    // 2. The login form, through the proxy; log in; back to the app.
    let page = browser
        .get(&location)
        .header("accept", html)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_from(&page);
    let res = browser
        .post(proxy.auth("/login"))
        .form(&[
            ("username", "nia"),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
            ("rd", &rd),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{name}: login");
    assert_eq!(
        res.headers()["location"],
        rd.as_str(),
        "{name}: back to the app"
    );
    let cookie = set_cookies(res.headers())
        .into_iter()
        .find(|c| c.starts_with("sessiond="))
        .unwrap();
    assert!(cookie.contains("Domain=example.test"), "{cookie}");

    // 3. The upstream sees the user, and not the session cookie.
    let res = browser
        .get(&rd)
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{name}: app after login");
    let seen = json(res).await;
    assert_eq!(seen["remote_user"], "nia", "{name}: {seen}");
    assert_eq!(seen["remote_groups"], "dev", "{name}");
    assert_eq!(seen["remote_email"], "nia@example.com", "{name}");
    assert!(
        !seen["cookie"].as_str().unwrap().contains("sessiond="),
        "{name}: session cookie reached the upstream: {seen}"
    );
    // Other cookies pass; forged identity headers don't.
    let token = cookie
        .trim_start_matches("sessiond=")
        .split(';')
        .next()
        .unwrap();
    let res = proxy
        .client(false)
        .get(&rd)
        .header("cookie", format!("a=1; sessiond={token}; b=2"))
        .header("remote-user", "admin")
        .send()
        .await
        .unwrap();
    let seen = json(res).await;
    let cookies = seen["cookie"].as_str().unwrap();
    assert!(
        cookies.contains("a=1") && cookies.contains("b=2") && !cookies.contains("sessiond"),
        "{name}: {seen}"
    );
    assert_eq!(seen["remote_user"], "nia", "{name}");
    let res = proxy
        .client(false)
        .get(proxy.app("/public/x"))
        .header("remote-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(res).await["remote_user"],
        "",
        "{name}: a forged Remote-User reached the upstream"
    );

    // 4. Rules: group, deny, bypass.
    let status = |path: &'static str, c: &reqwest::Client| {
        let c = c.clone();
        let url = proxy.app(path);
        async move {
            c.get(url)
                .header("accept", html)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        status("/dev/x", &browser).await,
        StatusCode::OK,
        "{name}: member of dev"
    );
    assert_eq!(
        status("/ops/x", &browser).await,
        StatusCode::FORBIDDEN,
        "{name}: not in ops"
    );
    assert_eq!(
        status("/forbidden", &browser).await,
        StatusCode::FORBIDDEN,
        "{name}: deny"
    );
    let anonymous = proxy.client(true);
    assert_eq!(
        status("/public/x", &anonymous).await,
        StatusCode::OK,
        "{name}: bypass"
    );

    // 5. An API call without a session: a 401 it can act on, not a redirect.
    let res = anonymous
        .get(proxy.app("/api/items"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{name}: API call");

    // 6. Logout ends access on the next request.
    let res = browser
        .post(proxy.auth("/api/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT, "{name}: logout");
    let res = browser
        .get(&rd)
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "{name}: after logout");
    assert!(app
        .state
        .sessions
        .store()
        .list_all()
        .await
        .unwrap()
        .is_empty());
}

/// Gives a TOTP code on the second-factor step the browser is at (`step`, the form) and
/// follows on: back at `rd`, the protected content.
async fn give_code(
    proxy: &Proxy,
    app: &TestApp,
    secret: &[u8],
    rd: &str,
    browser: &reqwest::Client,
    step: reqwest::Response,
) {
    use crate::second_factor_step::{hidden, next_code};
    let name = proxy.name;
    assert_eq!(step.status(), StatusCode::OK, "{name}: the step's form");
    let form = step.text().await.unwrap();
    assert_eq!(hidden(&form, "rd"), rd, "{name}: rd kept");
    let res = browser
        .post(proxy.auth("/login/2fa"))
        .header("accept", "text/html")
        .form(&[
            ("code", next_code(app, secret).as_str()),
            ("kind", "totp"),
            ("rd", hidden(&form, "rd").as_str()),
            ("csrf_token", hidden(&form, "csrf_token").as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.url().as_str(), rd, "{name}: back at rd");
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{name}: the app after the code"
    );
    let seen = json(res).await;
    assert_eq!(seen["remote_user"], "zoe", "{name}: {seen}");
    assert!(
        !seen["cookie"].as_str().unwrap().contains("sessiond="),
        "{name}: {seen}"
    );
}

/// A `two_factor` rule through the proxy: a one-factor session navigating to it lands on the
/// second-factor step, gives a TOTP code and is back at the app with the content; so does a
/// browser that starts without a session (login form → step → app); API calls get `401`.
async fn walk_two_factor(proxy: &Proxy, app: &TestApp) {
    use crate::second_factor_step::{enrol_totp, hidden};
    let name = proxy.name;
    let html = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8";
    app.add_user("zoe").await;
    let (secret, _) = enrol_totp(app, "zoe").await;
    let rd = proxy.app("/vault/page?x=1");
    let rd_enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();

    // 1. A one-factor session (a password login through the JSON API) navigates to the rule.
    let browser = proxy.following_client();
    let res = browser
        .post(proxy.auth("/api/login"))
        .json(&serde_json::json!({ "username": "zoe", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{name}: API login");
    let res = browser
        .get(proxy.app("/page"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{name}: authenticated with one factor"
    );
    let step = browser
        .get(&rd)
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(
        step.url().as_str(),
        proxy.auth(&format!("/login/2fa?rd={rd_enc}")),
        "{name}: sent to the second-factor step"
    );
    give_code(proxy, app, &secret, &rd, &browser, step).await;
    // Raised: the rule lets it through from now on, API calls too.
    let res = browser
        .get(proxy.app("/vault/api"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{name}: raised API call");

    // 2. No session yet: login form, then the step, then the app.
    let browser = proxy.following_client();
    let login = browser
        .get(&rd)
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.url().as_str(),
        proxy.auth(&format!("/login?rd={rd_enc}")),
        "{name}"
    );
    let form = login.text().await.unwrap();
    let step = browser
        .post(proxy.auth("/login"))
        .header("accept", html)
        .form(&[
            ("username", "zoe"),
            ("password", PASSWORD),
            ("csrf_token", &csrf_from(&form)),
            ("rd", &hidden(&form, "rd")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        step.url().as_str(),
        proxy.auth(&format!("/login/2fa?rd={rd_enc}")),
        "{name}: from the password to the step"
    );
    give_code(proxy, app, &secret, &rd, &browser, step).await;

    // 3. An API call of a one-factor session: 401, no redirect.
    let api = proxy.client(true);
    let res = api
        .post(proxy.auth("/api/login"))
        .json(&serde_json::json!({ "username": "zoe", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = api
        .get(proxy.app("/vault/items"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{name}: API call");
    assert!(res.headers().get("location").is_none(), "{name}");
}

async fn run(proxy_name: &'static str, two_factor: bool) {
    if !installed(proxy_name) {
        return;
    }
    let upstream = echo_upstream().await;
    // The proxy's port is in sessiond's public URL, and sessiond's in the proxy's config.
    let port = spare_port();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_full(
        dir,
        &RULES.replace("{proxy}", &port.to_string()),
        Overrides::default(),
    )
    .await;
    app.add_user("nia").await;
    let sessiond: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let backend = Backend::Upstream(upstream);
    let proxy = match proxy_name {
        "nginx" => start_nginx(port, sessiond, &backend),
        _ => start_caddy(port, sessiond, &backend),
    };
    proxy.wait_up().await;
    if two_factor {
        walk_two_factor(&proxy, &app).await;
    } else {
        walk(&proxy, &app).await;
    }
}

#[tokio::test]
async fn nginx_auth_request_protects_an_app() {
    run("nginx", false).await;
}

#[tokio::test]
async fn caddy_forward_auth_protects_an_app() {
    run("caddy", false).await;
}

#[tokio::test]
async fn nginx_two_factor_rule_goes_through_the_second_factor_step() {
    run("nginx", true).await;
}

#[tokio::test]
async fn caddy_two_factor_rule_goes_through_the_second_factor_step() {
    run("caddy", true).await;
}
