//! The `Cookie` header parser: `sessiond_axum::find_cookie` over arbitrary bytes, then
//! `SessionToken::parse` on whatever it finds.
//!
//! Input: raw bytes, split on `\n` into several `Cookie` header values (`\n` can never be in
//! a header value, so nothing is lost). An input with a piece `HeaderValue::from_bytes`
//! refuses is skipped: such a request never reaches us.
//!
//! Asserts:
//! * nothing panics;
//! * a found value never contains `;` (it is one cookie, not the rest of the header);
//! * several `Cookie` headers mean the same as one header joining them with `;`;
//! * `SessionToken::parse` accepts only 43 URL-safe base64 characters, in their canonical
//!   encoding (decoding and re-encoding gives the same text), and round-trips:
//!   `parse(t.expose()) == Some(t)`.
#![no_main]

use axum::http::{header, HeaderMap, HeaderValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sessiond_axum::{find_cookie, CookieLookup};
use sessiond_core::SessionToken;

/// The names the server looks for (host-only, with a cookie domain, insecure dev mode, the
/// login form's CSRF cookie), plus the degenerate empty name.
const NAMES: &[&str] = &[
    "__Host-sessiond",
    "__Secure-sessiond",
    "sessiond",
    "__Host-sessiond_csrf",
    "",
];

fuzz_target!(|data: &[u8]| {
    let mut multi = HeaderMap::new();
    for piece in data.split(|&b| b == b'\n') {
        let Ok(v) = HeaderValue::from_bytes(piece) else {
            return;
        };
        multi.append(header::COOKIE, v);
    }
    let joined =
        HeaderValue::from_bytes(&data.split(|&b| b == b'\n').collect::<Vec<_>>().join(&b';'))
            .expect("pieces that are valid header values joined by ';' are one");
    let mut single = HeaderMap::new();
    single.insert(header::COOKIE, joined);

    for name in NAMES {
        let found = find_cookie(&multi, name);
        assert_eq!(
            found,
            find_cookie(&single, name),
            "several Cookie headers must mean the same as one joined with ';' (name {name:?})"
        );
        if let CookieLookup::One(v) = found {
            assert!(!v.contains(';'), "a cookie value spans a ';': {v:?}");
            check_token(v);
        }
    }
    // The token parser on its own, fed directly (43-byte inputs reach it more often).
    if let Ok(s) = std::str::from_utf8(data) {
        check_token(s);
    }
});

fn check_token(v: &str) {
    let Some(t) = SessionToken::parse(v) else {
        return;
    };
    let text = t.expose();
    assert_eq!(text, v, "parse must keep the cookie value as it was sent");
    assert_eq!(
        text.len(),
        43,
        "accepted a token that is not 43 characters: {v:?}"
    );
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "accepted a token with a character outside URL-safe base64: {v:?}"
    );
    let bytes: [u8; 32] = URL_SAFE_NO_PAD
        .decode(text)
        .expect("an accepted token is URL-safe base64")
        .try_into()
        .expect("an accepted token holds 32 bytes");
    assert!(
        SessionToken::from_entropy(bytes) == t,
        "accepted a non-canonical encoding: {v:?}"
    );
    assert!(
        SessionToken::parse(text).is_some_and(|again| again == t),
        "parse(t.expose()) != Some(t)"
    );
    let _ = t.hash();
}
