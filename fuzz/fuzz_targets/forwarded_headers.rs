//! What a reverse proxy tells us, through the production entry point: arbitrary
//! `X-Forwarded-*` / `X-Original-*` values from an arbitrary peer, as a request to
//! `/api/authz/forward-auth` and to `/api/authz/auth-request` on the real router
//! (`sessiond::app`, the routes inside every layer, on an `AppState` from `sessiond::build_state_with_clock`, SQLite in
//! a temporary directory), anonymously or with the session of `bob` (groups: dev) or `olga`
//! (groups: ops); and `sessiond::client_ip` on the same headers.
//!
//! Asserts:
//! * nothing panics, and no answer is a 5xx;
//! * **a decision for a path is never more permissive than the decision for the path a
//!   lenient back end would serve** (`lenient_path`: decoded until stable, `\` as `/`,
//!   `;params` and trailing dots dropped, case folded, dot segments resolved; shared with the
//!   differential test `crates/sessiond/tests/api/paths.rs`): whenever forward auth lets a
//!   request through (`200`) or asks for a login (`302`/`401`), asking about that lenient path
//!   on the same host, as the same person, gets at least as much (permissiveness: 200 > login
//!   > refused);
//! * without `X-Original-URL`, both endpoints decide alike (up to the flavour's login answer:
//!   `302` vs `401`) or the nginx one fails only on a malformed `X-Original-Method`;
//! * `client_ip` is the peer, or an address listed in `X-Forwarded-For`; it is the peer
//!   whenever the peer is not a trusted proxy; when it is not the peer, it is not a trusted
//!   proxy itself.
#![no_main]

#[path = "../../crates/sessiond/tests/api/lenient.rs"]
mod lenient;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use sessiond::{Config, Overrides};
use sessiond::client_ip;
use sessiond::hash_blocking;
use sessiond_core::{NewUser, Password, Username};
use tower::ServiceExt as _;

use lenient::lenient_path;

const PASSWORD: &str = "correct horse battery staple";

struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
    config: Config,
    /// `Cookie` header values of bob and olga.
    cookies: [String; 2],
    /// Kept for the life of the process.
    _dir: tempfile::TempDir,
}

static APP: LazyLock<App> = LazyLock::new(|| {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-fuzz-forwarded-")
        .tempdir()
        .expect("temporary directory");
    let file = r#"
        public_url = "https://auth.example.com"
        [cookie]
        domain = "example.com"
        [proxy]
        trusted = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
        [[access.rules]]
        domain = "public.example.com"
        policy = "bypass"
        [[access.rules]]
        domain = "app.example.com"
        path_prefix = "/public"
        policy = "bypass"
        [[access.rules]]
        domain = "*.example.com"
        path_prefix = "/deny"
        policy = "deny"
        [[access.rules]]
        path_prefix = "/ops"
        policy = "authenticated"
        groups = ["ops"]
        [[access.rules]]
        path_prefix = "/docs/"
        policy = "bypass"
    "#;
    let config = Config::resolve(
        toml::from_str(file).expect("fuzz config parses"),
        Overrides {
            database: Some(format!(
                "sqlite://{}",
                dir.path().join("sessiond.db").display()
            )),
            ..Overrides::default()
        },
    )
    .expect("fuzz config is valid");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let state = rt
        .block_on(sessiond::build_state_with_clock(config.clone(), sessiond::now))
        .expect("app state");
    // The production entry point: the routes inside every layer a request passes.
    let router = Router::new().fallback_service(sessiond::app(state.clone()));
    let cookies = ["bob", "olga"].map(|name| {
        let phc = hash_blocking(&Password::new(PASSWORD.into()).unwrap()).expect("hash");
        rt.block_on(state.users.create_user(&NewUser {
            username: Username::parse(name).unwrap(),
            name: name.into(),
            email: format!("{name}@example.com"),
            groups: vec![if name == "olga" { "ops" } else { "dev" }.into()],
            admin: false,
            password_hash: phc,
            created_at: sessiond::now(),
        }))
        .expect("create user");
        let body = format!(r#"{{"username":"{name}","password":"{PASSWORD}"}}"#);
        let req = Request::post("/api/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let (status, headers) = call(&rt, &router, req, Ipv4Addr::new(192, 0, 2, 1).into());
        assert_eq!(status, StatusCode::OK, "login of {name}");
        let session = format!("{}=", config.cookie.name());
        headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&session))
            .expect("session cookie")
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    });
    App {
        rt,
        router,
        config,
        cookies,
        _dir: dir,
    }
});

/// `SESSIOND_FUZZ_VERBOSE=1`: print what each input gave (for reading a reproducer).
static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SESSIOND_FUZZ_VERBOSE").is_some());

/// Who asks, and the headers a proxy may send, each absent or any bytes. (`&[u8]` rather
/// than `Vec<u8>`: `arbitrary` encodes a `Vec<u8>` with a continuation byte before every
/// element, so dictionary words such as `https` would never land in one piece; a slice is
/// contiguous.) make-forwarded-seeds.py writes seeds in this encoding.
#[derive(Debug, Arbitrary)]
struct Input<'a> {
    identity: Identity,
    peer: Peer,
    proto: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    uri: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    forwarded_for: Option<&'a [u8]>,
    /// A second `X-Forwarded-For` header (proxies may append one rather than extend).
    forwarded_for_2: Option<&'a [u8]>,
    original_url: Option<&'a [u8]>,
    original_method: Option<&'a [u8]>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Identity {
    Anonymous,
    Bob,
    Olga,
}

/// Mostly peers that are trusted proxies, where the headers are believed at all.
#[derive(Debug, Arbitrary)]
enum Peer {
    Loopback,
    Private,
    MappedLoopback,
    V6Loopback,
    Untrusted,
    Any(IpAddr),
}

impl Peer {
    fn addr(&self) -> IpAddr {
        match self {
            Peer::Loopback => Ipv4Addr::new(127, 0, 0, 1).into(),
            Peer::Private => Ipv4Addr::new(10, 1, 2, 3).into(),
            Peer::MappedLoopback => Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().into(),
            Peer::V6Loopback => Ipv6Addr::LOCALHOST.into(),
            Peer::Untrusted => Ipv4Addr::new(203, 0, 113, 7).into(),
            Peer::Any(ip) => *ip,
        }
    }
}

/// One request through the router, from `peer`: its status and headers.
fn call(
    rt: &tokio::runtime::Runtime,
    router: &Router,
    mut req: Request<Body>,
    peer: IpAddr,
) -> (StatusCode, HeaderMap) {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(peer, 40000)));
    rt.block_on(async {
        let res = router.clone().oneshot(req).await.expect("infallible");
        (res.status(), res.headers().clone())
    })
}

/// Forward auth's answer about the request described by `h`, at `endpoint`.
fn ask(app: &App, endpoint: &str, h: &HeaderMap, identity: Identity, peer: IpAddr) -> StatusCode {
    let mut req = Request::get(endpoint)
        .header(header::ACCEPT, "text/html")
        .body(Body::empty())
        .unwrap();
    req.headers_mut()
        .extend(h.iter().map(|(k, v)| (k.clone(), v.clone())));
    match identity {
        Identity::Anonymous => {}
        Identity::Bob | Identity::Olga => {
            let cookie = &app.cookies[matches!(identity, Identity::Olga) as usize];
            req.headers_mut()
                .insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        }
    }
    let (status, _) = call(&app.rt, &app.router, req, peer);
    assert!(
        !status.is_server_error(),
        "{endpoint} answered {status} for {h:?}"
    );
    status
}

/// How much an answer lets through: 2 allowed, 1 a login is asked for, 0 refused.
fn permits(status: StatusCode) -> u8 {
    match status.as_u16() {
        200..=299 => 2,
        302 | 401 => 1,
        _ => 0,
    }
}

/// `path` with every byte that may not stand in a request target escaped.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|input: Input<'_>| {
    let app = &*APP;
    let mut h = HeaderMap::new();
    let fields: [(&str, Option<&[u8]>); 8] = [
        ("x-forwarded-proto", input.proto),
        ("x-forwarded-host", input.host),
        ("x-forwarded-uri", input.uri),
        ("x-forwarded-method", input.method),
        ("x-forwarded-for", input.forwarded_for),
        ("x-forwarded-for", input.forwarded_for_2),
        ("x-original-url", input.original_url),
        ("x-original-method", input.original_method),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            // Bytes no HTTP parser would hand us: not an input.
            let Ok(v) = HeaderValue::from_bytes(v) else {
                return;
            };
            h.append(name, v);
        }
    }
    let peer = input.peer.addr();
    let who = input.identity;

    let forward = ask(app, "/api/authz/forward-auth", &h, who, peer);
    let nginx = ask(app, "/api/authz/auth-request", &h, who, peer);
    if *VERBOSE {
        for (name, v) in fields {
            if let Some(v) = v {
                eprintln!("{name}: {:?}", String::from_utf8_lossy(v));
            }
        }
        eprintln!("{who:?} from {peer}: forward-auth {forward}, auth-request {nginx}");
    }
    if input.original_url.is_none() {
        // The same target either way; only the login answer differs by flavour, and a
        // malformed X-Original-Method can fail the nginx one alone.
        let same = permits(forward) == permits(nginx)
            && (forward == nginx
                || (forward, nginx) == (StatusCode::FOUND, StatusCode::UNAUTHORIZED));
        assert!(
            same || (nginx == StatusCode::BAD_REQUEST && input.original_method.is_some()),
            "forward-auth {forward} but auth-request {nginx}"
        );
    }

    // The property: never more than for the path a lenient back end would serve.
    for (status, target) in [
        (forward, forwarded_target(&h)),
        (nginx, original_target(&h)),
    ] {
        let Some((proto, host, uri)) = target else {
            continue;
        };
        if permits(status) == 0 {
            continue;
        }
        let served = escape(&lenient_path(&uri));
        let mut clean = HeaderMap::new();
        clean.insert("x-forwarded-proto", HeaderValue::from_str(&proto).unwrap());
        clean.insert("x-forwarded-host", HeaderValue::from_str(&host).unwrap());
        clean.insert("x-forwarded-uri", HeaderValue::from_str(&served).unwrap());
        let as_served = ask(app, "/api/authz/forward-auth", &clean, who, peer);
        if *VERBOSE {
            eprintln!("{uri:?} is served as {served:?}: {status} vs {as_served}");
        }
        assert!(
            permits(status) <= permits(as_served),
            "{who:?}: {status} for {proto}://{host}{uri}, but {as_served} for the {served:?} a lenient back end serves"
        );
    }

    let ip = client_ip(&app.config, peer, &h);
    if *VERBOSE {
        eprintln!("client_ip({peer}) = {ip}");
    }
    let peer = peer.to_canonical();
    if ip != peer {
        assert!(
            app.config.is_trusted_proxy(peer),
            "believed X-Forwarded-For from an untrusted peer {peer}: {ip}"
        );
        assert!(
            !app.config.is_trusted_proxy(ip),
            "client_ip {ip} is one of our own proxies"
        );
        assert!(
            listed_in_forwarded_for(&h, ip),
            "client_ip {ip} is neither the peer {peer} nor in X-Forwarded-For {:?}",
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>()
        );
    }
});

fn text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)?.to_str().ok().map(str::trim)
}

/// The target of a Traefik / Caddy style request: proto, host, URI as sent.
fn forwarded_target(h: &HeaderMap) -> Option<(String, String, String)> {
    Some((
        text(h, "x-forwarded-proto")?.to_owned(),
        text(h, "x-forwarded-host")?.to_owned(),
        text(h, "x-forwarded-uri").unwrap_or("/").to_owned(),
    ))
}

/// The target of an nginx style request: from `X-Original-URL`, else as above.
fn original_target(h: &HeaderMap) -> Option<(String, String, String)> {
    let Some(url) = text(h, "x-original-url") else {
        return forwarded_target(h);
    };
    let (proto, rest) = url.split_once("://")?;
    let at = rest.find('/').unwrap_or(rest.len());
    let (host, uri) = rest.split_at(at);
    Some((
        proto.to_owned(),
        host.to_owned(),
        if uri.is_empty() { "/" } else { uri }.to_owned(),
    ))
}

/// Our own reading of `X-Forwarded-For`: any comma-separated entry that names `ip`, as an
/// address, `addr:port` or `[v6]`.
fn listed_in_forwarded_for(h: &HeaderMap, ip: IpAddr) -> bool {
    h.get_all("x-forwarded-for").iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|e| {
                let e = e.trim();
                let parsed = e
                    .parse::<IpAddr>()
                    .ok()
                    .or_else(|| e.parse::<SocketAddr>().ok().map(|sa| sa.ip()))
                    .or_else(|| {
                        e.strip_prefix('[')
                            .and_then(|r| r.strip_suffix(']'))
                            .and_then(|r| r.parse::<IpAddr>().ok())
                    });
                parsed.is_some_and(|p| p.to_canonical() == ip)
            })
        })
    })
}
