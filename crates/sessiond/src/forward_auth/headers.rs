//! What a reverse proxy tells us: the client's address (`X-Forwarded-For`) and, for forward
//! auth, the request it is asking about (`X-Forwarded-Proto/Host/Uri/Method`, or nginx's
//! `X-Original-URL/Method`). Believed only from configured proxies (docs/reference/security.md,
//! "Proxies and the client address"); everything here is a pure function of the headers, so
//! it is table-tested and fuzzed.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

use super::path::NotCanonical;
use crate::config::Config;

// The headers forward auth reads, named once: a lookup by `&str` parses and checks the name
// on every call (`HdrName::from_bytes`).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");

/// Longest forwarded target accepted.
pub(crate) const MAX_TARGET: usize = 8 * 1024;

/// The client's address (docs/reference/security.md, "Proxies and the client address"): when
/// the socket's peer is a trusted proxy, walk `X-Forwarded-For` from the right, past the
/// entries our own proxies appended, to the first entry that is not a trusted proxy; otherwise
/// the peer. (Entries further left are whatever the client chose to send; only those appended
/// by our own proxies can be believed.)
///
/// Junk entries (`unknown`, `_hidden`, an empty entry, anything not an address) are judged by
/// where they sit, not by discarding the whole header:
/// * left of where the walk stops: never read, so they change nothing
///   (`unknown, 198.51.100.7` from a proxy is `198.51.100.7`);
/// * where the walk stops: a trusted proxy recorded a client it could not name. The walk ends
///   there, and the answer is the peer, as when the header is absent or names only our
///   proxies. It must not go on to the entries further left: those are the client's own words,
///   and skipping the junk would let a client pick its address by sending `X-Forwarded-For:
///   <any address>, unknown`.
pub fn client_ip(config: &Config, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let peer = peer.to_canonical();
    if !config.is_trusted_proxy(peer) {
        return peer;
    }
    for entry in forwarded_for(headers).rev() {
        match entry {
            Some(ip) if config.is_trusted_proxy(ip) => {}
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

/// Every `X-Forwarded-For` entry in order (over all such headers), each parsed or `None` when
/// it is not an address (a header value that is not visible ASCII counts as one such entry).
fn forwarded_for(headers: &HeaderMap) -> impl DoubleEndedIterator<Item = Option<IpAddr>> + '_ {
    let mut out = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(v) => out.extend(v.split(',').map(|e| parse_forwarded_ip(e.trim()))),
            Err(_) => out.push(None),
        }
    }
    out.into_iter()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]`, `[::1]:5678`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Why a forwarded target was refused (all `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The path is not one that every back end reads alike (`forward_auth::path::canonical_path`).
    #[error("the target's path {0}; such paths are refused, since the proxy's back end may read them otherwise")]
    NotCanonical(#[from] NotCanonical),
}

/// A host header value: a DNS name or IP literal, optionally with a port; nothing that could
/// make the URL parser see userinfo, a path or another authority.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

fn valid_uri(u: &str) -> bool {
    u.starts_with('/')
        && !u
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
}

fn build(proto: &str, host: &str, uri: &str) -> Result<Url, TargetError> {
    let proto = proto.to_ascii_lowercase();
    if proto != "http" && proto != "https" {
        return Err(TargetError::Malformed("X-Forwarded-Proto"));
    }
    if !valid_host(host) {
        return Err(TargetError::Malformed("X-Forwarded-Host"));
    }
    if !valid_uri(uri) {
        return Err(TargetError::Malformed("X-Forwarded-Uri"));
    }
    let url = Url::parse(&format!("{proto}://{host}{uri}"))
        .map_err(|_| TargetError::Malformed("X-Forwarded-Host"))?;
    if url.host_str().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Malformed("X-Forwarded-Host"));
    }
    Ok(url)
}

/// The three parts a target URL is built from, as the proxy sent them (validated as headers:
/// present once, visible ASCII, not empty, not oversized), before any URL parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TargetParts<'a> {
    pub proto: &'a str,
    pub host: &'a str,
    pub uri: &'a str,
    /// The header a malformed URL is reported against (`None`: the `X-Forwarded-*` set).
    pub(super) from_original_url: bool,
}

impl TargetParts<'_> {
    /// The target URL (WHATWG parsing: host lowercased, dot segments resolved).
    pub(crate) fn url(&self) -> Result<Url, TargetError> {
        build(self.proto, self.host, self.uri).map_err(|e| {
            if self.from_original_url {
                TargetError::Malformed("X-Original-URL")
            } else {
                e
            }
        })
    }
}

/// The forward-auth headers of one request, found in one pass over its headers rather than
/// looked up by name one at a time, which hashes the name on every lookup
/// (docs/performance.md, "Forwarded headers in one pass"). Each is kept once; one sent twice
/// is ambiguous, as a request smuggling attempt would be, and refused where it is read.
#[derive(Debug, Default)]
pub(crate) struct Forwarded<'a> {
    values: [Option<Result<&'a HeaderValue, ()>>; 6],
}

const PROTO: usize = 0;
const HOST: usize = 1;
const URI: usize = 2;
const FORWARDED_METHOD: usize = 3;
const ORIGINAL_URL: usize = 4;
const ORIGINAL_METHOD: usize = 5;

impl<'a> Forwarded<'a> {
    pub(crate) fn scan(h: &'a HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in h {
            let i = match name.as_str() {
                "x-forwarded-proto" => PROTO,
                "x-forwarded-host" => HOST,
                "x-forwarded-uri" => URI,
                "x-forwarded-method" => FORWARDED_METHOD,
                "x-original-url" => ORIGINAL_URL,
                "x-original-method" => ORIGINAL_METHOD,
                _ => continue,
            };
            seen.values[i] = Some(match seen.values[i] {
                None => Ok(value),
                Some(_) => Err(()),
            });
        }
        seen
    }

    /// The header's value: present once, visible ASCII, trimmed, not empty, not oversized.
    fn get(&self, i: usize) -> Result<Option<&'a str>, TargetError> {
        let malformed = || {
            TargetError::Malformed(
                [
                    &X_FORWARDED_PROTO,
                    &X_FORWARDED_HOST,
                    &X_FORWARDED_URI,
                    &X_FORWARDED_METHOD,
                    &X_ORIGINAL_URL,
                    &X_ORIGINAL_METHOD,
                ][i]
                    .as_str(),
            )
        };
        match self.values[i] {
            None => Ok(None),
            Some(Err(())) => Err(malformed()),
            Some(Ok(v)) => {
                // `to_str` admits visible ASCII and tabs only, so `trim_ascii` trims exactly
                // what `trim` would (no other white space can be left), without `trim`'s
                // decoding of each end as a Unicode character.
                let v = v.to_str().map_err(|_| malformed())?.trim_ascii();
                if v.is_empty() || v.len() > MAX_TARGET {
                    return Err(malformed());
                }
                Ok(Some(v))
            }
        }
    }

    fn method(&self, i: usize) -> Result<Option<Method>, TargetError> {
        let malformed = || {
            TargetError::Malformed(if i == FORWARDED_METHOD {
                X_FORWARDED_METHOD.as_str()
            } else {
                X_ORIGINAL_METHOD.as_str()
            })
        };
        match self.get(i)? {
            None => Ok(None),
            Some(m) if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map(Some)
                    .map_err(|_| malformed())
            }
            Some(_) => Err(malformed()),
        }
    }

    /// Traefik / Caddy style: the parts of `X-Forwarded-Proto`, `X-Forwarded-Host`,
    /// `X-Forwarded-Uri`.
    pub(crate) fn forward_auth_parts(&self) -> Result<TargetParts<'a>, TargetError> {
        let proto = self
            .get(PROTO)?
            .ok_or(TargetError::Missing("X-Forwarded-Proto"))?;
        let host = self
            .get(HOST)?
            .ok_or(TargetError::Missing("X-Forwarded-Host"))?;
        let uri = self.get(URI)?.unwrap_or("/");
        Ok(TargetParts {
            proto,
            host,
            uri,
            from_original_url: false,
        })
    }

    /// nginx `auth_request` style: the parts of `X-Original-URL`, else of the
    /// `X-Forwarded-*` set.
    pub(crate) fn auth_request_parts(&self) -> Result<TargetParts<'a>, TargetError> {
        let Some(raw) = self.get(ORIGINAL_URL)? else {
            return self.forward_auth_parts();
        };
        let (proto, rest) = raw
            .split_once("://")
            .ok_or(TargetError::Malformed("X-Original-URL"))?;
        let split = rest.find('/').unwrap_or(rest.len());
        let (host, uri) = rest.split_at(split);
        let uri = if uri.is_empty() { "/" } else { uri };
        Ok(TargetParts {
            proto,
            host,
            uri,
            from_original_url: true,
        })
    }

    /// The method a Traefik / Caddy style request names (`X-Forwarded-Method`), if any.
    pub(crate) fn forward_auth_method(&self) -> Result<Option<Method>, TargetError> {
        self.method(FORWARDED_METHOD)
    }

    /// The method an nginx style request names (`X-Original-Method`, else
    /// `X-Forwarded-Method` when the target came from the `X-Forwarded-*` set).
    pub(crate) fn auth_request_method(&self) -> Result<Option<Method>, TargetError> {
        if self.get(ORIGINAL_URL)?.is_some() {
            return self.method(ORIGINAL_METHOD);
        }
        let forwarded = self.forward_auth_method()?;
        Ok(self.method(ORIGINAL_METHOD)?.or(forwarded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};
    use crate::forward_auth::path::canonical_path;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn config(trusted: &str) -> Config {
        let f: FileConfig = toml::from_str(&format!("[proxy]\ntrusted = {trusted}")).unwrap();
        Config::resolve(f, Overrides::default()).unwrap()
    }

    #[test]
    fn client_ip_table() {
        let c = config(r#"["127.0.0.0/8", "10.0.0.0/8"]"#);
        let rows: &[(&str, Option<&str>, &str)] = &[
            // Untrusted peer: its own address, whatever it claims.
            ("203.0.113.9", Some("1.1.1.1"), "203.0.113.9"),
            // Trusted peer: the rightmost untrusted entry.
            ("127.0.0.1", Some("1.1.1.1"), "1.1.1.1"),
            ("127.0.0.1", Some("6.6.6.6, 1.1.1.1, 10.0.0.5"), "1.1.1.1"),
            (
                "10.0.0.2",
                Some("[2001:db8::1]:443, 10.0.0.7"),
                "2001:db8::1",
            ),
            ("127.0.0.1", Some("1.1.1.1:5555"), "1.1.1.1"),
            // Only proxies in the chain: the peer.
            ("127.0.0.1", Some("10.0.0.1"), "127.0.0.1"),
            // Junk where the walk stops: the peer, never an entry further left (the
            // client's own words).
            ("127.0.0.1", Some("1.1.1.1, not-an-ip"), "127.0.0.1"),
            ("127.0.0.1", Some("6.6.6.6, unknown, 10.0.0.5"), "127.0.0.1"),
            ("127.0.0.1", Some("6.6.6.6,"), "127.0.0.1"),
            ("127.0.0.1", Some(""), "127.0.0.1"),
            // Junk left of where the walk stops changes nothing.
            ("127.0.0.1", Some("unknown, 198.51.100.7"), "198.51.100.7"),
            (
                "127.0.0.1",
                Some("_hidden, , 198.51.100.7, 10.0.0.9"),
                "198.51.100.7",
            ),
            (
                "10.0.0.2",
                Some("unknown,198.51.100.7:4711"),
                "198.51.100.7",
            ),
            ("127.0.0.1", None, "127.0.0.1"),
            ("::ffff:127.0.0.1", Some("1.1.1.1"), "1.1.1.1"),
        ];
        for (peer, xff, expected) in rows {
            let h = match xff {
                Some(v) => headers(&[("x-forwarded-for", v)]),
                None => HeaderMap::new(),
            };
            assert_eq!(
                client_ip(&c, peer.parse().unwrap(), &h).to_string(),
                *expected,
                "{peer} {xff:?}"
            );
        }
    }

    /// What forward auth reads from `h`, Traefik / Caddy style: the URL, the path the rules
    /// see, the method.
    fn forward_auth(h: &HeaderMap) -> Result<(Url, String, Option<Method>), TargetError> {
        let f = Forwarded::scan(h);
        let parts = f.forward_auth_parts()?;
        Ok((
            parts.url()?,
            canonical_path(parts.uri)?,
            f.forward_auth_method()?,
        ))
    }

    /// The same, nginx `auth_request` style.
    fn auth_request(h: &HeaderMap) -> Result<(Url, String, Option<Method>), TargetError> {
        let f = Forwarded::scan(h);
        let parts = f.auth_request_parts()?;
        Ok((
            parts.url()?,
            canonical_path(parts.uri)?,
            f.auth_request_method()?,
        ))
    }

    #[test]
    fn forward_auth_targets() {
        let (url, path, method) = forward_auth(&headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "App.Example.com:8443"),
            ("x-forwarded-uri", "/%61dmin/x?q=/../1"),
            ("x-forwarded-method", "post"),
        ]))
        .unwrap();
        assert_eq!(
            url.as_str(),
            "https://app.example.com:8443/%61dmin/x?q=/../1"
        );
        assert_eq!(path, "/admin/x");
        assert_eq!(method, Some(Method::POST));
        // Paths that back ends read in more than one way are refused, never cleaned up.
        for uri in [
            "/a/../admin",
            "/public%2F..%2Fadmin",
            "/public//../admin",
            "/..%2f..%2fadmin",
            "/a/./b",
        ] {
            let h = headers(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-uri", uri),
            ]);
            assert!(
                matches!(forward_auth(&h), Err(TargetError::NotCanonical(_))),
                "{uri}"
            );
        }

        let bad: &[&[(&'static str, &str)]] = &[
            &[("x-forwarded-host", "a.com"), ("x-forwarded-uri", "/")],
            &[("x-forwarded-proto", "https"), ("x-forwarded-uri", "/")],
            &[("x-forwarded-proto", "ftp"), ("x-forwarded-host", "a.com")],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.com@a.com"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com/x"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-uri", "x"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-uri", "/a b"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-uri", "/\\\\evil"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-method", "G E T"),
            ],
            &[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-host", "b.com"),
            ],
        ];
        for h in bad {
            assert!(forward_auth(&headers(h)).is_err(), "{h:?}");
        }
    }

    /// Spaces and tabs around a forwarded value are trimmed (the only white space a header
    /// value can hold); a value of white space alone is malformed, as an empty one is.
    #[test]
    fn forwarded_values_are_trimmed_of_spaces_and_tabs() {
        let f_headers = headers(&[
            ("x-forwarded-proto", " \thttps\t "),
            ("x-forwarded-host", "\ta.com "),
            ("x-forwarded-uri", "  /x?y "),
            ("x-forwarded-method", "\tget"),
        ]);
        let f = Forwarded::scan(&f_headers);
        let parts = f.forward_auth_parts().unwrap();
        assert_eq!(
            (parts.proto, parts.host, parts.uri),
            ("https", "a.com", "/x?y")
        );
        assert_eq!(f.forward_auth_method().unwrap(), Some(Method::GET));
        for name in ["x-forwarded-proto", "x-forwarded-host", "x-forwarded-uri"] {
            let mut pairs = vec![
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "a.com"),
                ("x-forwarded-uri", "/"),
            ];
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, " \t "));
            let h = headers(&pairs);
            assert_eq!(
                Forwarded::scan(&h).forward_auth_parts(),
                Err(TargetError::Malformed(name)),
                "{name}"
            );
        }
    }

    /// The one-pass scan reads each forwarded header as a lookup by name did: the value
    /// (any other header ignored), and a header sent twice refused under its own name.
    #[test]
    fn forwarded_headers_sent_twice_are_refused_by_name() {
        let base = [
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.com"),
            ("x-forwarded-uri", "/x"),
            ("x-forwarded-method", "GET"),
        ];
        let mut h = headers(&base);
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        let f = Forwarded::scan(&h);
        let parts = f.forward_auth_parts().unwrap();
        assert_eq!(
            (parts.proto, parts.host, parts.uri),
            ("https", "a.com", "/x")
        );
        assert_eq!(f.forward_auth_method().unwrap(), Some(Method::GET));
        for name in [
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-uri",
            "x-forwarded-method",
        ] {
            let mut h = headers(&base);
            h.append(name, "again".parse().unwrap());
            let f = Forwarded::scan(&h);
            let e = match f.forward_auth_parts() {
                Err(e) => e,
                Ok(_) => f.forward_auth_method().unwrap_err(),
            };
            assert!(
                matches!(e, TargetError::Malformed(n) if n == name),
                "{name}: {e:?}"
            );
        }
        for (name, value) in [
            ("x-original-url", "https://b.com/"),
            ("x-original-method", "POST"),
        ] {
            let mut h = headers(&[
                ("x-original-url", "https://a.com/"),
                ("x-original-method", "GET"),
            ]);
            let f = Forwarded::scan(&h);
            assert!(f.auth_request_parts().is_ok() && f.auth_request_method().is_ok());
            h.append(name, value.parse().unwrap());
            let f = Forwarded::scan(&h);
            let e = match f.auth_request_parts() {
                Err(e) => e,
                Ok(_) => f.auth_request_method().unwrap_err(),
            };
            assert!(matches!(e, TargetError::Malformed(_)), "{name}: {e:?}");
        }
    }

    #[test]
    fn auth_request_targets() {
        let (url, path, method) = auth_request(&headers(&[
            ("x-original-url", "https://app.example.com/x?y"),
            ("x-original-method", "GET"),
        ]))
        .unwrap();
        assert_eq!(url.as_str(), "https://app.example.com/x?y");
        assert_eq!((path.as_str(), method), ("/x", Some(Method::GET)));
        let (url, path, _) =
            auth_request(&headers(&[("x-original-url", "http://app.example.com")])).unwrap();
        assert_eq!((url.path(), path.as_str()), ("/", "/"));
        let (url, _, _) = auth_request(&headers(&[
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "a.com"),
        ]))
        .unwrap();
        assert_eq!(url.as_str(), "http://a.com/");
        for bad in [
            "app.example.com/x",
            "javascript:alert(1)",
            "https://u:p@app.example.com/",
            "https://a.com\\@evil.com/",
            "https://a.com//ops/x",
            "https://a.com/public/%2e%2e/deny",
        ] {
            assert!(
                auth_request(&headers(&[("x-original-url", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(auth_request(&HeaderMap::new()).is_err());
    }
}
