//! A small app: a login form, logout, and a private page for logged-in users only, with a
//! visit counter in the session.
//!
//! The app's users live in its own table (here a map); the demo user is `demo`, password
//! `correct horse battery staple`.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use sessiond_axum::core::{StoreError, UserId};
use sessiond_axum::UserBackend;
use sessiond_axum::{async_trait, login_required, redirect::local_path, stores::SqliteStore};
use sessiond_axum::{Auth, AuthError, AuthUser, SessionMap};

/// argon2id of "correct horse battery staple" (what the app's users table holds).
const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$WK+8viPie4nemfmW75zL2g$9k06gr+dyXyHIKcYv1mrsXnImJpYRtEhNrBOTutR8IY";

#[derive(Clone, Debug)]
struct User {
    id: i64,
    username: String,
    password_hash: String,
}

impl AuthUser for User {
    fn id(&self) -> UserId {
        UserId(self.id)
    }
    fn username(&self) -> &str {
        &self.username
    }
}

/// The app's users, by username.
#[derive(Clone)]
struct Backend {
    users: HashMap<String, User>,
}

#[async_trait]
impl UserBackend for Backend {
    type User = User;

    async fn by_username(&self, name: &str) -> Result<Option<(User, String)>, StoreError> {
        let user = self.users.get(name);
        Ok(user.map(|u| (u.clone(), u.password_hash.clone())))
    }

    async fn by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.users.values().find(|u| u.id == id.0).cloned())
    }
}

type AuthSession = sessiond_axum::AuthSession<Backend>;

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
    let auth = Auth::for_store(backend, Arc::new(SqliteStore::open("app.db")?)).build()?;
    let app = Router::new()
        .route("/private", get(private))
        .route_layer(login_required::<Backend>())
        .route(
            "/",
            get(|| async { Html(r#"<a href="/private">Private</a>"#) }),
        )
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .layer(auth.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
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
    match auth.log_in(&creds.username, creds.password, false).await {
        Ok(_) => {}
        Err(AuthError::InvalidCredentials) => return Redirect::to("/login?error").into_response(),
        Err(e) => return e.into_response(),
    };
    let next = creds.next.as_deref().and_then(local_path);
    Redirect::to(next.as_deref().unwrap_or("/private")).into_response()
}

async fn logout(mut auth: AuthSession) -> Response {
    match auth.log_out().await {
        Ok(_) => Redirect::to("/").into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn private(auth: AuthSession, session: SessionMap) -> Response {
    let Some(user) = auth.user() else {
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
