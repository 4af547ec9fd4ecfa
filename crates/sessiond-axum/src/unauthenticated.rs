//! The answer to a request that needs a logged-in user and has none: a browser navigating to
//! a page is sent to the login page (and back afterwards); anything else — scripts, `fetch`,
//! API clients — gets a `401` it can act on.

use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error_body::json_error;

/// Fetch Metadata's "what kind of request is this" header.
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// What `next` escapes: everything but RFC 3986's unreserved characters, so the request's
/// path and query (`/`, `?`, `&`, `=`, `%` included) become one opaque query value.
const NEXT_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Answers requests that need a logged-in user and have none, from a handler, an extractor's
/// rejection or a layer:
///
/// * a page navigation ([`is_page_navigation`]) → `303 See Other` to
///   `{login_path}?next=<the request's path and query, percent-encoded>`, so the login page
///   can send the browser back (after checking that `next` is a local path: anyone can craft
///   a link with any `next`);
/// * anything else → `401` with the JSON error body
///   `{"code": "unauthenticated", "message": "authentication required"}`.
///
/// Both with `Cache-Control: no-store`. `next` holds only the path and query of the request
/// as this service sees it, never a scheme or host (even for a request in absolute form);
/// a path starting with `//` or `/\` (which a browser would read as another host) gets no
/// `next` at all. Under `Router::nest`, the path is the one inside the nest: answer from a
/// layer outside it, or from the outer router, to keep the prefix.
///
/// ```
/// use axum::http::{header, Request};
/// use sessiond_axum::LoginRedirect;
///
/// let login = LoginRedirect::new("/login");
/// let req = Request::get("/private?x=1&y=2")
///     .header("sec-fetch-mode", "navigate")
///     .body(())
///     .unwrap();
/// let res = login.respond_to(&req);
/// assert_eq!(res.status(), 303);
/// assert_eq!(res.headers()[header::LOCATION], "/login?next=%2Fprivate%3Fx%3D1%26y%3D2");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRedirect {
    /// The login path followed by `?next=` (or `&next=` if it has a query already).
    prefix: String,
    /// The login path alone, for requests whose path makes no safe `next`.
    bare: HeaderValue,
}

impl Default for LoginRedirect {
    /// Sends browsers to `/login`.
    fn default() -> Self {
        Self::new("/login")
    }
}

impl LoginRedirect {
    /// Sends browsers to `login_path`: a local path (`/login`, `/auth/login?realm=x`), as it
    /// goes in the `Location` header.
    ///
    /// # Panics
    ///
    /// If `login_path` is not a local path: not starting with a single `/` (`login`,
    /// `//host/login` and `https://host/login` would send browsers elsewhere), or holding a
    /// fragment or a character that is not visible ASCII (percent-encode it). It is a
    /// constant of the app, so this is a programming error found at startup.
    pub fn new(login_path: &str) -> Self {
        let local = login_path.starts_with('/')
            && !login_path.starts_with("//")
            && !login_path.starts_with("/\\")
            && !login_path.contains('#')
            && login_path.bytes().all(|b| b.is_ascii_graphic());
        assert!(
            local,
            "LoginRedirect: {login_path:?} must be a local path such as /login"
        );
        let bare = HeaderValue::from_str(login_path).expect("visible ASCII is a header value");
        let sep = if login_path.contains('?') { '&' } else { '?' };
        Self {
            prefix: format!("{login_path}{sep}next="),
            bare,
        }
    }

    /// The login page's path, as given to [`LoginRedirect::new`].
    pub fn login_path(&self) -> &str {
        self.bare.to_str().expect("checked in new")
    }

    /// The answer to the request of `parts` (see the type's docs).
    pub fn respond(&self, parts: &Parts) -> Response {
        self.answer(&parts.method, &parts.uri, &parts.headers)
    }

    /// [`LoginRedirect::respond`] for a whole request (in a middleware or a tower service).
    pub fn respond_to<B>(&self, req: &Request<B>) -> Response {
        self.answer(req.method(), req.uri(), req.headers())
    }

    /// Where a page navigation to `uri` is sent: the login path with `next` set to `uri`'s
    /// path and query.
    pub fn location(&self, uri: &Uri) -> HeaderValue {
        let back = uri.path_and_query().map_or("/", |p| p.as_str());
        // A path that a browser would read as another host (`//evil.example/`, `/\evil`)
        // is no place to come back to.
        if back.starts_with("//") || back.starts_with("/\\") {
            return self.bare.clone();
        }
        let mut location = String::with_capacity(self.prefix.len() + back.len() * 3);
        location.push_str(&self.prefix);
        location.extend(utf8_percent_encode(back, NEXT_VALUE));
        // The login path is visible ASCII (checked in `new`) and the encoded value is
        // ASCII alphanumerics, unreserved characters and `%XX`: always a valid header value.
        HeaderValue::try_from(location).unwrap_or_else(|_| self.bare.clone())
    }

    fn answer(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
        if is_page_navigation(method, headers) {
            let mut res = StatusCode::SEE_OTHER.into_response();
            let h = res.headers_mut();
            h.insert(header::LOCATION, self.location(uri));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        } else {
            json_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "authentication required",
            )
        }
    }
}

/// Whether a request is a browser navigating to a page (which should be sent to a login page)
/// rather than a script or an API client (which should get a status it can act on).
///
/// A browser that sends Fetch Metadata says so: `Sec-Fetch-Mode: navigate` is a navigation
/// (following a link, submitting a form, typing an address), and any other mode is not (a
/// `fetch` from a page's script wants a `401`, not the login page's HTML behind a redirect it
/// follows silently). Without that header, a `GET` or `HEAD` whose `Accept` prefers
/// `text/html` to `application/json` (by quality, then by order; `*/*` counts as neither) is
/// taken as a navigation.
pub fn is_page_navigation(method: &Method, headers: &HeaderMap) -> bool {
    let mut modes = headers.get_all(SEC_FETCH_MODE).iter().peekable();
    if modes.peek().is_some() {
        return modes.all(|m| m.as_bytes().eq_ignore_ascii_case(b"navigate"));
    }
    (*method == Method::GET || *method == Method::HEAD) && accept_prefers_html(headers)
}

/// The quality (in thousandths) and position of the first range in `Accept` equal to `media`.
#[derive(Clone, Copy)]
struct Ranked {
    q: u16,
    at: usize,
}

fn accept_prefers_html(headers: &HeaderMap) -> bool {
    let mut html: Option<Ranked> = None;
    let mut json: Option<Ranked> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for (at, range) in ranges.enumerate() {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim();
        let slot = if media.eq_ignore_ascii_case("text/html") {
            &mut html
        } else if media.eq_ignore_ascii_case("application/json") {
            &mut json
        } else {
            continue;
        };
        if slot.is_none() {
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1000), |(_, v)| qvalue(v.trim()));
            // A malformed quality makes the range count for nothing.
            *slot = Some(Ranked {
                q: q.unwrap_or(0),
                at,
            });
        }
    }
    match (html, json) {
        (Some(h), _) if h.q == 0 => false,
        (Some(_), None) => true,
        (Some(h), Some(j)) => h.q > j.q || (h.q == j.q && h.at < j.at),
        (None, _) => false,
    }
}

/// An RFC 9110 `qvalue` (`0`, `0.5`, `1.000`, at most three decimals) in thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    const BROWSER_ACCEPT: &str =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";

    fn request(method: &str, uri: &str, pairs: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (name, value) in pairs {
            b = b.header(*name, *value);
        }
        b.body(()).unwrap()
    }

    fn location(res: &Response) -> &str {
        res.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        type Case = (&'static str, &'static [(&'static str, &'static str)], bool);
        // (method, headers, navigation)
        let cases: &[Case] = &[
            ("GET", &[("sec-fetch-mode", "navigate")], true),
            ("POST", &[("sec-fetch-mode", "navigate")], true),
            (
                "GET",
                &[
                    ("sec-fetch-mode", "Navigate"),
                    ("accept", "application/json"),
                ],
                true,
            ),
            // A page's script: JSON, whatever it accepts.
            (
                "GET",
                &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
                false,
            ),
            (
                "GET",
                &[
                    ("sec-fetch-mode", "same-origin"),
                    ("accept", BROWSER_ACCEPT),
                ],
                false,
            ),
            ("GET", &[("sec-fetch-mode", "no-cors")], false),
            (
                "GET",
                &[("sec-fetch-mode", "navigate"), ("sec-fetch-mode", "cors")],
                false,
            ),
            // No Fetch Metadata: Accept decides, for GET and HEAD only.
            ("GET", &[("accept", BROWSER_ACCEPT)], true),
            ("HEAD", &[("accept", BROWSER_ACCEPT)], true),
            ("POST", &[("accept", BROWSER_ACCEPT)], false),
            ("DELETE", &[("accept", "text/html")], false),
            ("GET", &[("accept", "text/html")], true),
            ("GET", &[("accept", "TEXT/HTML ; charset=utf-8")], true),
            ("GET", &[("accept", "text/html, application/json")], true),
            ("GET", &[("accept", "application/json, text/html")], false),
            (
                "GET",
                &[("accept", "application/json;q=0.5, text/html")],
                true,
            ),
            (
                "GET",
                &[("accept", "text/html;q=0.4, application/json;q=0.5")],
                false,
            ),
            (
                "GET",
                &[("accept", "text/html;q=1.0, application/json;q=1")],
                true,
            ),
            ("GET", &[("accept", "text/html;q=0")], false),
            ("GET", &[("accept", "text/html;q=0.000")], false),
            ("GET", &[("accept", "text/html;q=bogus")], false),
            ("GET", &[("accept", "text/html;q=1.5")], false),
            ("GET", &[("accept", "text/html;q=0.0001")], false),
            (
                "GET",
                &[("accept", "application/json;q=0, text/html;q=0.1")],
                true,
            ),
            (
                "GET",
                &[("accept", "application/json"), ("accept", "text/html")],
                false,
            ),
            (
                "GET",
                &[("accept", "text/html"), ("accept", "application/json")],
                true,
            ),
            ("GET", &[("accept", "text/htmlx")], false),
            ("GET", &[("accept", "text/*")], false),
            ("GET", &[("accept", "*/*")], false),
            ("GET", &[("accept", "application/json")], false),
            ("GET", &[("accept", "")], false),
            ("GET", &[], false),
        ];
        for (method, pairs, navigation) in cases {
            let req = request(method, "/x", pairs);
            assert_eq!(
                is_page_navigation(req.method(), req.headers()),
                *navigation,
                "{method} {pairs:?}"
            );
        }
    }

    #[test]
    fn navigations_go_to_the_login_page_with_next() {
        let login = LoginRedirect::default();
        assert_eq!(login.login_path(), "/login");
        let nav = [("sec-fetch-mode", "navigate")];
        let go = |uri: &str| {
            let res = login.respond_to(&request("GET", uri, &nav));
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{uri}");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            location(&res).to_owned()
        };
        assert_eq!(
            go("/private?x=1&y=2"),
            "/login?next=%2Fprivate%3Fx%3D1%26y%3D2"
        );
        assert_eq!(go("/private"), "/login?next=%2Fprivate");
        assert_eq!(go("/"), "/login?next=%2F");
        assert_eq!(go("/a-b.c_d~e"), "/login?next=%2Fa-b.c_d~e");
        // Already-encoded bytes are encoded again: decoding `next` once gives them back.
        assert_eq!(
            go("/caf%C3%A9?q=a%20b"),
            "/login?next=%2Fcaf%25C3%25A9%3Fq%3Da%2520b"
        );
        assert_eq!(
            go("/x?next=https://evil.example"),
            "/login?next=%2Fx%3Fnext%3Dhttps%3A%2F%2Fevil.example"
        );
        // Never a scheme or host, even for a request in absolute form.
        assert_eq!(go("http://evil.example/p?q"), "/login?next=%2Fp%3Fq");
        assert_eq!(go("https://evil.example"), "/login?next=%2F");
        // Paths a browser would read as another host get no `next`.
        assert_eq!(go("//evil.example/x"), "/login");
        assert_eq!(go("/\\evil.example/x"), "/login");

        let with_query = LoginRedirect::new("/auth/login?realm=a");
        let res = with_query.respond_to(&request("GET", "/p", &nav));
        assert_eq!(location(&res), "/auth/login?realm=a&next=%2Fp");
    }

    #[tokio::test]
    async fn everything_else_gets_the_json_401() {
        let login = LoginRedirect::default();
        for pairs in [
            &[][..],
            &[("accept", "application/json")][..],
            &[("sec-fetch-mode", "cors"), ("accept", BROWSER_ACCEPT)][..],
        ] {
            let res = login.respond_to(&request("GET", "/api/me", pairs));
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{pairs:?}");
            assert!(res.headers().get(header::LOCATION).is_none());
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
            let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"code": "unauthenticated", "message": "authentication required"})
            );
        }
    }

    #[test]
    fn login_paths_that_leave_the_site_are_refused() {
        for bad in [
            "",
            "login",
            "//evil.example/login",
            "/\\evil.example",
            "https://evil.example/login",
            "/log in",
            "/login#x",
            "/login\n",
            "/café",
        ] {
            let r = std::panic::catch_unwind(|| LoginRedirect::new(bad));
            assert!(r.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn from_a_handler_in_a_router() {
        let app = Router::new().route(
            "/private",
            get(|parts: Parts| async move { LoginRedirect::new("/sign-in").respond(&parts) }),
        );
        let req = axum::http::Request::get("/private?x=1&y=2")
            .header("accept", BROWSER_ACCEPT)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&res), "/sign-in?next=%2Fprivate%3Fx%3D1%26y%3D2");
        let req = axum::http::Request::get("/private")
            .header("accept", "application/json")
            .body(Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}
