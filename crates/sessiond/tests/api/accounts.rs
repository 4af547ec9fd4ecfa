//! Account changes under failure and races (issue 15 #12, #15, #16): the stores are wrapped
//! so a test can fail a call, or make another change land at the worst moment, exactly.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use sessiond::accounts;
use sessiond::AppState;
use sessiond::{hash_blocking, Hasher};
use sessiond::{Config, FileConfig, Overrides};
use sessiond_axum::SessionManager;
use sessiond_core::{
    ChangeFeed, NewUser, Password, SessionData, SessionId, SessionRecord, SessionStore, StoreError,
    ThrottleStore, Timestamp, TokenHash, User, UserCredentials, UserId, UserStore, Username,
};
use sessiond_store_sqlite::SqliteStore;

use crate::helpers::{db_url, json, PASSWORD};

type Hook = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `hook` once, the first time it is taken.
#[derive(Default)]
struct Once(Mutex<Option<Hook>>);

impl Once {
    fn set(&self, hook: impl Future<Output = ()> + Send + 'static) {
        *self.0.lock().unwrap() = Some(Box::pin(hook));
    }
    async fn fire(&self) {
        let hook = self.0.lock().unwrap().take();
        if let Some(h) = hook {
            h.await;
        }
    }
}

/// A session store that can fail `delete_for_user`, and run a hook just before a `create`
/// or a `rotate` reaches the store.
#[derive(Default)]
struct Sessions {
    inner: Option<Arc<SqliteStore>>,
    fail_delete_for_user: AtomicBool,
    delete_for_user_calls: AtomicUsize,
    before_create: Once,
    before_rotate: Once,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedSessions")
    }
}

impl Sessions {
    fn s(&self) -> &SqliteStore {
        self.inner.as_deref().unwrap()
    }
}

fn injected() -> StoreError {
    StoreError::Unavailable("injected failure".into())
}

#[async_trait]
impl SessionStore for Sessions {
    async fn create(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.before_create.fire().await;
        self.s().create(s).await
    }
    async fn load(&self, h: &TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        self.s().load(h).await
    }
    async fn touch(&self, h: &TokenHash, l: Timestamp, e: Timestamp) -> Result<(), StoreError> {
        self.s().touch(h, l, e).await
    }
    async fn delete(&self, h: &TokenHash) -> Result<bool, StoreError> {
        self.s().delete(h).await
    }
    async fn rotate(&self, old: &TokenHash, new: &SessionRecord) -> Result<bool, StoreError> {
        self.before_rotate.fire().await;
        self.s().rotate(old, new).await
    }
    async fn list_for_user(&self, u: UserId) -> Result<Vec<SessionRecord>, StoreError> {
        self.s().list_for_user(u).await
    }
    async fn list_all(&self) -> Result<Vec<SessionRecord>, StoreError> {
        self.s().list_all().await
    }
    async fn delete_by_id(&self, id: &SessionId, o: Option<UserId>) -> Result<bool, StoreError> {
        self.s().delete_by_id(id, o).await
    }
    async fn delete_for_user(
        &self,
        u: UserId,
        keep: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.delete_for_user_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_delete_for_user.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.s().delete_for_user(u, keep).await
    }
    async fn delete_all(&self) -> Result<u64, StoreError> {
        self.s().delete_all().await
    }
    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<u64, StoreError> {
        self.s().purge_expired(now, limit).await
    }
    async fn load_data(&self, h: &TokenHash) -> Result<Option<SessionData>, StoreError> {
        self.s().load_data(h).await
    }
    async fn save_data(&self, h: &TokenHash, d: &SessionData) -> Result<bool, StoreError> {
        self.s().save_data(h, d).await
    }
    async fn patch_data(
        &self,
        h: &TokenHash,
        set: &SessionData,
        remove: &[String],
    ) -> Result<bool, StoreError> {
        self.s().patch_data(h, set, remove).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.s().ping().await
    }
    async fn subscribe(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        self.s().subscribe().await
    }
    async fn generation(&self) -> Result<u64, StoreError> {
        self.s().generation().await
    }
}

/// A user store that runs a hook just before the first password write reaches the store.
struct Users {
    inner: Arc<SqliteStore>,
    before_password_write: Once,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedUsers")
    }
}

#[async_trait]
impl UserStore for Users {
    async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        self.inner.create_user(new).await
    }
    async fn create_user_if_none(&self, new: &NewUser) -> Result<Option<User>, StoreError> {
        self.inner.create_user_if_none(new).await
    }
    async fn user_by_name(&self, n: &Username) -> Result<Option<UserCredentials>, StoreError> {
        self.inner.user_by_name(n).await
    }
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.inner.user_by_id(id).await
    }
    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.inner.list_users().await
    }
    async fn set_password_hash(&self, id: UserId, phc: &str) -> Result<bool, StoreError> {
        self.before_password_write.fire().await;
        self.inner.set_password_hash(id, phc).await
    }
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        phc: &str,
    ) -> Result<bool, StoreError> {
        self.before_password_write.fire().await;
        self.inner.set_password_hash_if(id, expected, phc).await
    }
    async fn set_disabled(&self, id: UserId, disabled: bool) -> Result<bool, StoreError> {
        self.inner.set_disabled(id, disabled).await
    }
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.inner.delete_user(id).await
    }
}

/// A server over the hooked stores (one SQLite file underneath both).
struct Hooked {
    base: String,
    state: AppState,
    db: Arc<SqliteStore>,
    users: Arc<Users>,
    sessions: Arc<Sessions>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn spawn_hooked(file: &str) -> Hooked {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let over = Overrides {
        listen: Some(addr.to_string()),
        database: Some(db_url(dir.path())),
        ..Overrides::default()
    };
    let file: FileConfig = toml::from_str(file).unwrap();
    let config = Config::resolve(file, over).unwrap();
    let db = Arc::new(SqliteStore::open(dir.path().join("sessiond.db")).unwrap());
    let users = Arc::new(Users {
        inner: Arc::clone(&db),
        before_password_write: Once::default(),
    });
    let sessions = Arc::new(Sessions {
        inner: Some(Arc::clone(&db)),
        ..Sessions::default()
    });
    let manager = SessionManager::new(
        Arc::clone(&sessions) as Arc<dyn SessionStore>,
        config.cookie.clone(),
        config.policy,
    )
    .with_cache(1_000);
    let auth = sessiond_axum::Auth::builder(
        sessiond_axum::BuiltinUsers::new(Arc::clone(&users) as Arc<dyn UserStore>),
        manager,
        Arc::clone(&db) as Arc<dyn ThrottleStore>,
    )
    .hasher(Hasher::for_this_machine().unwrap())
    .max_sessions_per_user(config.max_sessions_per_user)
    .build()
    .unwrap();
    let state = AppState::new(config, auth);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sessiond::run(listener, state.clone(), async {
        let _ = rx.await;
    }));
    Hooked {
        base: format!("http://{addr}"),
        state,
        db,
        users,
        sessions,
        _dir: dir,
        _stop: tx,
    }
}

impl Hooked {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn add_user(&self, name: &str, admin: bool) -> User {
        let phc = hash_blocking(&Password::new(PASSWORD.into()).unwrap()).unwrap();
        self.db
            .create_user(&NewUser {
                username: Username::parse(name).unwrap(),
                name: String::new(),
                email: String::new(),
                groups: vec![],
                admin,
                password_hash: phc,
                created_at: sessiond::now(),
            })
            .await
            .unwrap()
    }

    /// A logged-in client (its own cookie jar).
    async fn login(&self, name: &str, password: &str) -> (reqwest::Client, StatusCode) {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let status = c
            .post(self.url("/api/login"))
            .json(&serde_json::json!({ "username": name, "password": password }))
            .send()
            .await
            .unwrap()
            .status();
        (c, status)
    }

    async fn whoami(&self, c: &reqwest::Client) -> StatusCode {
        c.get(self.url("/api/session"))
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn change_password(&self, c: &reqwest::Client, new: &str) -> reqwest::Response {
        c.post(self.url("/api/password"))
            .json(&serde_json::json!({ "current_password": PASSWORD, "new_password": new }))
            .send()
            .await
            .unwrap()
    }

    /// Whether `password` logs `name` in now (a fresh client, then logged out again).
    async fn password_works(&self, name: &str, password: &str) -> bool {
        let (c, status) = self.login(name, password).await;
        if status == StatusCode::OK {
            c.post(self.url("/api/logout")).send().await.unwrap();
        }
        status == StatusCode::OK
    }

    async fn sessions_of(&self, user: &User) -> usize {
        self.db.list_for_user(user.id).await.unwrap().len()
    }
}

fn phc(password: &str) -> String {
    hash_blocking(&Password::new(password.into()).unwrap()).unwrap()
}

const NEW: &str = "a brand new password";
const ADMINS: &str = "the admin's reset password";

/// #12: the session store fails while a user changes their password (the attacker's
/// session cannot be ended). The change must not half-happen: refused with `503`, and the
/// password unchanged (the user knows it failed and can try again), never "password
/// changed" with the attacker still logged in.
#[tokio::test]
async fn password_change_fails_safe_when_sessions_cannot_end() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (attacker, s1) = app.login("alice", PASSWORD).await;
    let (owner, s2) = app.login("alice", PASSWORD).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));

    app.sessions
        .fail_delete_for_user
        .store(true, Ordering::SeqCst);
    let res = app.change_password(&owner, NEW).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["code"], "store_unavailable");
    app.sessions
        .fail_delete_for_user
        .store(false, Ordering::SeqCst);

    assert!(
        app.password_works("alice", PASSWORD).await,
        "the old password must stay while the attacker's session could not be ended"
    );
    assert!(!app.password_works("alice", NEW).await);
    // The attacker's session still exists (the store refused to end it), but nobody was
    // told otherwise; trying again once the store is back ends it.
    assert_eq!(app.whoami(&attacker).await, StatusCode::OK);
    let (owner, _) = app.login("alice", PASSWORD).await;
    let res = app.change_password(&owner, NEW).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&owner).await, StatusCode::OK);
    assert_eq!(app.sessions_of(&alice).await, 1);
}

/// #12, the admin side (admin page, CLI `user passwd`): the same order in
/// `accounts::set_password`, and disable/delete never leave a working session behind.
#[tokio::test]
async fn admin_changes_fail_safe_when_sessions_cannot_end() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (attacker, _) = app.login("alice", PASSWORD).await;
    let (users, sessions) = (app.users.as_ref(), app.sessions.as_ref());

    app.sessions
        .fail_delete_for_user
        .store(true, Ordering::SeqCst);
    let reset = accounts::set_password(users, sessions, alice.id, &phc(ADMINS)).await;
    assert!(
        reset.is_err(),
        "a reset that could not end sessions reports it"
    );
    assert!(
        app.password_works("alice", PASSWORD).await,
        "the reset must not have happened while the sessions live"
    );
    assert!(!app.password_works("alice", ADMINS).await);
    assert!(
        app.sessions.delete_for_user_calls.load(Ordering::SeqCst) >= 2,
        "a transient failure is retried"
    );

    // Disable: the flag lands first, so even though ending the sessions fails, none works.
    assert!(accounts::disable(users, sessions, alice.id).await.is_err());
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    app.db.set_disabled(alice.id, false).await.unwrap();

    // Delete: refused while the sessions cannot end; the user stays, disabled (so the
    // session left behind does not work either).
    let (attacker, _) = app.login("alice", PASSWORD).await;
    assert!(accounts::delete(users, sessions, alice.id).await.is_err());
    let left = app.db.user_by_id(alice.id).await.unwrap().unwrap();
    assert!(left.disabled);
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    app.db.set_disabled(alice.id, false).await.unwrap();

    app.sessions
        .fail_delete_for_user
        .store(false, Ordering::SeqCst);
    accounts::set_password(users, sessions, alice.id, &phc(ADMINS))
        .await
        .unwrap();
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    assert!(app.password_works("alice", ADMINS).await);
}

/// #15: an admin's reset lands while the attacker's password change is in flight (current
/// password verified, new hash not yet written). The reset wins: the change is refused with
/// `409 conflict`, the admin's password works and the attacker's does not, and the attacker
/// has no session.
#[tokio::test]
async fn a_change_in_flight_never_undoes_an_admin_reset() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (attacker, _) = app.login("alice", PASSWORD).await;
    let (users, sessions) = (Arc::clone(&app.users), Arc::clone(&app.sessions));
    let reset = phc(ADMINS);
    app.users.before_password_write.set(async move {
        accounts::set_password(users.as_ref(), sessions.as_ref(), alice.id, &reset)
            .await
            .unwrap();
    });
    let res = app
        .change_password(&attacker, "the attacker's choice")
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(json(res).await["code"], "conflict");
    assert!(app.password_works("alice", ADMINS).await);
    assert!(!app.password_works("alice", "the attacker's choice").await);
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.sessions_of(&alice).await, 0);
}

/// #15: the attacker's session is revoked (by an admin) between its verification and its
/// rotation in a password change: the rotation must fail, not carry the session on, and the
/// password must not change.
#[tokio::test]
async fn a_revoked_session_cannot_change_the_password() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (attacker, _) = app.login("alice", PASSWORD).await;
    let db = Arc::clone(&app.db);
    app.sessions.before_rotate.set(async move {
        db.delete_for_user(alice.id, None).await.unwrap();
    });
    let res = app
        .change_password(&attacker, "the attacker's choice")
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(app.password_works("alice", PASSWORD).await);
    assert!(!app.password_works("alice", "the attacker's choice").await);
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.sessions_of(&alice).await, 0);
}

/// #12: a reset lands while a login with the old password is being verified (argon2), so
/// the login creates its session after the reset ended all sessions. The login must not
/// leave a session behind the reset.
#[tokio::test]
async fn a_login_verified_before_a_reset_leaves_no_session() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (users, sessions) = (Arc::clone(&app.users), Arc::clone(&app.sessions));
    let reset = phc(ADMINS);
    app.sessions.before_create.set(async move {
        accounts::set_password(users.as_ref(), sessions.as_ref(), alice.id, &reset)
            .await
            .unwrap();
    });
    let (attacker, status) = app.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.whoami(&attacker).await, StatusCode::UNAUTHORIZED);
    assert_eq!(app.sessions_of(&alice).await, 0);
    assert!(app.password_works("alice", ADMINS).await);
}

/// A login that presents a session revoked meanwhile still succeeds (the password was just
/// proven) with a fresh session; the revoked one stays dead.
#[tokio::test]
async fn a_login_over_a_revoked_session_starts_afresh() {
    let app = spawn_hooked("").await;
    let alice = app.add_user("alice", false).await;
    let (c, _) = app.login("alice", PASSWORD).await;
    let old = app.db.list_for_user(alice.id).await.unwrap()[0].clone();
    let db = Arc::clone(&app.db);
    app.sessions.before_rotate.set(async move {
        db.delete_for_user(alice.id, None).await.unwrap();
    });
    let res = c
        .post(app.url("/api/login"))
        .json(&serde_json::json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let now = app.db.list_for_user(alice.id).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, old.id);
    assert_eq!(app.whoami(&c).await, StatusCode::OK);
    let _ = &app.state;
}

/// The last enabled admin cannot disable itself from the admin page (`409`, still enabled,
/// still logged in); with a second admin it can.
#[tokio::test]
async fn the_last_admin_cannot_disable_itself_on_the_admin_page() {
    let app = crate::helpers::spawn_app().await;
    app.add_user_with("boss", PASSWORD, true).await;
    let admin = app.client();
    app.form_login(&admin, "boss", PASSWORD).await;
    let (_, _, csrf) = app.page(&admin, "/admin").await;
    let res = admin
        .post(app.url("/admin/users/boss/disable"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert!(res.text().await.unwrap().contains("last enabled admin"));
    let boss = Username::parse("boss").unwrap();
    let creds = app.state.users.user_by_name(&boss).await.unwrap().unwrap();
    assert!(!creds.user.disabled);
    assert_eq!(app.whoami(&admin).await.status(), StatusCode::OK);

    // A disabled admin does not count: still the last enabled one.
    let other = app.add_user_with("deputy", PASSWORD, true).await;
    app.state.users.set_disabled(other.id, true).await.unwrap();
    let res = admin
        .post(app.url("/admin/users/boss/disable"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);

    app.state.users.set_disabled(other.id, false).await.unwrap();
    let res = admin
        .post(app.url("/admin/users/boss/disable"))
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let creds = app.state.users.user_by_name(&boss).await.unwrap().unwrap();
    assert!(creds.user.disabled);
}

/// Two admins disabling each other at once never leave the server without an enabled admin.
#[tokio::test]
async fn racing_disables_keep_an_admin() {
    let app = spawn_hooked("").await;
    for round in 0..10 {
        let a = app.add_user(&format!("a{round}"), true).await;
        let b = app.add_user(&format!("b{round}"), true).await;
        // Only these two are enabled admins.
        for u in app.db.list_users().await.unwrap() {
            if u.admin && u.id != a.id && u.id != b.id {
                app.db.set_disabled(u.id, true).await.unwrap();
            }
        }
        let (u1, s1) = (Arc::clone(&app.users), Arc::clone(&app.sessions));
        let (u2, s2) = (Arc::clone(&app.users), Arc::clone(&app.sessions));
        let t1 =
            tokio::spawn(async move { accounts::disable(u1.as_ref(), s1.as_ref(), a.id).await });
        let t2 =
            tokio::spawn(async move { accounts::delete(u2.as_ref(), s2.as_ref(), b.id).await });
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        let enabled = app
            .db
            .list_users()
            .await
            .unwrap()
            .iter()
            .filter(|u| u.admin && !u.disabled)
            .count();
        assert!(enabled >= 1, "round {round}: {r1:?} {r2:?}");
    }
}

/// #16: with `max_per_user = N`, N + 3 logins leave N sessions: the newest, the three
/// oldest ended (their clients logged out).
#[tokio::test]
async fn sessions_per_user_are_capped_oldest_first() {
    const N: usize = 4;
    let app = crate::helpers::spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        &format!("[session]\nmax_per_user = {N}"),
        Overrides::default(),
    )
    .await;
    let alice = app.add_user("alice").await;
    let bob = app.add_user("bob").await;
    let bobs = app.client();
    assert_eq!(
        app.api_login(&bobs, "bob", PASSWORD).await.status(),
        StatusCode::OK
    );
    let mut clients = Vec::new();
    for _ in 0..N + 3 {
        let c = app.client();
        assert_eq!(
            app.api_login(&c, "alice", PASSWORD).await.status(),
            StatusCode::OK
        );
        clients.push(c);
        // Distinct creation times, so "oldest" is unambiguous.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let store = app.state.sessions.store();
    assert_eq!(store.list_for_user(alice.id).await.unwrap().len(), N);
    for (i, c) in clients.iter().enumerate() {
        let want = if i < 3 {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(app.whoami(c).await.status(), want, "client {i}");
    }
    // Other users are untouched.
    assert_eq!(store.list_for_user(bob.id).await.unwrap().len(), 1);
    assert_eq!(app.whoami(&bobs).await.status(), StatusCode::OK);
}

/// The cap holds under a parallel burst of logins too (at most N remain once they are done).
#[tokio::test]
async fn the_cap_holds_under_parallel_logins() {
    const N: usize = 3;
    let app = crate::helpers::spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        &format!("[session]\nmax_per_user = {N}"),
        Overrides::default(),
    )
    .await;
    let alice = app.add_user("alice").await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let c = app.client();
                app.api_login(&c, "alice", PASSWORD).await.status()
            })
        })
        .collect();
    for t in tasks {
        let s = t.await.unwrap();
        // One address may have only a few attempts of one account in flight (the throttle
        // reserves each before hashing): the rest are refused with 429.
        assert!(
            s == StatusCode::OK
                || s == StatusCode::SERVICE_UNAVAILABLE
                || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
    }
    let n = app
        .state
        .sessions
        .store()
        .list_for_user(alice.id)
        .await
        .unwrap()
        .len();
    assert!(n <= N, "{n} sessions");
}

/// #16: `/api/sessions` is paginated: every session exactly once across the pages, in
/// order, `next` null on the last; bad `limit`/`after` are `400` with the JSON error body.
#[tokio::test]
async fn session_lists_are_paginated() {
    let app = crate::helpers::spawn_app().await;
    let alice = app.add_user("alice").await;
    let me = app.client();
    assert_eq!(
        app.api_login(&me, "alice", PASSWORD).await.status(),
        StatusCode::OK
    );
    // Sessions made straight in the store (no password hashing: quick).
    let store = app.state.sessions.store();
    for i in 0..22 {
        let (_, mut rec) = sessiond_store_tests::sessions::session_at(
            alice.id.0,
            Timestamp::from_millis(sessiond::now().as_millis() - 1_000 + i),
        );
        rec.user_id = alice.id;
        store.create(&rec).await.unwrap();
    }
    let all = store.list_for_user(alice.id).await.unwrap();
    assert_eq!(all.len(), 23);

    for limit in [1usize, 5, 23, 100] {
        let mut seen = Vec::new();
        let mut url = app.url(&format!("/api/sessions?limit={limit}"));
        loop {
            let res = me.get(&url).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let body = json(res).await;
            let page = body["sessions"].as_array().unwrap();
            assert!(page.len() <= limit);
            seen.extend(page.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
            match body["next"].as_str() {
                Some(next) => url = app.url(&format!("/api/sessions?limit={limit}&after={next}")),
                None => break,
            }
        }
        let want: Vec<String> = all.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(seen, want, "limit {limit}");
    }
    // Without parameters: the first page of DEFAULT_PAGE, so all 23 here.
    let body = json(me.get(app.url("/api/sessions")).send().await.unwrap()).await;
    assert_eq!(body["sessions"].as_array().unwrap().len(), 23);
    assert!(body["next"].is_null());
    for bad in [
        "limit=0",
        "limit=100000",
        "limit=x",
        "after=nonsense",
        "after=1.x",
    ] {
        let res = me
            .get(app.url(&format!("/api/sessions?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json(res).await["code"], "bad_request", "{bad}");
    }
}

/// #16: the account page and the admin page show one page of sessions with a link to the
/// next.
#[tokio::test]
async fn session_pages_are_paginated() {
    let app = crate::helpers::spawn_app().await;
    let boss = app.add_user_with("boss", PASSWORD, true).await;
    let me = app.client();
    app.form_login(&me, "boss", PASSWORD).await;
    let store = app.state.sessions.store();
    for i in 0..150 {
        let (_, mut rec) = sessiond_store_tests::sessions::session_at(
            boss.id.0,
            Timestamp::from_millis(sessiond::now().as_millis() - 10_000 + i),
        );
        rec.user_id = boss.id;
        store.create(&rec).await.unwrap();
    }
    for (path, table) in [("/", "id=\"sessions\""), ("/admin", "id=\"all-sessions\"")] {
        let (status, html, _) = app.page(&me, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let t = &html[html.find(table).unwrap()..];
        let t = &t[..t.find("</table>").unwrap()];
        let rows = t.matches("<tr").count() - 1; // minus the header row
        assert_eq!(rows, 100, "{path}: {rows} rows");
        let i = html.find("id=\"next-sessions\"").expect("a next link");
        let href = html[..i].rsplit("href=\"").next().unwrap();
        let href = href.split('"').next().unwrap().replace("&amp;", "&");
        let (status, html2, _) = app.page(&me, &href).await;
        assert_eq!(status, StatusCode::OK, "{href}");
        assert!(
            !html2.contains("id=\"next-sessions\""),
            "{href}: one more page only"
        );
    }
}

/// An account gets at most `MAX_NEW_DEVICES` new device registrations a day (each is kept a
/// year); later logins still succeed, without a new device cookie; a known device keeps
/// working.
#[tokio::test]
async fn device_registrations_per_account_are_bounded() {
    use sessiond::accounts::MAX_NEW_DEVICES;
    let app = crate::helpers::spawn_app().await;
    app.add_user("alice").await;
    let bare = app.bare_client();
    let login = |cookie: Option<String>| {
        let mut req = bare
            .post(app.url("/api/login"))
            .json(&serde_json::json!({ "username": "alice", "password": PASSWORD }));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    let device_of = |res: &reqwest::Response| {
        crate::helpers::set_cookies(res.headers())
            .into_iter()
            .find(|c| c.starts_with("__Host-sessiond_device="))
            .map(|c| c.split(';').next().unwrap().to_owned())
    };
    let mut first = None;
    for i in 0..MAX_NEW_DEVICES + 3 {
        let res = login(None).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "login {i}");
        let device = device_of(&res);
        assert_eq!(device.is_some(), i < MAX_NEW_DEVICES, "login {i}");
        first = first.or(device);
    }
    let now = app.state.sessions.now();
    let registrations = app
        .state
        .throttle
        .throttle_list(now)
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("dv:") && k.ends_with("|alice"))
        .count() as u64;
    assert_eq!(registrations, MAX_NEW_DEVICES);
    // Junk cookies count against the bound too (no registration for them now).
    let junk = format!("__Host-sessiond_device={}", "B".repeat(43));
    let res = login(Some(junk)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A device registered before still logs in and stays registered.
    let res = login(first.clone()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let after = app
        .state
        .throttle
        .throttle_list(now)
        .await
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("dv:") && k.ends_with("|alice"))
        .count() as u64;
    assert_eq!(after, MAX_NEW_DEVICES);
}

/// A change of groups or the admin flag made straight in the database (the `sqlite3` shell,
/// another process) reaches a running server within 100 ms (docs/reference/sessions.md, "What
/// ends a session"), like a CLI change: the store's generation moves with it.
#[tokio::test]
async fn direct_database_changes_of_groups_and_admin_are_seen() {
    let app = crate::helpers::spawn_app().await;
    app.add_user("gus").await;
    let c = app.client();
    assert_eq!(
        app.api_login(&c, "gus", PASSWORD).await.status(),
        StatusCode::OK
    );
    let groups = |v: serde_json::Value| v["user"]["groups"].clone();
    assert_eq!(
        groups(json(app.whoami(&c).await).await),
        serde_json::json!(["dev"])
    );
    // Warm the verification cache.
    for _ in 0..3 {
        app.whoami(&c).await;
    }
    let sql = |stmt: &str| {
        let out = std::process::Command::new("sqlite3")
            .args(["-cmd", ".timeout 5000"])
            .arg(app.db_path())
            .arg(stmt)
            .output()
            .expect("sqlite3 runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql("UPDATE users SET groups = '[\"ops\"]' WHERE username_key = 'gus';");
    let start = std::time::Instant::now();
    loop {
        let body = json(app.whoami(&c).await).await;
        if groups(body.clone()) == serde_json::json!(["ops"]) {
            break;
        }
        assert!(start.elapsed() < Duration::from_millis(100), "still {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sql("UPDATE users SET admin = 1 WHERE username_key = 'gus';");
    let start = std::time::Instant::now();
    loop {
        let body = json(app.whoami(&c).await).await;
        if body["user"]["admin"] == true {
            break;
        }
        assert!(start.elapsed() < Duration::from_millis(100), "still {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
