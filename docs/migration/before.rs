//! A small app: a login form, logout, and a private page for logged-in users only, with a
//! visit counter in the session.
//!
//! The app's users live in its own table (here a map); the demo user is `demo`, password
//! `correct horse battery staple`.
use std::collections::HashMap;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_login::{login_required, AuthManagerLayerBuilder, AuthUser, AuthnBackend, UserId};
use password_auth::verify_password;
use serde::Deserialize;
use tower_sessions::{Session, SessionManagerLayer};
use tower_sessions_sqlx_store::{sqlx::SqlitePool, SqliteStore};

/// argon2id of "correct horse battery staple" (what the app's users table holds).
const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$WK+8viPie4nemfmW75zL2g$9k06gr+dyXyHIKcYv1mrsXnImJpYRtEhNrBOTutR8IY";

#[derive(Clone, Debug)]
struct User {
    id: i64,
    username: String,
    password_hash: String,
}

impl AuthUser for User {
    type Id = i64;
    fn id(&self) -> i64 {
        self.id
    }
    fn session_auth_hash(&self) -> &[u8] {
        self.password_hash.as_bytes()
    }
}

/// The app's users, by username.
#[derive(Clone)]
struct Backend {
    users: HashMap<String, User>,
}

impl AuthnBackend for Backend {
    type User = User;
    type Credentials = Credentials;
    type Error = tokio::task::JoinError;

    async fn authenticate(&self, creds: Credentials) -> Result<Option<User>, Self::Error> {
        let user = self.users.get(&creds.username).cloned();
        // A hash takes tens of milliseconds of CPU: not on the async threads.
        tokio::task::spawn_blocking(move || {
            user.filter(|u| verify_password(creds.password, &u.password_hash).is_ok())
        })
        .await
    }

    async fn get_user(&self, id: &UserId<Self>) -> Result<Option<User>, Self::Error> {
        Ok(self.users.values().find(|u| u.id == *id).cloned())
    }
}

type AuthSession = axum_login::AuthSession<Backend>;

#[derive(Clone, Deserialize)]
struct Credentials {
    username: String,
    password: String,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = User {
        id: 1,
        username: "demo".into(),
        password_hash: DEMO_HASH.into(),
    };
    let backend = Backend {
        users: HashMap::from([(demo.username.clone(), demo)]),
    };
    let pool = SqlitePool::connect("sqlite://app.db?mode=rwc").await?;
    let store = SqliteStore::new(pool);
    store.migrate().await?;
    let auth = AuthManagerLayerBuilder::new(backend, SessionManagerLayer::new(store)).build();
    let app = Router::new()
        .route("/private", get(private))
        .route_layer(login_required!(Backend, login_url = "/login"))
        .route(
            "/",
            get(|| async { Html(r#"<a href="/private">Private</a>"#) }),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .layer(auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn login_form(Query(Next { next }): Query<Next>) -> Html<String> {
    let next = esc(next.as_deref().unwrap_or(""));
    Html(format!(
        r#"<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<input name="username"> <input type="password" name="password"> <button>Log in</button></form>"#
    ))
}

async fn login(mut auth: AuthSession, Form(creds): Form<Credentials>) -> Response {
    let user = match auth.authenticate(creds.clone()).await {
        Ok(Some(user)) => user,
        Ok(None) => return Redirect::to("/login?error").into_response(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if auth.login(&user).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Redirect::to(creds.next.as_deref().unwrap_or("/private")).into_response()
}

async fn logout(mut auth: AuthSession) -> Response {
    match auth.logout().await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn private(auth: AuthSession, session: Session) -> Response {
    let Some(user) = auth.user else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let visits: u64 = session.get("visits").await.unwrap_or_default().unwrap_or(0) + 1;
    if session.insert("visits", visits).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Html(format!("Hello {}, visits: {visits}", esc(&user.username))).into_response()
}

/// Text for HTML (element content or a quoted attribute).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
