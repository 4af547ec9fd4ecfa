//! Cross-site request forgery protection (docs/reference/security.md, "CSRF").
//!
//! Three defences, for three situations:
//!
//! * [`Origins`] and [`CsrfLayer`], for every route: an unsafe request (any method but
//!   `GET`, `HEAD`, `OPTIONS`, `TRACE`) that a browser marks as cross-site is refused with
//!   `403 csrf_rejected` — `Sec-Fetch-Site: cross-site`, or else an `Origin` that is neither
//!   the app's own nor one it trusts. Current browsers send at least one of the two headers on
//!   every unsafe request, so this alone stops CSRF for JSON and form routes alike, login
//!   included (login CSRF: logging the victim into the attacker's account).
//! * [`form_token`] and [`check_form_token`], for the HTML forms of a logged-in user: a token
//!   derived from the session's secret, bound to the session and not derivable from a
//!   database dump (which holds only the secret's hash). A second line for browsers or
//!   proxies that drop both headers.
//! * [`DoubleSubmit`], for forms shown before there is a session (the login form): a random
//!   value in an HttpOnly cookie and in the form, which must match.
//!
//! Every comparison of a secret value is constant-time.
//!
//! ```
//! use axum::{routing::post, Router};
//! use sessiond_axum::csrf::{CsrfLayer, Origins};
//!
//! let origins = Origins::new("https://app.example.com")
//!     .unwrap()
//!     .trust("https://admin.example.com")
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/api/things", post(|| async { "created" }))
//!     .layer(CsrfLayer::new(origins));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use sessiond_core::SessionToken;
use tower::{Layer, Service};
use url::Url;

use crate::error_body::json_error;
use crate::{find_cookie, ActiveSession, CookieConfig, CookieLookup, SameSite};

/// Fetch Metadata's "where does this request come from" header.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// What [`form_token`] derives from the session's secret. Changing it would invalidate every
/// form open in a browser at the time of an upgrade.
const FORM_TOKEN_PURPOSE: &str = "csrf-form";

/// The request was refused as a possible cross-site request forgery: `403` with the JSON
/// error body `{"code": "csrf_rejected", "message": "cross-site request rejected"}` and
/// `Cache-Control: no-store`.
///
/// It never says which check failed: that would only help someone probing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsrfRejection {
    _private: (),
}

impl CsrfRejection {
    const fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for CsrfRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cross-site request rejected")
    }
}

impl std::error::Error for CsrfRejection {}

impl IntoResponse for CsrfRejection {
    fn into_response(self) -> Response {
        json_error(
            StatusCode::FORBIDDEN,
            "csrf_rejected",
            "cross-site request rejected",
        )
    }
}

/// A string given as an origin that is not one: not `http(s)://host[:port]` with nothing
/// after it (but an optional `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOrigin(String);

impl fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an origin such as https://app.example.com (http or https, a host, \
             an optional port, no path, query, fragment or user)",
            self.0
        )
    }
}

impl std::error::Error for InvalidOrigin {}

/// The origins whose unsafe requests are accepted: the app's own and the ones it trusts
/// (sibling apps that post to it), and the decision itself ([`Origins::allows`]).
///
/// Origins are given as `scheme://host[:port]` and kept as browsers serialise them in the
/// `Origin` header (lowercase host, no default port, no trailing slash, IDN hosts in
/// punycode); the header is then compared with them exactly. A cookie domain does not widen
/// the list: every host under it (a sibling app, a user-content host, a forgotten staging
/// box) could otherwise post with the user's cookies. List each one that must post here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origins {
    /// Empty for [`Origins::same_host`].
    own: String,
    trusted: Vec<String>,
}

impl Origins {
    /// The app's own origin, e.g. `https://app.example.com` (the public URL's scheme, host and
    /// port, as browsers see them, not the address the server listens on behind a proxy).
    pub fn new(own: &str) -> Result<Self, InvalidOrigin> {
        Ok(Self {
            own: serialise_origin(own)?,
            trusted: Vec::new(),
        })
    }

    /// The app's own origin taken from each request: an `Origin` whose host and port are the
    /// request's `Host` (`http://` or `https://`) is the app's own. What `auth.layer()` uses
    /// unless told otherwise (Django's rule, without a setting to forget).
    ///
    /// Safe against forgery: a page on another site cannot choose the `Host` its victim's
    /// browser sends to this app (it is this app's host), and a page served from a host that
    /// resolves to this app (DNS rebinding) gets none of this app's cookies. Behind a proxy
    /// that rewrites `Host`, name the public origin with [`Origins::new`] instead.
    pub fn same_host() -> Self {
        Self {
            own: String::new(),
            trusted: Vec::new(),
        }
    }

    /// Also accepts unsafe requests from `origin`.
    pub fn trust(mut self, origin: &str) -> Result<Self, InvalidOrigin> {
        let origin = serialise_origin(origin)?;
        if origin != self.own && !self.trusted.contains(&origin) {
            self.trusted.push(origin);
        }
        Ok(self)
    }

    /// The app's own origin, as browsers send it (empty for [`Origins::same_host`]).
    pub fn own(&self) -> &str {
        &self.own
    }

    /// The trusted origins besides the app's own, as browsers send them.
    pub fn trusted(&self) -> &[String] {
        &self.trusted
    }

    /// Whether a request with `method` and `headers` may proceed.
    ///
    /// Safe methods (`GET`, `HEAD`, `OPTIONS`, `TRACE`) always may: they must not change
    /// anything, and a cross-site page cannot read their answers. An unsafe one may not if a
    /// `Sec-Fetch-Site` says `cross-site` (the browser telling outright), or an `Origin` is
    /// not one of these (`Origin: null`, which sandboxed frames and some redirects send,
    /// included). A request with neither header passes: browsers send one of them on every
    /// unsafe request, so it comes from a client that is not a browser (curl, a script),
    /// which has no victim's cookies to ride on. A repeated header is judged by every copy.
    pub fn allows(&self, method: &Method, headers: &HeaderMap) -> bool {
        if is_safe(method) {
            return true;
        }
        let cross_site = headers
            .get_all(SEC_FETCH_SITE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        !cross_site
            && headers
                .get_all(header::ORIGIN)
                .iter()
                .all(|o| self.is_listed(o.as_bytes(), headers))
    }

    /// [`Origins::allows`] as a `Result`, for handlers and layers that answer with the
    /// rejection.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), CsrfRejection> {
        if self.allows(method, headers) {
            Ok(())
        } else {
            Err(CsrfRejection::new())
        }
    }

    fn is_listed(&self, origin: &[u8], headers: &HeaderMap) -> bool {
        let own = if self.own.is_empty() {
            // Exactly one `Host`, and the origin is `http(s)://` + it.
            let mut hosts = headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => origin
                    .strip_prefix(b"https://")
                    .or_else(|| origin.strip_prefix(b"http://"))
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(host.as_bytes())),
                _ => false,
            }
        } else {
            origin == self.own.as_bytes()
        };
        own || self.trusted.iter().any(|t| t.as_bytes() == origin)
    }
}

/// Methods that must not change state (RFC 9110, 9.2.1); everything else is checked.
fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// `s` as browsers write it in `Origin` (the WHATWG URL parser's serialisation, so that what
/// is configured is compared in the form the browser sends).
fn serialise_origin(s: &str) -> Result<String, InvalidOrigin> {
    let bad = || InvalidOrigin(s.to_owned());
    let url = Url::parse(s).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.host().is_some_and(|h| match h {
            // A pattern such as `*.example.com` parses, but no browser sends it: refused
            // here rather than silently never matching.
            url::Host::Domain(d) => d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => true,
        })
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// Refuses the unsafe requests [`Origins::allows`] refuses, with [`CsrfRejection`] (`403`),
/// before the inner service sees them.
///
/// A plain tower service: the check is synchronous, so the inner service is called from
/// `call` and its future wrapped, with no boxed future and no clone of the inner service per
/// request. Put it outside the routes that change state, or around the whole app.
#[derive(Clone, Debug)]
pub struct CsrfLayer {
    origins: Arc<Origins>,
}

impl CsrfLayer {
    /// A layer accepting unsafe requests only from `origins`.
    pub fn new(origins: Origins) -> Self {
        Self {
            origins: Arc::new(origins),
        }
    }

    /// The origins this layer accepts.
    pub fn origins(&self) -> &Origins {
        &self.origins
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            origins: Arc::clone(&self.origins),
        }
    }
}

/// The service [`CsrfLayer`] wraps around an app.
#[derive(Clone, Debug)]
pub struct CsrfService<S> {
    inner: S,
    origins: Arc<Origins>,
}

impl<S, B> Service<Request<B>> for CsrfService<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CsrfFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = match self.origins.check(req.method(), req.headers()) {
            Ok(()) => FutureState::Running {
                inner: self.inner.call(req),
            },
            Err(rejection) => FutureState::Refused {
                res: Some(rejection.into_response()),
            },
        };
        CsrfFuture { state }
    }
}

pin_project! {
    /// The answer of a [`CsrfService`]: the inner service's, or the refusal.
    pub struct CsrfFuture<F> {
        #[pin]
        state: FutureState<F>,
    }
}

pin_project! {
    #[project = FutureStateProj]
    enum FutureState<F> {
        Running { #[pin] inner: F },
        Refused { res: Option<Response> },
    }
}

impl<F, E> Future for CsrfFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FutureStateProj::Running { inner } => inner.poll(cx),
            FutureStateProj::Refused { res } => {
                Poll::Ready(Ok(res.take().expect("CsrfFuture polled after completion")))
            }
        }
    }
}

/// The CSRF token for the HTML forms of `session`'s pages: put it in a hidden field, and
/// check what comes back with [`check_form_token`].
///
/// Derived from the session's secret (a keyed SHA-256 with its own purpose label): the same
/// for every form and page of the session, so several tabs keep working; useless to another
/// session; not derivable from the store, which holds only the secret's hash; and it does
/// not reveal the secret.
pub fn form_token(session: &ActiveSession) -> String {
    session.token().derive(FORM_TOKEN_PURPOSE)
}

/// Checks a form's token against [`form_token`] of `session`, in constant time.
pub fn check_form_token(session: &ActiveSession, sent: &str) -> Result<(), CsrfRejection> {
    let expected = SessionToken::parse(&form_token(session));
    match (expected, SessionToken::parse(sent)) {
        // `==` on tokens is constant-time.
        (Some(e), Some(s)) if e == s => Ok(()),
        _ => Err(CsrfRejection::new()),
    }
}

/// The CSRF token of forms shown before login (the login form itself), where there is no
/// session to bind a token to: the double-submit pattern. A random value is set in an
/// HttpOnly cookie and put in the form; a post is accepted only if both are present, well
/// formed and equal (compared in constant time). A cross-site page can make the browser send
/// the cookie but can neither read it nor set it, so it cannot fill in the field.
///
/// Setting the cookie is the weak point of the pattern, so the cookie should be host-only
/// (no `Domain`): with `secure` it is then named `__Host-…`, which a sibling subdomain cannot
/// set or shadow (cookie tossing). [`DoubleSubmit::default`] is such a cookie:
/// `__Host-sessiond_csrf`, `SameSite=Lax`, gone when the browser closes.
///
/// ```
/// use axum::http::HeaderMap;
/// use sessiond_axum::csrf::DoubleSubmit;
///
/// let csrf = DoubleSubmit::default();
/// // Showing the form: the value goes into a hidden field, the cookie (if new) on the answer.
/// let issued = csrf.issue(&HeaderMap::new());
/// assert!(issued.set_cookie().is_some());
/// // Receiving it: the browser sends both back.
/// let mut headers = HeaderMap::new();
/// let cookie = format!("__Host-sessiond_csrf={}", issued.value());
/// headers.insert("cookie", cookie.parse().unwrap());
/// assert!(csrf.check(&headers, issued.value()).is_ok());
/// assert!(csrf.check(&headers, "forged").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct DoubleSubmit {
    cookie: CookieConfig,
}

impl Default for DoubleSubmit {
    fn default() -> Self {
        Self::new(CookieConfig::new(
            "sessiond_csrf",
            true,
            None,
            SameSite::Lax,
        ))
    }
}

impl DoubleSubmit {
    /// Keeps the value in the cookie `cookie` names and scopes (see the type's docs: use one
    /// without a domain).
    pub fn new(cookie: CookieConfig) -> Self {
        Self { cookie }
    }

    /// The cookie's settings.
    pub fn cookie(&self) -> &CookieConfig {
        &self.cookie
    }

    /// The token for a form being shown: the one in the request's cookie if it carries one
    /// well-formed copy (other open tabs keep working), else a fresh random one, with the
    /// `Set-Cookie` value the answer must carry.
    pub fn issue(&self, headers: &HeaderMap) -> IssuedToken {
        if let CookieLookup::One(v) = find_cookie(headers, self.cookie.name()) {
            if let Some(token) = SessionToken::parse(v) {
                return IssuedToken {
                    token,
                    set_cookie: None,
                };
            }
        }
        let token = SessionToken::generate();
        let set_cookie = self.cookie.build(self.cookie.name(), token.expose(), None);
        IssuedToken {
            token,
            set_cookie: Some(set_cookie),
        }
    }

    /// Checks a posted form's token against the request's cookie: exactly one cookie of the
    /// name (a second one may have been planted), both well formed, equal in constant time.
    pub fn check(&self, headers: &HeaderMap, sent: &str) -> Result<(), CsrfRejection> {
        let matches = match (
            find_cookie(headers, self.cookie.name()),
            SessionToken::parse(sent),
        ) {
            // `==` on tokens is constant-time.
            (CookieLookup::One(c), Some(sent)) => SessionToken::parse(c).is_some_and(|c| c == sent),
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(CsrfRejection::new())
        }
    }
}

/// A double-submit token ready for a form ([`DoubleSubmit::issue`]).
pub struct IssuedToken {
    token: SessionToken,
    set_cookie: Option<HeaderValue>,
}

impl IssuedToken {
    /// The value for the form's hidden field.
    pub fn value(&self) -> &str {
        self.token.expose()
    }

    /// The `Set-Cookie` value the answer must carry, when the browser had no usable cookie.
    pub fn set_cookie(&self) -> Option<&HeaderValue> {
        self.set_cookie.as_ref()
    }
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("value", &"<redacted>")
            .field("sets_cookie", &self.set_cookie.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::routing::post;
    use axum::Router;
    use sessiond_core::{ExpiryPolicy, NewSession, UserId};
    use sessiond_store_memory::MemoryStore;
    use tower::ServiceExt;

    use super::*;
    use crate::SessionManager;

    const OWN: &str = "https://app.example.com";

    fn origins() -> Origins {
        Origins::new(OWN)
            .unwrap()
            .trust("https://admin.example.com")
            .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn unsafe_requests_are_judged_by_fetch_metadata_then_origin() {
        let o = origins();
        // (headers, allowed): each row says why.
        let cases: &[(&[(&str, &str)], bool)] = &[
            // Not a browser (no ambient cookies): passes.
            (&[], true),
            // The app's own pages, and a trusted sibling.
            (&[("origin", OWN)], true),
            (&[("origin", "https://admin.example.com")], true),
            (&[("sec-fetch-site", "same-origin"), ("origin", OWN)], true),
            (&[("sec-fetch-site", "same-origin")], true),
            // A user typing in the address bar or using a bookmark.
            (&[("sec-fetch-site", "none")], true),
            // The browser says cross-site, whatever Origin says, in any case.
            (&[("sec-fetch-site", "cross-site")], false),
            (&[("sec-fetch-site", "Cross-Site")], false),
            (&[("sec-fetch-site", "CROSS-SITE"), ("origin", OWN)], false),
            // Same site but another origin: Origin decides.
            (
                &[
                    ("sec-fetch-site", "same-site"),
                    ("origin", "https://evil.example.com"),
                ],
                false,
            ),
            (
                &[
                    ("sec-fetch-site", "same-site"),
                    ("origin", "https://admin.example.com"),
                ],
                true,
            ),
            // Foreign, opaque or malformed origins.
            (&[("origin", "https://evil.example")], false),
            (&[("origin", "null")], false),
            (&[("origin", "")], false),
            (&[("origin", "https://app.example.com.evil.example")], false),
            (
                &[("origin", "https://evil.example/https://app.example.com")],
                false,
            ),
            (&[("origin", "http://app.example.com")], false),
            (&[("origin", "https://app.example.com:8443")], false),
            (&[("origin", "https://app.example.com:443")], false),
            (&[("origin", "https://app.example.com/")], false),
            (&[("origin", "https://APP.example.com")], false),
            (&[("origin", "HTTPS://app.example.com")], false),
            (&[("origin", " https://app.example.com")], false),
            (&[("origin", "https://sub.app.example.com")], false),
            (&[("origin", "https://example.com")], false),
            // A copy per header: every one must pass.
            (
                &[("origin", OWN), ("origin", "https://evil.example")],
                false,
            ),
            (
                &[("origin", "https://evil.example"), ("origin", OWN)],
                false,
            ),
            (
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("sec-fetch-site", "cross-site"),
                ],
                false,
            ),
        ];
        for (pairs, allowed) in cases {
            let h = headers(pairs);
            for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                assert_eq!(o.allows(&m, &h), *allowed, "{m} {pairs:?}");
                assert_eq!(o.check(&m, &h).is_ok(), *allowed, "{m} {pairs:?}");
            }
            let custom = Method::from_bytes(b"PROPPATCH").unwrap();
            assert_eq!(o.allows(&custom, &h), *allowed, "{custom} {pairs:?}");
        }
    }

    /// `same_host`: the request's own `Host` is the own origin, under either scheme; any
    /// other origin, a second `Host` or none at all is refused.
    #[test]
    fn same_host_takes_the_own_origin_from_the_request() {
        let o = Origins::same_host()
            .trust("https://admin.example.com")
            .unwrap();
        let post = Method::POST;
        for (host, origin, ok) in [
            ("app.example.com", "https://app.example.com", true),
            ("127.0.0.1:3000", "http://127.0.0.1:3000", true),
            ("App.Example.com", "https://app.example.com", true),
            ("app.example.com", "https://admin.example.com", true),
            ("app.example.com", "https://evil.example", false),
            (
                "app.example.com",
                "https://app.example.com.evil.example",
                false,
            ),
            ("app.example.com:8443", "https://app.example.com", false),
            ("app.example.com", "null", false),
            ("app.example.com", "ftp://app.example.com", false),
            ("", "https://app.example.com", false),
        ] {
            let mut h = headers(&[("origin", origin)]);
            if !host.is_empty() {
                h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            }
            assert_eq!(o.allows(&post, &h), ok, "Host {host:?}, Origin {origin:?}");
        }
        let mut two = headers(&[("origin", "https://app.example.com")]);
        two.append(header::HOST, HeaderValue::from_static("app.example.com"));
        two.append(header::HOST, HeaderValue::from_static("evil.example"));
        assert!(!o.allows(&post, &two), "two Host headers");
    }

    #[test]
    fn safe_methods_always_pass() {
        let o = origins();
        let hostile = headers(&[("sec-fetch-site", "cross-site"), ("origin", "null")]);
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(o.allows(&m, &hostile), "{m}");
        }
    }

    #[test]
    fn configured_origins_are_kept_as_browsers_send_them() {
        let o = Origins::new("HTTPS://App.Example.COM:443/")
            .unwrap()
            .trust("http://dev.example.com:8080")
            .unwrap()
            .trust("https://bücher.example")
            .unwrap()
            .trust("https://app.example.com")
            .unwrap()
            .trust("http://127.0.0.1:7444")
            .unwrap()
            .trust("http://[0:0::1]:8080/")
            .unwrap();
        assert_eq!(o.own(), "https://app.example.com");
        assert_eq!(
            o.trusted(),
            [
                "http://dev.example.com:8080",
                "https://xn--bcher-kva.example",
                "http://127.0.0.1:7444",
                "http://[::1]:8080"
            ]
        );
        let post = |origin: &str| o.allows(&Method::POST, &headers(&[("origin", origin)]));
        assert!(post("https://app.example.com"));
        assert!(post("http://dev.example.com:8080"));
        assert!(post("https://xn--bcher-kva.example"));
        assert!(!post("http://dev.example.com"));
    }

    #[test]
    fn what_is_not_an_origin_is_refused_at_configuration() {
        for bad in [
            "",
            "null",
            "app.example.com",
            "*.example.com",
            "https://*.example.com",
            "https://app.example.com*",
            "https://[::1",
            "https://app.example.com/path",
            "https://app.example.com//",
            "https://app.example.com?",
            "https://app.example.com#x",
            "https://user@app.example.com",
            "https://user:pw@app.example.com",
            "ftp://app.example.com",
            "file:///etc",
            "data:text/plain,x",
            "javascript:alert(1)",
        ] {
            let err = Origins::new(bad).unwrap_err();
            assert!(err.to_string().contains("not an origin"), "{bad}");
            assert!(Origins::new(OWN).unwrap().trust(bad).is_err(), "{bad}");
        }
    }

    async fn send(app: &Router, method: Method, pairs: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().method(method).uri("/thing");
        for (name, value) in pairs {
            req = req.header(*name, *value);
        }
        app.clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_layer_refuses_with_the_json_error_before_the_handler_runs() {
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&ran);
        let app = Router::new()
            .route(
                "/thing",
                post(move || async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "done"
                })
                .get(|| async { "page" }),
            )
            .layer(CsrfLayer::new(origins()));

        let res = send(&app, Method::POST, &[("origin", "https://evil.example")]).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "csrf_rejected");
        assert_eq!(body["message"], "cross-site request rejected");
        assert_eq!(body.as_object().unwrap().len(), 2);

        let res = send(&app, Method::POST, &[("sec-fetch-site", "cross-site")]).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);

        let res = send(&app, Method::POST, &[("origin", OWN)]).await;
        assert_eq!(res.status(), StatusCode::OK);
        let res = send(&app, Method::POST, &[]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);

        let res = send(&app, Method::GET, &[("sec-fetch-site", "cross-site")]).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"page");
    }

    async fn active_session(manager: &SessionManager) -> ActiveSession {
        let (token, _) = manager
            .begin(
                NewSession {
                    user_id: UserId(1),
                    remember: false,
                    ip: None,
                    user_agent: None,
                    level: Default::default(),
                },
                None,
            )
            .await
            .unwrap();
        let h = headers(&[("cookie", &format!("__Host-sessiond={}", token.expose()))]);
        manager.verify(&h).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn form_tokens_are_bound_to_their_session() {
        let manager = SessionManager::new(
            Arc::new(MemoryStore::new()),
            CookieConfig::default(),
            ExpiryPolicy::default(),
        );
        let a = active_session(&manager).await;
        let b = active_session(&manager).await;
        let token = form_token(&a);
        assert_eq!(token.len(), 43);
        assert_eq!(token, form_token(&a), "stable across forms and tabs");
        assert_ne!(token, form_token(&b));
        assert_ne!(token, a.token().expose(), "not the secret itself");
        assert!(check_form_token(&a, &token).is_ok());
        assert!(
            check_form_token(&b, &token).is_err(),
            "another session's token"
        );
        assert!(
            check_form_token(&a, a.token().expose()).is_err(),
            "the secret"
        );
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "x",
            &token[..42],
            &format!("{token}A"),
            &flipped,
            &format!(" {token}"),
        ] {
            assert!(check_form_token(&a, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn double_submit_accepts_only_one_matching_cookie() {
        let csrf = DoubleSubmit::default();
        assert_eq!(csrf.cookie().name(), "__Host-sessiond_csrf");
        let first = csrf.issue(&HeaderMap::new());
        let set = first.set_cookie().unwrap().to_str().unwrap();
        assert!(set.starts_with(&format!("__Host-sessiond_csrf={}", first.value())));
        assert!(set.contains("HttpOnly") && set.contains("Secure") && set.contains("Path=/"));
        assert!(!set.contains("Domain") && !set.contains("Max-Age"));
        assert!(
            !format!("{first:?}").contains(first.value()),
            "Debug redacts"
        );

        let v = first.value();
        let cookie = |c: &str| headers(&[("cookie", c)]);
        let good = cookie(&format!("__Host-sessiond_csrf={v}"));
        // The same value again while the cookie holds: several tabs agree.
        let again = csrf.issue(&good);
        assert_eq!(again.value(), v);
        assert!(again.set_cookie().is_none());
        // A malformed cookie is replaced.
        let replaced = csrf.issue(&cookie("__Host-sessiond_csrf=short"));
        assert_ne!(replaced.value(), v);
        assert!(replaced.set_cookie().is_some());

        assert!(csrf.check(&good, v).is_ok());
        let other = SessionToken::generate();
        for (h, sent) in [
            (good.clone(), other.expose()),
            (good.clone(), ""),
            (good.clone(), "short"),
            (HeaderMap::new(), v),
            (cookie(&format!("sessiond_csrf={v}")), v),
            // Planted second copy: ambiguous, refused even if one matches.
            (
                cookie(&format!(
                    "__Host-sessiond_csrf={v}; __Host-sessiond_csrf={v}"
                )),
                v,
            ),
            (cookie("__Host-sessiond_csrf=short"), "short"),
            (cookie("__Host-sessiond_csrf="), ""),
        ] {
            assert!(csrf.check(&h, sent).is_err(), "{h:?} {sent:?}");
        }
    }

    #[tokio::test]
    async fn the_layer_passes_requests_with_any_body_type() {
        // `Request<B>`: the layer also works below a body-transforming layer.
        let svc =
            CsrfLayer::new(origins()).layer(tower::service_fn(|_req: Request<String>| async {
                Ok::<_, std::convert::Infallible>("ok".into_response())
            }));
        let req = Request::post("/")
            .header("origin", "null")
            .body(String::new())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let req = Request::get("/").body(String::new()).unwrap();
        assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::OK);
    }
}
