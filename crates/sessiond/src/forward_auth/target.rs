//! A forward-auth target resolved against the configuration: its URL, whether its host is
//! ours, the access rule that decides it; and the memo that keeps the answers.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use url::Url;

use super::headers::{TargetError, TargetParts};
use super::path::canonical_path;
use crate::config::Config;
use sessiond_core::Memo;

/// A target as forward auth decides on it: everything here depends only on the target's
/// parts and the configuration.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub url: Url,
    /// Lowercase, without the port.
    pub host: String,
    /// The host is the public URL's or under the cookie domain (else the request is refused).
    pub ours: bool,
    /// The access rule that decides (an index into `config.access`), if any.
    pub rule: Option<usize>,
}

/// Resolves `parts` against `config`. The rules decide on the path exactly as the proxy
/// sent it (decoded, never cleaned up: the URL parser's reading of `..` or `%2e` is one of
/// several), and only when it is canonical; any other is refused, whatever the rules.
pub(crate) fn resolve(config: &Config, parts: &TargetParts<'_>) -> Result<Resolved, TargetError> {
    let url = parts.url()?;
    let path = canonical_path(parts.uri)?;
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let ours = config.host_is_ours(&host);
    let rule = if ours {
        config.access.matching_rule(&host, &path)
    } else {
        None
    };
    Ok(Resolved {
        url,
        host,
        ours,
        rule,
    })
}

/// [`resolve`], memoised. A proxy asks about the same few URLs over and over, and resolving
/// them is the largest single item of a forward-auth request's own work (docs/performance.md,
/// "Forward-auth targets"). `resolve` is a pure function of the parts and of a configuration
/// that does not change while the server runs, so a memo cannot answer differently from it.
/// Bounded: emptied when full, and long targets (attacker-chosen URIs) are resolved every
/// time, never kept.
///
/// In front of the shared memo, each thread remembers the last target it resolved: a proxy
/// asking about the same URL again (a polled API, a health check, a benchmark) is answered by
/// comparing the key, without hashing it or taking the memo's lock (docs/performance.md,
/// "Forward auth in instructions").
#[derive(Debug)]
pub(crate) struct TargetCache {
    memo: Memo<Box<str>, Arc<Resolved>>,
    /// This memo's own number, unique in the process: the thread's last target is used only
    /// by the memo (so the configuration) it was resolved for.
    id: u64,
}

/// The numbers of [`TargetCache`]s (one per server; tests make many).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A thread's lookup key, and the last target it resolved.
struct Scratch {
    /// The lookup key, built here to look up without allocating.
    key: String,
    /// The last target resolved on this thread: its key, the number of the memo it came
    /// from, the answer.
    last_key: String,
    last: Option<(u64, Arc<Resolved>)>,
}

/// Whether `key` is the memo key of `parts` (`proto '\n' host '\n' uri`), compared in place
/// rather than built first.
fn is_key_of(key: &str, parts: &TargetParts<'_>) -> bool {
    key.len() == parts.proto.len() + parts.host.len() + parts.uri.len() + 2
        && (key.strip_prefix(parts.proto))
            .and_then(|k| k.strip_prefix('\n'))
            .and_then(|k| k.strip_prefix(parts.host))
            .and_then(|k| k.strip_prefix('\n'))
            == Some(parts.uri)
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            key: String::new(),
            last_key: String::new(),
            last: None,
        })
    };
}

impl Default for TargetCache {
    fn default() -> Self {
        Self {
            memo: Memo::new(Self::CAPACITY),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl TargetCache {
    pub(crate) const CAPACITY: usize = 4096;
    /// Longest `proto + host + uri` kept.
    pub(crate) const MAX_KEY: usize = 1024;

    pub(crate) fn resolve(
        &self,
        config: &Config,
        parts: &TargetParts<'_>,
    ) -> Result<Arc<Resolved>, TargetError> {
        if parts.proto.len() + parts.host.len() + parts.uri.len() + 2 > Self::MAX_KEY {
            return resolve(config, parts).map(Arc::new);
        }
        SCRATCH.with(|scratch| {
            let Scratch {
                key,
                last_key,
                last,
            } = &mut *scratch.borrow_mut();
            if let Some((id, resolved)) = last {
                if *id == self.id && is_key_of(last_key, parts) {
                    return Ok(Arc::clone(resolved));
                }
            }
            key.clear();
            // Header values are visible ASCII: '\n' cannot occur in them, so the key is
            // unambiguous.
            key.push_str(parts.proto);
            key.push('\n');
            key.push_str(parts.host);
            key.push('\n');
            key.push_str(parts.uri);
            let resolved = match self.memo.get(key.as_str(), |r| Some(Arc::clone(r))) {
                Some(hit) => hit,
                None => {
                    let resolved = Arc::new(resolve(config, parts)?);
                    self.memo.insert(key.as_str().into(), Arc::clone(&resolved));
                    resolved
                }
            };
            // The key becomes the last one (the buffers trade places: no copy).
            std::mem::swap(key, last_key);
            *last = Some((self.id, Arc::clone(&resolved)));
            Ok(resolved)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Overrides};

    fn ruled_config() -> Config {
        let f: FileConfig = toml::from_str(
            r#"
public_url = "https://auth.example.com"
[cookie]
domain = "example.com"
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
"#,
        )
        .unwrap();
        Config::resolve(f, Overrides::default()).unwrap()
    }

    #[test]
    fn the_target_memo_answers_exactly_as_resolving_does() {
        let c = ruled_config();
        let cache = TargetCache::default();
        let cases = [
            ("https", "app.example.com", "/"),
            ("https", "APP.Example.COM:8443", "/admin"),
            ("https", "app.example.com", "/ADMIN/y"),
            ("https", "app.example.com", "/%61dmin"),
            ("https", "app.example.com", "/administrator"),
            ("HTTPS", "public.example.com", "/admin?x=1"),
            ("http", "app.example.com", "/ops/deploy?x#frag"),
            ("http", "app.example.com", "/ops"),
            ("https", "evil.com", "/"),
            ("https", "example.com.evil.com", "/"),
            ("https", "auth.example.com", "/ops/%2e%2e/admin?x"),
        ];
        for _ in 0..2 {
            for (proto, host, uri) in cases {
                let parts = TargetParts {
                    proto,
                    host,
                    uri,
                    from_original_url: false,
                };
                let Ok(want) = resolve(&c, &parts) else {
                    assert!(cache.resolve(&c, &parts).is_err(), "{uri}");
                    continue;
                };
                let got = cache.resolve(&c, &parts).unwrap();
                // Asked again at once: the thread's last target, the same answer.
                assert!(Arc::ptr_eq(&got, &cache.resolve(&c, &parts).unwrap()));
                assert_eq!(
                    (&got.url, &got.host, got.ours, got.rule),
                    (&want.url, &want.host, want.ours, want.rule),
                    "{proto} {host} {uri}"
                );
                // And what the uncached decision path says.
                assert_eq!(
                    c.access.decision(got.rule),
                    c.access.decide(&want.host, &canonical_path(uri).unwrap()),
                    "{uri}"
                );
            }
        }
        // Every case but the one refused (not canonical) is kept.
        assert_eq!(cache.memo.len(), cases.len() - 1);
        let admin = cache
            .resolve(
                &c,
                &TargetParts {
                    proto: "https",
                    host: "app.example.com",
                    uri: "/ADMIN/y",
                    from_original_url: false,
                },
            )
            .unwrap();
        assert_eq!(
            c.access.decision(admin.rule).policy,
            crate::config::access::Policy::Deny
        );
        // Errors are not kept.
        let bad = TargetParts {
            proto: "ftp",
            host: "app.example.com",
            uri: "/",
            from_original_url: false,
        };
        assert!(cache.resolve(&c, &bad).is_err());
        assert_eq!(cache.memo.len(), cases.len() - 1);
    }

    #[test]
    fn a_key_compared_in_place_is_the_key_built() {
        let parts = TargetParts {
            proto: "https",
            host: "a.example.com",
            uri: "/x?y",
            from_original_url: false,
        };
        assert!(is_key_of("https\na.example.com\n/x?y", &parts));
        for other in [
            "",
            "https\na.example.com\n/x?",
            "https\na.example.com\n/x?yz",
            "http\na.example.com\n/x?y",
            "https\na.example.co\n\n/x?y",
            "https\na.example.com/x?y\n",
            "https\n\na.example.com/x?y",
            "httpsXa.example.comX/x?y",
        ] {
            assert!(!is_key_of(other, &parts), "{other:?}");
        }
    }

    /// A thread's last target answers only for the memo it came from: two servers' memos
    /// (two configurations) used in turn on one thread each answer by their own rules.
    #[test]
    fn a_threads_last_target_is_used_only_by_its_own_memo() {
        let ruled = ruled_config();
        let plain = Config::resolve(FileConfig::default(), Overrides::default()).unwrap();
        let (a, b) = (TargetCache::default(), TargetCache::default());
        let parts = TargetParts {
            proto: "https",
            host: "app.example.com",
            uri: "/admin",
            from_original_url: false,
        };
        for _ in 0..2 {
            let from_a = a.resolve(&ruled, &parts).unwrap();
            assert!(from_a.ours);
            assert_eq!(
                ruled.access.decision(from_a.rule).policy,
                crate::config::access::Policy::Deny
            );
            // The same key on the other memo: its own configuration decides (the host is
            // not its public URL's), not the last answer of this thread.
            let from_b = b.resolve(&plain, &parts).unwrap();
            assert!(!from_b.ours);
            assert_eq!(from_b.rule, None);
            // And again on the first, right after the second answered.
            assert!(Arc::ptr_eq(&from_a, &a.resolve(&ruled, &parts).unwrap()));
        }
        assert_eq!((a.memo.len(), b.memo.len()), (1, 1));
    }

    #[test]
    fn the_target_memo_is_bounded_and_keeps_no_long_targets() {
        let c = ruled_config();
        let cache = TargetCache::default();
        for i in 0..TargetCache::CAPACITY + 10 {
            let uri = format!("/page/{i}");
            let parts = TargetParts {
                proto: "https",
                host: "app.example.com",
                uri: &uri,
                from_original_url: false,
            };
            cache.resolve(&c, &parts).unwrap();
            assert!(cache.memo.len() <= TargetCache::CAPACITY);
        }
        let long = format!("/{}", "a".repeat(TargetCache::MAX_KEY));
        let before = cache.memo.len();
        let parts = TargetParts {
            proto: "https",
            host: "app.example.com",
            uri: &long,
            from_original_url: false,
        };
        assert!(cache.resolve(&c, &parts).unwrap().ours);
        assert_eq!(cache.memo.len(), before);
    }
}
