//! The library's HTTP face, through a real axum router: `auth.layer()`, `AuthSession`,
//! `CurrentUser`, `MaybeUser` and `login_required`, judged by the responses a browser or an
//! API client would get (status, `Location`, cookies, the JSON error body).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use sessiond_axum::core::{ExpiryPolicy, NewUser, Password, UserStore, Username};
use sessiond_axum::{
    login_required, Auth, AuthError, AuthSession, BuiltinUsers, CookieConfig, CurrentUser,
    MaybeUser, SameSite, SessionManager,
};
use sessiond_store_memory::MemoryStore;
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery";

type Users = BuiltinUsers;

async fn app() -> Router {
    app_with(|b| b).await
}

/// The app, its `Auth` built with `options`.
async fn app_with(
    options: impl FnOnce(
        sessiond_axum::auth::AuthBuilder<Users>,
    ) -> sessiond_axum::auth::AuthBuilder<Users>,
) -> Router {
    let store = Arc::new(MemoryStore::new());
    let cookie = CookieConfig::new("t", true, None, SameSite::Lax);
    let sessions = SessionManager::new(store.clone(), cookie, ExpiryPolicy::default());
    let builder = Auth::builder(BuiltinUsers::new(store.clone()), sessions, store.clone());
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
    let private = Router::new()
        .route("/area/page", get(|| async { "area" }))
        .route_layer(login_required::<Users>());
    Router::new()
        .route(
            "/login",
            post(|mut a: AuthSession<Users>, body: String| async move {
                a.log_in("ada", body, false).await.map(|u| u.username.to_string())
            }),
        )
        .route(
            "/logout",
            post(|mut a: AuthSession<Users>| async move {
                a.log_out().await.map_err(AuthError::from)
            }),
        )
        .route(
            "/me",
            get(|CurrentUser(u): CurrentUser<Users>| async move { u.username.to_string() }),
        )
        .route(
            "/maybe",
            get(|MaybeUser(u): MaybeUser<Users>| async move { format!("{}", u.is_some()) }),
        )
        .merge(private)
        .layer(auth.layer())
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

fn get_req(path: &str, cookie: Option<&str>, navigate: bool) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
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

/// The session cookie of a `Set-Cookie` answer, as a `Cookie` header value.
fn session_cookie(res: &Response<Body>) -> String {
    res.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("__Host-t="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

#[tokio::test]
async fn log_in_browse_and_log_out() {
    let app = app().await;

    // Anonymous: a page navigation goes to the login page with `next`, an API call gets 401.
    let res = send(&app, get_req("/me?tab=2", None, true)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        res.headers()[header::LOCATION],
        "/login?next=%2Fme%3Ftab%3D2"
    );
    let res = send(&app, get_req("/me", None, false)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(text(res).await.contains(r#""code":"unauthenticated""#));
    let res = send(&app, get_req("/area/page", None, true)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "login_required");
    assert_eq!(
        text(send(&app, get_req("/maybe", None, false)).await).await,
        "false"
    );

    // A wrong password: 401, no cookie.
    let wrong = Request::post("/login")
        .body(Body::from("nope nope nope"))
        .unwrap();
    let res = send(&app, wrong).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get(header::SET_COOKIE).is_none());

    // The right one: the cookie is set on the handler's response, never cached.
    let res = send(
        &app,
        Request::post("/login").body(Body::from(PASSWORD)).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.contains("HttpOnly") && set.contains("Secure"), "{set}");
    let cookie = session_cookie(&res);

    assert_eq!(
        text(send(&app, get_req("/me", Some(&cookie), false)).await).await,
        "ada"
    );
    assert_eq!(
        text(send(&app, get_req("/maybe", Some(&cookie), false)).await).await,
        "true"
    );
    let res = send(&app, get_req("/area/page", Some(&cookie), true)).await;
    assert_eq!(text(res).await, "area");

    // Logging out ends the session on the server: the old cookie no longer works.
    let out = Request::post("/logout")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let res = send(&app, out).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let res = send(&app, get_req("/me", Some(&cookie), false)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// `auth.layer()` refuses unsafe requests a browser marks cross-site (its default origins:
/// the request's own host), before any handler runs: no login CSRF, no forced logout.
#[tokio::test]
async fn cross_site_posts_are_refused_by_default() {
    let app = app().await;
    let post = |origin: Option<&str>, site: Option<&str>| {
        let mut b = Request::post("/login").header(header::HOST, "app.example");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(s) = site {
            b = b.header("sec-fetch-site", s);
        }
        b.body(Body::from(PASSWORD)).unwrap()
    };
    for (origin, site) in [
        (Some("https://evil.example"), None),
        (Some("null"), None),
        (None, Some("cross-site")),
        (Some("https://app.example"), Some("cross-site")),
    ] {
        let res = send(&app, post(origin, site)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{origin:?} {site:?}");
        assert!(res.headers().get(header::SET_COOKIE).is_none());
        assert!(text(res).await.contains(r#""code":"csrf_rejected""#));
    }
    // The app's own pages (and clients that are no browser) get through.
    for (origin, site) in [
        (Some("https://app.example"), Some("same-origin")),
        (Some("http://app.example"), None),
        (None, None),
    ] {
        let res = send(&app, post(origin, site)).await;
        assert_eq!(res.status(), StatusCode::OK, "{origin:?} {site:?}");
    }
}

/// Behind a proxy, `AuthBuilder::client_ip` gives the throttle each client's address: a
/// guesser's address is held back after five failures, another client's is not.
#[tokio::test]
async fn the_throttle_counts_the_address_the_app_names() {
    let app = app_with(|b| {
        b.client_ip(|parts| {
            let v = parts.headers.get("x-test-client")?.to_str().ok()?;
            v.parse().ok()
        })
    })
    .await;
    let from = |ip: &str, password: &str| {
        Request::post("/login")
            .header("x-test-client", ip)
            .body(Body::from(password.to_owned()))
            .unwrap()
    };
    for _ in 0..5 {
        let res = send(&app, from("198.51.100.7", "wrong wrong wrong")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = send(&app, from("198.51.100.7", PASSWORD)).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser's address"
    );
    assert!(res.headers().contains_key(header::RETRY_AFTER));
    let res = send(&app, from("192.0.2.3", PASSWORD)).await;
    assert_eq!(res.status(), StatusCode::OK, "another client");
}

/// A login that presents a valid session rotates it: the presented secret stops working.
#[tokio::test]
async fn a_second_login_rotates_the_session() {
    let app = app().await;
    let res = send(
        &app,
        Request::post("/login").body(Body::from(PASSWORD)).unwrap(),
    )
    .await;
    let first = session_cookie(&res);
    let again = Request::post("/login")
        .header(header::COOKIE, &first)
        .body(Body::from(PASSWORD))
        .unwrap();
    let second = session_cookie(&send(&app, again).await);
    assert_ne!(first, second);
    let res = send(&app, get_req("/me", Some(&first), false)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        text(send(&app, get_req("/me", Some(&second), false)).await).await,
        "ada"
    );
}

/// Without `auth.layer()`, the extractors refuse with a 500 (a bug of the app), never let a
/// request through.
#[tokio::test]
async fn a_missing_layer_fails_closed() {
    let app: Router = Router::new().route(
        "/me",
        get(|CurrentUser(u): CurrentUser<Users>| async move { u.username.to_string() }),
    );
    let res = app.oneshot(get_req("/me", None, false)).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
