//! Login bodies through the real router, in memory: `sessiond::app` on a real
//! `AppState` (SQLite in a temporary directory, the real hashing pool), one request per
//! input via `tower::ServiceExt::oneshot`.
//!
//! Input: the first byte chooses the route (even: `POST /api/login` as `application/json`;
//! odd: `POST /login` as `application/x-www-form-urlencoded`, with the login form's CSRF
//! cookie set to a fixed token, so a body that carries `csrf_token=<that token>` gets past the
//! CSRF check); the rest is the body. Inputs over 4 KiB are skipped (the body limit is
//! 64 KiB; longer inputs only slow the fuzzer down).
//!
//! One user exists: `alice` / `correct horse battery staple` (the seeds log in with it).
//! A body that parses into a well-formed username and password costs one argon2id
//! verification (about 46 ms, more under coverage instrumentation).
//!
//! The session clock moves two hours forward before each request, past every throttling
//! window and back-off, so each input starts from the same throttling state and a crash
//! reproduces from its input alone.
//!
//! Asserts:
//! * nothing panics, and the status is never 5xx;
//! * a `200` from `/api/login` sets the session cookie;
//! * a `303` from `/login` sets the session cookie and its `Location` resolves (against the
//!   public URL) to an `http(s)` URL on the public host or under the cookie domain.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use sessiond::{Config, Overrides};
use sessiond::hash_blocking;
use sessiond_core::{NewUser, Password, SessionToken, Timestamp, Username};
use tower::ServiceExt as _;

/// Longest input tried.
const MAX_INPUT: usize = 4096;
/// How far the session clock moves before each request: past the longest throttling window.
const STEP: Duration = Duration::from_secs(2 * 3600);

struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
    config: Config,
    /// The `Cookie` header of a browser that loaded the login form.
    csrf_cookie: String,
    offset_ms: Arc<AtomicI64>,
    /// Kept for the life of the process (statics are not dropped; run.sh points TMPDIR at
    /// fuzz/target/tmp and empties it).
    _dir: tempfile::TempDir,
}

/// `SESSIOND_FUZZ_VERBOSE=1`: print each response (for reading a reproducer).
static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SESSIOND_FUZZ_VERBOSE").is_some());

static APP: LazyLock<App> = LazyLock::new(|| {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-fuzz-login-")
        .tempdir()
        .expect("temporary directory");
    let file = r#"
        public_url = "https://auth.example.com"
        [cookie]
        domain = "example.com"
    "#;
    let config = Config::resolve(
        toml::from_str(file).expect("fuzz config parses"),
        Overrides {
            database: Some(format!(
                "sqlite://{}",
                dir.path().join("sessiond.db").display()
            )),
            ..Overrides::default()
        },
    )
    .expect("fuzz config is valid");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let offset_ms = Arc::new(AtomicI64::new(0));
    let clock_offset = Arc::clone(&offset_ms);
    let state = rt
        .block_on(sessiond::build_state_with_clock(config.clone(), move || {
            Timestamp::from_millis(sessiond::now().as_millis() + clock_offset.load(Ordering::SeqCst))
        }))
        .expect("app state");
    let phc = hash_blocking(&Password::new("correct horse battery staple".into()).unwrap())
        .expect("hash");
    rt.block_on(state.users.create_user(&NewUser {
        username: Username::parse("alice").unwrap(),
        name: "Alice Example".into(),
        email: "alice@example.com".into(),
        groups: vec!["dev".into()],
        admin: false,
        password_hash: phc,
        created_at: sessiond::now(),
    }))
    .expect("create user");
    let csrf = SessionToken::from_entropy([7; 32]);
    let csrf_cookie = format!("{}={}", config.csrf_cookie.name(), csrf.expose());
    App {
        rt,
        // The production entry point: the routes inside every layer a request passes.
        router: Router::new().fallback_service(sessiond::app(state)),
        config,
        csrf_cookie,
        offset_ms,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    if data.len() > MAX_INPUT {
        return;
    }
    let app = &*APP;
    let form = selector & 1 == 1;
    let mut req = Request::builder().method(Method::POST);
    req = if form {
        req.uri("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &app.csrf_cookie)
    } else {
        req.uri("/api/login")
            .header(header::CONTENT_TYPE, "application/json")
    };
    let mut req = req
        .header(header::USER_AGENT, "sessiond-fuzz")
        .body(Body::from(payload.to_vec()))
        .expect("request");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));

    app.offset_ms
        .fetch_add(STEP.as_millis() as i64, Ordering::SeqCst);
    let (status, headers, body) = app.rt.block_on(async {
        let res = app.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("response body");
        (parts.status, parts.headers, body)
    });
    if *VERBOSE {
        eprintln!(
            "{} -> {status} {:?}\n{}",
            if form {
                "POST /login"
            } else {
                "POST /api/login"
            },
            headers.get(header::LOCATION),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    assert!(
        !status.is_server_error(),
        "{} {} -> {status}: {}",
        if form {
            "POST /login"
        } else {
            "POST /api/login"
        },
        String::from_utf8_lossy(payload).escape_debug(),
        String::from_utf8_lossy(&body)
    );

    let session_cookie = format!("{}=", app.config.cookie.name());
    let sets_session = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(session_cookie.as_bytes()));
    if !form && status == StatusCode::OK {
        assert!(sets_session, "200 from /api/login without a session cookie");
    }
    if form && status == StatusCode::SEE_OTHER {
        assert!(sets_session, "303 from /login without a session cookie");
        let location = headers
            .get(header::LOCATION)
            .expect("303 has a Location")
            .to_str()
            .expect("Location is text");
        let public = &app.config.public_url;
        let landed = public
            .join(location)
            .unwrap_or_else(|e| panic!("Location {location:?} does not resolve: {e}"));
        let host = landed.host_str().unwrap_or("").to_ascii_lowercase();
        assert!(
            matches!(landed.scheme(), "http" | "https")
                && (host == "auth.example.com"
                    || host == "example.com"
                    || host.ends_with(".example.com")),
            "login sent the browser to {landed} (Location {location:?})"
        );
    }
});
