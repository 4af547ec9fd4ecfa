#![warn(missing_docs)]
//! # sessiond-axum
//!
//! sessiond sessions in any axum app: a [`SessionManager`] that verifies the session cookie,
//! starts and ends sessions and writes the cookies, and extractors that hand handlers the
//! verified session.
//!
//! ```ignore
//! let manager = SessionManager::new(store, CookieConfig::default(), ExpiryPolicy::default());
//! let app = Router::new()
//!     .route("/me", get(|RequireSession(s): RequireSession| async move { s.record().user_id.0.to_string() }))
//!     .layer(manager.layer());
//! ```
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
//! off the request's path.
//!
//! [`ExpiryPolicy::touch_interval`]: sessiond_core::ExpiryPolicy::touch_interval

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
pub mod password;
pub mod redirect;
mod request_session;
mod unauthenticated;

/// For implementing [`auth::UserBackend`] (an `async fn` trait).
pub use async_trait::async_trait;
/// The session model and the store traits (`sessiond-core`), for apps and backends.
pub use sessiond_core as core;

pub use auth::{Auth, AuthError, AuthUser, BuiltinUsers, ClientInfo, UserBackend};
pub use login::{
    login_required, AuthLayer, AuthRejection, AuthService, AuthSession, CurrentUser, LoginRequired,
    LoginRequiredService, MaybeUser,
};
pub use password::{HashError, Hasher};

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
