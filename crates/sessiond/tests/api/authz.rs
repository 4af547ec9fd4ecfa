//! Forward auth over a real socket, playing the proxy by hand: the answers of
//! docs/reference/endpoints.md, "Forward auth", for every kind of caller, access rules,
//! trusted proxies, SSO across subdomains, and the 559 open-redirect payloads through the real
//! login page.

use std::sync::Arc;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use sessiond::Overrides;

use crate::helpers::*;

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// A forward-auth request as Traefik or Caddy would send it.
fn fa(app: &TestApp, path: &str, host: &str, uri: &str) -> reqwest::RequestBuilder {
    app.bare_client()
        .get(app.url(path))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-method", "GET")
}

fn identity(h: &HeaderMap) -> (String, String, String, String) {
    let get = |n: &str| {
        h.get(n)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        get("remote-user"),
        get("remote-groups"),
        get("remote-email"),
        get("remote-name"),
    )
}

async fn token_of(app: &TestApp, name: &str) -> String {
    session_cookie(&app.api_login(&app.client(), name, PASSWORD).await).unwrap()
}

#[tokio::test]
async fn forward_auth_answers_each_kind_of_caller() {
    let app = spawn_app().await;
    app.add_user("ivy").await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let cookie = format!("__Host-sessiond={}", token_of(&app, "ivy").await);

    // Logged in: 200, identity headers, empty body, never cached, no cookie set.
    for path in ["/api/authz/forward-auth", "/api/verify"] {
        let res = fa(&app, path, &host, "/app?x=1")
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert!(res.headers().get("set-cookie").is_none());
        assert_eq!(
            identity(res.headers()),
            (
                "ivy".into(),
                "dev".into(),
                "ivy@example.com".into(),
                "ivy Example".into()
            )
        );
        assert!(res.text().await.unwrap().is_empty());
    }
    let res = app
        .bare_client()
        .head(app.url("/api/authz/forward-auth"))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", &host)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "HEAD");
    assert_eq!(res.headers()["remote-user"], "ivy");

    // No session, a browser navigating: 302 to the login page with the target as rd.
    let res = fa(&app, "/api/authz/forward-auth", &host, "/app?x=1")
        .header("accept", HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let rd = format!("https://{host}/app?x=1");
    let expected = format!("{}/login?rd={}", app.base, url_encode(&rd));
    assert_eq!(res.headers()["location"], expected.as_str());
    // The same for a navigation that says so in Fetch metadata.
    let res = fa(&app, "/api/authz/forward-auth", &host, "/")
        .header("accept", HTML)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);

    // No session, fetch/XHR/API callers: 401, no redirect.
    for extra in [
        vec![("accept", "application/json")],
        vec![("accept", HTML), ("x-requested-with", "XMLHttpRequest")],
        vec![("accept", HTML), ("sec-fetch-mode", "cors")],
        vec![],
    ] {
        let mut req = fa(&app, "/api/authz/forward-auth", &host, "/api/data");
        for (k, v) in &extra {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{extra:?}");
        assert!(res.headers().get("location").is_none(), "{extra:?}");
        assert_eq!(json(res).await["code"], "unauthenticated");
    }

    // nginx auth_request: always 401; Location only for a browser.
    let ar = |accept: &str| {
        app.bare_client()
            .get(app.url("/api/authz/auth-request"))
            .header("x-original-url", format!("https://{host}/app"))
            .header("x-original-method", "GET")
            .header("accept", accept.to_owned())
    };
    let res = ar(HTML).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let rd = format!("https://{host}/app");
    assert_eq!(
        res.headers()["location"],
        format!("{}/login?rd={}", app.base, url_encode(&rd)).as_str()
    );
    let res = ar("application/json").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get("location").is_none());
    let res = ar(HTML).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["remote-user"], "ivy");

    // An expired or revoked session is no session.
    app.client()
        .post(app.url("/api/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let res = fa(&app, "/api/verify", &host, "/")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn malformed_or_foreign_targets_are_refused() {
    let app = spawn_app().await;
    app.add_user("jo").await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let cookie = format!("__Host-sessiond={}", token_of(&app, "jo").await);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing"),
        (vec![("x-forwarded-proto", "https".into())], "missing"),
        (
            vec![
                ("x-forwarded-proto", "gopher".into()),
                ("x-forwarded-host", host.clone()),
            ],
            "malformed",
        ),
        (
            vec![
                ("x-forwarded-proto", "https".into()),
                ("x-forwarded-host", format!("evil.example@{host}")),
            ],
            "malformed",
        ),
        (
            vec![
                ("x-forwarded-proto", "https".into()),
                ("x-forwarded-host", "evil.example".into()),
            ],
            "neither",
        ),
        (
            vec![
                ("x-forwarded-proto", "https".into()),
                ("x-forwarded-host", host.clone()),
                ("x-forwarded-uri", "no-slash".into()),
            ],
            "malformed",
        ),
    ];
    for (headers, needle) in cases {
        let mut req = app
            .bare_client()
            .get(app.url("/api/authz/forward-auth"))
            .header("cookie", &cookie);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{headers:?}");
        let body = json(res).await;
        assert_eq!(body["code"], "bad_request");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{headers:?}: {body}"
        );
    }
    let res = app
        .bare_client()
        .get(app.url("/api/authz/auth-request"))
        .header("x-original-url", "https://evil.example/")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    // Our socket peer is 127.0.0.1; trust only 10.0.0.0/8.
    let file = "[proxy]\ntrusted = [\"10.0.0.0/8\"]\n";
    let app = spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        file,
        Overrides::default(),
    )
    .await;
    app.add_user("kai").await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let cookie = format!("__Host-sessiond={}", token_of(&app, "kai").await);
    let res = fa(&app, "/api/authz/forward-auth", &host, "/")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(json(res).await["message"]
        .as_str()
        .unwrap()
        .contains("trusted proxy"));
    // And the client IP recorded for a session is the socket's, whatever X-Forwarded-For says.
    let c = app.bare_client();
    let res = c
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "203.0.113.5")
        .json(&serde_json::json!({ "username": "kai", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let t = session_cookie(&res).unwrap();
    let list = json(
        c.get(app.url("/api/sessions"))
            .header("cookie", format!("__Host-sessiond={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ip"] == "127.0.0.1"),
        "{list}"
    );

    // With the default (loopback trusted), the rightmost untrusted X-Forwarded-For entry.
    let app = spawn_app().await;
    app.add_user("kai").await;
    let c = app.bare_client();
    let res = c
        .post(app.url("/api/login"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.5, 127.0.0.1")
        .json(&serde_json::json!({ "username": "kai", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let t = session_cookie(&res).unwrap();
    let list = json(
        c.get(app.url("/api/sessions"))
            .header("cookie", format!("__Host-sessiond={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["sessions"][0]["ip"], "203.0.113.5");
}

const SSO: &str = r#"
public_url = "https://auth.example.test"

[cookie]
domain = "example.test"

[[access.rules]]
domain = "public.example.test"
policy = "bypass"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/admin"
policy = "authenticated"
groups = ["ops"]

[[access.rules]]
domain = "app.example.test"
path_prefix = "/dev-only"
policy = "authenticated"
groups = ["dev"]

[[access.rules]]
domain = "*.internal.example.test"
policy = "deny"
"#;

#[tokio::test]
async fn access_rules_and_sso_across_subdomains() {
    let app = spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        SSO,
        Overrides::default(),
    )
    .await;
    app.add_user("lin").await; // groups: dev
    let res = app.api_login(&app.bare_client(), "lin", PASSWORD).await;
    let set = set_cookies(res.headers()).remove(0);
    assert!(set.starts_with("__Secure-sessiond="), "{set}");
    assert!(
        set.contains("Domain=example.test") && set.contains("Secure") && set.contains("HttpOnly"),
        "{set}"
    );
    let token = set
        .trim_start_matches("__Secure-sessiond=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let cookie = format!("__Secure-sessiond={token}");

    let check = |host: &str, uri: &str, with_cookie: bool| {
        let mut req = fa(&app, "/api/authz/forward-auth", host, uri).header("accept", HTML);
        if with_cookie {
            req = req.header("cookie", cookie.clone());
        }
        req.send()
    };
    // One login serves every app under the domain.
    for host in [
        "app.example.test",
        "wiki.example.test",
        "example.test",
        "auth.example.test",
    ] {
        let res = check(host, "/", true).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        assert_eq!(res.headers()["remote-user"], "lin");
    }
    let table: &[(&str, &str, bool, StatusCode)] = &[
        // bypass: no session needed, no identity sent
        ("public.example.test", "/", false, StatusCode::OK),
        // group rules
        ("app.example.test", "/admin", true, StatusCode::FORBIDDEN),
        (
            "app.example.test",
            "/admin/users",
            true,
            StatusCode::FORBIDDEN,
        ),
        (
            "app.example.test",
            "/%61dmin/users",
            true,
            StatusCode::FORBIDDEN,
        ),
        (
            "app.example.test",
            "/ADMIN/users",
            true,
            StatusCode::FORBIDDEN,
        ),
        // not canonical: refused whatever the rules say (docs/security.md)
        (
            "app.example.test",
            "/x/../admin",
            true,
            StatusCode::BAD_REQUEST,
        ),
        ("app.example.test", "//admin", true, StatusCode::BAD_REQUEST),
        (
            "public.example.test",
            "/%2e%2e/",
            false,
            StatusCode::BAD_REQUEST,
        ),
        ("app.example.test", "/administrator", true, StatusCode::OK),
        ("app.example.test", "/dev-only/x", true, StatusCode::OK),
        ("app.example.test", "/admin", false, StatusCode::FOUND),
        // deny: logged in or not
        ("db.internal.example.test", "/", true, StatusCode::FORBIDDEN),
        (
            "db.internal.example.test",
            "/",
            false,
            StatusCode::FORBIDDEN,
        ),
        // default: authenticated
        ("other.example.test", "/", false, StatusCode::FOUND),
        // not ours
        (
            "example.test.evil.example",
            "/",
            true,
            StatusCode::BAD_REQUEST,
        ),
        ("evilexample.test", "/", true, StatusCode::BAD_REQUEST),
    ];
    for (host, uri, with_cookie, status) in table {
        let res = check(host, uri, *with_cookie).await.unwrap();
        assert_eq!(res.status(), *status, "{host}{uri} cookie={with_cookie}");
        if *host == "public.example.test" && *status == StatusCode::OK {
            assert_eq!(
                res.headers()["remote-user"],
                "",
                "bypass sends an empty identity"
            );
        }
        if *status == StatusCode::FOUND {
            let loc = res.headers()["location"].to_str().unwrap();
            assert!(
                loc.starts_with("https://auth.example.test/login?rd=https%3A%2F%2F"),
                "{loc}"
            );
        }
    }
}

/// The payloads of `shared/data/openredirects.txt`, decoded (query-unescaping).
pub fn open_redirect_payloads() -> Option<Vec<String>> {
    // `shared/` sits beside the checkout (`<dir>/shared` and `<dir>/<checkout>`), or beside a
    // folder of worktrees: the nearest ancestor that has it.
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = "shared/data/openredirects.txt";
    let path = manifest
        .ancestors()
        .map(|a| a.join(file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| manifest.join("../../..").join(file));
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            // One payload a line; the first one is the empty string.
            text.lines()
                .map(|l| {
                    url::form_urlencoded::parse(format!("x={l}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                })
                .collect(),
        ),
        Err(e) if sessiond_store_tests::services_required() => {
            panic!("{} is required: {e}", path.display())
        }
        Err(e) => {
            eprintln!("SKIP: {}: {e}", path.display());
            None
        }
    }
}

#[tokio::test]
async fn open_redirect_payloads_never_leave_our_hosts_through_the_login_page() {
    let Some(payloads) = open_redirect_payloads() else {
        return;
    };
    assert_eq!(payloads.len(), 559);
    let app = spawn_app().await;
    app.add_user("max").await;
    let public = url::Url::parse(&app.base).unwrap();
    let client = app.client();
    let html = client
        .get(app.url("/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_from(&html);
    let payloads = Arc::new(payloads);
    let mut tasks = Vec::new();
    // Four logins at a time: each is a real argon2 verification.
    for worker in 0..4 {
        let (client, payloads, csrf, url, public) = (
            client.clone(),
            payloads.clone(),
            csrf.clone(),
            app.url("/login"),
            public.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for (i, p) in payloads.iter().enumerate().filter(|(i, _)| i % 4 == worker) {
                // The login page renders the payload only escaped: no script can come of it.
                let page = client
                    .get(&url)
                    .query(&[("rd", p.as_str())])
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let start = page.find("name=\"rd\" value=\"").unwrap() + 17;
                let rendered = &page[start..start + page[start..].find('"').unwrap()];
                assert!(
                    !rendered.contains(['<', '>', '"', '\'']),
                    "payload {i} rendered raw: {rendered}"
                );
                // After login, the browser goes to our host (or "/").
                let res = client
                    .post(&url)
                    .form(&[
                        ("username", "max"),
                        ("password", PASSWORD),
                        ("csrf_token", csrf.as_str()),
                        ("rd", p.as_str()),
                    ])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::SEE_OTHER, "payload {i}");
                let loc = res.headers()["location"].to_str().unwrap().to_owned();
                let landed = public.join(&loc).unwrap();
                assert_eq!(
                    landed.host_str(),
                    public.host_str(),
                    "payload {i} {p:?} → {loc}"
                );
                assert!(
                    matches!(landed.scheme(), "http" | "https"),
                    "payload {i} → {loc}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
