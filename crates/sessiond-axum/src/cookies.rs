use axum::http::{header, HeaderMap, HeaderValue};
use cookie::Cookie;

/// `SameSite` for the session cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SameSite {
    /// The default. Lax, not Strict: with Strict a user following a link from their mail or
    /// chat to a protected app would arrive logged out; Lax still withholds the cookie from
    /// cross-site POSTs, iframes and fetches, which is what CSRF needs.
    #[default]
    Lax,
    /// Sent only on same-site requests, top-level navigations from other sites included.
    Strict,
}

/// How the session cookie is named and scoped (docs/reference/sessions.md, "The cookie").
#[derive(Clone, Debug)]
pub struct CookieConfig {
    name: String,
    domain: Option<String>,
    secure: bool,
    same_site: SameSite,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self::new("sessiond", true, None, SameSite::Lax)
    }
}

impl CookieConfig {
    /// Names the cookie from `base`:
    /// * secure, no domain → `__Host-base`: the browser guarantees it was set over HTTPS by
    ///   this very host, with `Path=/` and no `Domain`, so a sibling subdomain cannot plant or
    ///   shadow it (cookie tossing);
    /// * secure with a domain (SSO across subdomains) → `__Secure-base`;
    /// * not secure (plain-HTTP development only) → `base`.
    pub fn new(base: &str, secure: bool, domain: Option<String>, same_site: SameSite) -> Self {
        let name = match (secure, &domain) {
            (true, None) => format!("__Host-{base}"),
            (true, Some(_)) => format!("__Secure-{base}"),
            (false, _) => base.to_owned(),
        };
        Self {
            name,
            domain,
            secure,
            same_site,
        }
    }

    /// A host-only cookie named after this one (`{base}{suffix}`, same `Secure` and
    /// `SameSite`, never a `Domain`): the login throttle's device cookie (`_device`) and the
    /// pre-login CSRF cookie (`_csrf`) are such companions of the session cookie.
    pub fn companion(&self, suffix: &str) -> Self {
        let base = self
            .name
            .strip_prefix("__Host-")
            .or_else(|| self.name.strip_prefix("__Secure-"))
            .unwrap_or(&self.name);
        Self::new(
            &format!("{base}{suffix}"),
            self.secure,
            None,
            self.same_site,
        )
    }

    /// The cookie's full name (with its `__Host-` or `__Secure-` prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `Domain` attribute, for SSO across subdomains (`None`: host-only).
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// Whether the cookie is `Secure` (sent over HTTPS only).
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// A `Set-Cookie` value for `value` with the session attributes. `max_age` of `None` makes
    /// a browser-session cookie (gone when the browser closes).
    pub fn build(
        &self,
        name: &str,
        value: &str,
        max_age: Option<std::time::Duration>,
    ) -> HeaderValue {
        let mut c = Cookie::build((name.to_owned(), value.to_owned()))
            // HttpOnly: script on any page (including an XSS payload) cannot read the secret.
            .http_only(true)
            .secure(self.secure)
            .path("/")
            .same_site(match self.same_site {
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::Strict => cookie::SameSite::Strict,
            });
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        if let Some(age) = max_age {
            let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
            c = c.max_age(cookie::time::Duration::seconds(secs));
        }
        HeaderValue::from_str(&c.build().to_string()).expect("cookie text is a valid header value")
    }

    /// A `Set-Cookie` that removes `name`, with the same attributes (a removal with other
    /// attributes would be a different cookie and leave the original in place).
    pub fn removal(&self, name: &str) -> HeaderValue {
        let mut c = Cookie::build((name.to_owned(), String::new()))
            .http_only(true)
            .secure(self.secure)
            .path("/")
            .same_site(match self.same_site {
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::Strict => cookie::SameSite::Strict,
            })
            .max_age(cookie::time::Duration::ZERO)
            .expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
        if let Some(d) = &self.domain {
            c = c.domain(d.clone());
        }
        HeaderValue::from_str(&c.build().to_string()).expect("cookie text is a valid header value")
    }
}

/// What the `Cookie` headers say about one cookie name.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieLookup<'a> {
    /// Not sent.
    Absent,
    /// Sent exactly once, with this value.
    One(&'a str),
    /// Sent more than once. We don't guess which one is meant: an attacker who managed to
    /// plant a second cookie of the same name must not get to choose.
    Ambiguous,
}

/// Finds `name` in every `Cookie` header, working on bytes: a header that is not valid UTF-8
/// or a pair without `=` does not hide a well-formed cookie next to it, and never panics.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> CookieLookup<'a> {
    let mut found = CookieLookup::Absent;
    for value in headers.get_all(header::COOKIE) {
        // `memchr` finds the separators a word at a time: this runs on every request.
        let mut rest = value.as_bytes();
        loop {
            let (pair, next) = match memchr::memchr(b';', rest) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if let Some(v) = cookie_value(pair, name) {
                found = match found {
                    CookieLookup::Absent => CookieLookup::One(v),
                    _ => return CookieLookup::Ambiguous,
                };
            }
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
    }
    found
}

/// The value of one `name=value` pair of a `Cookie` header, if it is the cookie `name`.
fn cookie_value<'a>(pair: &'a [u8], name: &str) -> Option<&'a str> {
    let pair = pair.trim_ascii();
    let eq = memchr::memchr(b'=', pair)?;
    if pair[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    let raw = pair[eq + 1..].trim_ascii();
    let raw = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    // Non-UTF-8 bytes cannot be one of our tokens; keep it as an unusable value so a
    // duplicate is still detected.
    Some(std::str::from_utf8(raw).unwrap_or("\u{0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn finds_one_cookie_among_others() {
        let h = headers(&[b"a=1; __Host-sessiond=abc ; b=2"]);
        assert_eq!(find_cookie(&h, "__Host-sessiond"), CookieLookup::One("abc"));
        let h = headers(&[b"a=1", b"__Host-sessiond=\"abc\""]);
        assert_eq!(find_cookie(&h, "__Host-sessiond"), CookieLookup::One("abc"));
        assert_eq!(
            find_cookie(&headers(&[b"x=1; sessiond=2"]), "__Host-sessiond"),
            CookieLookup::Absent
        );
        assert_eq!(find_cookie(&headers(&[]), "sessiond"), CookieLookup::Absent);
    }

    #[test]
    fn duplicates_are_ambiguous_even_across_headers() {
        assert_eq!(
            find_cookie(&headers(&[b"s=1; s=2"]), "s"),
            CookieLookup::Ambiguous
        );
        assert_eq!(
            find_cookie(&headers(&[b"s=1", b"s=1"]), "s"),
            CookieLookup::Ambiguous
        );
    }

    #[test]
    fn garbage_never_panics() {
        for v in [
            &b"\xff\xfe=\x80"[..],
            b";;;;",
            b"=",
            b"s",
            b"s=\xff",
            b" ; s = x ;",
        ] {
            let _ = find_cookie(&headers(&[v]), "s");
        }
        assert_eq!(
            find_cookie(&headers(&[b"s=\xff"]), "s"),
            CookieLookup::One("\u{0}")
        );
    }

    #[test]
    fn names_follow_the_prefix_rules() {
        assert_eq!(CookieConfig::default().name(), "__Host-sessiond");
        assert_eq!(
            CookieConfig::new("sessiond", true, Some("example.com".into()), SameSite::Lax).name(),
            "__Secure-sessiond"
        );
        assert_eq!(
            CookieConfig::new("sid", false, None, SameSite::Strict).name(),
            "sid"
        );
    }

    #[test]
    fn attributes() {
        let c = CookieConfig::default();
        let v = c.build(c.name(), "tok", None);
        let s = v.to_str().unwrap();
        for part in [
            "__Host-sessiond=tok",
            "HttpOnly",
            "Secure",
            "Path=/",
            "SameSite=Lax",
        ] {
            assert!(s.contains(part), "{s} lacks {part}");
        }
        assert!(!s.contains("Max-Age") && !s.contains("Domain"), "{s}");
        let p = c
            .build(c.name(), "tok", Some(std::time::Duration::from_secs(60)))
            .to_str()
            .unwrap()
            .to_owned();
        assert!(p.contains("Max-Age=60"), "{p}");
        let r = c.removal(c.name()).to_str().unwrap().to_owned();
        for part in [
            "__Host-sessiond=",
            "HttpOnly",
            "Secure",
            "Path=/",
            "SameSite=Lax",
            "Max-Age=0",
        ] {
            assert!(r.contains(part), "{r} lacks {part}");
        }
        let d = CookieConfig::new(
            "sessiond",
            true,
            Some("example.com".into()),
            SameSite::Strict,
        );
        let s = d.build(d.name(), "t", None).to_str().unwrap().to_owned();
        assert!(
            s.contains("Domain=example.com") && s.contains("SameSite=Strict"),
            "{s}"
        );
    }
}
