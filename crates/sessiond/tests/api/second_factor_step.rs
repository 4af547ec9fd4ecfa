//! The portal's second-factor step (`/login/2fa`, issue 18) and forward auth's `two_factor`
//! rules, over a real socket: a one-factor session is sent to the step (navigations) or gets
//! `401 second_factor_required` (API calls), gives a TOTP or recovery code, and is brought
//! back to `rd` raised to `two_factor`; `rd` goes through the same checks as on `/login`
//! (the 559 open-redirect payloads). Through real nginx and Caddy: `proxies.rs`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use sessiond::Overrides;
use sessiond_axum::auth::{totp_code, TOTP_STEP_SECS};
use sessiond_axum::ClientInfo;
use sessiond_core::{AuthLevel, NewSession};

use crate::helpers::*;

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

/// RFC 4648 base32 (no padding), as TOTP setup answers the secret.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("not base32: {s}")) as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The `name=value` of the session cookie a response sets (whatever the cookie's name).
pub fn session_pair(h: &HeaderMap) -> Option<String> {
    set_cookies(h).into_iter().find_map(|c| {
        let pair = c.split(';').next().unwrap_or("");
        let (name, value) = pair.split_once('=')?;
        (name.ends_with("sessiond") && !value.is_empty()).then(|| pair.to_owned())
    })
}

/// The current TOTP code of `secret` at a step no code was used at before: the server's clock
/// moves on one step first (each step's code is accepted once).
pub fn next_code(app: &TestApp, secret: &[u8]) -> String {
    app.advance(Duration::from_secs(TOTP_STEP_SECS as u64));
    let step = app
        .state
        .sessions
        .now()
        .as_millis()
        .div_euclid(1000 * TOTP_STEP_SECS);
    totp_code(secret, step)
}

/// A six-digit code that no step within the accepted window gives.
fn wrong_code(app: &TestApp, secret: &[u8]) -> String {
    let step = app
        .state
        .sessions
        .now()
        .as_millis()
        .div_euclid(1000 * TOTP_STEP_SECS);
    let window: Vec<String> = (step - 1..=step + 1)
        .map(|s| totp_code(secret, s))
        .collect();
    (0..4)
        .map(|i| format!("{i}{i}{i}{i}{i}{i}"))
        .find(|c| !window.contains(c))
        .unwrap()
}

/// A new one-factor session of `name` straight from the session manager (no password hash):
/// the `Cookie` header that presents it.
pub async fn one_factor_cookie(app: &TestApp, name: &str) -> String {
    let user = app
        .state
        .users
        .user_by_name(&sessiond_core::Username::parse(name).unwrap())
        .await
        .unwrap()
        .unwrap()
        .user;
    let (token, record) = app
        .state
        .sessions
        .begin(
            NewSession {
                user_id: user.id,
                remember: false,
                ip: None,
                user_agent: None,
                level: AuthLevel::OneFactor,
            },
            None,
        )
        .await
        .unwrap();
    let set = app.state.sessions.session_cookie(&token, &record);
    let mut h = HeaderMap::new();
    h.insert(reqwest::header::SET_COOKIE, set);
    session_pair(&h).unwrap()
}

/// Enrols TOTP for `name` in process, with the library's setup and confirmation (what the
/// account page and `/api/2fa/totp/*` call). Returns the secret and the recovery codes. The
/// confirmation ends the user's other sessions.
pub async fn enrol_totp(app: &TestApp, name: &str) -> (Vec<u8>, Vec<String>) {
    let cookie = one_factor_cookie(app, name).await;
    let mut h = axum::http::HeaderMap::new();
    h.insert(axum::http::header::COOKIE, cookie.parse().unwrap());
    let session = app.state.sessions.verify(&h).await.unwrap().unwrap();
    let user = app.state.auth.user_of(&session).await.unwrap().unwrap();
    let client = ClientInfo {
        ip: None,
        user_agent: None,
    };
    let setup = app
        .state
        .auth
        .totp_setup(&session, &user, PASSWORD.into(), &client)
        .await
        .unwrap();
    let secret = base32_decode(&setup.secret);
    let code = next_code(app, &secret);
    let (raised, codes) = app
        .state
        .auth
        .totp_confirm(&session, &user, &code)
        .await
        .unwrap();
    // The helper leaves the user without any session.
    app.state
        .sessions
        .store()
        .delete(&raised.record.token_hash)
        .await
        .unwrap();
    (secret, codes.0)
}

/// The session records of the store, by level.
async fn levels(app: &TestApp) -> Vec<AuthLevel> {
    let all = app.state.sessions.store().list_all().await.unwrap();
    all.iter().map(|s| s.level).collect()
}

/// The value of the hidden `name` field of a page, unescaped.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let i = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    let raw = html[i..].split('"').next().unwrap();
    // What the templates' auto-escaping writes (`&amp;` last: it may have made the others).
    [
        ("&#x2f;", "/"),
        ("&#x27;", "'"),
        ("&quot;", "\""),
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&amp;", "&"),
    ]
    .iter()
    .fold(raw.to_owned(), |s, (from, to)| s.replace(from, to))
}

const RULES: &str = r#"
public_url = "https://auth.example.test"

[cookie]
domain = "example.test"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/vault"
policy = "two_factor"

[[access.rules]]
domain = "app.example.test"
path_prefix = "/ops-vault"
policy = "two_factor"
groups = ["ops"]

[[access.rules]]
domain = "app.example.test"
path_prefix = "/wiki"
policy = "one_factor"
"#;

/// A forward-auth request as Traefik or Caddy would send it, for `https://app.example.test`.
fn fa(app: &TestApp, uri: &str, cookie: Option<&str>, accept: &str) -> reqwest::RequestBuilder {
    let mut req = app
        .bare_client()
        .get(app.url("/api/authz/forward-auth"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.test")
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-method", "GET")
        .header("accept", accept);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req
}

/// An nginx `auth_request` subrequest for `https://app.example.test{uri}`.
fn ar(app: &TestApp, uri: &str, cookie: &str, accept: &str) -> reqwest::RequestBuilder {
    app.bare_client()
        .get(app.url("/api/authz/auth-request"))
        .header("x-original-url", format!("https://app.example.test{uri}"))
        .header("x-original-method", "GET")
        .header("accept", accept)
        .header("cookie", cookie)
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn two_factor_rules_send_one_factor_sessions_to_the_second_factor_step_and_back() {
    let app = spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        RULES,
        Overrides::default(),
    )
    .await;
    app.add_user("tess").await; // groups: dev
    let (secret, _) = enrol_totp(&app, "tess").await;
    let res = app.api_login(&app.bare_client(), "tess", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::OK);
    let one = session_pair(res.headers()).unwrap();
    let rd = "https://app.example.test/vault/x?y=1";
    let step = format!("https://auth.example.test/login/2fa?rd={}", enc(rd));

    // A one_factor rule (and the default, authenticated) lets a password session through.
    for uri in ["/wiki/page", "/elsewhere"] {
        let res = fa(&app, uri, Some(&one), HTML).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
        assert_eq!(res.headers()["remote-user"], "tess");
    }
    // A two_factor rule: a navigation goes to the second-factor step with the target as rd.
    let res = fa(&app, "/vault/x?y=1", Some(&one), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], step.as_str());
    assert!(res.headers().get("remote-user").is_none());
    // Before the groups: a one-factor session learns nothing more of the rule.
    let res = fa(&app, "/ops-vault", Some(&one), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert!(res.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://auth.example.test/login/2fa?rd="));
    // API callers: 401 second_factor_required, no Location.
    for accept in ["application/json", "*/*"] {
        let res = fa(&app, "/vault/api", Some(&one), accept)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{accept}");
        assert!(res.headers().get("location").is_none());
        assert_eq!(json(res).await["code"], "second_factor_required");
    }
    // nginx: 401 always; Location for a browser only.
    let res = ar(&app, "/vault/x?y=1", &one, HTML).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["location"], step.as_str());
    let res = ar(&app, "/vault/x", &one, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().get("location").is_none());
    assert_eq!(json(res).await["code"], "second_factor_required");
    // Without a session, the login page as before.
    let res = fa(&app, "/vault/x?y=1", None, HTML).send().await.unwrap();
    assert_eq!(
        res.headers()["location"],
        format!("https://auth.example.test/login?rd={}", enc(rd)).as_str()
    );

    // The step: a form for this session, rd kept.
    let client = app.bare_client();
    let page = client
        .get(app.url(&format!("/login/2fa?rd={}", enc(rd))))
        .header("cookie", &one)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert_eq!(hidden(&html, "rd"), rd);
    assert!(html.contains("autocomplete=\"one-time-code\""));
    let csrf = hidden(&html, "csrf_token");
    let res = client
        .post(app.url("/login/2fa"))
        .header("cookie", &one)
        .form(&[
            ("code", next_code(&app, &secret).as_str()),
            ("kind", "totp"),
            ("rd", rd),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], rd);
    let two = session_pair(res.headers()).expect("the raised session's cookie");
    assert_ne!(two, one);
    assert_eq!(levels(&app).await, vec![AuthLevel::TwoFactor]);

    // Back at the app: through, with the identity; the old cookie is dead.
    let res = fa(&app, "/vault/x?y=1", Some(&two), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["remote-user"], "tess");
    let res = ar(&app, "/vault/x", &two, HTML).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = fa(&app, "/wiki", Some(&one), HTML).send().await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FOUND,
        "the one-factor cookie died"
    );
    assert!(res.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://auth.example.test/login?rd="));
    // The groups still hold at two_factor.
    let res = fa(&app, "/ops-vault", Some(&two), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // And an already raised session goes straight on from the step.
    let res = client
        .get(app.url(&format!("/login/2fa?rd={}", enc(rd))))
        .header("cookie", &two)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], rd);
}

#[tokio::test]
async fn the_second_factor_step_asks_only_who_can_answer_and_checks_every_code() {
    let app = spawn_app().await;
    app.add_user("una").await;
    app.add_user("vic").await;
    let (secret, recovery) = enrol_totp(&app, "vic").await;

    // No session: the login page, rd kept.
    let c = app.client();
    let res = c
        .get(app.url("/login/2fa?rd=/x%3Fa%3D1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/login?rd=%2Fx%3Fa%3D1");
    let res = c.get(app.url("/login/2fa")).send().await.unwrap();
    assert_eq!(res.headers()["location"], "/login");

    // No second factor: the password is all there is, and the step sends to enrolment.
    let res = app.form_login(&c, "una", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/");
    let res = c.get(app.url("/login/2fa?rd=/x")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/#two-factor");

    // A second factor: the login form goes on to the step, rd checked and kept.
    let vic = app.client();
    let (_, html, _) = app.page(&vic, "/login?rd=/private%3Ftab%3D2").await;
    let csrf = csrf_from(&html);
    let login = |rd: &'static str, csrf: String| {
        let vic = vic.clone();
        let url = app.url("/login");
        async move {
            vic.post(url)
                .form(&[
                    ("username", "vic"),
                    ("password", PASSWORD),
                    ("csrf_token", &csrf),
                    ("rd", rd),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let res = login("/private?tab=2", csrf.clone()).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        res.headers()["location"],
        "/login/2fa?rd=%2Fprivate%3Ftab%3D2"
    );
    // A hostile rd is dropped at the login already: the step is asked with none.
    let res = login("//evil.example/", csrf.clone()).await;
    assert_eq!(res.headers()["location"], "/login/2fa");
    let res = login("/private?tab=2", csrf.clone()).await;
    let (status, html, token) = app.page(&vic, "/login/2fa?rd=%2Fprivate%3Ftab%3D2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(hidden(&html, "rd"), "/private?tab=2");
    assert!(res.headers().get("location").is_some());
    let post = |form: Vec<(&'static str, String)>| {
        let vic = vic.clone();
        let url = app.url("/login/2fa");
        async move { vic.post(url).form(&form).send().await.unwrap() }
    };
    let form = |kind: &str, code: String, csrf: &str| {
        vec![
            ("code", code),
            ("kind", kind.to_owned()),
            ("rd", "/private?tab=2".to_owned()),
            ("csrf_token", csrf.to_owned()),
        ]
    };

    // A wrong code: the form again, with the error.
    let res = post(form("totp", wrong_code(&app, &secret), &token)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let html = res.text().await.unwrap();
    assert!(html.contains("Invalid code"), "{html}");
    assert_eq!(hidden(&html, "rd"), "/private?tab=2");
    // A form token of no session of ours: refused, nothing checked.
    let res = post(form(
        "totp",
        next_code(&app, &secret),
        "x".repeat(43).as_str(),
    ))
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("This form expired"));
    let res = post(form("sms", "123456".into(), &token)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(levels(&app).await, vec![AuthLevel::OneFactor; 2]);

    // The right code: to rd, raised (a new cookie; the jar keeps it).
    let code = next_code(&app, &secret);
    let res = post(form("totp", code.clone(), &token)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/private?tab=2");
    assert!(session_pair(res.headers()).is_some());
    let mut now = levels(&app).await;
    now.sort();
    assert_eq!(now, vec![AuthLevel::OneFactor, AuthLevel::TwoFactor]);
    // Raised: the step goes straight on, to a safe rd only.
    for (rd, to) in [
        ("/next", "/next"),
        ("https://evil.example/", "/"),
        ("", "/"),
    ] {
        let res = vic
            .get(app.url("/login/2fa"))
            .query(&[("rd", rd)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{rd}");
        assert_eq!(res.headers()["location"], to, "{rd}");
    }

    // The same code again, from another one-factor session: refused (replay).
    let other = one_factor_cookie(&app, "vic").await;
    let bare = app.bare_client();
    let page = |cookie: String| {
        let bare = bare.clone();
        let url = app.url("/login/2fa?rd=/r");
        async move {
            let html = bare
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            hidden(&html, "csrf_token")
        }
    };
    let submit = |cookie: String, kind: &'static str, code: String, csrf: String| {
        let bare = bare.clone();
        let url = app.url("/login/2fa");
        async move {
            bare.post(url)
                .header("cookie", cookie)
                .form(&[
                    ("code", code.as_str()),
                    ("kind", kind),
                    ("rd", "/r"),
                    ("csrf_token", &csrf),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let token = page(other.clone()).await;
    let res = submit(other.clone(), "totp", code, token.clone()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a replayed code");

    // A recovery code works, once.
    let res = submit(other.clone(), "recovery", recovery[0].clone(), token).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/r");
    let third = one_factor_cookie(&app, "vic").await;
    let token = page(third.clone()).await;
    let res = submit(
        third.clone(),
        "recovery",
        recovery[0].clone(),
        token.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let html = res.text().await.unwrap();
    assert!(html.contains("already used recovery code"), "{html}");

    // Guessing is throttled like passwords: 429, the message, Retry-After, even for the
    // right code.
    let mut throttled = None;
    for _ in 0..20 {
        let res = submit(
            third.clone(),
            "totp",
            wrong_code(&app, &secret),
            token.clone(),
        )
        .await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = throttled.expect("wrong codes are throttled");
    assert!(res.headers().contains_key("retry-after"));
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Too many failed attempts. Try again in"));
    // The next step's code (within the skew, never used): moving the clock on would end
    // the back-off.
    let step = app
        .state
        .sessions
        .now()
        .as_millis()
        .div_euclid(1000 * TOTP_STEP_SECS);
    let right = totp_code(&secret, step + 1);
    let res = submit(third.clone(), "totp", right, token).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "no oracle");
}

#[tokio::test]
async fn open_redirect_payloads_never_leave_our_hosts_through_the_second_factor_step() {
    let Some(payloads) = crate::authz::open_redirect_payloads() else {
        return;
    };
    assert_eq!(payloads.len(), 559);
    let app = spawn_app().await;
    app.add_user("max").await;
    let (secret, _) = enrol_totp(&app, "max").await;
    let public = url::Url::parse(&app.base).unwrap();
    let c = app.bare_client();
    for (i, p) in payloads.iter().enumerate() {
        // A fresh one-factor session per payload: each code raises (and rotates) one.
        let cookie = one_factor_cookie(&app, "max").await;
        let page = c
            .get(app.url("/login/2fa"))
            .query(&[("rd", p.as_str())])
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK, "payload {i}");
        let html = page.text().await.unwrap();
        // Rendered only escaped: no script can come of it.
        let start = html.find("name=\"rd\" value=\"").unwrap() + 17;
        let rendered = &html[start..start + html[start..].find('"').unwrap()];
        assert!(
            !rendered.contains(['<', '>', '"', '\'']),
            "payload {i} rendered raw: {rendered}"
        );
        let csrf = hidden(&html, "csrf_token");
        let res = c
            .post(app.url("/login/2fa"))
            .header("cookie", &cookie)
            .form(&[
                ("code", next_code(&app, &secret).as_str()),
                ("rd", p.as_str()),
                ("csrf_token", &csrf),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "payload {i}");
        let raised = session_pair(res.headers()).expect("raised");
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
        // The already-raised path of the step applies the same rule.
        let res = c
            .get(app.url("/login/2fa"))
            .query(&[("rd", p.as_str())])
            .header("cookie", &raised)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "payload {i}");
        assert_eq!(
            res.headers()["location"].to_str().unwrap(),
            loc,
            "payload {i}"
        );
    }
}

#[tokio::test]
async fn a_login_held_to_enrolment_goes_to_the_account_page() {
    let app = spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        "[two_factor]\nrequired = \"all\"\n",
        Overrides::default(),
    )
    .await;
    app.add_user("wes").await;
    let c = app.client();
    let res = app.form_login(&c, "wes", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/#two-factor");
    // And the second-factor step, which this user could not complete, sends there too.
    let res = c.get(app.url("/login/2fa?rd=/x")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], "/#two-factor");
    // Once enrolled, the login goes to the step.
    enrol_totp(&app, "wes").await;
    let res = app.form_login(&app.client(), "wes", PASSWORD).await;
    assert_eq!(res.headers()["location"], "/login/2fa");
}

/// `two_factor.required = "admins"` turns every rule that lets users in into a `two_factor`
/// rule for admins (a mandatory factor a protected app could be reached without would be no
/// requirement), and leaves other users' one-factor sessions alone.
#[tokio::test]
async fn required_second_factors_hold_in_forward_auth_too() {
    let rules = format!("{RULES}\n[two_factor]\nrequired = \"admins\"\n");
    let app = spawn_app_full(
        Arc::new(tempfile::tempdir().unwrap()),
        &rules,
        Overrides::default(),
    )
    .await;
    app.add_user("una").await;
    app.add_user_with("ida", PASSWORD, true).await;
    let admin = one_factor_cookie(&app, "ida").await;
    let user = one_factor_cookie(&app, "una").await;
    // `/wiki` is a one_factor rule: enough for the user, not for an admin.
    let res = fa(&app, "/wiki/page", Some(&user), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "a user's one-factor session");
    let res = fa(&app, "/wiki/page", Some(&admin), HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::FOUND,
        "an admin's one-factor session"
    );
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!(
            "https://auth.example.test/login/2fa?rd={}",
            enc("https://app.example.test/wiki/page")
        )
    );
    let res = fa(&app, "/wiki/page", Some(&admin), "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "second_factor_required");
}
