//! An app's own users behind [`UserBackend`], driven through [`Auth`] directly (no HTTP):
//! what the library promises every backend (the password check, the throttle, the session
//! bookkeeping) holds for one it did not write.
//!
//! Run with `cargo test -p sessiond-axum --test own_backend`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue};
use sessiond_axum::auth::{LoginAttempt, UserBackend};
use sessiond_axum::core::{ExpiryPolicy, Password, SessionToken, StoreError, Timestamp, UserId};
use sessiond_axum::password::hash_blocking;
use sessiond_axum::{
    async_trait, ActiveSession, Auth, AuthError, AuthUser, ClientInfo, CookieConfig, Hasher,
    SameSite, SessionManager,
};
use sessiond_store_memory::MemoryStore;

const ALICE: i64 = 1;
const ALICE_PW: &str = "alice password 1";
const BOB: i64 = 2;
const BOB_PW: &str = "bob password 22";

/// The app's user type: its own id and field names.
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

/// A row of the app's users table.
struct Row {
    login: String,
    hash: String,
    active: bool,
}

/// The app's users table, by id.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<HashMap<i64, Row>>>);

impl Table {
    /// alice (active) and bob (inactive), with argon2id hashes of their passwords.
    fn seeded() -> Self {
        let t = Self::default();
        for (id, login, pw, active) in [
            (ALICE, "alice", ALICE_PW, true),
            (BOB, "bob", BOB_PW, false),
        ] {
            let hash = hash_blocking(&Password::new(pw.into()).unwrap()).unwrap();
            t.0.lock().unwrap().insert(
                id,
                Row {
                    login: login.into(),
                    hash,
                    active,
                },
            );
        }
        t
    }

    fn member(id: i64, row: &Row) -> Member {
        Member {
            id,
            login: row.login.clone(),
            active: row.active,
        }
    }

    /// Case-insensitive, as the app's collation would have it.
    fn by_username(&self, name: &str) -> Option<(Member, String)> {
        let rows = self.0.lock().unwrap();
        rows.iter()
            .find(|(_, row)| row.login.eq_ignore_ascii_case(name))
            .map(|(id, row)| (Self::member(*id, row), row.hash.clone()))
    }

    fn by_id(&self, id: i64) -> Option<Member> {
        self.0
            .lock()
            .unwrap()
            .get(&id)
            .map(|row| Self::member(id, row))
    }

    fn hash_of(&self, id: i64) -> String {
        self.0.lock().unwrap()[&id].hash.clone()
    }

    fn set_hash(&self, id: i64, hash: String) {
        self.0.lock().unwrap().get_mut(&id).unwrap().hash = hash;
    }

    fn set_active(&self, id: i64, active: bool) {
        self.0.lock().unwrap().get_mut(&id).unwrap().active = active;
    }
}

/// A backend that only reads: the trait's default `set_password_hash_if` (writes nothing).
struct ReadOnly(Table);

#[async_trait]
impl UserBackend for ReadOnly {
    type User = Member;
    async fn by_username(&self, name: &str) -> Result<Option<(Member, String)>, StoreError> {
        Ok(self.0.by_username(name))
    }
    async fn by_id(&self, id: UserId) -> Result<Option<Member>, StoreError> {
        Ok(self.0.by_id(id.0))
    }
}

/// A backend that also writes password hashes (compare-and-set).
struct Writable(Table);

#[async_trait]
impl UserBackend for Writable {
    type User = Member;
    async fn by_username(&self, name: &str) -> Result<Option<(Member, String)>, StoreError> {
        Ok(self.0.by_username(name))
    }
    async fn by_id(&self, id: UserId) -> Result<Option<Member>, StoreError> {
        Ok(self.0.by_id(id.0))
    }
    async fn set_password_hash_if(
        &self,
        id: UserId,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let mut rows = self.0 .0.lock().unwrap();
        match rows.get_mut(&id.0) {
            Some(row) if row.hash == expected => {
                new.clone_into(&mut row.hash);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn writes_password_hashes(&self) -> bool {
        true
    }
}

/// An [`Auth`] over `backend` (made from the seeded table), sessions and throttle counters
/// in memory, and a clock the test moves.
struct Fixture<B: UserBackend> {
    auth: Auth<B>,
    table: Table,
    clock: Arc<AtomicI64>,
}

fn fixture<B: UserBackend>(backend: impl FnOnce(Table) -> B) -> Fixture<B> {
    fixture_hashing_on(backend, Hasher::start(2, 8).unwrap()).0
}

/// [`fixture`] with the hashing pool given, and its throttle store.
fn fixture_hashing_on<B: UserBackend>(
    backend: impl FnOnce(Table) -> B,
    hasher: Hasher,
) -> (Fixture<B>, Arc<MemoryStore>) {
    let table = Table::seeded();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(AtomicI64::new(
        Timestamp::from_system_time(SystemTime::now()).as_millis(),
    ));
    let now = Arc::clone(&clock);
    let cookie = CookieConfig::new("t", false, None, SameSite::Lax);
    let sessions = SessionManager::new(store.clone(), cookie, ExpiryPolicy::default())
        .with_clock(move || Timestamp::from_millis(now.load(Ordering::SeqCst)));
    let auth = Auth::builder(backend(table.clone()), sessions, store.clone())
        .hasher(hasher)
        .build()
        .unwrap();
    (Fixture { auth, table, clock }, store)
}

impl<B: UserBackend> Fixture<B> {
    async fn log_in(
        &self,
        username: &str,
        password: &str,
        ip: &str,
    ) -> Result<(Arc<B::User>, SessionToken), AuthError> {
        self.log_in_from(username, password, Some(ip)).await
    }

    /// A login from `ip`, or from a client whose address the app does not know.
    async fn log_in_from(
        &self,
        username: &str,
        password: &str,
        ip: Option<&str>,
    ) -> Result<(Arc<B::User>, SessionToken), AuthError> {
        let done = self
            .auth
            .log_in(LoginAttempt {
                username,
                password: password.to_owned(),
                remember: false,
                client: ClientInfo {
                    ip: ip.map(str::to_owned),
                    user_agent: None,
                },
                device_cookie: None,
                presented: None,
            })
            .await?;
        Ok((Arc::new(done.user), done.token))
    }

    /// The session `token` names, if it is valid (as a request with its cookie would see it).
    async fn session(&self, token: &SessionToken) -> Option<ActiveSession> {
        let mut headers = HeaderMap::new();
        let name = self.auth.sessions().cookie_config().name();
        let cookie = format!("{name}={}", token.expose());
        headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        self.auth.sessions().verify(&headers).await.unwrap()
    }

    /// The ids of `user`'s sessions, oldest first.
    async fn session_ids(&self, user: i64) -> Vec<String> {
        let list = self
            .auth
            .sessions_of(UserId(user), None, 100)
            .await
            .unwrap();
        list.iter().map(|r| r.id.as_str().to_owned()).collect()
    }

    fn advance(&self, by: Duration) {
        self.clock
            .fetch_add(i64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

fn assert_invalid_credentials<T: std::fmt::Debug>(r: Result<T, AuthError>, what: &str) {
    assert!(
        matches!(r, Err(AuthError::InvalidCredentials)),
        "{what}: {r:?}"
    );
}

#[tokio::test]
async fn the_right_password_logs_in_a_member_of_the_apps_own_table() {
    let f = fixture(ReadOnly);
    let (user, token) = f.log_in("alice", ALICE_PW, "192.0.2.1").await.unwrap();
    assert_eq!((user.id, user.login.as_str()), (ALICE, "alice"));

    // The session is kept under the app's id, and verifies back to the app's user.
    let session = f.session(&token).await.expect("the new session verifies");
    assert_eq!(session.record().user_id, UserId(ALICE));
    let again = f.auth.user_of(&session).await.unwrap().expect("its user");
    assert_eq!(again.login, "alice");
    assert_eq!(f.session_ids(ALICE).await, [session.record().id.as_str()]);

    // The name goes to the backend as typed: matching is the app's (here case-insensitive).
    let (user, _) = f.log_in("ALICE", ALICE_PW, "192.0.2.1").await.unwrap();
    assert_eq!(user.id, ALICE);
    assert_eq!(f.session_ids(ALICE).await.len(), 2);
    assert_eq!(
        f.auth.counters().logins_succeeded.load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn wrong_unknown_and_inactive_users_get_one_answer() {
    let f = fixture(ReadOnly);
    let ip = "192.0.2.2";
    assert_invalid_credentials(f.log_in("alice", "not alice's", ip).await, "wrong password");
    assert_invalid_credentials(f.log_in("alice", "", ip).await, "empty password");
    assert_invalid_credentials(f.log_in("carol", ALICE_PW, ip).await, "unknown user");
    // bob's password is right, but the backend says bob is not active.
    assert_invalid_credentials(f.log_in("bob", BOB_PW, ip).await, "inactive user");
    assert!(f.session_ids(ALICE).await.is_empty());
    assert!(f.session_ids(BOB).await.is_empty());
    assert_eq!(f.auth.counters().logins_failed.load(Ordering::Relaxed), 4);
    assert_eq!(
        f.auth.counters().logins_succeeded.load(Ordering::Relaxed),
        0
    );
}

/// An app that does not know its clients' addresses (served without `ConnectInfo`) must not
/// pool them into one: 25 failures against unknown accounts, and 25 against bob, from
/// "nowhere", neither lock alice out nor bob himself (below the account ceiling of 100).
#[tokio::test]
async fn unknown_addresses_share_no_counter() {
    let f = fixture(ReadOnly);
    for i in 0..25 {
        let name = format!("nobody{i}");
        assert_invalid_credentials(f.log_in_from(&name, "x-guess-x", None).await, &name);
        assert_invalid_credentials(f.log_in_from("bob", "x-guess-x", None).await, "bob");
    }
    f.log_in_from("alice", ALICE_PW, None)
        .await
        .expect("alice, from an unknown address too");
}

#[tokio::test]
async fn the_throttle_holds_back_a_guesser_of_a_custom_backends_account() {
    let f = fixture(ReadOnly);
    let guesser = "198.51.100.7";
    // The (account, address) pair's threshold: five failures.
    for i in 0..5 {
        assert_invalid_credentials(
            f.log_in("alice", &format!("guess {i}"), guesser).await,
            &format!("guess {i}"),
        );
    }
    // Now even the right password is refused, before any password work.
    let retry_after = match f.log_in("alice", ALICE_PW, guesser).await {
        Err(AuthError::Throttled { retry_after }) => retry_after,
        other => panic!("the sixth attempt from the guesser's address: {other:?}"),
    };
    assert!(retry_after >= 1);
    // Counted as typed, case-folded: another spelling of the name is the same account.
    assert!(
        matches!(
            f.log_in("ALICE", ALICE_PW, guesser).await,
            Err(AuthError::Throttled { .. })
        ),
        "the same account, spelled otherwise"
    );
    assert!(f.session_ids(ALICE).await.is_empty());

    // alice herself, from her own address, is not locked out by the guesser.
    f.log_in("alice", ALICE_PW, "192.0.2.3")
        .await
        .expect("alice from another address");
    // Once the back-off is over, the guesser's address may try again.
    f.advance(Duration::from_secs(retry_after));
    f.log_in("alice", ALICE_PW, guesser)
        .await
        .expect("the right password after the back-off");
}

#[tokio::test]
async fn a_backend_that_writes_no_hashes_refuses_a_password_change_and_keeps_the_sessions() {
    let f = fixture(ReadOnly);
    let (user, here) = f.log_in("alice", ALICE_PW, "192.0.2.4").await.unwrap();
    let (_, elsewhere) = f.log_in("alice", ALICE_PW, "192.0.2.5").await.unwrap();
    let before = f.session_ids(ALICE).await;
    assert_eq!(before.len(), 2);
    let hash = f.table.hash_of(ALICE);

    let session = f.session(&here).await.unwrap();
    let r = f
        .auth
        .change_password(
            &session,
            &user,
            ALICE_PW.into(),
            "a new password 3".into(),
            ClientInfo::default(),
        )
        .await;
    assert!(matches!(r, Err(AuthError::Conflict(_))), "{r:?}");
    assert_eq!(
        f.table.hash_of(ALICE),
        hash,
        "the hash is the backend's to write"
    );
    assert_eq!(
        f.session_ids(ALICE).await,
        before,
        "a refused change ends no session"
    );
    assert!(f.session(&here).await.is_some(), "this session still works");
    assert!(f.session(&elsewhere).await.is_some(), "the other one too");
    f.log_in("alice", ALICE_PW, "192.0.2.4")
        .await
        .expect("the old password still works");
}

#[tokio::test]
async fn a_backend_that_writes_hashes_changes_the_password_and_ends_the_other_sessions() {
    let f = fixture(Writable);
    let (user, here) = f.log_in("alice", ALICE_PW, "192.0.2.6").await.unwrap();
    let (_, elsewhere) = f.log_in("alice", ALICE_PW, "192.0.2.7").await.unwrap();
    let session = f.session(&here).await.unwrap();
    let changed = f
        .auth
        .change_password(
            &session,
            &user,
            ALICE_PW.into(),
            "a new password 3".into(),
            ClientInfo::default(),
        )
        .await
        .expect("the change");
    assert_eq!(
        f.session_ids(ALICE).await,
        [changed.record.id.as_str()],
        "only the rotated session is left"
    );
    assert!(
        f.session(&here).await.is_none(),
        "the old secret is rotated out"
    );
    assert!(
        f.session(&elsewhere).await.is_none(),
        "the other session ended"
    );
    assert!(f.session(&changed.token).await.is_some());
    assert_invalid_credentials(
        f.log_in("alice", ALICE_PW, "192.0.2.6").await,
        "the old password",
    );
    f.log_in("alice", "a new password 3", "192.0.2.6")
        .await
        .expect("the new password");
}

#[tokio::test]
async fn user_of_ends_the_session_once_the_backend_says_the_user_is_inactive() {
    let f = fixture(ReadOnly);
    let (_, token) = f.log_in("alice", ALICE_PW, "192.0.2.8").await.unwrap();
    let session = f.session(&token).await.unwrap();
    assert!(f.auth.user_of(&session).await.unwrap().is_some());

    // Disabled in the app's own table, behind sessiond's back.
    f.table.set_active(ALICE, false);
    assert!(f.auth.user_of(&session).await.unwrap().is_none());
    assert!(f.session(&token).await.is_none(), "the session ended");
    assert!(f.session_ids(ALICE).await.is_empty());

    // Active again: the ended session stays ended, a new login works.
    f.table.set_active(ALICE, true);
    assert!(f.session(&token).await.is_none());
    f.log_in("alice", ALICE_PW, "192.0.2.8").await.unwrap();
}

#[tokio::test]
async fn an_outdated_hash_is_upgraded_through_the_backend_at_login() {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    let outdated = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 1, 1, None).unwrap(),
    )
    .hash_password(
        ALICE_PW.as_bytes(),
        &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
    )
    .unwrap()
    .to_string();

    // A backend that writes no hashes keeps what it has, and its users still log in.
    let f = fixture(ReadOnly);
    f.table.set_hash(ALICE, outdated.clone());
    f.log_in("alice", ALICE_PW, "192.0.2.9").await.unwrap();
    assert_eq!(f.table.hash_of(ALICE), outdated);

    // One that writes gets the current parameters, off the login's path.
    let f = fixture(Writable);
    f.table.set_hash(ALICE, outdated.clone());
    f.log_in("alice", ALICE_PW, "192.0.2.9").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.table.hash_of(ALICE) == outdated {
        assert!(
            std::time::Instant::now() < deadline,
            "no upgrade within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upgraded = f.table.hash_of(ALICE);
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    f.log_in("alice", ALICE_PW, "192.0.2.9")
        .await
        .expect("the same password against the upgraded hash");
    assert_invalid_credentials(f.log_in("alice", "not alice's", "192.0.2.9").await, "wrong");
}

/// A login the hashing pool would refuse (here: its one place taken by another login) is
/// refused before the throttle is read, so it reserves nothing (a flood of refusals costs
/// the store nothing and counts against no one), and its answer waits (`OVERLOADED_PAUSE`,
/// 50 ms) so a client that sends the next attempt as soon as it has the answer cannot
/// spin (docs/performance.md, "Refusals in a login flood").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_reserves_nothing_and_its_answer_waits() {
    let (f, store) = fixture_hashing_on(ReadOnly, Hasher::start(1, 0).unwrap());
    let f = Arc::new(f);
    let first = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { f.log_in("alice", ALICE_PW, "192.0.2.1").await.map(|_| ()) })
    };
    let waited = std::time::Instant::now();
    while f.auth.hasher().in_flight() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the first login never hashed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let asked = std::time::Instant::now();
    let refused = f.log_in("mallory", "a guess", "198.51.100.7").await;
    let took = asked.elapsed();
    assert!(
        matches!(
            refused,
            Err(AuthError::Hash(sessiond_axum::HashError::Overloaded))
        ),
        "{refused:?}"
    );
    assert!(took >= Duration::from_millis(50), "answered after {took:?}");
    first.await.unwrap().unwrap();
    let now = Timestamp::from_millis(f.clock.load(Ordering::SeqCst));
    let counters = sessiond_axum::core::ThrottleStore::throttle_list(&*store, now)
        .await
        .unwrap();
    assert!(
        counters
            .iter()
            .all(|(key, _)| !key.contains("mallory") && !key.contains("198.51.100.7")),
        "the refused attempt reserved {counters:?}"
    );
}
