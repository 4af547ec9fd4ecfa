//! Access rules for forward auth (`[[access.rules]]`): an ordered list; the first rule whose
//! domain and path match decides; without a match the policy is `authenticated`. They are
//! configuration, parsed and validated with the rest of it; `forward_auth` applies them to
//! canonical paths only (`forward_auth::path`).
//!
//! The policies, from laxest to strictest: `bypass`, `authenticated` (Authelia's name for it,
//! `one_factor`, is accepted as the same policy), `two_factor` (a session raised by a second
//! factor), `deny`.
//!
//! Prefixes match whole segments (`/admin` matches `/admin` and `/admin/x`, not
//! `/administrator`) of the decoded path (`/%61dmin` is `/admin`). A `bypass` rule matches
//! only the exact case it was written in; every other rule matches ASCII letters in any case:
//! a case-insensitive back end serves `/ADMIN` as `/admin`, so the stricter rules must cover
//! it, while a laxer one must never reach a path it was not written for.

use std::fmt;

use sessiond_core::Group;

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No session needed; the identity headers are sent empty.
    Bypass,
    /// A valid session, and membership of one of `groups` when any are given. Written
    /// `authenticated` or `one_factor` (Authelia's name): a password is enough.
    Authenticated,
    /// As [`Policy::Authenticated`], and the session must be `two_factor` (raised by a second
    /// factor after the password).
    TwoFactor,
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
pub(crate) struct Rule {
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
    /// How many rules there are (`sessiond config check` says so).
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

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
                // Authelia's name for the same policy, so its rules can be carried over.
                "authenticated" | "one_factor" => Policy::Authenticated,
                "two_factor" => Policy::TwoFactor,
                "deny" => Policy::Deny,
                other => {
                    return Err(format!(
                        "access.rules[{n}].policy: {other:?} must be \"bypass\", \"authenticated\" (or \"one_factor\"), \"two_factor\" or \"deny\""
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
            if !raw.groups.is_empty() && !policy.needs_session() {
                return Err(format!(
                    "access.rules[{n}].groups: only an \"authenticated\", \"one_factor\" or \"two_factor\" rule can require groups"
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

impl Policy {
    /// Whether the policy lets a request through only with a session (of some level).
    pub fn needs_session(self) -> bool {
        matches!(self, Policy::Authenticated | Policy::TwoFactor)
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

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Bypass => "bypass",
            Policy::Authenticated => "authenticated",
            Policy::TwoFactor => "two_factor",
            Policy::Deny => "deny",
        })
    }
}

/// Rules from the `[[access.rules]]` tables of a TOML text (tests here and in
/// `forward_auth::path`).
#[cfg(test)]
pub(crate) fn rules_from_toml(src: &str) -> Result<AccessRules, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(src: &str) -> Result<AccessRules, String> {
        rules_from_toml(src)
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
    fn two_factor_and_one_factor_rules() {
        let r = rules(
            r#"
            [[access.rules]]
            domain = "app.example.com"
            path_prefix = "/admin"
            policy = "two_factor"
            groups = ["ops"]
            [[access.rules]]
            domain = "app.example.com"
            path_prefix = "/billing"
            policy = "two_factor"
            [[access.rules]]
            domain = "app.example.com"
            path_prefix = "/wiki"
            policy = "one_factor"
            [[access.rules]]
            domain = "app.example.com"
            path_prefix = "/team"
            policy = "one_factor"
            groups = ["dev", "ops"]
            [[access.rules]]
            domain = "*.vault.example.com"
            policy = "two_factor"
        "#,
        )
        .unwrap();
        let ops = vec![Group::parse("ops").unwrap()];
        let team = vec![Group::parse("dev").unwrap(), Group::parse("ops").unwrap()];
        let table: &[(&str, &str, Policy, &[Group])] = &[
            ("app.example.com", "/admin", Policy::TwoFactor, &ops),
            ("app.example.com", "/admin/users", Policy::TwoFactor, &ops),
            // Like every rule stricter than bypass, in any case of ASCII letters.
            ("app.example.com", "/ADMIN/users", Policy::TwoFactor, &ops),
            (
                "app.example.com",
                "/administrator",
                Policy::Authenticated,
                &[],
            ),
            ("app.example.com", "/billing", Policy::TwoFactor, &[]),
            ("app.example.com", "/Billing/x", Policy::TwoFactor, &[]),
            // `one_factor` is Authelia's name for `authenticated`: the same policy.
            ("app.example.com", "/wiki/x", Policy::Authenticated, &[]),
            ("app.example.com", "/WIKI", Policy::Authenticated, &[]),
            ("app.example.com", "/team/x", Policy::Authenticated, &team),
            ("app.example.com", "/", Policy::Authenticated, &[]),
            ("db.vault.example.com", "/", Policy::TwoFactor, &[]),
            ("vault.example.com", "/", Policy::Authenticated, &[]),
            ("other.example.com", "/admin", Policy::Authenticated, &[]),
        ];
        for (host, path, policy, groups) in table {
            let d = r.decide(host, path);
            assert_eq!((d.policy, d.groups), (*policy, *groups), "{host}{path}");
        }
        for (policy, session) in [
            (Policy::Bypass, false),
            (Policy::Authenticated, true),
            (Policy::TwoFactor, true),
            (Policy::Deny, false),
        ] {
            assert_eq!(policy.needs_session(), session, "{policy}");
        }
        assert_eq!(Policy::TwoFactor.to_string(), "two_factor");
    }

    #[test]
    fn invalid_rules_are_refused_with_the_rule_named() {
        for (src, needle) in [
            ("[[access.rules]]\npolicy = \"allow\"", "rules[1].policy"),
            ("[[access.rules]]\npolicy = \"deny\"\ngroups = [\"a\"]", "rules[1].groups"),
            ("[[access.rules]]\npolicy = \"bypass\"\ngroups = [\"a\"]", "rules[1].groups"),
            ("[[access.rules]]\npolicy = \"two_factor\"\ngroups = [\"\"]", "rules[1].groups"),
            // Authelia's other names are not ours: a rule we would read differently is refused.
            ("[[access.rules]]\npolicy = \"TWO_FACTOR\"", "rules[1].policy"),
            ("[[access.rules]]\npolicy = \"2fa\"", "rules[1].policy"),
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
}
