//! The one form of a path that forward auth decides on.
//!
//! sessiond decides, and another program (nginx, Caddy, the app) serves: the two must read a
//! path alike, or a request decided as `/public/x` is served as `/deny/x`. Back ends
//! disagree on how to read `//`, `..`, `%2F`, `\`, `;x` and friends (nginx merges slashes
//! and resolves dots, Python's `http.server` decodes `%2F` into a separator, Tomcat drops
//! `;params`, Windows drops a trailing dot), so instead of guessing one reading we accept
//! only paths that every reading agrees on: [`canonical_path`] refuses anything else, and
//! forward auth answers such a target `400` (docs/security.md, "Paths forward auth decides on").

/// Why a forwarded path was refused: it is not in the one form that every back end reads
/// the same way (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotCanonical {
    #[error("does not start with '/'")]
    Relative,
    #[error("has an empty segment ('//')")]
    EmptySegment,
    #[error("has a '.' or '..' segment")]
    DotSegment,
    #[error("has a segment ending in '.' or white space")]
    TrailingDot,
    #[error("escapes a '/', '\\', '.', '%', ';', '?' or '#'")]
    EscapedDelimiter,
    #[error("has a '\\'")]
    Backslash,
    #[error("has a ';' (a segment parameter)")]
    Parameter,
    #[error("has a '#'")]
    Fragment,
    #[error("has a control character or NUL")]
    Control,
    #[error("has a malformed percent-escape")]
    BadEscape,
    #[error("has escapes that do not decode to UTF-8")]
    NotUtf8,
    #[error("has a character that some back ends read as '/', '\\', '.', ';' or '%'")]
    LookAlike,
}

/// The path of a request target (`/a/b?q`: the query is ignored) as the access rules see it,
/// percent-escapes decoded, if it is canonical: the same path for every back end, whether it
/// merges slashes, resolves dot segments, decodes `%2F` into a separator, decodes twice, reads
/// `\` as `/`, drops `;params` or trailing dots. Anything that one of those readings could
/// change is refused rather than guessed at: empty and dot segments; escaped `/ \ . % ; ? #`
/// (so `%2e%2e`, `%2F`, and `%252e` decoded twice); raw `\`, `;` and `#`; control characters;
/// a segment ending in a dot or white space; escapes that are not UTF-8 (overlong `%c0%ae`);
/// and Unicode look-alikes that NFKC-normalising apps turn into a delimiter.
pub(crate) fn canonical_path(uri: &str) -> Result<String, NotCanonical> {
    let raw = uri.split_once('?').map_or(uri, |(path, _query)| path);
    if !raw.starts_with('/') {
        return Err(NotCanonical::Relative);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(NotCanonical::BadEscape)?;
                let v = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(hi, lo)| hi << 4 | lo)
                    .ok_or(NotCanonical::BadEscape)?;
                if matches!(v, b'/' | b'\\' | b'.' | b'%' | b';' | b'?' | b'#') {
                    return Err(NotCanonical::EscapedDelimiter);
                }
                i += 3;
                v
            }
            b'\\' => return Err(NotCanonical::Backslash),
            b';' => return Err(NotCanonical::Parameter),
            b'#' => return Err(NotCanonical::Fragment),
            b => {
                i += 1;
                b
            }
        };
        if b.is_ascii_control() {
            return Err(NotCanonical::Control);
        }
        decoded.push(b);
    }
    let path = String::from_utf8(decoded).map_err(|_| NotCanonical::NotUtf8)?;
    if path
        .chars()
        .any(|c| !c.is_ascii() && (c.is_control() || c.is_whitespace() || LOOK_ALIKES.contains(&c)))
    {
        return Err(NotCanonical::LookAlike);
    }
    let segments = path[1..].split('/');
    let last = path[1..].split('/').count() - 1;
    for (n, segment) in segments.enumerate() {
        match segment {
            // The root `/`, or a trailing slash.
            "" if n == last => {}
            "" => return Err(NotCanonical::EmptySegment),
            "." | ".." => return Err(NotCanonical::DotSegment),
            s if s.ends_with(|c: char| c == '.' || c.is_whitespace()) => {
                return Err(NotCanonical::TrailingDot)
            }
            _ => {}
        }
    }
    Ok(path)
}

/// Characters that Unicode compatibility normalisation (NFKC, applied by some frameworks
/// and file systems) turns into `/`, `\`, `.`, `;` or `%`, or into several dots.
const LOOK_ALIKES: &[char] = &[
    '\u{2024}', '\u{2025}', '\u{2026}', '\u{FE52}',
    '\u{FF0E}', // . .. ... small and wide full stops
    '\u{2044}', '\u{2215}', '\u{FF0F}', // fraction slash, division slash, wide solidus
    '\u{2216}', '\u{29F5}', '\u{29F9}', '\u{FE68}', '\u{FF3C}', // backslash look-alikes
    '\u{037E}', '\u{FE54}', '\u{FF1B}', // Greek question mark, small and wide semicolons
    '\u{FE6A}', '\u{FF05}', // small and wide percent signs
];

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The lenient back end of the differential test (`tests/api/paths.rs`), shared with the
/// property test below.
#[cfg(test)]
#[path = "../../tests/api/lenient.rs"]
#[allow(unreachable_pub)] // `pub` for the integration tests that share the file
mod lenient;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access::{rules_from_toml, AccessRules, Decision, Policy};

    fn rules(src: &str) -> Result<AccessRules, String> {
        rules_from_toml(src)
    }

    #[test]
    fn only_canonical_paths_are_decided_on() {
        use NotCanonical::*;
        for (uri, path) in [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("/public/x?next=/../deny", "/public/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/files/my%20doc.pdf", "/files/my doc.pdf"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a.b/c..d", "/a.b/c..d"),
            ("/caf%C3%A9", "/caf\u{e9}"),
        ] {
            assert_eq!(canonical_path(uri), Ok(path.to_owned()), "{uri}");
        }
        for (uri, why) in [
            ("public", Relative),
            ("//ops/secret.txt", EmptySegment),
            ("/public//../deny", EmptySegment),
            ("/a///b", EmptySegment),
            ("/public/../deny", DotSegment),
            ("/./deny", DotSegment),
            ("/deny/.", DotSegment),
            ("/public/%2F..%2Fdeny", EscapedDelimiter),
            ("/%2Fops/secret.txt", EscapedDelimiter),
            ("/public/%2f%2e%2e%2fdeny", EscapedDelimiter),
            ("/public/%2E%2E/deny", EscapedDelimiter),
            ("/public/.%2e/deny", EscapedDelimiter),
            ("/public/%252e%252e/deny", EscapedDelimiter),
            ("/public/%5c../deny", EscapedDelimiter),
            ("/public/%3f/deny", EscapedDelimiter),
            ("/public\\..\\deny", Backslash),
            ("/public;x/../deny", Parameter),
            ("/deny;x/secret", Parameter),
            ("/public/x#/../deny", Fragment),
            ("/deny%00/secret", Control),
            ("/deny%0a", Control),
            ("/deny%7f", Control),
            ("/deny%zz", BadEscape),
            ("/deny%4", BadEscape),
            ("/deny./secret", TrailingDot),
            ("/deny.", TrailingDot),
            ("/deny%20/secret", TrailingDot),
            ("/deny%09/x", Control),
            ("/public/...", TrailingDot),
            ("/%c0%ae%c0%ae/deny", NotUtf8),
            ("/public/%EF%BC%8F..%EF%BC%8Fdeny", LookAlike),
            ("/public/\u{ff0e}\u{ff0e}/deny", LookAlike),
            ("/deny%C2%A0/x", LookAlike),
        ] {
            assert_eq!(canonical_path(uri), Err(why), "{uri}");
        }
    }

    use super::lenient;

    /// Whether a person in `groups` with a session of `two_factor` level or not (`None`:
    /// anonymous) gets through a decision.
    fn lets_through(d: Decision<'_>, who: Option<(&[&str], bool)>) -> bool {
        let member = |mine: &[&str]| {
            d.groups.is_empty() || d.groups.iter().any(|g| mine.contains(&g.as_str()))
        };
        match (d.policy, who) {
            (Policy::Bypass, _) => true,
            (Policy::Deny, _) | (Policy::Authenticated | Policy::TwoFactor, None) => false,
            (Policy::Authenticated, Some((mine, _))) => member(mine),
            (Policy::TwoFactor, Some((mine, two_factor))) => two_factor && member(mine),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        /// Whatever path a proxy forwards, if it is decided on at all, nobody gets through
        /// who would not also get through for the path that the most lenient back end
        /// serves for it.
        #[test]
        fn a_decided_path_is_never_more_permissive_than_the_path_served(
            tokens in proptest::collection::vec(proptest::sample::select(vec![
                "/", "/", "/", "public", "Public", "deny", "DENY", "ops", "Ops", "docs", "x",
                "a.b", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ";", ";x", "%3b",
                "%00", "%20", " ", "%252e", "%252f", "%c0%ae", "%EF%BC%8E", "%EF%BC%8F", "?",
                "#", "%3f", "%23", "%41", "%64eny", "~", "%", "%zz", "vault", "VAULT",
            ]), 1..12),
        ) {
            let r = rules(
                r#"
                [[access.rules]]
                path_prefix = "/public"
                policy = "bypass"
                [[access.rules]]
                path_prefix = "/deny"
                policy = "deny"
                [[access.rules]]
                path_prefix = "/ops"
                policy = "authenticated"
                groups = ["ops"]
                [[access.rules]]
                path_prefix = "/docs/"
                policy = "bypass"
                [[access.rules]]
                path_prefix = "/vault"
                policy = "two_factor"
            "#,
            )
            .unwrap();
            let uri = format!("/{}", tokens.concat());
            if let Ok(path) = canonical_path(&uri) {
                let decided = r.decide("app.example.com", &path);
                let served = lenient::lenient_path(&uri);
                let as_served = r.decide("app.example.com", &served);
                for who in [
                    None,
                    Some((&["dev"][..], false)),
                    Some((&["ops"][..], false)),
                    Some((&["ops"][..], true)),
                ] {
                    proptest::prop_assert!(
                        !lets_through(decided, who) || lets_through(as_served, who),
                        "{:?} as {:?}: {:?} for {:?}, but {:?} for the {:?} served",
                        uri, who, decided, path, as_served, served
                    );
                }
            }
        }
    }
}
