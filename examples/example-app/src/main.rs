//! sessiond-axum's example: login, logout, a private page and session data, with the built-in
//! users on SQLite (`example-app.db` in the working directory).
//!
//! `cargo run -p example-app -- --listen 127.0.0.1:3000`, then open http://127.0.0.1:3000/private.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use sessiond_axum::core::{ExpiryPolicy, NewUser, Password, SessionToken, Username};
use sessiond_axum::SessionRejection;
use sessiond_axum::{redirect::local_path, stores::SqliteStore, Auth, AuthError, AuthSession};
use sessiond_axum::{
    BuiltinUsers, CookieConfig, CurrentUser, SameSite, SessionManager, SessionMap,
};

#[derive(clap::Parser)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let store = Arc::new(SqliteStore::open("example-app.db")?);
    // Secure cookies (the default) need HTTPS: plain HTTP only on this machine, to try it out.
    let secure = !args.listen.ip().is_loopback();
    let cookie = CookieConfig::new("example", secure, None, SameSite::Lax);
    // Verified sessions (and their users) kept in memory, coherent with the store.
    let sessions =
        SessionManager::new(store.clone(), cookie, ExpiryPolicy::default()).with_cache(10_000);
    let auth = Auth::builder(BuiltinUsers::new(store.clone()), sessions, store).build()?;
    create_demo_user(&auth).await?;
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html(r#"<h1>Example</h1><a href="/private">Private</a>"#) }),
        )
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/private", get(private))
        .route("/api/me", get(me))
        .layer(auth.layer());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", args.listen);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// On first start: the user `demo`, with `EXAMPLE_PASSWORD` or a random password printed once.
async fn create_demo_user(auth: &Auth<BuiltinUsers>) -> anyhow::Result<()> {
    let users = auth.backend().store();
    if users
        .user_by_name(&Username::parse("demo")?)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let (password, random) = match std::env::var("EXAMPLE_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (SessionToken::generate().expose().to_owned(), true),
    };
    let password_hash = auth.hasher().hash(Password::new(password.clone())?).await?;
    let user = NewUser {
        username: Username::parse("demo")?,
        name: "Demo".into(),
        email: String::new(),
        groups: Vec::new(),
        admin: false,
        password_hash,
        created_at: auth.sessions().now(),
    };
    users.create_user(&user).await?;
    if random {
        println!("created the user demo with the password {password}");
    }
    Ok(())
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_page(Query(q): Query<Next>) -> Html<String> {
    login_form(q.next.as_deref(), None)
}

fn login_form(next: Option<&str>, error: Option<&str>) -> Html<String> {
    let error = error.map_or(String::new(), |e| format!("<p role=alert>{}</p>", esc(e)));
    let next = esc(next.unwrap_or(""));
    Html(format!(
        r#"<h1>Log in</h1>{error}<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Username <input name="username" id="username" autocomplete="username"></label>
<label>Password <input type="password" name="password" id="password"></label>
<button id="login">Log in</button></form>"#
    ))
}

async fn login(mut auth: AuthSession, Form(f): Form<LoginForm>) -> Response {
    match auth.log_in(&f.username, f.password, false).await {
        Ok(_) => {
            let next = f.next.as_deref().and_then(local_path);
            Redirect::to(next.as_deref().unwrap_or("/private")).into_response()
        }
        Err(e) => (
            e.status(),
            login_form(f.next.as_deref(), Some(&e.message())),
        )
            .into_response(),
    }
}

async fn logout(mut auth: AuthSession) -> Result<Redirect, AuthError> {
    auth.log_out().await?;
    Ok(Redirect::to("/"))
}

async fn private(
    CurrentUser(user): CurrentUser,
    data: SessionMap,
) -> Result<Html<String>, SessionRejection> {
    let visits = data.get::<u64>("visits").await?.unwrap_or(0) + 1;
    data.insert("visits", visits).await?;
    Ok(Html(format!(
        r#"<h1>Hello <span id="user">{}</span></h1><p id="visits">visits: {visits}</p>
<form method="post" action="/logout"><button id="logout">Log out</button></form>"#,
        esc(user.username.as_str())
    )))
}

async fn me(CurrentUser(user): CurrentUser) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "username": user.username.as_str() }))
}

/// Text for HTML (element content or a quoted attribute).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
