//! Access rules for forward auth (`[[access.rules]]`): an ordered list; the first rule whose
//! domain and path match decides; without a match the policy is `authenticated`.
//!
//! sessiond decides, and another program (nginx, Caddy, the app) serves: the two must read a
//! path alike, or a request decided as `/public/x` is served as `/deny/x`. Back ends
//! disagree on how to read `//`, `..`, `%2F`, `\`, `;x` and friends (nginx merges slashes
//! and resolves dots, Python's `http.server` decodes `%2F` into a separator, Tomcat drops
//! `;params`, Windows drops a trailing dot), so instead of guessing one reading we accept
//! only paths that every reading agrees on: [`canonical_path`] refuses anything else, and
//! forward auth answers such a target `400` (docs/security.md, "Paths forward auth decides on").
//!
//! Prefixes match whole segments (`/admin` matches `/admin` and `/admin/x`, not
//! `/administrator`) of the decoded path (`/%61dmin` is `/admin`). A `bypass` rule matches
//! only the exact case it was written in; `deny` and `authenticated` rules match ASCII letters
//! in any case: a case-insensitive back end serves `/ADMIN` as `/admin`, so the stricter
//! rules must cover it, while a laxer one must never reach a path it was not written for.

use std::fmt;

use sessiond_core::Group;

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No session needed; identity headers are not sent.
    Bypass,
    /// A valid session, and membership of one of `groups` when any are given.
    Authenticated,
    /// Refused (`403`), logged in or not.
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Domain {
    Any,
    Exact(String),
    /// `*.example.com`: strictly below `example.com` (stored as `.example.com`).
    Below(String),
}

#[derive(Clone, Debug)]
pub struct Rule {
    domain: Domain,
    path_prefix: Option<String>,
    pub policy: Policy,
    pub groups: Vec<Group>,
}

/// The decision for one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub policy: Policy,
    pub groups: &'a [Group],
}

#[derive(Clone, Debug, Default)]
pub struct AccessRules {
    rules: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    domain: Option<String>,
    path_prefix: Option<String>,
    policy: String,
    #[serde(default)]
    groups: Vec<String>,
}

impl AccessRules {
    /// Validates the rules of the config file; errors name the rule (1-based) and the key.
    pub fn parse(tables: &[toml::Table]) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let n = i + 1;
            let raw: RawRule = t
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| format!("access.rules[{n}]: {}", e.message()))?;
            let policy = match raw.policy.as_str() {
                "bypass" => Policy::Bypass,
                "authenticated" => Policy::Authenticated,
                "deny" => Policy::Deny,
                other => {
                    return Err(format!(
                        "access.rules[{n}].policy: {other:?} must be \"bypass\", \"authenticated\" or \"deny\""
                    ))
                }
            };
            let domain = match raw.domain.as_deref().map(str::to_ascii_lowercase) {
                None => Domain::Any,
                Some(d) => {
                    let (below, name) = match d.strip_prefix("*.") {
                        Some(rest) => (true, rest.to_owned()),
                        None => (false, d.clone()),
                    };
                    let ok = !name.is_empty()
                        && name.split('.').all(|label| {
                            !label.is_empty()
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        });
                    if !ok {
                        return Err(format!(
                            "access.rules[{n}].domain: {d:?} must be a host name such as app.example.com or *.example.com (no port, scheme or path)"
                        ));
                    }
                    if below {
                        Domain::Below(format!(".{name}"))
                    } else {
                        Domain::Exact(name)
                    }
                }
            };
            if let Some(p) = &raw.path_prefix {
                if !p.starts_with('/') || p.contains(['?', '#']) || p.chars().any(char::is_control)
                {
                    return Err(format!(
                        "access.rules[{n}].path_prefix: {p:?} must be a path starting with '/' (no query or fragment)"
                    ));
                }
            }
            if !raw.groups.is_empty() && policy != Policy::Authenticated {
                return Err(format!(
                    "access.rules[{n}].groups: only an \"authenticated\" rule can require groups"
                ));
            }
            let groups = raw.groups.iter().map(|g| Group::parse(g));
            let groups = groups
                .collect::<Result<_, _>>()
                .map_err(|e| format!("access.rules[{n}].groups: {e}"))?;
            rules.push(Rule {
                domain,
                path_prefix: raw.path_prefix,
                policy,
                groups,
            });
        }
        Ok(Self { rules })
    }

    /// The decision for `host` (lowercase, no port) and `path` (from [`canonical_path`]).
    #[cfg(test)]
    pub fn decide(&self, host: &str, path: &str) -> Decision<'_> {
        self.decision(self.matching_rule(host, path))
    }

    /// The index of the first rule matching `host` (lowercase, no port) and `path` (a
    /// canonical path, decoded: from [`canonical_path`]), if any.
    pub fn matching_rule(&self, host: &str, path: &str) -> Option<usize> {
        for (i, r) in self.rules.iter().enumerate() {
            let domain_ok = match &r.domain {
                Domain::Any => true,
                Domain::Exact(d) => host == d,
                Domain::Below(suffix) => {
                    host.ends_with(suffix.as_str()) && host.len() > suffix.len()
                }
            };
            if !domain_ok {
                continue;
            }
            let Some(prefix) = r.path_prefix.as_deref() else {
                return Some(i);
            };
            // Only the laxest policy is held to the exact case (see the module's comment).
            if path_matches(prefix, path, r.policy != Policy::Bypass) {
                return Some(i);
            }
        }
        None
    }

    /// The decision of rule `index` (from [`Self::matching_rule`]); `None`: the default.
    pub fn decision(&self, index: Option<usize>) -> Decision<'_> {
        match index.and_then(|i| self.rules.get(i)) {
            Some(r) => Decision {
                policy: r.policy,
                groups: &r.groups,
            },
            None => Decision {
                policy: Policy::Authenticated,
                groups: &[],
            },
        }
    }
}

/// Whole-segment prefix match; ASCII letters in any case when `any_case`.
fn path_matches(prefix: &str, path: &str, any_case: bool) -> bool {
    let (p, head) = (prefix.as_bytes(), path.as_bytes());
    let Some(head) = head.get(..p.len()) else {
        return false;
    };
    let same = if any_case {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    // `/admin/` matches what starts with it; `/admin` matches itself and what is below it.
    same && (prefix.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
}

/// Why a forwarded path was refused: it is not in the one form that every back end reads
/// the same way (see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotCanonical {
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
pub fn canonical_path(uri: &str) -> Result<String, NotCanonical> {
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

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Bypass => "bypass",
            Policy::Authenticated => "authenticated",
            Policy::Deny => "deny",
        })
    }
}

/// The lenient back end of the differential test (`tests/api/paths.rs`), shared with the
/// property test below.
#[cfg(test)]
#[path = "../tests/api/lenient.rs"]
mod lenient;

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(src: &str) -> Result<AccessRules, String> {
        #[derive(serde::Deserialize)]
        struct F {
            access: A,
        }
        #[derive(serde::Deserialize)]
        struct A {
            rules: Vec<toml::Table>,
        }
        let f: F = toml::from_str(src).map_err(|e| e.to_string())?;
        AccessRules::parse(&f.access.rules)
    }

    const RULES: &str = r#"
        [[access.rules]]
        domain = "public.example.com"
        policy = "bypass"
        [[access.rules]]
        domain = "app.example.com"
        path_prefix = "/admin"
        policy = "authenticated"
        groups = ["ops"]
        [[access.rules]]
        domain = "*.internal.example.com"
        policy = "deny"
        [[access.rules]]
        path_prefix = "/health/"
        policy = "bypass"
    "#;

    #[test]
    fn first_match_wins_and_default_is_authenticated() {
        let r = rules(RULES).unwrap();
        let ops = vec![Group::parse("ops").unwrap()];
        let table: &[(&str, &str, Policy, &[Group])] = &[
            ("public.example.com", "/anything", Policy::Bypass, &[]),
            ("app.example.com", "/admin", Policy::Authenticated, &ops),
            (
                "app.example.com",
                "/admin/users",
                Policy::Authenticated,
                &ops,
            ),
            (
                "app.example.com",
                "/administrator",
                Policy::Authenticated,
                &[],
            ),
            ("app.example.com", "/", Policy::Authenticated, &[]),
            ("db.internal.example.com", "/", Policy::Deny, &[]),
            ("a.b.internal.example.com", "/", Policy::Deny, &[]),
            ("internal.example.com", "/", Policy::Authenticated, &[]),
            ("evilinternal.example.com", "/", Policy::Authenticated, &[]),
            ("other.example.com", "/health/live", Policy::Bypass, &[]),
            ("other.example.com", "/health", Policy::Authenticated, &[]),
        ];
        for (host, path, policy, groups) in table {
            let d = r.decide(host, path);
            assert_eq!((d.policy, d.groups), (*policy, *groups), "{host}{path}");
        }
    }

    #[test]
    fn bypass_matches_its_own_case_and_stricter_rules_any_case() {
        let r = rules(
            r#"
            [[access.rules]]
            path_prefix = "/public"
            policy = "bypass"
            [[access.rules]]
            path_prefix = "/deny"
            policy = "deny"
            [[access.rules]]
            path_prefix = "/ops/"
            policy = "authenticated"
            groups = ["ops"]
        "#,
        )
        .unwrap();
        let ops = vec![Group::parse("ops").unwrap()];
        for (path, policy, groups) in [
            ("/public", Policy::Bypass, &[][..]),
            ("/public/x", Policy::Bypass, &[]),
            ("/Public/x", Policy::Authenticated, &[]),
            ("/PUBLIC", Policy::Authenticated, &[]),
            ("/publicity", Policy::Authenticated, &[]),
            ("/deny", Policy::Deny, &[]),
            ("/DENY/secret.txt", Policy::Deny, &[]),
            ("/dEnY", Policy::Deny, &[]),
            ("/denyx", Policy::Authenticated, &[]),
            ("/OPS/x", Policy::Authenticated, &ops),
            ("/ops", Policy::Authenticated, &[]),
        ] {
            let d = r.decide("app.example.com", path);
            assert_eq!((d.policy, d.groups), (policy, groups), "{path}");
        }
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

    #[test]
    fn invalid_rules_are_refused_with_the_rule_named() {
        for (src, needle) in [
            ("[[access.rules]]\npolicy = \"allow\"", "rules[1].policy"),
            ("[[access.rules]]\npolicy = \"deny\"\ngroups = [\"a\"]", "rules[1].groups"),
            // The rule of `Group`, as for the CLI and the admin page.
            ("[[access.rules]]\npolicy = \"authenticated\"\ngroups = [\"\"]", "rules[1].groups"),
            ("[[access.rules]]\npolicy = \"authenticated\"\ngroups = [\"a,b\"]", "rules[1].groups"),
            ("[[access.rules]]\npolicy = \"authenticated\"\ngroups = [\"ops \"]", "rules[1].groups"),
            ("[[access.rules]]\npolicy = \"deny\"\ndomain = \"https://x.com\"", "rules[1].domain"),
            ("[[access.rules]]\npolicy = \"deny\"\ndomain = \"x.com:443\"", "rules[1].domain"),
            ("[[access.rules]]\npolicy = \"deny\"\npath_prefix = \"admin\"", "rules[1].path_prefix"),
            ("[[access.rules]]\npolicy = \"deny\"\n[[access.rules]]\npolicy = \"bypass\"\nbogus = 1", "rules[2]"),
            ("[[access.rules]]\ndomain = \"x.com\"", "rules[1]"),
        ] {
            let e = rules(src).unwrap_err();
            assert!(e.contains(needle), "{src:?}: {e}");
        }
    }

    use super::lenient;

    /// Whether a person in `groups` (`None`: anonymous) gets through a decision.
    fn lets_through(d: Decision<'_>, groups: Option<&[&str]>) -> bool {
        match (d.policy, groups) {
            (Policy::Bypass, _) => true,
            (Policy::Deny, _) | (Policy::Authenticated, None) => false,
            (Policy::Authenticated, Some(mine)) => {
                d.groups.is_empty() || d.groups.iter().any(|g| mine.contains(&g.as_str()))
            }
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
                "#", "%3f", "%23", "%41", "%64eny", "~", "%", "%zz",
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
            "#,
            )
            .unwrap();
            let uri = format!("/{}", tokens.concat());
            if let Ok(path) = canonical_path(&uri) {
                let decided = r.decide("app.example.com", &path);
                let served = lenient::lenient_path(&uri);
                let as_served = r.decide("app.example.com", &served);
                for who in [None, Some(&["dev"][..]), Some(&["ops"][..])] {
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
