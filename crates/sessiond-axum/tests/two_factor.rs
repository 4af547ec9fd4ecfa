//! Second factors in the library, through a real axum router: TOTP enrolment and use,
//! recovery codes, levels, `two_factor_required` and `TwoFactorUser`, judged by what a client
//! gets (status, cookies, whether the old cookie still works).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use sessiond_axum::auth::{totp_code, AuthBuilder, TOTP_STEP_SECS};
use sessiond_axum::core::{
    ExpiryPolicy, FactorStore, NewUser, Password, Timestamp, UserStore, Username,
};
use sessiond_axum::{
    two_factor_required, Auth, AuthError, AuthSession, BuiltinUsers, CookieConfig, EncryptionKey,
    FactorKind, SameSite, SecondFactors, SessionManager, TwoFactorUser,
};
use sessiond_store_memory::MemoryStore;
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery";
type Users = BuiltinUsers;

/// A fixed clock the test moves (ms since the epoch).
#[derive(Clone)]
struct Clock(Arc<AtomicI64>);

impl Clock {
    fn step(&self) -> i64 {
        self.0.load(Ordering::SeqCst) / 1000 / TOTP_STEP_SECS
    }
    fn advance_steps(&self, n: i64) {
        self.0
            .fetch_add(n * TOTP_STEP_SECS * 1000, Ordering::SeqCst);
    }
}

struct App {
    router: Router,
    store: Arc<MemoryStore>,
    auth: Auth<Users>,
    clock: Clock,
}

async fn app() -> App {
    app_with(|b| b).await
}

async fn app_with(options: impl FnOnce(AuthBuilder<Users>) -> AuthBuilder<Users>) -> App {
    let store = Arc::new(MemoryStore::new());
    // Mid-step, so ±1 step is unambiguous.
    let clock = Clock(Arc::new(AtomicI64::new(1_800_000_015_000)));
    let c = clock.clone();
    let cookie = CookieConfig::new("t", true, None, SameSite::Lax);
    let sessions = SessionManager::new(store.clone(), cookie, ExpiryPolicy::default())
        .with_clock(move || Timestamp::from_millis(c.0.load(Ordering::SeqCst)));
    let factors = SecondFactors::new(store.clone(), EncryptionKey::generate()).issuer("Test App");
    let builder = Auth::builder(BuiltinUsers::new(store.clone()), sessions, store.clone())
        .second_factors(factors)
        // Every request from one known address, so the address counters apply.
        .client_ip(|_| Some(std::net::Ipv4Addr::new(198, 51, 100, 7).into()));
    let auth = options(builder).build().unwrap();
    let hash = auth
        .hasher()
        .hash(Password::new(PASSWORD.into()).unwrap())
        .await
        .unwrap();
    store
        .create_user(&NewUser {
            username: Username::parse("ada").unwrap(),
            name: String::new(),
            email: String::new(),
            groups: Vec::new(),
            admin: false,
            password_hash: hash,
            created_at: auth.sessions().now(),
        })
        .await
        .unwrap();
    let strong = Router::new()
        .route("/admin", get(|| async { "admin" }))
        .route_layer(two_factor_required::<Users>());
    let router = Router::new()
        .route(
            "/login",
            post(|mut a: AuthSession<Users>, body: String| async move {
                a.log_in("ada", body, false).await.map(|_| "ok")
            }),
        )
        .route(
            "/level",
            get(|a: AuthSession<Users>| async move {
                a.level().map_or("none", |l| l.as_str()).to_owned()
            }),
        )
        .route(
            "/2fa/setup",
            post(|a: AuthSession<Users>, body: String| async move {
                a.totp_setup(body)
                    .await
                    .map(|s| format!("{}\n{}", s.secret, s.uri))
            }),
        )
        .route(
            "/2fa/confirm",
            post(|mut a: AuthSession<Users>, body: String| async move {
                a.totp_confirm(&body).await.map(|c| c.0.join("\n"))
            }),
        )
        .route(
            "/2fa/totp",
            post(|mut a: AuthSession<Users>, body: String| async move {
                a.verify_second_factor(FactorKind::Totp, &body)
                    .await
                    .map(|()| "ok")
            }),
        )
        .route(
            "/2fa/recovery",
            post(|mut a: AuthSession<Users>, body: String| async move {
                a.verify_second_factor(FactorKind::Recovery, &body)
                    .await
                    .map(|()| "ok")
            }),
        )
        .route(
            "/strong",
            get(|TwoFactorUser(u): TwoFactorUser<Users>| async move { u.username.to_string() }),
        )
        .merge(strong)
        .layer(auth.layer());
    App {
        router,
        store,
        auth,
        clock,
    }
}

async fn send(app: &App, req: Request<Body>) -> Response<Body> {
    app.router.clone().oneshot(req).await.unwrap()
}

fn post_req(path: &str, cookie: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn get_req(path: &str, cookie: &str, navigate: bool) -> Request<Body> {
    let mut b = Request::get(path).header(header::COOKIE, cookie);
    if navigate {
        b = b
            .header("sec-fetch-mode", "navigate")
            .header(header::ACCEPT, "text/html");
    }
    b.body(Body::empty()).unwrap()
}

async fn text(res: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn session_cookie(res: &Response<Body>) -> Option<String> {
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("__Host-t=") && !v.starts_with("__Host-t=;"))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

async fn log_in(app: &App) -> String {
    let res = send(app, post_req("/login", None, PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::OK);
    session_cookie(&res).expect("a session cookie")
}

async fn level(app: &App, cookie: &str) -> String {
    text(send(app, get_req("/level", cookie, false)).await).await
}

/// Decodes RFC 4648 base32 without padding (what setup hands out).
fn base32(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {c}"),
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

/// Enrols TOTP for ada from a fresh login; returns the secret, the recovery codes and the
/// raised session's cookie.
async fn enrol(app: &App) -> (Vec<u8>, Vec<String>, String) {
    let cookie = log_in(app).await;
    let res = send(app, post_req("/2fa/setup", Some(&cookie), PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = text(res).await;
    let (secret, uri) = body.split_once('\n').unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Test%20App:ada?secret=")
            && uri.contains("issuer=Test%20App"),
        "{uri}"
    );
    let secret = base32(secret);
    let code = totp_code(&secret, app.clock.step());
    let res = send(app, post_req("/2fa/confirm", Some(&cookie), &code)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let raised = session_cookie(&res).expect("confirming raises the session: a new cookie");
    let codes: Vec<String> = text(res).await.lines().map(str::to_owned).collect();
    assert_eq!(codes.len(), 10);
    assert_eq!(level(app, &raised).await, "two_factor");
    assert_eq!(level(app, &cookie).await, "none", "the old cookie is dead");
    (secret, codes, raised)
}

#[tokio::test]
async fn enrol_then_log_in_with_a_second_factor() {
    let app = app().await;
    let (secret, _, _) = enrol(&app).await;
    app.clock.advance_steps(2);

    let cookie = log_in(&app).await;
    assert_eq!(level(&app, &cookie).await, "one_factor");
    // A one-factor session is refused where two_factor is needed: the second-factor page
    // for navigations, 401 for API calls.
    let res = send(&app, get_req("/admin", &cookie, true)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/login/2fa?next=%2Fadmin");
    let res = send(&app, get_req("/strong", &cookie, false)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(text(res).await.contains("\"second_factor_required\""));

    let code = totp_code(&secret, app.clock.step());
    let res = send(&app, post_req("/2fa/totp", Some(&cookie), &code)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let raised = session_cookie(&res).expect("a new cookie");
    assert_ne!(raised, cookie);
    assert_eq!(level(&app, &raised).await, "two_factor");
    assert_eq!(
        level(&app, &cookie).await,
        "none",
        "the one-factor cookie is dead"
    );
    let res = send(&app, get_req("/admin", &raised, true)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        text(send(&app, get_req("/strong", &raised, false)).await).await,
        "ada"
    );
}

#[tokio::test]
async fn a_code_is_accepted_once_and_within_one_step_of_skew() {
    let app = app().await;
    let (secret, _, _) = enrol(&app).await;
    app.clock.advance_steps(5);
    let now = app.clock.step();

    // The code of the next step (a phone clock running ahead) is accepted once.
    let first = log_in(&app).await;
    let ahead = totp_code(&secret, now + 1);
    let res = send(&app, post_req("/2fa/totp", Some(&first), &ahead)).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Replayed from another one-factor session: refused.
    let second = log_in(&app).await;
    let res = send(&app, post_req("/2fa/totp", Some(&second), &ahead)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(text(res).await.contains("\"invalid_second_factor\""));
    // So is an older step's code once a newer one was used (no going back).
    let res = send(
        &app,
        post_req("/2fa/totp", Some(&second), &totp_code(&secret, now)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(level(&app, &second).await, "one_factor");

    // Two steps away is refused either way; one step behind is fine once time moves on.
    app.clock.advance_steps(3);
    let now = app.clock.step();
    for far in [now - 2, now + 2] {
        let res = send(
            &app,
            post_req("/2fa/totp", Some(&second), &totp_code(&secret, far)),
        )
        .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "step {far}");
    }
    let res = send(
        &app,
        post_req("/2fa/totp", Some(&second), &totp_code(&secret, now - 1)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_codes_are_throttled_like_passwords() {
    let app = app().await;
    let (secret, _, _) = enrol(&app).await;
    app.clock.advance_steps(2);
    let cookie = log_in(&app).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = send(&app, post_req("/2fa/totp", Some(&cookie), "000000")).await;
        statuses.push(res.status());
    }
    assert!(statuses[0] == StatusCode::UNAUTHORIZED, "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "wrong codes run into the throttle: {statuses:?}"
    );
    // While the back-off holds even the right code is refused (no oracle).
    let res = send(
        &app,
        post_req(
            "/2fa/totp",
            Some(&cookie),
            &totp_code(&secret, app.clock.step()),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_recovery_code_works_once_even_when_two_requests_race() {
    let app = app().await;
    let (_, codes, _) = enrol(&app).await;
    let a = log_in(&app).await;
    let b = log_in(&app).await;
    let code = codes[3].to_lowercase();
    let (ra, rb) = tokio::join!(
        send(&app, post_req("/2fa/recovery", Some(&a), &code)),
        send(&app, post_req("/2fa/recovery", Some(&b), &code)),
    );
    let mut statuses = [ra.status(), rb.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
    let c = log_in(&app).await;
    let res = send(&app, post_req("/2fa/recovery", Some(&c), &code)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "spent");
    let res = send(&app, post_req("/2fa/recovery", Some(&c), &codes[4])).await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = app
        .store
        .user_by_name(&Username::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap()
        .user
        .id;
    assert_eq!(
        app.store.factor_summary(id).await.unwrap().recovery_codes,
        8
    );
}

#[tokio::test]
async fn enrolment_needs_the_password_changes_nothing_until_confirmed_and_then_ends_other_sessions()
{
    let app = app().await;
    let cookie = log_in(&app).await;
    let other = log_in(&app).await;
    let res = send(
        &app,
        post_req("/2fa/setup", Some(&cookie), "wrong password"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = send(&app, post_req("/2fa/setup", Some(&cookie), PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let id = app
        .store
        .user_by_name(&Username::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap()
        .user
        .id;
    assert!(
        !app.auth.factors_of(id).await.unwrap().any(),
        "pending only"
    );
    // A wrong confirmation code changes nothing.
    let res = send(&app, post_req("/2fa/confirm", Some(&cookie), "000000")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(level(&app, &other).await, "one_factor");
    assert!(!app.auth.factors_of(id).await.unwrap().any());

    let secret = app
        .store
        .totp_state(id)
        .await
        .unwrap()
        .unwrap()
        .pending
        .unwrap()
        .0;
    assert!(
        secret.len() > 20 && secret[0] == 1,
        "the store holds a sealed secret, not the secret"
    );
    let (_, _, _) = enrol(&app).await;
    assert_eq!(
        level(&app, &other).await,
        "none",
        "enrolment ended the other sessions"
    );
    // A one-factor session of a user with a factor cannot start another enrolment.
    let weak = log_in(&app).await;
    let res = send(&app, post_req("/2fa/setup", Some(&weak), PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(text(res).await.contains("second_factor_required"));
}

#[tokio::test]
async fn a_lost_key_is_a_clear_error_and_recovery_codes_still_work() {
    let app = app().await;
    let (secret, codes, _) = enrol(&app).await;
    // The same stores under another key, as after losing the key file.
    let cookie = CookieConfig::new("t", true, None, SameSite::Lax);
    let sessions = SessionManager::new(app.store.clone(), cookie, ExpiryPolicy::default());
    let other = Auth::builder(
        BuiltinUsers::new(app.store.clone()),
        sessions,
        app.store.clone(),
    )
    .second_factors(SecondFactors::new(
        app.store.clone(),
        EncryptionKey::generate(),
    ))
    .hasher(app.auth.hasher().clone())
    .build()
    .unwrap();
    let user = app
        .store
        .user_by_name(&Username::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap()
        .user;
    let done = other
        .log_in(sessiond_axum::auth::LoginAttempt {
            username: "ada",
            password: PASSWORD.into(),
            remember: false,
            client: Default::default(),
            device_cookie: None,
            presented: None,
        })
        .await
        .unwrap();
    let set = other.sessions().session_cookie(&done.token, &done.record);
    let mut headers = axum::http::HeaderMap::new();
    let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
    headers.insert(header::COOKIE, pair.parse().unwrap());
    let session = other.sessions().verify(&headers).await.unwrap().unwrap();
    let code = totp_code(&secret, app.clock.step() + 1);
    let err = other
        .verify_second_factor(
            &session,
            &user,
            FactorKind::Totp,
            &code,
            &Default::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::SecondFactorUnavailable(_)),
        "{err:?}"
    );
    assert_eq!(err.code(), "second_factor_unavailable");
    let raised = other
        .verify_second_factor(
            &session,
            &user,
            FactorKind::Recovery,
            &codes[0],
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(raised.record.level.as_str(), "two_factor");
}

#[tokio::test]
async fn raising_the_level_keeps_the_session_data() {
    let app = app().await;
    let (secret, _, _) = enrol(&app).await;
    app.clock.advance_steps(2);
    let cookie = log_in(&app).await;
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(header::COOKIE, cookie.parse().unwrap());
    let session = app.auth.sessions().verify(&headers).await.unwrap().unwrap();
    let mut data = sessiond_axum::core::SessionData::new();
    data.insert("cart".into(), serde_json::json!(["book"]));
    let store = app.auth.sessions().store();
    assert!(store
        .save_data(&session.record().token_hash, &data)
        .await
        .unwrap());
    let user = app
        .store
        .user_by_name(&Username::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap()
        .user;
    let code = totp_code(&secret, app.clock.step());
    let raised = app
        .auth
        .verify_second_factor(
            &session,
            &user,
            FactorKind::Totp,
            &code,
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.load_data(&raised.record.token_hash).await.unwrap(),
        Some(data)
    );
    assert_eq!(
        store.load(&session.record().token_hash).await.unwrap(),
        None
    );
}
