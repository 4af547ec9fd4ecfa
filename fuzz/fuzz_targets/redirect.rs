//! Where a browser may be sent after login: `sessiond::safe_redirect` on arbitrary
//! UTF-8, under several configurations (public URL, cookie domain) built by the real
//! `Config::resolve`.
//!
//! Asserts, whenever it returns `Some(out)`:
//! * `out` has no control character;
//! * `public_url.join(&out)` (what a browser on our login page does with the `Location`)
//!   succeeds, is `http`/`https`, carries no userinfo, and lands on the public URL's host or
//!   on a host equal to or under the cookie domain.
//!
//! Seeds: corpus/redirect/ holds the 559 open-redirect payloads of oauth2-proxy
//! (see corpus/redirect/README).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sessiond::{Config, Overrides};
use sessiond::safe_redirect;

static CONFIGS: LazyLock<Vec<Config>> = LazyLock::new(|| {
    [
        // SSO across subdomains.
        "public_url = \"https://auth.example.com\"\n[cookie]\ndomain = \"example.com\"",
        // Host-only cookie.
        "public_url = \"https://auth.example.com\"",
        // The default: http://<listen>.
        "",
        // An IPv6 literal with a port.
        "listen = \"[::1]:7444\"",
        // The host the oauth2-proxy payloads treat as allowed.
        "public_url = \"https://www.whitelisteddomain.tld:8443\"\n[cookie]\ndomain = \".whitelisteddomain.tld\"",
    ]
    .iter()
    .map(|file| {
        Config::resolve(
            toml::from_str(file).expect("fuzz config parses"),
            Overrides::default(),
        )
        .expect("fuzz config is valid")
    })
    .collect()
});

fuzz_target!(|input: &str| {
    for config in CONFIGS.iter() {
        let public = &config.public_url;
        let domain = config.cookie.domain();
        let Some(out) = safe_redirect(input, public, domain) else {
            continue;
        };
        let ctx = || format!("input {input:?} -> {out:?} (public {public}, domain {domain:?})");
        assert!(
            !out.chars().any(char::is_control),
            "control character: {}",
            ctx()
        );
        let landed = match public.join(&out) {
            Ok(u) => u,
            Err(e) => panic!("the browser cannot resolve it ({e}): {}", ctx()),
        };
        assert!(
            matches!(landed.scheme(), "http" | "https"),
            "lands on scheme {:?}: {}",
            landed.scheme(),
            ctx()
        );
        assert!(
            landed.username().is_empty() && landed.password().is_none(),
            "lands on a URL with userinfo {landed}: {}",
            ctx()
        );
        let host = landed.host_str().unwrap_or("").to_ascii_lowercase();
        let public_host = public.host_str().unwrap_or("").to_ascii_lowercase();
        let ours = host == public_host
            || domain.is_some_and(|d| host == d || host.ends_with(&format!(".{d}")));
        assert!(ours, "lands on foreign host {host:?} ({landed}): {}", ctx());
    }
});
