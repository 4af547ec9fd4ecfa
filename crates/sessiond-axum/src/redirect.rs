//! Where a browser may be sent after login (`rd`, `next`).
//!
//! Open redirects after login are a classic (oauth2-proxy, Authelia and Django all had
//! advisories). The approach: refuse anything with control characters or backslashes outright
//! (browsers strip or reinterpret them), then parse the value with the WHATWG URL parser (the
//! `url` crate, the same algorithm browsers use), check the *parsed* host, and emit the
//! parser's own serialisation, so what we checked is exactly what the browser will follow.

use url::Url;

/// Longest redirect target accepted.
pub const MAX_LEN: usize = 2048;

/// Whether the session cookie can belong to `host` (lowercase, no port): `public`'s host, or
/// `cookie_domain` or a host under it. The one copy of this rule: forward auth's targets and
/// the redirects after login both ask it.
pub fn host_is_ours(host: &str, public: &Url, cookie_domain: Option<&str>) -> bool {
    let public = public.host_str().unwrap_or("").to_ascii_lowercase();
    host == public
        || cookie_domain
            .is_some_and(|d| host == d || host.strip_suffix(d).is_some_and(|p| p.ends_with('.')))
}

/// `target` if it is a path on this site (`/private?tab=2`), as the browser will read it;
/// `None` for anything that could leave it (`//evil.example`, `/\evil.example`,
/// `https://…`, control characters). For an app's `?next=` after login.
///
/// ```
/// use sessiond_axum::redirect::local_path;
/// assert_eq!(local_path("/private?tab=2").as_deref(), Some("/private?tab=2"));
/// assert_eq!(local_path("//evil.example/"), None);
/// assert_eq!(local_path("https://evil.example/"), None);
/// ```
pub fn local_path(target: &str) -> Option<String> {
    // Any origin will do: only the path part survives, and only if the origin is unchanged.
    static BASE: std::sync::LazyLock<Url> =
        std::sync::LazyLock::new(|| Url::parse("http://local.invalid/").expect("valid"));
    if !target.starts_with('/') {
        return None;
    }
    safe_redirect(target, &BASE, None)
}

/// The target to send the browser to, or `None` (then the caller uses `/`).
///
/// Allowed: a path on this site (`/app?x=1`), or an absolute URL whose host is the public
/// URL's host or a host under the cookie domain, and
/// * whose scheme is `https` when the public URL's is: never a downgrade to plain `http`
///   (the page the user lands on, and the cookie's next request, in the clear);
/// * whose port is the scheme's default or the public URL's own: another port of an allowed
///   host is often another service (an admin console, a dev server) that the rules were not
///   written for.
///
/// Userinfo (`user@host`) is refused: it only ever serves to disguise the real host.
pub fn safe_redirect(target: &str, public: &Url, cookie_domain: Option<&str>) -> Option<String> {
    if target.is_empty() || target.len() > MAX_LEN {
        return None;
    }
    if target
        .chars()
        .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
    {
        return None;
    }
    if target.starts_with('/') {
        if target.starts_with("//") {
            return None;
        }
        let joined = public.join(target).ok()?;
        if joined.origin() != public.origin() {
            return None;
        }
        let mut out = joined.path().to_owned();
        // A path that normalises to `//host` would be protocol-relative once emitted alone.
        if out.starts_with("//") {
            return None;
        }
        if let Some(q) = joined.query() {
            out.push('?');
            out.push_str(q);
        }
        if let Some(f) = joined.fragment() {
            out.push('#');
            out.push_str(f);
        }
        return Some(out);
    }
    let url = Url::parse(target).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    let host = url.host_str()?.to_ascii_lowercase();
    public.host_str()?;
    let allowed = host_is_ours(&host, public, cookie_domain);
    let scheme_ok = public.scheme() != "https" || url.scheme() == "https";
    // `port()` is `None` for the scheme's default port (WHATWG parsing drops it).
    let port_ok =
        url.port().is_none() || url.port_or_known_default() == public.port_or_known_default();
    (allowed && scheme_ok && port_ok).then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> Url {
        Url::parse("https://auth.example.com").unwrap()
    }

    fn check(rows: &[(&str, Option<&str>, Option<&str>)]) {
        for (input, domain, expected) in rows {
            assert_eq!(
                safe_redirect(input, &public(), *domain).as_deref(),
                *expected,
                "{input:?} (domain {domain:?})"
            );
        }
    }

    #[test]
    fn table() {
        let d = Some("example.com");
        check(&[
            ("/", None, Some("/")),
            ("/app?x=1#top", None, Some("/app?x=1#top")),
            ("/a/../b", None, Some("/b")),
            (
                "https://auth.example.com/x",
                None,
                Some("https://auth.example.com/x"),
            ),
            ("https://auth.example.com:8443/x", None, None),
            (
                "https://auth.example.com:443/x",
                None,
                Some("https://auth.example.com/x"),
            ),
            ("http://auth.example.com/x", None, None),
            ("http://app.example.com/", d, None),
            ("https://app.example.com:8080/", d, None),
            (
                "https://app.example.com:443/",
                d,
                Some("https://app.example.com/"),
            ),
            (
                "https://app.example.com/",
                d,
                Some("https://app.example.com/"),
            ),
            ("https://example.com/", d, Some("https://example.com/")),
            ("https://app.example.com/", None, None),
            ("//evil.com", None, None),
            ("///evil.com", None, None),
            ("/\\evil.com", None, None),
            ("\\\\evil.com", None, None),
            ("/.//evil.com", None, None),
            ("https://evil.com", d, None),
            ("https://evilexample.com", d, None),
            ("https://example.com.evil.com", d, None),
            ("https://auth.example.com@evil.com", None, None),
            ("https://evil.com#@auth.example.com", None, None),
            ("https://user:pw@auth.example.com/", None, None),
            ("javascript:alert(1)", None, None),
            ("JavaScript://auth.example.com/%0aalert(1)", None, None),
            ("data:text/html,<script>alert(1)</script>", None, None),
            ("/\tevil", None, None),
            ("/x\r\nSet-Cookie: a=b", None, None),
            ("evil.com", None, None),
            ("", None, None),
        ]);
        assert!(safe_redirect(&format!("/{}", "a".repeat(MAX_LEN)), &public(), None).is_none());
    }

    #[test]
    fn an_http_public_url_allows_http_and_https_on_its_own_port() {
        let public = Url::parse("http://auth.example.com:8080").unwrap();
        for (input, expected) in [
            (
                "http://auth.example.com:8080/x",
                Some("http://auth.example.com:8080/x"),
            ),
            (
                "https://auth.example.com/x",
                Some("https://auth.example.com/x"),
            ),
            (
                "http://auth.example.com/x",
                Some("http://auth.example.com/x"),
            ),
            ("http://auth.example.com:9090/x", None),
        ] {
            assert_eq!(
                safe_redirect(input, &public, None).as_deref(),
                expected,
                "{input}"
            );
        }
    }

    /// The 559 payloads of `shared/data/openredirects.txt` (query-unescaped), with and
    /// without a cookie domain: whatever is accepted lands on our hosts, over https, on the
    /// default port.
    #[test]
    fn open_redirect_payloads_stay_on_our_hosts_over_https() {
        // `shared/` sits beside the checkout, or beside a folder of worktrees.
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let Some(text) = here
            .ancestors()
            .find_map(|a| std::fs::read_to_string(a.join("shared/data/openredirects.txt")).ok())
        else {
            // In CI the data must be there; elsewhere a checkout without it skips.
            assert!(
                !sessiond_store_tests::services_required(),
                "shared/data/openredirects.txt is required"
            );
            eprintln!("SKIP: shared/data/openredirects.txt not found");
            return;
        };
        let payloads: Vec<String> = text
            .lines()
            .map(|l| {
                url::form_urlencoded::parse(format!("x={l}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(payloads.len(), 559);
        let mut accepted = 0;
        for (i, p) in payloads.iter().enumerate() {
            for domain in [None, Some("example.com")] {
                if let Some(out) = safe_redirect(p, &public(), domain) {
                    accepted += 1;
                    assert!(
                        lands_on_our_hosts(&out, domain),
                        "payload {i} {p:?} -> {out:?}"
                    );
                }
            }
            // `local_path` accepts only paths: what it gives stays on the page's own host.
            if let Some(out) = local_path(p) {
                let landed = public().join(&out).unwrap();
                assert_eq!(
                    landed.origin(),
                    public().origin(),
                    "payload {i} {p:?} -> {out:?}"
                );
                assert!(out.starts_with('/') && !out.starts_with("//"), "{out:?}");
            }
        }
        assert!(accepted > 0, "some payloads are plain paths");
    }

    /// Where a browser lands if sent to `location` from our login page: one of our hosts,
    /// over https, on the default port.
    fn lands_on_our_hosts(location: &str, domain: Option<&str>) -> bool {
        let Ok(landed) = public().join(location) else {
            return false;
        };
        let host = landed.host_str().unwrap_or("").to_ascii_lowercase();
        landed.scheme() == "https"
            && landed.port().is_none()
            && (host == "auth.example.com"
                || domain.is_some_and(|d| host == d || host.ends_with(&format!(".{d}"))))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_input_never_leaves_our_hosts(input in ".{0,80}", with_domain in proptest::bool::ANY) {
            let domain = with_domain.then_some("example.com");
            if let Some(out) = safe_redirect(&input, &public(), domain) {
                proptest::prop_assert!(lands_on_our_hosts(&out, domain), "{:?} -> {:?}", input, out);
                proptest::prop_assert!(!out.chars().any(char::is_control));
            }
        }

        #[test]
        fn url_shaped_input_never_leaves_our_hosts(
            lead in proptest::sample::select(vec![
                "", "/", "//", "///", "/\\", "\\\\", "https://", "http:", "http:/", "https:///",
                "javascript:", "data:", "/%2f", "%2f%2f", "@", "/.//", "ftp://",
            ]),
            host in proptest::sample::select(vec![
                "evil.com", "auth.example.com", "auth.example.com.evil.com", "evil.com@auth.example.com",
                "auth.example.com@evil.com", "example.com", "app.example.com", "evilexample.com",
                "auth.example.com%2f@evil.com", "[::1]", "127.0.0.1", "0x7f.1", "EVIL.COM",
            ]),
            tail in r"[/a-z0-9?#@%.:\\]{0,12}",
            with_domain in proptest::bool::ANY,
        ) {
            let domain = with_domain.then_some("example.com");
            let input = format!("{lead}{host}{tail}");
            if let Some(out) = safe_redirect(&input, &public(), domain) {
                proptest::prop_assert!(lands_on_our_hosts(&out, domain), "{:?} -> {:?}", input, out);
            }
        }
    }
}
