//! The black-box contract both example apps keep, driven over HTTP against the real binary.
//!
//! Included with `#[path]` by `examples/example-app/tests/http.rs` and
//! `examples/own-users/tests/http.rs` (and, for starting the app, by the browser test): one
//! copy of the harness and of the flow, and [`contract_tests!`] declares one test per
//! behaviour in each crate.
//!
//! Every test starts the app's binary in a fresh temporary working directory (so the SQLite
//! file lands there) on a free loopback port, with `EXAMPLE_PASSWORD` set or removed, and
//! talks to it as a browser would: a cookie jar, no automatic redirects (each 303 is checked),
//! `Sec-Fetch-*` headers on navigations and fetches, `Origin` on form posts, and the hidden
//! inputs of each form (`next`, a `csrf_token` if the app renders one) read from the page and
//! posted back.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code, unused_macros)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use url::Url;

/// `EXAMPLE_PASSWORD` for the apps the tests start (the user is always `demo`).
pub const PASSWORD: &str = "example test password 1";
pub const USER: &str = "demo";
/// How long an app gets to answer its first `GET /`.
const STARTUP: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Which example is under test.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// The binary (`env!("CARGO_BIN_EXE_<name>")`).
    pub bin: &'static str,
    /// The SQLite file the app keeps in its working directory.
    pub db_file: &'static str,
}

/// Declares the contract's tests for the app of `$spec` (a `const` [`Spec`]); the including
/// file declares this module `#[macro_use]`.
macro_rules! contract_tests {
    ($spec:expr) => {
        #[tokio::test]
        async fn anonymous_visitors_are_sent_to_the_login_form_or_refused() {
            app_flow::anonymous_visitors_are_sent_to_the_login_form_or_refused(&$spec).await;
        }

        #[tokio::test]
        async fn a_wrong_password_starts_no_session() {
            app_flow::a_wrong_password_starts_no_session(&$spec).await;
        }

        #[tokio::test]
        async fn login_goes_to_next_and_the_session_counts_visits() {
            app_flow::login_goes_to_next_and_the_session_counts_visits(&$spec).await;
        }

        #[tokio::test]
        async fn hostile_next_values_never_leave_the_app() {
            app_flow::hostile_next_values_never_leave_the_app(&$spec).await;
        }

        #[tokio::test]
        async fn cross_site_form_posts_are_refused() {
            app_flow::cross_site_form_posts_are_refused(&$spec).await;
        }

        #[tokio::test]
        async fn logout_ends_the_session_for_good() {
            app_flow::logout_ends_the_session_for_good(&$spec).await;
        }

        #[tokio::test]
        async fn a_restart_keeps_the_user_and_the_sessions() {
            app_flow::a_restart_keeps_the_user_and_the_sessions(&$spec).await;
        }

        #[tokio::test]
        async fn without_example_password_a_random_one_is_printed_once() {
            app_flow::without_example_password_a_random_one_is_printed_once(&$spec).await;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------------------------

pub async fn anonymous_visitors_are_sent_to_the_login_form_or_refused(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    assert!(
        dir.path().join(spec.db_file).is_file(),
        "no {} in the working directory after the start\n{}",
        spec.db_file,
        app.log()
    );
    let browser = Browser::new(&app);

    let home = browser.navigate("/").await;
    assert_eq!(home.status(), StatusCode::OK, "GET / is public");

    // A page navigation goes to the login form, which will bring the visitor back.
    let private = browser.navigate("/private").await;
    browser.assert_sent_to_login(&private, "/login?next=%2Fprivate");
    // The same URL fetched by a script gets the API's answer, never a redirect to HTML.
    let private = browser.fetch("/private").await;
    assert_unauthenticated(private).await;
    assert_unauthenticated(browser.fetch("/api/me").await).await;

    // The login form, as the redirect leaves it: username, password and the `next` to go back
    // to, carried in a hidden field.
    let (_, form) = browser.login_form(Some("/private")).await;
    for name in ["username", "password"] {
        assert!(
            form.input(name).is_some(),
            "the login form has no {name:?} field: {form:?}"
        );
    }
    assert_eq!(
        form.input("password").map(|i| i.kind.as_str()),
        Some("password"),
        "the password field must be type=password: {form:?}"
    );
    assert_eq!(
        form.hidden("next"),
        Some("/private"),
        "the login form carries `next` from the query string: {form:?}"
    );
    // Cookies may have been set (a pre-login CSRF token), but none of them is a session.
    assert_unauthenticated(browser.fetch("/api/me").await).await;
}

pub async fn a_wrong_password_starts_no_session(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let browser = Browser::new(&app);
    for (user, password) in [
        (USER, "not the password"),
        (USER, ""),
        (USER, &PASSWORD.to_uppercase()),
        ("nobody", PASSWORD),
        ("Demo", "not the password"),
    ] {
        let res = browser.log_in(user, password, Some("/private")).await;
        if res.status() == StatusCode::SEE_OTHER {
            let to = browser.location(&res);
            assert_ne!(
                to.path(),
                "/private",
                "{user:?}/{password:?} must not be sent on to the private page"
            );
        } else {
            assert!(
                !res.status().is_server_error(),
                "{user:?}/{password:?}: a wrong password is the user's error, not the server's: {}",
                res.status()
            );
        }
        assert_unauthenticated(browser.fetch("/api/me").await).await;
        let private = browser.navigate("/private").await;
        browser.assert_sent_to_login(&private, "/login?next=%2Fprivate");
    }
}

pub async fn login_goes_to_next_and_the_session_counts_visits(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let browser = Browser::new(&app);

    let res = browser.log_in(USER, PASSWORD, Some("/private")).await;
    browser.assert_see_other(&res, "/private");
    assert!(browser.cookies().is_some(), "a login sets a session cookie");

    // The counter lives in the session's data: one more on every request.
    for expected in 1..=3 {
        let page = browser.private_page().await;
        assert!(
            text_of(&page).contains(USER),
            "the private page names the user: {page}"
        );
        assert_eq!(visits(&page), Some(expected), "visit {expected}: {page}");
    }
    let me = browser.fetch("/api/me").await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_json(&me);
    let body: Value = me.json().await.expect("/api/me answers JSON");
    assert_eq!(body, serde_json::json!({ "username": USER }));

    // Without `next` the login lands on /private; with a local path, on that path.
    let other = Browser::new(&app);
    let res = other.log_in(USER, PASSWORD, None).await;
    other.assert_see_other(&res, "/private");
    let res = other.log_in(USER, PASSWORD, Some("/api/me")).await;
    other.assert_see_other(&res, "/api/me");
    // Each browser has its own session and its own counter.
    assert_eq!(visits(&other.private_page().await), Some(1));
    assert_eq!(visits(&browser.private_page().await), Some(4));
}

pub async fn hostile_next_values_never_leave_the_app(spec: &Spec) {
    let Some(payloads) = open_redirect_payloads() else {
        return;
    };
    assert_eq!(payloads.len(), 559, "shared/data/openredirects.txt");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let payloads = Arc::new(payloads);
    // Two logins at a time (each is a real password hash), each worker its own browser.
    const WORKERS: usize = 2;
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let browser = Browser::new(&app);
        let payloads = Arc::clone(&payloads);
        tasks.push(tokio::spawn(async move {
            let mut kept = 0;
            for (i, p) in payloads
                .iter()
                .enumerate()
                .filter(|(i, _)| i % WORKERS == worker)
            {
                // What a victim's browser does with a crafted link: the login page with the
                // payload in its query string, then the form as the page renders it.
                let page = browser.login_page(Some(p)).await;
                if page.status == StatusCode::OK {
                    if p.contains(['<', '>', '"', '\'']) {
                        assert!(
                            !page.body.contains(p.as_str()),
                            "payload {i} {p:?} is rendered raw in the login page"
                        );
                    }
                    let form = login_form_of(&page);
                    let res = browser
                        .submit(
                            &page.url,
                            &form,
                            &[("username", USER), ("password", PASSWORD)],
                        )
                        .await;
                    kept += check_lands_on_the_app(&browser, &res, i, p, "the form");
                }
                // And the field posted as an attacker would write it, whatever the form kept.
                let (url, form) = browser.login_form(None).await;
                let res = browser
                    .submit(
                        &url,
                        &form,
                        &[("username", USER), ("password", PASSWORD), ("next", p)],
                    )
                    .await;
                kept += check_lands_on_the_app(&browser, &res, i, p, "a posted `next`");
            }
            kept
        }));
    }
    let mut kept = 0;
    for t in tasks {
        kept += t.await.expect("a worker of the payload test");
    }
    // Some payloads are plain local paths (`/%2e%2e/...` and the like), and a login always
    // lands somewhere: this only shows the loop ran.
    assert!(kept > 0, "no login succeeded");
}

/// `res` is a login's 303 to the app's own origin; returns 1.
fn check_lands_on_the_app(
    browser: &Browser,
    res: &Response,
    i: usize,
    p: &str,
    how: &str,
) -> usize {
    assert_eq!(
        res.status(),
        StatusCode::SEE_OTHER,
        "payload {i} {p:?} ({how}): a correct login answers 303"
    );
    let raw = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("payload {i} {p:?} ({how}): a 303 without Location"))
        .to_owned();
    // A Location no URL parser can read is no safe redirect either: browsers differ on it.
    let landed = res.url().join(&raw).unwrap_or_else(|e| {
        panic!("payload {i} {p:?} ({how}): Location {raw:?} does not parse as a URL ({e})")
    });
    assert_eq!(
        landed.origin(),
        browser.base.origin(),
        "payload {i} {p:?} ({how}) sends the browser to {raw:?} = {landed}"
    );
    1
}

pub async fn cross_site_form_posts_are_refused(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let browser = Browser::new(&app);
    let (url, form) = browser.login_form(Some("/private")).await;
    let fields = [("username", USER), ("password", PASSWORD)];

    // What another site's page can make a browser send: its own Origin and, in browsers with
    // Fetch Metadata, `Sec-Fetch-Site: cross-site`; each signal alone is enough to refuse.
    let hostile: [(&str, &[(&str, &str)]); 3] = [
        (
            "a cross-site form",
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
        ("a foreign Origin", &[("origin", "https://evil.example")]),
        (
            "Sec-Fetch-Site: cross-site",
            &[("sec-fetch-site", "cross-site")],
        ),
    ];
    for (what, headers) in hostile {
        let res = browser
            .submit_with(&url, &form, &fields, headers, &["origin", "sec-fetch-site"])
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "login from {what}");
        assert_unauthenticated(browser.fetch("/api/me").await).await;
    }

    // A token in the form is checked: without it the same-origin post logs no one in.
    if form.hidden("csrf_token").is_some() {
        let stripped = form.without("csrf_token");
        let res = browser.submit(&url, &stripped, &fields).await;
        assert_ne!(
            (res.status(), browser.location_path(&res)),
            (StatusCode::SEE_OTHER, Some("/private".to_owned())),
            "a login form without its csrf_token"
        );
        assert_unauthenticated(browser.fetch("/api/me").await).await;
    }

    // Logged in, another site cannot log the user out either.
    let res = browser.submit(&url, &form, &fields).await;
    browser.assert_see_other(&res, "/private");
    let (page_url, logout) = browser.logout_form().await;
    for (what, headers) in hostile {
        let res = browser
            .submit_with(
                &page_url,
                &logout,
                &[],
                headers,
                &["origin", "sec-fetch-site"],
            )
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "logout from {what}");
    }
    if logout.hidden("csrf_token").is_some() {
        let res = browser
            .submit(&page_url, &logout.without("csrf_token"), &[])
            .await;
        assert_ne!(
            browser.location_path(&res),
            Some("/".to_owned()),
            "a logout form without its csrf_token"
        );
    }
    assert_eq!(browser.me().await.as_deref(), Some(USER), "still logged in");
}

pub async fn logout_ends_the_session_for_good(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let browser = Browser::new(&app);
    let res = browser.log_in(USER, PASSWORD, Some("/private")).await;
    browser.assert_see_other(&res, "/private");
    assert_eq!(visits(&browser.private_page().await), Some(1));
    let stolen = browser.cookies().expect("a session cookie after the login");

    let (page_url, logout) = browser.logout_form().await;
    let res = browser.submit(&page_url, &logout, &[]).await;
    browser.assert_see_other(&res, "/");

    let private = browser.navigate("/private").await;
    browser.assert_sent_to_login(&private, "/login?next=%2Fprivate");
    assert_unauthenticated(browser.fetch("/api/me").await).await;

    // The cookie as it was before the logout, replayed by someone who kept a copy.
    let replay = Browser::with_cookie(&app, &stolen);
    let private = replay.navigate("/private").await;
    replay.assert_sent_to_login(&private, "/login?next=%2Fprivate");
    assert_unauthenticated(replay.fetch("/api/me").await).await;

    // A new login starts a new session, with a new counter.
    let res = browser.log_in(USER, PASSWORD, None).await;
    browser.assert_see_other(&res, "/private");
    assert_eq!(visits(&browser.private_page().await), Some(1));
}

pub async fn a_restart_keeps_the_user_and_the_sessions(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), Some(PASSWORD)).await;
    let browser = Browser::new(&app);
    let res = browser.log_in(USER, PASSWORD, None).await;
    browser.assert_see_other(&res, "/private");
    assert_eq!(visits(&browser.private_page().await), Some(1));
    assert_eq!(visits(&browser.private_page().await), Some(2));
    let cookie = browser.cookies().expect("a session cookie after the login");
    // Killed, not asked to stop: what was acknowledged must already be on disk.
    app.kill();

    // Same directory, same database; a different EXAMPLE_PASSWORD must not change the user.
    let app = App::start(spec, dir.path(), Some("another password 2")).await;
    let browser = Browser::with_cookie(&app, &cookie);
    assert_eq!(
        browser.me().await.as_deref(),
        Some(USER),
        "the session survives a restart"
    );
    // The data is saved before the answer leaves, so the kill lost none of it.
    assert_eq!(
        visits(&browser.private_page().await),
        Some(3),
        "the counter goes on after a restart"
    );
    assert_eq!(visits(&browser.private_page().await), Some(4));

    let fresh = Browser::new(&app);
    let res = fresh.log_in(USER, "another password 2", None).await;
    assert_ne!(
        fresh.location_path(&res),
        Some("/private".to_owned()),
        "the user was created again with the new EXAMPLE_PASSWORD"
    );
    assert_unauthenticated(fresh.fetch("/api/me").await).await;
    let res = fresh.log_in(USER, PASSWORD, None).await;
    fresh.assert_see_other(&res, "/private");
    assert_eq!(fresh.me().await.as_deref(), Some(USER));
}

pub async fn without_example_password_a_random_one_is_printed_once(spec: &Spec) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let app = App::start(spec, dir.path(), None).await;
    let first_log = app.log();
    let candidates = printed_passwords(&first_log);
    assert!(
        !candidates.is_empty(),
        "no password printed on a first start without EXAMPLE_PASSWORD:\n{first_log}"
    );
    // The password is the app's only output that looks like one; a few readings of the line
    // are tried (a login with a wrong one costs a throttle point, so only a few).
    let browser = Browser::new(&app);
    let mut password = None;
    for candidate in candidates.iter().take(3) {
        let res = browser.log_in(USER, candidate, None).await;
        if browser.location_path(&res).as_deref() == Some("/private") {
            password = Some(candidate.clone());
            break;
        }
    }
    let password = password.unwrap_or_else(|| {
        panic!("none of {candidates:?} logs {USER} in; the app printed:\n{first_log}")
    });
    assert!(
        password.len() >= 12,
        "a random password of {} characters is too short",
        password.len()
    );
    assert_eq!(browser.me().await.as_deref(), Some(USER));
    app.kill();

    // A second start keeps the user and does not print the password again.
    let app = App::start(spec, dir.path(), None).await;
    let second_log = app.log();
    assert!(
        !second_log.contains(&password),
        "the password is printed again on the second start:\n{second_log}"
    );
    let browser = Browser::new(&app);
    let res = browser.log_in(USER, &password, None).await;
    browser.assert_see_other(&res, "/private");

    // Another app started elsewhere gets another password.
    let elsewhere = tempfile::tempdir().expect("a scratch directory");
    let other = App::start(spec, elsewhere.path(), None).await;
    assert!(
        !other.log().contains(&password),
        "two first starts printed the same password"
    );
}

// ---------------------------------------------------------------------------------------------
// The app under test
// ---------------------------------------------------------------------------------------------

/// The app's binary running in `dir` on a free loopback port. Killed when dropped.
#[derive(Debug)]
pub struct App {
    child: Child,
    pub base: Url,
    log: PathBuf,
}

impl App {
    /// Starts the app in `dir` (its working directory) with `EXAMPLE_PASSWORD` set to
    /// `password`, or removed, and waits until `GET /` answers 200.
    pub async fn start(spec: &Spec, dir: &Path, password: Option<&str>) -> Self {
        let addr = free_addr();
        // A file per start: a restart's output is read apart from the first start's.
        let log = (1..)
            .map(|n| dir.join(format!("app-{n}.log")))
            .find(|p| !p.exists())
            .expect("a free log name");
        let output = File::create(&log).expect("create the app's log");
        let mut cmd = Command::new(spec.bin);
        cmd.arg("--listen")
            .arg(&addr)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output);
        match password {
            Some(p) => cmd.env("EXAMPLE_PASSWORD", p),
            None => cmd.env_remove("EXAMPLE_PASSWORD"),
        };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", spec.bin));
        let mut app = Self {
            child,
            base: Url::parse(&format!("http://{addr}/")).expect("a base URL"),
            log,
        };
        app.wait_until_ready().await;
        app
    }

    async fn wait_until_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the app exited before answering ({status}); its output:\n{}",
                    self.log()
                );
            }
            if let Ok(res) = http.get(self.base.clone()).send().await {
                if res.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "GET {} did not answer 200 within {STARTUP:?}; the app's output:\n{}",
                self.base,
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything the app printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `path` on the app.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a URL on the app")
    }

    /// SIGKILL, as a crash or an OOM kill would end it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the app's output ---\n{}", self.log());
        }
    }
}

/// A loopback address no one listens on right now.
pub fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address").to_string()
}

// ---------------------------------------------------------------------------------------------
// A browser, as far as HTTP goes
// ---------------------------------------------------------------------------------------------

/// A page as fetched: its final URL, status and body.
#[derive(Debug)]
pub struct Page {
    pub url: Url,
    pub status: StatusCode,
    pub body: String,
}

/// What a browser sends: a cookie jar, the headers of navigations, fetches and form posts.
/// Redirects are not followed, so each one is checked.
#[derive(Debug, Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Option<Arc<Jar>>,
    pub base: Url,
}

impl Browser {
    pub fn new(app: &App) -> Self {
        let jar = Arc::new(Jar::default());
        let http = reqwest::Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Self {
            http,
            jar: Some(jar),
            base: app.base.clone(),
        }
    }

    /// A client that sends `cookie` (a `Cookie` header value) on every request and keeps
    /// nothing it is sent: someone replaying a copied cookie.
    pub fn with_cookie(app: &App, cookie: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            HeaderValue::from_str(cookie).expect("a Cookie header value"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        Self {
            http,
            jar: None,
            base: app.base.clone(),
        }
    }

    /// The `Cookie` header this browser would send to the app, if any.
    pub fn cookies(&self) -> Option<String> {
        let jar = self.jar.as_ref()?;
        jar.cookies(&self.base)
            .and_then(|v| v.to_str().ok().map(str::to_owned))
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a URL on the app")
    }

    /// A page navigation (link, typed URL, reload).
    pub async fn navigate(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .header(
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            )
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "same-origin")
            .header("sec-fetch-dest", "document")
            .header("sec-fetch-user", "?1")
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {}", why(&e)))
    }

    /// A script's `fetch()` of JSON from the same origin.
    pub async fn fetch(&self, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .header("accept", "application/json")
            .header("sec-fetch-mode", "cors")
            .header("sec-fetch-site", "same-origin")
            .header("sec-fetch-dest", "empty")
            .send()
            .await
            .unwrap_or_else(|e| panic!("fetch {path}: {}", why(&e)))
    }

    /// `GET /login`, with `next` in the query string when given.
    pub async fn login_page(&self, next: Option<&str>) -> Page {
        let mut url = self.url("/login");
        if let Some(next) = next {
            url.query_pairs_mut().append_pair("next", next);
        }
        let res = self.navigate(url.as_str()).await;
        let status = res.status();
        let body = res.text().await.expect("the login page's body");
        Page { url, status, body }
    }

    /// The login page's form (the one with a password field) and the page's URL.
    pub async fn login_form(&self, next: Option<&str>) -> (Url, Form) {
        let page = self.login_page(next).await;
        assert_eq!(
            page.status,
            StatusCode::OK,
            "GET {}: {}",
            page.url,
            page.body
        );
        let form = login_form_of(&page);
        (page.url, form)
    }

    /// Fills the login form (as the login page renders it for `next`) and submits it.
    pub async fn log_in(&self, user: &str, password: &str, next: Option<&str>) -> Response {
        let (url, form) = self.login_form(next).await;
        self.submit(&url, &form, &[("username", user), ("password", password)])
            .await
    }

    /// The logout form, looked for on `/private` then on `/`, and the URL of its page.
    pub async fn logout_form(&self) -> (Url, Form) {
        for path in ["/private", "/"] {
            let res = self.navigate(path).await;
            let url = res.url().clone();
            let body = res.text().await.expect("a page's body");
            if let Some(form) = forms(&body).into_iter().find(|f| {
                url.join(f.action.as_deref().unwrap_or(""))
                    .is_ok_and(|a| a.path() == "/logout")
            }) {
                return (url, form);
            }
        }
        panic!("no form posting to /logout on /private or /");
    }

    /// Submits `form` from the page at `page` as a same-origin browser would: its fields as
    /// rendered (hidden ones included), `fill` set on top.
    pub async fn submit(&self, page: &Url, form: &Form, fill: &[(&str, &str)]) -> Response {
        self.submit_with(page, form, fill, &[], &[]).await
    }

    /// [`Self::submit`] with `extra` headers, after leaving out the browser's own headers
    /// named in `omit` (to forge another site's post).
    pub async fn submit_with(
        &self,
        page: &Url,
        form: &Form,
        fill: &[(&str, &str)],
        extra: &[(&str, &str)],
        omit: &[&str],
    ) -> Response {
        assert!(
            form.method.eq_ignore_ascii_case("post"),
            "a form that changes state must post: {form:?}"
        );
        // An absent or empty action posts to the page's own URL, query string included.
        let action = page
            .join(form.action.as_deref().unwrap_or(""))
            .expect("the form's action is a URL");
        let fields = form.fields(fill);
        let origin = self.base.origin().ascii_serialization();
        let mut headers: Vec<(&str, String)> = vec![
            ("origin", origin),
            ("referer", page.to_string()),
            ("sec-fetch-site", "same-origin".into()),
            ("sec-fetch-mode", "navigate".into()),
            ("sec-fetch-dest", "document".into()),
            ("sec-fetch-user", "?1".into()),
            (
                "accept",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
            ),
        ];
        headers.retain(|(name, _)| !omit.contains(name));
        let mut req = self.http.post(action.clone()).form(&fields);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        for (name, value) in extra {
            req = req.header(*name, *value);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("POST {action}: {}", why(&e)))
    }

    /// `GET /private` as a navigation, expecting the logged-in page; its body.
    pub async fn private_page(&self) -> String {
        let res = self.navigate("/private").await;
        let status = res.status();
        let location = self.location_path(&res);
        let body = res.text().await.expect("the private page's body");
        assert_eq!(
            status,
            StatusCode::OK,
            "GET /private while logged in (Location: {location:?}): {body}"
        );
        body
    }

    /// The username `/api/me` answers with, or `None` for its 401.
    pub async fn me(&self) -> Option<String> {
        let res = self.fetch("/api/me").await;
        match res.status() {
            StatusCode::OK => {
                let body: Value = res.json().await.expect("/api/me answers JSON");
                Some(
                    body["username"]
                        .as_str()
                        .unwrap_or_else(|| panic!("/api/me without a username: {body}"))
                        .to_owned(),
                )
            }
            StatusCode::UNAUTHORIZED => None,
            other => panic!("/api/me answered {other}"),
        }
    }

    /// `res`'s Location resolved against the URL it answered (as a browser resolves it).
    pub fn location(&self, res: &Response) -> Url {
        let raw = res
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("{} from {} has no Location", res.status(), res.url()));
        let raw = raw.to_str().expect("a Location of visible ASCII");
        res.url()
            .join(raw)
            .unwrap_or_else(|e| panic!("Location {raw:?} is no URL: {e}"))
    }

    /// The path of `res`'s Location if it is a redirect within the app.
    pub fn location_path(&self, res: &Response) -> Option<String> {
        if !res.status().is_redirection() {
            return None;
        }
        let to = self.location(res);
        (to.origin() == self.base.origin()).then(|| to.path().to_owned())
    }

    /// `res` is a 303 to `path` (with no query string) on the app.
    pub fn assert_see_other(&self, res: &Response, path: &str) {
        assert_eq!(
            res.status(),
            StatusCode::SEE_OTHER,
            "{} {} (Location {:?})",
            res.url(),
            res.status(),
            res.headers().get("location")
        );
        let to = self.location(res);
        assert_eq!(to.origin(), self.base.origin(), "{to}");
        assert_eq!(&to[url::Position::BeforePath..], path, "{to}");
    }

    /// `res` is a 303 to the login page at exactly `target` (path and query).
    pub fn assert_sent_to_login(&self, res: &Response, target: &str) {
        self.assert_see_other(res, target);
    }
}

/// `e` with its causes (reqwest's own message leaves them out: "error sending request").
fn why(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `res` is the API's refusal: 401 with the JSON error body `{"code":"unauthenticated",...}`.
pub async fn assert_unauthenticated(res: Response) {
    let url = res.url().clone();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{url}");
    assert_json(&res);
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "unauthenticated", "{url}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{url}: the error body has a message: {body}"
    );
}

fn assert_json(res: &Response) {
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{}: Content-Type {ct:?}",
        res.url()
    );
}

// ---------------------------------------------------------------------------------------------
// Reading pages
// ---------------------------------------------------------------------------------------------

/// One `<input>` (or submit `<button>` with a name) of a form.
#[derive(Clone, Debug)]
pub struct Input {
    pub name: String,
    /// `type`, lower-cased; `text` when absent.
    pub kind: String,
    pub value: String,
}

/// A `<form>` as the page renders it.
#[derive(Clone, Debug)]
pub struct Form {
    pub action: Option<String>,
    pub method: String,
    pub inputs: Vec<Input>,
}

impl Form {
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The value of the hidden field `name`.
    pub fn hidden(&self, name: &str) -> Option<&str> {
        self.inputs
            .iter()
            .find(|i| i.name == name && i.kind == "hidden")
            .map(|i| i.value.as_str())
    }

    /// The form without its field `name` (a forged post that leaves it out).
    pub fn without(&self, name: &str) -> Form {
        Form {
            inputs: self
                .inputs
                .iter()
                .filter(|i| i.name != name)
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// What a browser posts: every named field with its rendered value (checkboxes only when
    /// checked, which this reader does not track, so never; no submit buttons), with `fill`
    /// replacing or adding values.
    pub fn fields(&self, fill: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .inputs
            .iter()
            .filter(|i| !matches!(i.kind.as_str(), "checkbox" | "radio" | "submit" | "button"))
            .filter(|i| !fill.iter().any(|(n, _)| *n == i.name))
            .map(|i| (i.name.clone(), i.value.clone()))
            .collect();
        out.extend(fill.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
        out
    }
}

/// The form of the login page: the one with a password field.
pub fn login_form_of(page: &Page) -> Form {
    forms(&page.body)
        .into_iter()
        .find(|f| f.inputs.iter().any(|i| i.kind == "password"))
        .unwrap_or_else(|| {
            panic!(
                "no form with a password field on {}: {}",
                page.url, page.body
            )
        })
}

/// Every `<form>` of `html` with its named inputs. A reader for the pages of these apps, not
/// an HTML parser: tags are found by name outside of comments, attributes read with or
/// without quotes, character references decoded.
pub fn forms(html: &str) -> Vec<Form> {
    let mut out = Vec::new();
    let mut current: Option<Form> = None;
    for (name, attrs) in tags(html) {
        match name.as_str() {
            "form" => {
                current = Some(Form {
                    action: attr(&attrs, "action").map(str::to_owned),
                    method: attr(&attrs, "method").unwrap_or("get").to_owned(),
                    inputs: Vec::new(),
                });
            }
            "/form" => out.extend(current.take()),
            "input" | "button" | "textarea" | "select" => {
                let (Some(form), Some(field)) = (current.as_mut(), attr(&attrs, "name")) else {
                    continue;
                };
                let default = if name == "button" { "submit" } else { "text" };
                form.inputs.push(Input {
                    name: field.to_owned(),
                    kind: attr(&attrs, "type").unwrap_or(default).to_ascii_lowercase(),
                    value: attr(&attrs, "value").unwrap_or("").to_owned(),
                });
            }
            _ => {}
        }
    }
    out.extend(current);
    out
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The start and end tags of `html`: lower-cased name (`/form` for an end tag) and
/// attributes (names lower-cased, values decoded).
fn tags(html: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        if let Some(comment) = rest.strip_prefix("!--") {
            rest = comment.find("-->").map_or("", |e| &comment[e + 3..]);
            continue;
        }
        let end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..end];
        rest = &rest[(end + 1).min(rest.len())..];
        let name_end = tag
            .find(|c: char| c.is_ascii_whitespace() || c == '/' && !tag.starts_with('/'))
            .unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        if name.is_empty() || name.starts_with('!') {
            continue;
        }
        out.push((name, attributes(&tag[name_end..])));
        // Script and style contents are text, not tags.
        for raw in ["script", "style"] {
            if out.last().is_some_and(|(n, _)| n == raw) {
                let close = format!("</{raw}");
                let at = rest.to_ascii_lowercase().find(&close).unwrap_or(rest.len());
                rest = &rest[at..];
            }
        }
    }
    out
}

fn attributes(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        if s.is_empty() {
            return out;
        }
        let name_end = s
            .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/')
            .unwrap_or(s.len());
        let name = s[..name_end].to_ascii_lowercase();
        s = s[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, rest) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], &body[(close + 1).min(body.len())..])
                }
                _ => {
                    let close = after
                        .find(|c: char| c.is_ascii_whitespace())
                        .unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = decode_entities(raw);
            s = rest;
        }
        out.push((name, value));
    }
}

/// Decodes the character references a server's escaping produces.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text of a page: tags removed, references decoded, white space collapsed.
pub fn text_of(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' if in_tag => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    decode_entities(&text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// N of `visits: N` on a page.
pub fn visits(html: &str) -> Option<u64> {
    let text = text_of(html);
    let at = text.find("visits:")?;
    let digits: String = text[at + "visits:".len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The readings of the app's output that could be the printed password: on lines that say
/// "password", the words of 12 or more characters (quotes and a trailing full stop or comma
/// removed), last first.
pub fn printed_passwords(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("password"))
    {
        for word in line.split_whitespace().rev() {
            let word = word
                .trim_matches(|c| matches!(c, '"' | '\'' | '`'))
                .trim_end_matches(['.', ','])
                .trim_matches(|c| matches!(c, '"' | '\'' | '`'));
            if word.chars().count() >= 12
                && !word.to_ascii_lowercase().contains("password")
                && !out.iter().any(|w| w == word)
            {
                out.push(word.to_owned());
            }
        }
    }
    out
}

/// The payloads of `shared/data/openredirects.txt`, query-unescaped, or `None` (after saying
/// so) when no ancestor directory has it and `SESSIOND_REQUIRE_SERVICES=1` is not set.
pub fn open_redirect_payloads() -> Option<Vec<String>> {
    // `shared/` sits beside the checkout, or beside a folder of worktrees: the nearest
    // ancestor that has it.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = "shared/data/openredirects.txt";
    let found = manifest
        .ancestors()
        .map(|a| a.join(file))
        .find(|p| p.is_file());
    let Some(path) = found else {
        assert!(
            std::env::var("SESSIOND_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{file} is required (SESSIOND_REQUIRE_SERVICES=1) and no ancestor of {} has it",
            manifest.display()
        );
        eprintln!(
            "SKIP: {file} not found in an ancestor of {}",
            manifest.display()
        );
        return None;
    };
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Some(
        // One payload a line; the first one is the empty string.
        text.lines()
            .map(|l| {
                url::form_urlencoded::parse(format!("x={l}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect(),
    )
}

#[test]
fn the_page_reader_reads_forms_as_a_browser_would() {
    let html = r#"<!doctype html><!-- <form action="/nope"> -->
        <form method=POST action='/login?x=1&amp;y=2'>
          <input type="hidden" name="next" value="/a&quot;b&#x3c;&#60;">
          <input name=username autocomplete=username>
          <INPUT TYPE=password name="password" required>
          <input type="hidden" name="csrf_token" value='t0k&amp;en'/>
          <button>Log in</button>
        </form>
        <script>if (a < b) { document.write("<form action=x>") }</script>
        <form method="post" action="/logout"><button type="submit">Log out</button></form>
        <p>Hello <b>demo</b>, visits:
           <span>12</span></p>"#;
    let forms = forms(html);
    assert_eq!(forms.len(), 2, "{forms:?}");
    let login = &forms[0];
    assert_eq!(login.action.as_deref(), Some("/login?x=1&y=2"));
    assert_eq!(login.method, "POST");
    assert_eq!(login.hidden("next"), Some("/a\"b<<"));
    assert_eq!(login.hidden("csrf_token"), Some("t0k&en"));
    assert_eq!(
        login.input("password").map(|i| i.kind.as_str()),
        Some("password")
    );
    assert_eq!(
        login.input("username").map(|i| i.kind.as_str()),
        Some("text")
    );
    assert_eq!(
        login.fields(&[("username", "demo"), ("password", "pw")]),
        [
            ("next".to_owned(), "/a\"b<<".to_owned()),
            ("csrf_token".to_owned(), "t0k&en".to_owned()),
            ("username".to_owned(), "demo".to_owned()),
            ("password".to_owned(), "pw".to_owned()),
        ]
    );
    assert_eq!(forms[1].action.as_deref(), Some("/logout"));
    assert_eq!(visits(html), Some(12));
    assert!(text_of(html).contains("Hello demo"));
    assert_eq!(
        printed_passwords("created user demo with password: Zx8-_q1w2e3r4t5y.\nlistening"),
        ["Zx8-_q1w2e3r4t5y"]
    );
    assert_eq!(
        printed_passwords("EXAMPLE_PASSWORD not set: the password of demo is `abcdefghijklmn`"),
        ["abcdefghijklmn"]
    );
}
