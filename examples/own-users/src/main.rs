//! sessiond-axum with an app's own users: the same app as `example-app` (login, logout, a
//! private page with session data, `/api/me`), but the users live in the app's own table,
//! `members`, with its own column names and ids, read with plain rusqlite.
//!
//! The app implements [`UserBackend`] (three queries: by name, by id, and a compare-and-set
//! of the password hash) and [`AuthUser`] for its row type. Everything else stays
//! sessiond-axum's: the password check (argon2id on a bounded pool, the same cost for unknown
//! users), the login throttle, the sessions and their data, and CSRF.
//!
//! `cargo run -p own-users -- --listen 127.0.0.1:3000`, then open http://127.0.0.1:3000/private.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::Query;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use rusqlite::{Connection, OptionalExtension, Row};
use serde::Deserialize;
use sessiond_axum::core::{ExpiryPolicy, Password, SessionToken, StoreError, UserId};
use sessiond_axum::csrf::{CsrfLayer, Origins};
use sessiond_axum::{async_trait, redirect::local_path, stores::SqliteStore};
use sessiond_axum::{Auth, AuthError, AuthSession, AuthUser, SessionRejection, UserBackend};
use sessiond_axum::{CookieConfig, CurrentUser, SameSite, SessionManager, SessionMap};

/// The app's users table: its schema, not sessiond's.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS members (
    member_id INTEGER PRIMARY KEY,
    login     TEXT NOT NULL UNIQUE COLLATE NOCASE,
    pw_hash   TEXT NOT NULL,  -- argon2id PHC string, as Hasher::hash makes it
    active    INTEGER NOT NULL DEFAULT 1
)";

/// A row of `members`.
#[derive(Clone, Debug)]
struct Member {
    id: i64,
    login: String,
    active: bool,
}

impl AuthUser for Member {
    fn id(&self) -> UserId {
        UserId(self.id)
    }
    fn username(&self) -> &str {
        &self.login
    }
    fn is_active(&self) -> bool {
        self.active
    }
}

/// The app's database. rusqlite blocks, so each query runs on tokio's blocking pool, one at a
/// time on the one connection (writes to `members` are rare; reads are point lookups).
#[derive(Clone)]
struct Members(Arc<Mutex<Connection>>);

impl Members {
    fn open(path: &str) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        // The session store writes to the same file from its own connection.
        conn.busy_timeout(std::time::Duration::from_secs(1))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self(Arc::new(Mutex::new(conn))))
    }

    async fn run<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            query(&conn.lock().unwrap_or_else(PoisonError::into_inner))
        })
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)
    }
}

fn member(row: &Row) -> rusqlite::Result<Member> {
    Ok(Member {
        id: row.get("member_id")?,
        login: row.get("login")?,
        active: row.get("active")?,
    })
}

#[async_trait]
impl UserBackend for Members {
    type User = Member;

    /// Case-insensitive, as the column's collation says.
    async fn by_username(&self, name: &str) -> Result<Option<(Member, String)>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            c.query_row(
                "SELECT member_id, login, active, pw_hash FROM members WHERE login = ?1",
                [name],
                |r| Ok((member(r)?, r.get("pw_hash")?)),
            )
            .optional()
        })
        .await
    }

    async fn by_id(&self, id: UserId) -> Result<Option<Member>, StoreError> {
        self.run(move |c| {
            c.query_row(
                "SELECT member_id, login, active FROM members WHERE member_id = ?1",
                [id.0],
                member,
            )
            .optional()
        })
        .await
    }

    /// Compare-and-set: a password changed meanwhile (by an admin, say) is not overwritten.
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let (expected, new) = (expected.to_owned(), new.to_owned());
        self.run(move |c| {
            c.execute(
                "UPDATE members SET pw_hash = ?3 WHERE member_id = ?1 AND pw_hash = ?2",
                rusqlite::params![id.0, expected, new],
            )
        })
        .await
        .map(|changed| changed == 1)
    }

    fn writes_password_hashes(&self) -> bool {
        true
    }
}

type User = CurrentUser<Members>;

#[derive(clap::Parser)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    // One file for the app's table and sessiond's sessions and throttle counters (one thing
    // to back up). The store opens it first: it creates the file readable by its owner only
    // and switches it to WAL, which lets both connections share it. Its migrations create
    // only their own tables (`sessions`, `throttle`, ... and a `users` table this app leaves
    // empty); an app whose own table is called `users` gives the store a file of its own.
    let store = Arc::new(SqliteStore::open("own-users.db")?);
    let members = Members::open("own-users.db")?;
    // Secure cookies (the default) need HTTPS: plain HTTP only on this machine, to try it out.
    let secure = !args.listen.ip().is_loopback();
    let cookie = CookieConfig::new("example", secure, None, SameSite::Lax);
    let sessions = SessionManager::new(store.clone(), cookie, ExpiryPolicy::default());
    let auth = Auth::builder(members, sessions, store).build()?;
    create_demo_user(&auth).await?;
    let origin = format!("http://{}", args.listen);
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html(r#"<h1>Example</h1><a href="/private">Private</a>"#) }),
        )
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/private", get(private))
        .route("/api/me", get(me))
        .layer(CsrfLayer::new(Origins::new(&origin)?))
        .layer(auth.layer());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on {origin}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// On first start: the member `demo`, with `EXAMPLE_PASSWORD` or a random password printed
/// once.
async fn create_demo_user(auth: &Auth<Members>) -> anyhow::Result<()> {
    if auth.backend().by_username("demo").await?.is_some() {
        return Ok(());
    }
    let (password, random) = match std::env::var("EXAMPLE_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (SessionToken::generate().expose().to_owned(), true),
    };
    let hash = auth.hasher().hash(Password::new(password.clone())?).await?;
    let created = auth
        .backend()
        .run(move |c| {
            c.execute(
                "INSERT INTO members (login, pw_hash) VALUES ('demo', ?1) ON CONFLICT DO NOTHING",
                [hash],
            )
        })
        .await?;
    if random && created == 1 {
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

async fn login(mut auth: AuthSession<Members>, Form(f): Form<LoginForm>) -> Response {
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

async fn logout(mut auth: AuthSession<Members>) -> Result<Redirect, AuthError> {
    auth.log_out().await?;
    Ok(Redirect::to("/"))
}

async fn private(
    CurrentUser(user): User,
    data: SessionMap,
) -> Result<Html<String>, SessionRejection> {
    let visits = data.get::<u64>("visits").await?.unwrap_or(0) + 1;
    data.insert("visits", visits).await?;
    Ok(Html(format!(
        r#"<h1>Hello <span id="user">{}</span></h1><p id="visits">visits: {visits}</p>
<form method="post" action="/logout"><button id="logout">Log out</button></form>"#,
        esc(&user.login)
    )))
}

async fn me(CurrentUser(user): User) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "username": user.login }))
}

/// Text for HTML (element content or a quoted attribute).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
