use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use sessiond::hash_blocking;
use sessiond::AppState;
use sessiond::{Config, FileConfig, Overrides};
use sessiond_core::{NewUser, Password, User, Username};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse battery staple";

/// A running server on a random port with its own database directory.
pub struct TestApp {
    pub base: String,
    pub dir: Arc<tempfile::TempDir>,
    pub state: AppState,
    /// Milliseconds added to the wall clock for session decisions (see [`TestApp::advance`]).
    offset: Arc<AtomicI64>,
    /// The wall-clock millisecond the session clock stands still at (0: it runs; see
    /// [`TestApp::freeze`]).
    frozen_at: Arc<AtomicI64>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

pub fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("sessiond.db").display())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), Overrides::default()).await
}

/// Starts a server on the database in `dir` (reuse `dir` to simulate a restart).
pub async fn spawn_app_in(dir: Arc<tempfile::TempDir>, over: Overrides) -> TestApp {
    spawn_app_full(dir, "", over).await
}

/// Starts a server with `file` as its TOML config file; `{port}` in it is replaced by the
/// server's port.
pub async fn spawn_app_full(dir: Arc<tempfile::TempDir>, file: &str, over: Overrides) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let over = Overrides {
        listen: Some(addr.to_string()),
        database: over.database.clone().or_else(|| Some(db_url(dir.path()))),
        ..over
    };
    let file: FileConfig = toml::from_str(&file.replace("{port}", &addr.port().to_string()))
        .expect("test config file parses");
    let config = Config::resolve(file, over).expect("test config is valid");
    let offset = Arc::new(AtomicI64::new(0));
    let frozen_at = Arc::new(AtomicI64::new(0));
    let (clock_offset, clock_frozen) = (Arc::clone(&offset), Arc::clone(&frozen_at));
    let state = sessiond::build_state_with_clock(config, move || {
        let frozen = clock_frozen.load(Ordering::SeqCst);
        let base = if frozen != 0 {
            frozen
        } else {
            sessiond::now().as_millis()
        };
        sessiond_core::Timestamp::from_millis(base + clock_offset.load(Ordering::SeqCst))
    })
    .await
    .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(sessiond::run(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        dir,
        state,
        offset,
        frozen_at,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    /// Moves the server's session clock forward (the wall clock is left alone).
    pub fn advance(&self, d: Duration) {
        self.offset
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    /// Stops the server's session clock where it is: from now on only [`TestApp::advance`]
    /// moves it. For tests of time windows (throttle back-off) that must not depend on how
    /// long the machine takes to hash a password.
    pub fn freeze(&self) {
        self.frozen_at
            .store(sessiond::now().as_millis().max(1), Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("sessiond.db")
    }

    /// A client with its own cookie jar that does not follow redirects (so tests see them).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// A client without a cookie jar: cookies are sent by hand.
    pub fn bare_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub async fn add_user(&self, name: &str) -> User {
        self.add_user_with(name, PASSWORD, false).await
    }

    pub async fn add_user_with(&self, name: &str, password: &str, admin: bool) -> User {
        let phc = hash_blocking(&Password::new(password.into()).unwrap()).unwrap();
        self.state
            .users
            .create_user(&NewUser {
                username: Username::parse(name).unwrap(),
                name: format!("{name} Example"),
                email: format!("{name}@example.com"),
                groups: vec![sessiond_core::Group::parse("dev").unwrap()],
                admin,
                password_hash: phc,
                created_at: sessiond::now(),
            })
            .await
            .unwrap()
    }

    pub async fn api_login(
        &self,
        client: &reqwest::Client,
        name: &str,
        password: &str,
    ) -> reqwest::Response {
        client
            .post(self.url("/api/login"))
            .json(&serde_json::json!({ "username": name, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn whoami(&self, client: &reqwest::Client) -> reqwest::Response {
        client.get(self.url("/api/session")).send().await.unwrap()
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The session cookie's value from a response's `Set-Cookie` headers.
pub fn session_cookie(res: &reqwest::Response) -> Option<String> {
    set_cookies(res.headers()).into_iter().find_map(|c| {
        c.strip_prefix("__Host-sessiond=")
            .map(|v| v.split(';').next().unwrap_or("").to_owned())
    })
}

pub fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        .collect()
}

/// Waits (bounded) until the store shows `user`'s only session last seen at or after `t`:
/// activity writes happen off the request path.
pub async fn wait_for_activity_write(app: &TestApp, at_least: sessiond_core::Timestamp) {
    for _ in 0..200 {
        let all = app.state.sessions.store().list_all().await.unwrap();
        if all.iter().all(|s| s.last_seen_at >= at_least) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("activity write did not land within 2 s");
}

pub async fn json(res: reqwest::Response) -> serde_json::Value {
    res.json().await.unwrap()
}

/// Pulls the (first) hidden csrf_token value out of a page.
pub fn csrf_from(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let i = html.find(marker).expect("form has a csrf token") + marker.len();
    html[i..].split('"').next().unwrap().to_owned()
}

impl TestApp {
    /// Logs `client` in through the HTML form.
    pub async fn form_login(
        &self,
        client: &reqwest::Client,
        name: &str,
        password: &str,
    ) -> reqwest::Response {
        let html = client
            .get(self.url("/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = csrf_from(&html);
        client
            .post(self.url("/login"))
            .form(&[
                ("username", name),
                ("password", password),
                ("csrf_token", &csrf),
            ])
            .send()
            .await
            .unwrap()
    }

    /// GETs a page and returns its body and form token.
    pub async fn page(
        &self,
        client: &reqwest::Client,
        path: &str,
    ) -> (reqwest::StatusCode, String, String) {
        let res = client.get(self.url(path)).send().await.unwrap();
        let status = res.status();
        let html = res.text().await.unwrap();
        let csrf = if html.contains("csrf_token") {
            csrf_from(&html)
        } else {
            String::new()
        };
        (status, html, csrf)
    }
}

/// Polls `/api/session` for `client` until it answers `status`, for at most `within`
/// (docs/reference/sessions.md, "What ends a session": changes made elsewhere, e.g. by the
/// CLI, reach a running server within 100 ms).
pub async fn whoami_becomes(
    app: &TestApp,
    client: &reqwest::Client,
    status: reqwest::StatusCode,
    within: Duration,
) {
    let start = std::time::Instant::now();
    loop {
        let got = app.whoami(client).await.status();
        if got == status {
            return;
        }
        assert!(
            start.elapsed() < within,
            "still {got} after {within:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
