//! # sessiond-axum
//!
//! Sessions and login for any axum app, from one dependency: what Django gives a web app
//! (`login()`, `logout()`, `request.session`, `@login_required`, password checks that resist
//! brute force, CSRF protection), as extractors and layers.
//!
//! * **Sessions**: a 256-bit secret in an `HttpOnly` cookie (`__Host-` prefixed by default),
//!   only its SHA-256 in the store; idle, absolute and remember-me expiry; rotation at login;
//!   every end of a session (logout, password change, revoke, disabled user) is a delete in
//!   the store, so it holds on every instance at once. See [`SessionManager`].
//! * **Login**: [`Auth`] (HTTP-free use cases) and [`AuthSession`] (the same for a handler):
//!   argon2id on a bounded pool of its own threads ([`Hasher`]), a login throttle kept in the
//!   store (per account, address and device, reserved atomically, so a parallel burst gets no
//!   more tries than a sequence), the same cost for unknown users, outdated hashes upgraded
//!   at the next login.
//! * **Your users or ours**: the built-in user store ([`BuiltinUsers`]), or your own table
//!   through the small [`UserBackend`] trait.
//! * **Second factors**: TOTP and recovery codes ([`SecondFactors`], [`AuthSession::totp_setup`],
//!   [`AuthSession::verify_second_factor`]); every session carries its [`AuthLevel`], and
//!   [`two_factor_required`] / [`TwoFactorUser`] ask for `two_factor` (see "Second factors"
//!   below).
//! * **For handlers**: [`CurrentUser`] (required), [`MaybeUser`] (optional), [`login_required`]
//!   for a whole router, [`SessionMap`] (typed session data), [`csrf`] (a layer for every
//!   route, tokens for HTML forms).
//!
//! ## Cargo features: the stores
//!
//! Every store holds sessions and the login throttle's counters; the SQL ones hold users too.
//! Each is re-exported under [`stores`] by its feature:
//!
//! | Feature | Store | For |
//! |---|---|---|
//! | `sqlite` (default) | [`stores::SqliteStore`] | one file, no other service: one instance, or several on one host |
//! | `postgres` | `stores::PostgresStore` | several instances sharing one database |
//! | `redis` | `stores::RedisStore` | sessions and counters in Redis (standalone, Sentinel, Cluster); users then come from SQL or your [`UserBackend`] |
//! | `memory` | `stores::MemoryStore` | tests |
//!
//! ```toml
//! [dependencies]
//! sessiond-axum = { version = "0.1", default-features = false, features = ["postgres"] }
//! ```
//!
//! ## Quick start
//!
//! Login, logout and a private page that counts visits in the session, on SQLite. The app is
//! driven here without a socket (as a test would); serving it is shown below.
//!
//! ```
//! use std::sync::Arc;
//!
//! use axum::body::{to_bytes, Body};
//! use axum::http::{header, Request, StatusCode};
//! use axum::routing::{get, post};
//! use axum::{Form, Router};
//! use sessiond_axum::core::{NewUser, Password, Username};
//! use sessiond_axum::stores::SqliteStore;
//! use sessiond_axum::{Auth, AuthError, AuthSession, BuiltinUsers, CurrentUser};
//! use sessiond_axum::{SessionMap, SessionRejection};
//! use tower::ServiceExt; // `oneshot`, to call the app without a socket
//!
//! #[derive(serde::Deserialize)]
//! struct LoginForm {
//!     username: String,
//!     password: String,
//! }
//!
//! async fn login(
//!     mut auth: AuthSession, // over the built-in users (`AuthSession<YourBackend>` otherwise)
//!     Form(f): Form<LoginForm>,
//! ) -> Result<&'static str, AuthError> {
//!     // Django's authenticate() + login(): throttled, argon2id, the session rotated.
//!     auth.log_in(&f.username, f.password, false).await?;
//!     Ok("welcome")
//! }
//!
//! async fn logout(mut auth: AuthSession) -> Result<&'static str, AuthError> {
//!     auth.log_out().await?; // Django's logout(): the session ends in the store
//!     Ok("bye")
//! }
//!
//! // Django's @login_required + request.user + request.session.
//! async fn private(CurrentUser(user): CurrentUser, session: SessionMap) -> Result<String, SessionRejection> {
//!     let visits = session.get::<u64>("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", visits).await?; // saved after the response
//!     Ok(format!("{}: {visits} visits", user.username))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("sessiond-axum-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let path = dir.join("app.db");
//! // One file holds users, sessions and the throttle's counters; secure cookie defaults.
//! let store = Arc::new(SqliteStore::open(&path)?);
//! let auth = Auth::for_store(BuiltinUsers::new(store.clone()), store).build()?;
//!
//! // `auth.layer()`: sessions, the user for the extractors, and the CSRF check of every
//! // unsafe request (a browser's cross-site POST gets 403).
//! let app = Router::new()
//!     .route("/login", post(login))
//!     .route("/logout", post(logout))
//!     .route("/private", get(private))
//!     .layer(auth.layer());
//!
//! // A user (in a real app: a sign-up page, or the `sessiond user add` command).
//! let password_hash = auth.hasher().hash(Password::new("correct horse battery".into())?).await?;
//! let users = auth.backend().store();
//! users.create_user(&NewUser {
//!     username: Username::parse("alice")?,
//!     name: "Alice".into(),
//!     email: String::new(),
//!     groups: Vec::new(),
//!     admin: false,
//!     password_hash,
//!     created_at: auth.sessions().now(),
//! }).await?;
//!
//! // Without a session, /private answers 401 (a browser's page navigation: 303 to /login).
//! let res = app.clone().oneshot(Request::get("/private").body(Body::empty())?).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//!
//! // Log in: the answer sets the session cookie.
//! let res = app
//!     .clone()
//!     .oneshot(
//!         Request::post("/login")
//!             .header(header::HOST, "app.example")
//!             .header(header::ORIGIN, "https://app.example") // as a browser sends it
//!             .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
//!             .body(Body::from("username=alice&password=correct+horse+battery"))?,
//!     )
//!     .await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let set_cookie = res.headers()[header::SET_COOKIE].to_str()?;
//! let cookie = set_cookie.split(';').next().unwrap().to_owned(); // "__Host-sessiond=…"
//!
//! // The cookie is the session.
//! let res = app
//!     .clone()
//!     .oneshot(Request::get("/private").header(header::COOKIE, &cookie).body(Body::empty())?)
//!     .await?;
//! let body = to_bytes(res.into_body(), 1 << 16).await?;
//! assert_eq!(&body[..], b"alice: 1 visits");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
//! Serving it: the client's address is what the login throttle counts per client, and axum
//! hands it over only when asked (without it, the throttle has no per-client counters, only
//! the per-account ones; behind a reverse proxy, name the address your proxy vouches for with
//! [`auth::AuthBuilder::client_ip`]):
//!
//! ```no_run
//! # async fn serve(app: axum::Router) -> std::io::Result<()> {
//! use std::net::SocketAddr;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```
//!
//! The cookie is `Secure` by default (browsers accept that from `http://127.0.0.1` and
//! `http://localhost` too); serve anything else over HTTPS. A complete app (a login form with
//! `next`, logout, the private page, a JSON route) is `examples/example-app` in the
//! repository; the same flow over an app's own users table is `examples/own-users`.
//!
//! ## Coming from Django
//!
//! | Django | sessiond-axum |
//! |---|---|
//! | `authenticate(request, username=…, password=…)` + `login(request, user)` | [`AuthSession::log_in`]`(username, password, remember)`: one step (throttle, password check, rotation of the session, the cookie on the response), errors as [`AuthError`] |
//! | `logout(request)` | [`AuthSession::log_out`] |
//! | `request.user` | [`MaybeUser`]`<B>` (anonymous: `None`), or [`AuthSession::user`] |
//! | `@login_required` | [`CurrentUser`]`<B>` in the handler's arguments, or [`login_required`] as a `route_layer` for a whole router: `303` to `/login?next=…` for page navigations, JSON `401` for API calls ([`LoginRedirect`]) |
//! | `LOGIN_URL` | [`auth::AuthBuilder::login_path`] |
//! | `request.session["k"] = v`, `request.session.get("k")`, `del request.session["k"]` | [`SessionMap`]: `insert`, `get`, `remove` (any serde type; saved once, after the response, only if changed) |
//! | `update_session_auth_hash(request, user)` after `user.set_password(…)` | [`AuthSession::change_password`]`(current, new)`: the other sessions end, this one is rotated and stays logged in |
//! | `SESSION_COOKIE_NAME`, `_SECURE`, `_DOMAIN`, `_SAMESITE` | [`CookieConfig::new`]`(name, secure, domain, same_site)` (`HttpOnly` always) |
//! | `SESSION_COOKIE_AGE`, `SESSION_EXPIRE_AT_BROWSER_CLOSE` | [`core::ExpiryPolicy`] (`idle`, `absolute`, `remember`); a login without "remember me" gets a cookie that ends with the browser |
//! | `CsrfViewMiddleware`, `CSRF_TRUSTED_ORIGINS` | on by default in `auth.layer()` (the request's own host: [`csrf::Origins::same_host`]); others with [`auth::AuthBuilder::csrf_origins`]; [`CsrfLayer`] on its own for routers without `Auth`; `{% csrf_token %}`: [`csrf::form_token`] (logged in) or [`csrf::DoubleSubmit`] (the login form) |
//! | `PASSWORD_HASHERS`, `make_password`, `check_password` | [`Hasher::hash`], [`Hasher::verify`] (argon2id only, on the bounded pool) |
//! | `AUTHENTICATION_BACKENDS` | [`UserBackend`] (one per [`Auth`]) |
//! | `user.is_active` | [`AuthUser::is_active`] |
//! | `url_has_allowed_host_and_scheme(next)` | [`redirect::local_path`] |
//!
//! | django-otp's `OTPMiddleware`, `user.is_verified()`, `@otp_required` | the session's [`AuthLevel`] ([`AuthSession::level`]), [`TwoFactorUser`] / [`two_factor_required`] |
//! | django-otp's `TOTPDevice`, `StaticDevice` (backup tokens) | [`AuthSession::totp_setup`] + [`AuthSession::totp_confirm`], recovery codes ([`FactorKind::Recovery`]) |
//!
//! Not here: permissions (`@permission_required`, `user.has_perm`). The sessiond server has
//! groups for its forward-auth rules, but the library gives a handler the user and leaves
//! authorization to the app.
//!
//! ## Coming from tower-sessions and axum-login
//!
//! `docs/migrating-from-tower-sessions.md` in the repository: a small app before and after,
//! the diff, and what each side has that the other has not. The app after is the `migrated`
//! example of this crate (`cargo run -p sessiond-axum --example migrated`).
//!
//! ## Second factors
//!
//! Give the [`Auth`] a factor store and an encryption key, and every session carries an
//! [`AuthLevel`]: `one_factor` after a password, `two_factor` after a TOTP code or a recovery
//! code too. Raising the level rotates the session (the old cookie dies).
//!
//! ```no_run
//! # async fn build() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sessiond_axum::stores::SqliteStore;
//! use sessiond_axum::{Auth, BuiltinUsers, EncryptionKey, SecondFactors};
//!
//! let store = Arc::new(SqliteStore::open("app.db")?);
//! // TOTP secrets are encrypted at rest under this key: keep it (and back it up) apart
//! // from the database. Created 0600 on first use.
//! let key = EncryptionKey::load_or_create("app.db.key".as_ref())?;
//! let auth = Auth::for_store(BuiltinUsers::new(store.clone()), store.clone())
//!     .second_factors(SecondFactors::new(store, key).issuer("My App"))
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! Then, in handlers: [`AuthSession::totp_setup`] (re-checks the password; gives the secret
//! and the `otpauth://` URI for a QR code), [`AuthSession::totp_confirm`] (activates it; gives
//! ten recovery codes to show once), [`AuthSession::verify_second_factor`] (the login's second
//! step: throttled like passwords, each code accepted once), and [`two_factor_required`] or
//! [`TwoFactorUser`] where the second factor is needed. The rules, and what losing the key
//! means: `docs/reference/second-factor.md` in the repository.
//!
//! ## How it works
//!
//! Handlers that keep per-session data take a [`SessionMap`] (Django's `request.session`):
//! loaded on first use; after the response, the keys the request changed are saved in one
//! atomic patch (concurrent requests of one session changing different keys all keep their
//! change).
//!
//! Routes that change state are protected from cross-site request forgery by
//! [`CsrfLayer`] (Fetch Metadata and `Origin`), and HTML forms by the tokens of [`csrf`].
//!
//! A request that needs a logged-in user and has none is answered by [`LoginRedirect`]: a
//! page navigation goes to the login page with `next` (`303`), anything else gets a JSON
//! `401` ([`is_page_navigation`] tells them apart).
//!
//! Verification is lazy: a route whose handler takes no session extractor costs nothing, and a
//! request whose handler takes several verifies once (the result is kept in the request's
//! extensions).
//!
//! The verify path is one cookie parse, one SHA-256, one store lookup and a pure expiry
//! decision; the activity write happens at most once per [`ExpiryPolicy::touch_interval`] and
//! off the request's path. [`SessionManager::with_cache`] keeps verified sessions (and
//! [`Auth::user_of`] their users) in memory, coherent with the store across instances, so
//! the hot path of a logged-in request touches no store at all.
//!
//! Every session belongs to a user: there are no anonymous sessions (a cart before login
//! lives in the client, or in your own cookie). A user your app authenticates another way (a
//! magic link, SSO) gets a session from the [`SessionManager`] alone:
//! [`SessionManager::begin`] starts it and [`SessionManager::session_cookie`] is its cookie;
//! the [`SessionLayer`] (`manager.layer()`) verifies it on later requests, and
//! [`MaybeSession`] / [`RequireSession`] hand it to handlers.
//!
//! [`ExpiryPolicy::touch_interval`]: sessiond_core::ExpiryPolicy::touch_interval

#![warn(missing_docs)]

pub mod auth;
mod cache;
mod cookies;
pub mod csrf;
mod data;
mod error_body;
mod extract;
mod layer;
mod login;
mod manager;
pub mod metrics;
pub mod password;
pub mod redirect;
mod request_session;
mod unauthenticated;

/// For implementing [`auth::UserBackend`] (an `async fn` trait).
pub use async_trait::async_trait;
/// The session model and the store traits (`sessiond-core`), for apps and backends.
pub use sessiond_core as core;

pub use auth::{
    Auth, AuthError, AuthUser, BuiltinUsers, ClientInfo, EncryptionKey, FactorKind, SecondFactors,
    UserBackend,
};
pub use login::{
    login_required, two_factor_required, AuthLayer, AuthRejection, AuthService, AuthSession,
    CurrentUser, LoginRequired, LoginRequiredService, MaybeUser, TwoFactorUser,
};
pub use password::{HashError, HashMetrics, Hasher};
pub use sessiond_core::AuthLevel;

/// The stores, one cargo feature each: `sqlite` (the default: one file, no other service),
/// `postgres`, `redis` (sessions and throttle counters only; users need SQL), `memory`
/// (tests).
pub mod stores {
    #[cfg(feature = "memory")]
    pub use sessiond_store_memory::MemoryStore;
    #[cfg(feature = "postgres")]
    pub use sessiond_store_postgres::PostgresStore;
    #[cfg(feature = "redis")]
    pub use sessiond_store_redis::RedisStore;
    #[cfg(feature = "sqlite")]
    pub use sessiond_store_sqlite::SqliteStore;
}

pub use cookies::{find_cookie, CookieConfig, CookieLookup, SameSite};
pub use csrf::CsrfLayer;
pub use data::SessionMap;
pub use extract::{MaybeSession, RequireSession, SessionRejection};
pub use layer::{SessionFuture, SessionLayer, SessionService};
pub use manager::{ActiveSession, Counters, SessionManager};
pub use unauthenticated::{is_page_navigation, LoginRedirect};
