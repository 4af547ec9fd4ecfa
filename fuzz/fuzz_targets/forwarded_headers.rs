//! What a reverse proxy tells us: `sessiond::forwarded::{forward_auth_target,
//! auth_request_target, client_ip}` with arbitrary `X-Forwarded-*` / `X-Original-*` values
//! and an arbitrary peer address.
//!
//! Asserts:
//! * nothing panics;
//! * an `Ok` target is an `http`/`https` URL with a host and no userinfo; its `rule_path()`
//!   is absolute and has no `.`/`..` segment left; access rules decide on it without panicking;
//! * without `X-Original-URL`, `auth_request_target` sees the same URL as
//!   `forward_auth_target`, and fails only where it does or on a malformed
//!   `X-Original-Method`;
//! * `client_ip` is the peer, or an address listed in `X-Forwarded-For`; it is the peer
//!   whenever the peer is not a trusted proxy; when it is not the peer, it is not a trusted
//!   proxy itself.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sessiond::config::{Config, Overrides};
use sessiond::forwarded::{
    auth_request_target, client_ip, forward_auth_target, Target, TargetError,
};

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
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
        domain = "*.example.com"
        path_prefix = "/admin"
        policy = "deny"
        [[access.rules]]
        path_prefix = "/ops/"
        policy = "authenticated"
        groups = ["ops"]
    "#;
    Config::resolve(
        toml::from_str(file).expect("fuzz config parses"),
        Overrides::default(),
    )
    .expect("fuzz config is valid")
});

/// `SESSIOND_FUZZ_VERBOSE=1`: print what each input gave (for reading a reproducer).
static VERBOSE: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("SESSIOND_FUZZ_VERBOSE").is_some());

/// The headers a proxy may send, each absent or any bytes. (`&[u8]` rather than `Vec<u8>`:
/// `arbitrary` encodes a `Vec<u8>` with a continuation byte before every element, so
/// dictionary words such as `https` would never land in one piece; a slice is contiguous.)
/// make-forwarded-seeds.py writes seeds in this encoding.
#[derive(Debug, Arbitrary)]
struct Input<'a> {
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

fuzz_target!(|input: Input<'_>| {
    let config = &*CONFIG;
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

    let forward = forward_auth_target(&h);
    if let Ok(t) = &forward {
        check_target(config, t);
    }
    let auth = auth_request_target(&h);
    if let Ok(t) = &auth {
        check_target(config, t);
    }
    if input.original_url.is_none() {
        // Without X-Original-URL both styles must see the same target; only a malformed
        // X-Original-Method can make the nginx style fail where the other succeeds.
        let bad_method = TargetError::Malformed("x-original-method");
        match (&forward, &auth) {
            (Ok(f), Ok(a)) => assert_eq!(f.url, a.url, "the two styles disagree"),
            (Err(f), Err(a)) => assert_eq!(f, a, "the two styles fail differently"),
            (Ok(_), Err(a)) => assert_eq!(*a, bad_method, "auth-request alone failed"),
            (Err(f), Ok(a)) => panic!("forward-auth failed ({f}), auth-request gave {}", a.url),
        }
    }

    let peer = input.peer.addr();
    let ip = client_ip(config, peer, &h);
    if *VERBOSE {
        for (name, v) in fields {
            if let Some(v) = v {
                eprintln!("{name}: {:?}", String::from_utf8_lossy(v));
            }
        }
        eprintln!(
            "peer: {:?}\nforward-auth: {:?}\nauth-request: {:?}\nclient_ip({peer}) = {ip}",
            input.peer,
            forward.as_ref().map(|t| t.url.as_str()),
            auth.as_ref().map(|t| t.url.as_str()),
        );
    }
    let peer = peer.to_canonical();
    if ip != peer {
        assert!(
            config.is_trusted_proxy(peer),
            "believed X-Forwarded-For from an untrusted peer {peer}: {ip}"
        );
        assert!(
            !config.is_trusted_proxy(ip),
            "client_ip {ip} is one of our own proxies"
        );
        assert!(
            listed_in_forwarded_for(&h, ip),
            "client_ip {ip} is neither the peer {peer} nor in X-Forwarded-For {:?}",
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>()
        );
    }
});

fn check_target(config: &Config, t: &Target) {
    let url = &t.url;
    assert!(
        matches!(url.scheme(), "http" | "https"),
        "target scheme {:?}: {url}",
        url.scheme()
    );
    assert!(
        url.host_str().is_some_and(|h| !h.is_empty()),
        "target without a host: {url}"
    );
    assert!(
        url.username().is_empty() && url.password().is_none(),
        "target with userinfo: {url}"
    );
    let path = t.rule_path();
    assert!(path.starts_with('/'), "rule path {path:?} of {url}");
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "rule path {path:?} of {url} keeps a dot segment"
    );
    let host = t.host();
    let _ = config.host_is_ours(&host);
    let _ = config.access.decide(&host, &path);
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
