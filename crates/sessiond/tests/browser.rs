//! End-to-end tests in a real browser: headless Chromium, driven through chromedriver with the
//! W3C WebDriver HTTP protocol, logs in through the HTML form, moves between pages and logs out
//! against a `sessiond serve` child process.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them each test prints `SKIP: chromium/chromedriver not installed`
//! and passes, unless `SESSIOND_REQUIRE_SERVICES=1` is set, in which case it fails.
//!
//! Run with `cargo test -p sessiond --test browser`.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const ADMIN_PASSWORD: &str = "browser-test-admin-password";
const SESSION_COOKIE: &str = "__Host-sessiond";

/// How long a process gets to come up (server, chromedriver).
const STARTUP: Duration = Duration::from_secs(30);
/// How long the browser gets to reach a page or state.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

#[tokio::test]
async fn login_browse_and_logout_in_headless_chromium() {
    let Some(env) = Harness::start().await else {
        return;
    };
    let browser = env.browser("profile").await;

    // Logged out, the account page sends the browser to the login form.
    browser.goto("/").await;
    browser.wait_for_path("/login").await;

    // A wrong password shows the form again, still on /login, and creates no session.
    browser
        .fill_login_form("admin", "not-the-admin-password", false)
        .await;
    browser.wait_for_path("/login").await;
    for selector in ["#username", "#password", "#login-submit"] {
        browser.find(selector).await;
    }
    assert!(
        browser.try_find("#whoami").await.is_none(),
        "a wrong password must not sign in\n{}",
        browser.context().await
    );
    assert_eq!(
        browser.cookie(SESSION_COOKIE).await,
        None,
        "after a failed login"
    );

    // The right password lands on the account page.
    browser
        .fill_login_form("admin", ADMIN_PASSWORD, false)
        .await;
    browser.wait_for_path("/").await;
    assert_eq!(browser.whoami().await, "admin");
    let text = browser.body_text().await;
    assert!(text.contains("Signed in as"), "account page text: {text}");

    // The browser stored the cookie with the promised attributes (WebDriver sees HttpOnly
    // cookies), and page scripts cannot read it.
    let cookie = browser
        .cookie(SESSION_COOKIE)
        .await
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie in the browser after logging in"));
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["path"], "/", "{cookie}");
    assert_eq!(cookie["sameSite"], "Lax", "{cookie}");
    let script_cookies = browser.execute("return document.cookie;", json!([])).await;
    let script_cookies = script_cookies.as_str().unwrap_or_default();
    assert!(
        !script_cookies.contains("sessiond"),
        "document.cookie exposes the session cookie: {script_cookies:?}"
    );

    // Other pages see the same session.
    browser.goto("/api/session").await;
    let text = browser.body_text().await;
    let session: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("/api/session did not show JSON ({e}): {text}"));
    assert_eq!(session["user"]["username"], "admin", "/api/session: {text}");
    browser.goto("/").await;
    browser.wait_for_path("/").await;
    assert_eq!(browser.whoami().await, "admin");

    // Logging out goes back to the login form and forgets the session.
    let logout = browser.find("#logout-submit").await;
    browser.click_and_wait_for_load(&logout).await;
    browser.wait_for_path("/login").await;
    assert_eq!(
        browser.cookie(SESSION_COOKIE).await,
        None,
        "after logging out"
    );
    browser.goto("/").await;
    browser.wait_for_path("/login").await;

    browser.quit().await;
}

#[tokio::test]
async fn remember_me_survives_a_browser_restart() {
    let Some(env) = Harness::start().await else {
        return;
    };

    // With "remember me" the cookie is persistent and outlives the browser.
    let browser = env.browser("remembered").await;
    browser.login("admin", ADMIN_PASSWORD, true).await;
    let cookie = browser
        .cookie(SESSION_COOKIE)
        .await
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie after logging in"));
    assert!(
        cookie.get("expiry").is_some(),
        "a remembered login needs a persistent cookie: {cookie}"
    );
    browser.quit().await;
    let browser = env.browser("remembered").await;
    browser.goto("/").await;
    browser.wait_for_path("/").await;
    assert_eq!(browser.whoami().await, "admin", "after a browser restart");
    browser.quit().await;

    // Without it the cookie lives only as long as the browser.
    let browser = env.browser("forgotten").await;
    browser.login("admin", ADMIN_PASSWORD, false).await;
    let cookie = browser
        .cookie(SESSION_COOKIE)
        .await
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie after logging in"));
    assert!(
        cookie.get("expiry").is_none(),
        "a login without \"remember me\" needs a browser-session cookie: {cookie}"
    );
    browser.quit().await;
    let browser = env.browser("forgotten").await;
    browser.goto("/").await;
    browser.wait_for_path("/login").await;
    browser.quit().await;
}

/// The current TOTP code of `secret` by the wall clock (the server's, too: it runs as a child
/// process), waiting out the last seconds of a step so the code cannot change on its way.
async fn current_totp(secret: &[u8]) -> String {
    use sessiond_axum::auth::{totp_code, TOTP_STEP_SECS};
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let left = TOTP_STEP_SECS - now().rem_euclid(TOTP_STEP_SECS);
    if left < 4 {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
    totp_code(secret, now().div_euclid(TOTP_STEP_SECS))
}

#[tokio::test]
async fn enrol_totp_from_the_account_page_then_log_in_again() {
    let Some(env) = Harness::start().await else {
        return;
    };
    let browser = env.browser("totp").await;
    browser.login("admin", ADMIN_PASSWORD, false).await;
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password only");

    // The password again, then the page shows the key and its QR code.
    let password = browser.find("#totp-password").await;
    browser.send_keys(&password, ADMIN_PASSWORD).await;
    let setup = browser.find("#totp-setup").await;
    browser.click_and_wait_for_load(&setup).await;
    browser.find("#totp-qr svg").await;
    let shown = browser.find("#totp-secret").await;
    let secret_b32 = browser.text(&shown).await;
    let secret = base32::decode(
        base32::Alphabet::Rfc4648 { padding: false },
        secret_b32.trim(),
    )
    .unwrap_or_else(|| panic!("the page shows no base32 key: {secret_b32:?}"));

    // A code from "the app" turns it on; the recovery codes are shown once.
    let code = current_totp(&secret).await;
    let input = browser.find("#totp-code").await;
    browser.send_keys(&input, &code).await;
    let confirm = browser.find("#totp-confirm").await;
    browser.click_and_wait_for_load(&confirm).await;
    let codes = browser
        .execute(
            "return document.querySelectorAll('#recovery-codes li').length;",
            json!([]),
        )
        .await;
    assert_eq!(codes, 10, "{}", browser.context().await);
    let recovery = browser
        .execute(
            "return document.querySelector('#recovery-codes li').textContent.trim();",
            json!([]),
        )
        .await;
    let recovery = recovery.as_str().expect("a recovery code").to_owned();
    let done = browser.find("#codes-done").await;
    browser.click_and_wait_for_load(&done).await;
    browser.wait_for_path("/").await;
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password and second factor");
    let status = browser.find("#totp-status").await;
    assert_eq!(browser.text(&status).await, "on");

    // Log out, log in with the password: one factor, and the portal asks for the second.
    let logout = browser.find("#logout-submit").await;
    browser.click_and_wait_for_load(&logout).await;
    browser.wait_for_path("/login").await;
    browser.goto("/login").await;
    browser
        .fill_login_form("admin", ADMIN_PASSWORD, false)
        .await;
    browser.wait_for_path("/login/2fa").await;
    // /admin needs the second factor: a one-factor session is sent to the step.
    browser.goto("/admin").await;
    browser.wait_for_path("/login/2fa").await;
    // A recovery code from the list shown at enrolment (the TOTP code of this step was spent
    // by the confirmation) raises the session, and the browser lands on /admin.
    let field = browser.find("#recovery-code").await;
    browser.send_keys(&field, &recovery).await;
    let submit = browser.find("#recovery-submit").await;
    browser.click_and_wait_for_load(&submit).await;
    browser.wait_for_path("/admin").await;
    browser.goto("/").await;
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password and second factor");
    browser.quit().await;
}

/// Passkeys in the server's own pages, with WebDriver's virtual authenticator (a CTAP2
/// authenticator that verifies its user): added on the account page, then the second step of a
/// password login on `/login/2fa`, then a login with the passkey alone from `/login`.
#[tokio::test]
async fn a_passkey_from_the_account_page_signs_in_with_and_without_the_password() {
    let Some(env) = Harness::start_on("localhost").await else {
        return;
    };
    let browser = env.browser("passkey").await;
    browser.goto("/login").await;
    browser
        .command(
            Method::POST,
            "/webauthn/authenticator",
            Some(&json!({
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            })),
        )
        .await;
    browser.login("admin", ADMIN_PASSWORD, false).await;
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password only");

    // Added on the account page: the session is raised (the authenticator verified the
    // user) and the passkey is listed under its name.
    let name = browser.find("#passkey-name").await;
    browser.send_keys(&name, "laptop").await;
    let add = browser.find("#passkey-add").await;
    browser.click(&add).await;
    wait_for_text(&browser, "#passkey-list", "laptop").await;
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password and second factor");

    // A password login now asks for the second factor; the passkey gives it, and the
    // browser lands where it was going.
    let logout = browser.find("#logout-submit").await;
    browser.click_and_wait_for_load(&logout).await;
    browser.goto("/login?rd=%2Fadmin").await;
    browser
        .fill_login_form("admin", ADMIN_PASSWORD, false)
        .await;
    browser.wait_for_path("/login/2fa").await;
    let second = browser.find("#passkey-second").await;
    browser.click(&second).await;
    browser.wait_for_path("/admin").await;

    // Logged out, the passkey alone signs in, at two factors.
    browser.goto("/").await;
    let logout = browser.find("#logout-submit").await;
    browser.click_and_wait_for_load(&logout).await;
    browser.wait_for_path("/login").await;
    let alone = browser.find("#passkey-login").await;
    browser.click(&alone).await;
    browser.wait_for_path("/").await;
    assert_eq!(browser.whoami().await, "admin");
    let level = browser.find("#level").await;
    assert_eq!(browser.text(&level).await, "password and second factor");
    browser.quit().await;
}

/// Waits until the element matching `selector` shows `text`.
async fn wait_for_text(browser: &Browser, selector: &str, text: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(element) = browser.try_find(selector).await {
            if browser.text(&element).await.contains(text) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{selector} did not show {text:?} within {WAIT:?}\n{}",
            browser.context().await
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A running server and chromedriver, plus a scratch directory for the database, logs and
/// browser profiles. Fields drop in order: browsers go first, the directory last.
#[derive(Debug)]
struct Harness {
    driver: ChromeDriver,
    server: Server,
    scratch: TempDir,
}

impl Harness {
    /// Starts everything, or returns `None` (after saying so) when the browser is not
    /// installed and `SESSIOND_REQUIRE_SERVICES=1` is not set.
    async fn start() -> Option<Self> {
        Self::start_on("127.0.0.1").await
    }

    /// The server reached (and named in its public URL) as `host` on its loopback port:
    /// `localhost` for passkeys, whose relying party cannot be an IP address.
    async fn start_on(host: &str) -> Option<Self> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            assert!(
                std::env::var("SESSIOND_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "SESSIOND_REQUIRE_SERVICES=1 but {} not installed \
                 (apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            eprintln!("SKIP: chromium/chromedriver not installed");
            return None;
        }
        let scratch = TempDir::new().expect("create a scratch directory");
        let server = Server::start(scratch.path(), host).await;
        let driver = ChromeDriver::start(scratch.path()).await;
        Some(Self {
            driver,
            server,
            scratch,
        })
    }

    /// A new browser on the profile directory `profile`: the same name again after `quit`
    /// is a browser restart that keeps the cookie jar.
    async fn browser(&self, profile: &str) -> Browser {
        let dir = self.scratch.path().join("profiles").join(profile);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create profile {}: {e}", dir.display()));
        Browser::start(&self.driver.url, &self.server.base, &dir).await
    }
}

/// `sessiond serve` on a free port with a fresh SQLite database.
#[derive(Debug)]
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    async fn start(dir: &Path, host: &str) -> Self {
        let addr = free_addr();
        let base = format!("http://{host}:{}", addr.port());
        let log = dir.join("sessiond.log");
        let output = File::create(&log).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--database")
            .arg(format!("sqlite://{}/sessiond.db", dir.display()))
            .env("SESSIOND_PUBLIC_URL", &base)
            .env("SESSIOND_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the server log handle"))
            .stderr(output)
            .spawn()
            .expect("start sessiond");
        let mut server = Self { child, base, log };
        server.wait_until_healthy().await;
        server
    }

    async fn wait_until_healthy(&mut self) {
        let http = http_client(Duration::from_secs(2));
        let url = format!("{}/healthz", self.base);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sessiond exited early ({status})\n{}", log_tail(&self.log));
            }
            if let Ok(resp) = http.get(&url).send().await {
                if resp.status() == reqwest::StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sessiond did not answer GET {url} with 200 within {STARTUP:?}\n{}",
                log_tail(&self.log)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sessiond output ---\n{}", log_tail(&self.log));
        }
    }
}

/// chromedriver on a free port.
#[derive(Debug)]
struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
    url: String,
    log: PathBuf,
}

impl ChromeDriver {
    async fn start(dir: &Path) -> Self {
        let addr = free_addr();
        let log = dir.join("chromedriver.log");
        let output = File::create(&log).expect("create the chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(
                output
                    .try_clone()
                    .expect("clone the chromedriver log handle"),
            )
            .stderr(output)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Self {
            child,
            addr,
            url: format!("http://{addr}"),
            log,
        };
        driver.wait_until_ready().await;
        driver
    }

    async fn wait_until_ready(&mut self) {
        let http = http_client(Duration::from_secs(2));
        let status_url = format!("{}/status", self.url);
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited early ({status})\n{}",
                    log_tail(&self.log)
                );
            }
            if let Ok(status) = webdriver(&http, Method::GET, &status_url, None).await {
                if status["ready"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {STARTUP:?}\n{}",
                log_tail(&self.log)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // A failed test never reaches `Browser::quit`, and killing chromedriver outright would
        // orphan its Chromium. chromedriver's own `/shutdown` closes every browser first.
        let _ = shutdown_chromedriver(self.addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- chromedriver output ---\n{}", log_tail(&self.log));
        }
    }
}

/// `GET /shutdown` by hand: `Drop` cannot await the async client.
fn shutdown_chromedriver(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(())
}

/// One WebDriver session: a browser window on `base` (the server's URL).
#[derive(Debug)]
struct Browser {
    http: reqwest::Client,
    /// `<driver>/session/<id>`, the prefix of every command.
    session: String,
    base: String,
}

/// A WebDriver element reference.
#[derive(Debug)]
struct Element(String);

/// The key W3C WebDriver uses for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start(driver: &str, base: &str, profile: &Path) -> Self {
        let http = http_client(Duration::from_secs(60));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 10_000 },
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-background-networking",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-component-update",
                            "--disable-sync",
                            "--no-proxy-server",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let created = webdriver(
            &http,
            Method::POST,
            &format!("{driver}/session"),
            Some(&capabilities),
        )
        .await
        .unwrap_or_else(|e| panic!("could not start Chromium: {e}"));
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session answer has no sessionId: {created}"));
        Self {
            session: format!("{driver}/session/{id}"),
            http,
            base: base.to_owned(),
        }
    }

    /// Closes the browser (cleanly, so it writes its cookie jar to the profile).
    async fn quit(self) {
        self.command(Method::DELETE, "", None).await;
    }

    async fn try_command(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.session);
        webdriver(&self.http, method, &url, body).await
    }

    async fn command(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        match self.try_command(method, path, body).await {
            Ok(value) => value,
            Err(e) => panic!("{e}\n{}", self.context().await),
        }
    }

    /// Opens `path` on the server and waits for the page to load.
    async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.command(Method::POST, "/url", Some(&json!({ "url": url })))
            .await;
    }

    async fn try_current_url(&self) -> Result<String, WebDriverError> {
        let url = self.try_command(Method::GET, "/url", None).await?;
        Ok(url.as_str().unwrap_or_default().to_owned())
    }

    async fn try_execute(&self, script: &str, args: Value) -> Result<Value, WebDriverError> {
        let body = json!({ "script": script, "args": args });
        self.try_command(Method::POST, "/execute/sync", Some(&body))
            .await
    }

    async fn execute(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        self.command(Method::POST, "/execute/sync", Some(&body))
            .await
    }

    /// The element matching CSS `selector`; fails the test if there is none.
    async fn find(&self, selector: &str) -> Element {
        match self.try_find(selector).await {
            Some(element) => element,
            None => panic!("no element matches {selector}\n{}", self.context().await),
        }
    }

    async fn try_find(&self, selector: &str) -> Option<Element> {
        let body = json!({ "using": "css selector", "value": selector });
        match self
            .try_command(Method::POST, "/element", Some(&body))
            .await
        {
            Ok(found) => match found[ELEMENT_KEY].as_str() {
                Some(id) => Some(Element(id.to_owned())),
                None => panic!("find {selector}: no element reference in {found}"),
            },
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("{e}\n{}", self.context().await),
        }
    }

    async fn click(&self, element: &Element) {
        let path = format!("/element/{}/click", element.0);
        self.command(Method::POST, &path, Some(&json!({}))).await;
    }

    async fn clear(&self, element: &Element) {
        let path = format!("/element/{}/clear", element.0);
        self.command(Method::POST, &path, Some(&json!({}))).await;
    }

    async fn send_keys(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.command(Method::POST, &path, Some(&json!({ "text": text })))
            .await;
    }

    async fn text(&self, element: &Element) -> String {
        let path = format!("/element/{}/text", element.0);
        let text = self.command(Method::GET, &path, None).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    async fn is_selected(&self, element: &Element) -> bool {
        let path = format!("/element/{}/selected", element.0);
        self.command(Method::GET, &path, None).await == true
    }

    /// The browser's cookie `name` for the current page, HttpOnly or not, as WebDriver
    /// describes it (`name`, `value`, `path`, `secure`, `httpOnly`, `sameSite`, `expiry`).
    async fn cookie(&self, name: &str) -> Option<Value> {
        match self
            .try_command(Method::GET, &format!("/cookie/{name}"), None)
            .await
        {
            Ok(cookie) => Some(cookie),
            Err(e) if e.error == "no such cookie" => None,
            Err(e) => panic!("{e}\n{}", self.context().await),
        }
    }

    /// The text the page shows (for JSON, the JSON document).
    async fn body_text(&self) -> String {
        let text = self
            .execute(
                "return document.body ? document.body.innerText : '';",
                json!([]),
            )
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks `element` and waits until a new document has replaced the current one, even if
    /// it has the same URL (a form posted back to itself).
    async fn click_and_wait_for_load(&self, element: &Element) {
        self.execute("window.__sessiondTestOldPage = true;", json!([]))
            .await;
        self.click(element).await;
        let deadline = Instant::now() + WAIT;
        loop {
            let loaded = self
                .try_execute(
                    "return window.__sessiondTestOldPage !== true \
                     && document.readyState === 'complete';",
                    json!([]),
                )
                .await;
            // Errors here mean the page is being replaced right now.
            if matches!(loaded, Ok(Value::Bool(true))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no new page within {WAIT:?} of clicking\n{}",
                self.context().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the browser shows the server's `path` (query and fragment ignored), loaded.
    async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(url) = self.try_current_url().await {
                if self.path_of(&url) == path {
                    let state = self
                        .try_execute("return document.readyState;", json!([]))
                        .await;
                    if matches!(state, Ok(Value::String(s)) if s == "complete") {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the browser did not reach {path} within {WAIT:?}\n{}",
                self.context().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The path of `url` if it is on the server, else the whole URL.
    fn path_of<'a>(&self, url: &'a str) -> &'a str {
        match url.strip_prefix(self.base.as_str()) {
            Some(rest) if rest.starts_with('/') => rest.split(['?', '#']).next().unwrap_or(rest),
            _ => url,
        }
    }

    /// Fills in the login form on the current page and submits it.
    async fn fill_login_form(&self, username: &str, password: &str, remember: bool) {
        for (selector, value) in [("#username", username), ("#password", password)] {
            let input = self.find(selector).await;
            self.clear(&input).await;
            self.send_keys(&input, value).await;
        }
        let checkbox = self.find("#remember").await;
        if self.is_selected(&checkbox).await != remember {
            self.click(&checkbox).await;
        }
        let submit = self.find("#login-submit").await;
        self.click_and_wait_for_load(&submit).await;
    }

    /// Logs in through the form and waits for the account page.
    async fn login(&self, username: &str, password: &str, remember: bool) {
        self.goto("/login").await;
        self.fill_login_form(username, password, remember).await;
        self.wait_for_path("/").await;
    }

    /// Who the account page says is signed in.
    async fn whoami(&self) -> String {
        let element = self.find("#whoami").await;
        self.text(&element).await.trim().to_owned()
    }

    /// Where the browser is and what it shows, for failure messages.
    async fn context(&self) -> String {
        let url = match self.try_current_url().await {
            Ok(url) => url,
            Err(e) => format!("? ({e})"),
        };
        let source = match self.try_command(Method::GET, "/source", None).await {
            Ok(source) => excerpt(source.as_str().unwrap_or_default(), 3000),
            Err(e) => format!("? ({e})"),
        };
        format!("browser at {url}, showing:\n{source}")
    }
}

/// A WebDriver command that failed: a WebDriver error, an HTTP failure or a garbled answer.
#[derive(Debug)]
struct WebDriverError {
    request: String,
    /// The WebDriver error code such as `no such element`, or `transport` for HTTP trouble.
    error: String,
    message: String,
}

impl fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebDriver {} failed: {}: {}",
            self.request, self.error, self.message
        )
    }
}

/// Sends one WebDriver command and unwraps the `value` of its answer.
async fn webdriver(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, WebDriverError> {
    let request = format!("{method} {url}");
    let transport = |message: String| WebDriverError {
        request: request.clone(),
        error: "transport".to_owned(),
        message,
    };
    let mut builder = http.request(method.clone(), url);
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|e| transport(e.to_string()))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| transport(e.to_string()))?;
    let mut answer: Value = serde_json::from_str(&text).map_err(|e| {
        transport(format!(
            "HTTP {status}, not JSON ({e}): {}",
            excerpt(&text, 500)
        ))
    })?;
    let value = answer.get_mut("value").map(Value::take).unwrap_or_default();
    if status.is_success() {
        return Ok(value);
    }
    Err(WebDriverError {
        request,
        error: value["error"]
            .as_str()
            .unwrap_or("unknown error")
            .to_owned(),
        message: value["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {status}: {value}"), str::to_owned),
    })
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .expect("build an HTTP client")
}

/// A local address nobody is listening on (the OS picks the port; we let go of it again).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port on 127.0.0.1")
}

/// The end of a child process's log, for failure messages.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let chars = text.chars().count();
            let tail: String = text.chars().skip(chars.saturating_sub(4000)).collect();
            format!("({}) {tail}", path.display())
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// At most `limit` characters of `text`.
fn excerpt(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}… [truncated]", &text[..end]),
        None => text.to_owned(),
    }
}
