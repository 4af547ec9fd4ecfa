//! Passkeys and TOTP with `sessiond-axum`, in a real browser: headless Chromium with
//! WebDriver's virtual authenticator (a CTAP2 authenticator that verifies its user) against
//! a small app built on the library's second-factor API, served on `http://localhost` (a
//! secure context, and a valid relying-party id).
//!
//! The page's scripts are what an app ships: `navigator.credentials.create()` / `.get()`
//! fed by `PublicKeyCredential.parseCreationOptionsFromJSON` / `parseRequestOptionsFromJSON`,
//! answers sent back with `toJSON()`. Judged by what the browser gets: statuses, levels, and
//! whether it is logged in.
//!
//! Run with `cargo test -p example-app --test passkeys`.

#[path = "../../common/chromium.rs"]
mod chromium;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chromium::{browser_installed, Browser, ChromeDriver};
use serde_json::{json, Value};
use sessiond_axum::auth::webauthn::{PublicKeyCredential, RegisterPublicKeyCredential, Url};
use sessiond_axum::core::{NewUser, Password, UserStore, Username};
use sessiond_axum::stores::SqliteStore;
use sessiond_axum::{Auth, AuthError, AuthSession, BuiltinUsers, EncryptionKey, SecondFactors};

const USER: &str = "ada";
const PASSWORD: &str = "correct horse battery";

/// The page: one script per ceremony, each answering `"<status> <body>"`.
const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>passkeys</title>
<script>
async function post(path, body) {
  const r = await fetch(path, {method: 'POST', headers: {'content-type': 'application/json'},
                               body: JSON.stringify(body || {})});
  return [r.status, await r.text()];
}
async function register(name) {
  const [s, t] = await post('/passkey/register/start');
  if (s !== 200) return s + ' ' + t;
  const c = JSON.parse(t);
  const cred = await navigator.credentials.create(
    {publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(c.options.publicKey)});
  const [s2, t2] = await post('/passkey/register/finish',
    {ceremony: c.ceremony, name: name, credential: cred.toJSON()});
  return s2 + ' ' + t2;
}
async function assertWith(start, finish) {
  const [s, t] = await post(start);
  if (s !== 200) return s + ' ' + t;
  const c = JSON.parse(t);
  const cred = await navigator.credentials.get(
    {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(c.options.publicKey)});
  window.lastAnswer = [finish, {ceremony: c.ceremony, credential: cred.toJSON()}];
  const [s2, t2] = await post(finish, window.lastAnswer[1]);
  return s2 + ' ' + t2;
}
async function replay() { const [s, t] = await post(...window.lastAnswer); return s + ' ' + t; }
async function passwordLogin() { const [s, t] = await post('/login'); return s + ' ' + t; }
async function level() { const r = await fetch('/level'); return r.status + ' ' + await r.text(); }
async function logout() { const [s, t] = await post('/logout'); return s + ' ' + t; }
</script></head><body>passkeys</body></html>"#;

#[derive(serde::Deserialize)]
struct Registration {
    ceremony: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

#[derive(serde::Deserialize)]
struct Assertion {
    ceremony: String,
    credential: PublicKeyCredential,
}

type Users = BuiltinUsers;

fn json_or_error<T: serde::Serialize>(r: Result<T, AuthError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The app: built-in users on SQLite, second factors with passkeys for `localhost`.
async fn app(dir: &std::path::Path, origin: &Url) -> Router {
    let store = Arc::new(SqliteStore::open(dir.join("app.db")).unwrap());
    let key = EncryptionKey::load_or_create(&dir.join("app.db.key")).unwrap();
    let factors = SecondFactors::new(store.clone(), key)
        .passkeys("localhost", origin, "Passkey Test")
        .unwrap();
    let auth = Auth::for_store(BuiltinUsers::new(store.clone()), store.clone())
        .second_factors(factors)
        .build()
        .unwrap();
    let hash = auth
        .hasher()
        .hash(Password::new(PASSWORD.into()).unwrap())
        .await
        .unwrap();
    store
        .create_user(&NewUser {
            username: Username::parse(USER).unwrap(),
            name: String::new(),
            email: String::new(),
            groups: Vec::new(),
            admin: false,
            password_hash: hash,
            created_at: auth.sessions().now(),
        })
        .await
        .unwrap();
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/login",
            post(|mut a: AuthSession<Users>| async move {
                json_or_error(a.log_in(USER, PASSWORD.into(), false).await.map(|_| "ok"))
            }),
        )
        .route(
            "/logout",
            post(|mut a: AuthSession<Users>| async move {
                json_or_error(a.log_out().await.map(|()| "ok").map_err(AuthError::from))
            }),
        )
        .route(
            "/level",
            get(|a: AuthSession<Users>| async move {
                a.level().map_or("none", |l| l.as_str()).to_owned()
            }),
        )
        .route(
            "/passkey/register/start",
            post(|a: AuthSession<Users>| async move {
                json_or_error(match (a.session(), a.user()) {
                    (Some(s), Some(u)) => a.auth().passkey_register_start(s, u).await,
                    _ => Err(AuthError::SessionEnded),
                })
            }),
        )
        .route(
            "/passkey/register/finish",
            post(
                |mut a: AuthSession<Users>, Json(r): Json<Registration>| async move {
                    json_or_error(
                        a.passkey_register_finish(&r.ceremony, &r.credential, &r.name)
                            .await
                            .map(|info| info.name),
                    )
                },
            ),
        )
        .route(
            "/passkey/2fa/start",
            post(|a: AuthSession<Users>| async move {
                json_or_error(match (a.session(), a.user()) {
                    (Some(s), Some(u)) => a.auth().passkey_second_factor_start(s, u).await,
                    _ => Err(AuthError::SessionEnded),
                })
            }),
        )
        .route(
            "/passkey/2fa/finish",
            post(
                |mut a: AuthSession<Users>, Json(r): Json<Assertion>| async move {
                    json_or_error(
                        a.passkey_second_factor_finish(&r.ceremony, &r.credential)
                            .await
                            .map(|()| "ok"),
                    )
                },
            ),
        )
        .route(
            "/passkey/login/start",
            post(|State(auth): State<Auth<Users>>| async move {
                json_or_error(auth.passkey_login_start().await)
            }),
        )
        .route(
            "/passkey/login/finish",
            post(
                |mut a: AuthSession<Users>, Json(r): Json<Assertion>| async move {
                    json_or_error(
                        a.passkey_log_in(&r.ceremony, &r.credential, false)
                            .await
                            .map(|u| u.username.to_string()),
                    )
                },
            ),
        )
        .layer(auth.layer())
        .with_state(auth)
}

/// A WebDriver extension command (the W3C WebAuthn spec's virtual authenticators).
#[derive(Debug)]
struct WebAuthnCmd {
    path: String,
    body: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for WebAuthnCmd {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/webauthn/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}

async fn run(browser: &Browser, call: &str) -> String {
    let script = format!("{call}.then(arguments[0], e => arguments[0]('error ' + e))");
    match browser.client.execute_async(&script, vec![]).await {
        Ok(Value::String(s)) => s,
        other => panic!("{call}: {other:?}"),
    }
}

#[tokio::test]
async fn register_a_passkey_then_use_it_as_second_factor_and_alone() {
    if !browser_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = Url::parse(&format!("http://localhost:{port}")).unwrap();
    let app = app(dir.path(), &origin).await;
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let driver = ChromeDriver::start(dir.path()).await;
    let browser = Browser::start(&driver, &origin, &dir.path().join("profile")).await;
    browser.goto("/").await;
    browser.wait_for_path("/").await;
    let added = browser
        .client
        .issue_cmd(WebAuthnCmd {
            path: "authenticator".into(),
            body: json!({
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            }),
        })
        .await
        .expect("a virtual authenticator");
    assert!(added.is_string(), "{added:?}");

    // Logged in with a password: one factor; registering a passkey raises the session.
    assert_eq!(run(&browser, "passwordLogin()").await, "200 \"ok\"");
    assert_eq!(run(&browser, "level()").await, "200 one_factor");
    let registered = run(&browser, "register('laptop')").await;
    assert_eq!(registered, "200 \"laptop\"", "registration");
    assert_eq!(run(&browser, "level()").await, "200 two_factor");

    // A password login again: one factor, then the passkey as the second factor.
    assert_eq!(run(&browser, "logout()").await, "200 \"ok\"");
    assert_eq!(run(&browser, "passwordLogin()").await, "200 \"ok\"");
    assert_eq!(run(&browser, "level()").await, "200 one_factor");
    let second = run(
        &browser,
        "assertWith('/passkey/2fa/start', '/passkey/2fa/finish')",
    )
    .await;
    assert_eq!(second, "200 \"ok\"", "passkey as the second factor");
    assert_eq!(run(&browser, "level()").await, "200 two_factor");

    // Logged out, the passkey alone logs in, at two factors (it verified the user).
    assert_eq!(run(&browser, "logout()").await, "200 \"ok\"");
    assert_eq!(run(&browser, "level()").await, "200 none");
    let alone = run(
        &browser,
        "assertWith('/passkey/login/start', '/passkey/login/finish')",
    )
    .await;
    assert_eq!(alone, format!("200 \"{USER}\""), "passwordless login");
    assert_eq!(run(&browser, "level()").await, "200 two_factor");

    // The same signed answer, sent again after a logout (a captured request): refused, the
    // ceremony was spent by its first use.
    assert_eq!(run(&browser, "logout()").await, "200 \"ok\"");
    let replayed = run(&browser, "replay()").await;
    assert!(
        replayed.starts_with("400 ") && replayed.contains("used already"),
        "{replayed}"
    );
    assert_eq!(run(&browser, "level()").await, "200 none");

    browser.quit().await;
}
