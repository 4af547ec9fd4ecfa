//! The example app (`examples/example-app`, the library's face): started in a scratch
//! directory on a free port, logged in once through its HTML form as a browser would, then
//! measured as a page an app serves: `GET /private` with the session cookie against the same
//! app's `GET /`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::PASSWORD;
use crate::load::{once_blocking, Answer, Req};
use crate::process::{free_port, Process};

/// The user the example app creates on its first start.
pub const USER: &str = "demo";

/// A running example app with a logged-in session. The process stops before its directory
/// (and database) is removed: fields drop in order.
#[derive(Debug)]
pub struct RunningExample {
    pub process: Process,
    /// The `Cookie` header of the session.
    pub cookie: String,
    _dir: tempfile::TempDir,
}

impl RunningExample {
    /// `GET /` (public, no session work), as a browser's navigation asks for it.
    pub fn home(&self) -> Req {
        navigation(self.process.addr, "/")
    }

    /// `GET /private` with the session cookie: verify, read and write the session's data
    /// (the visit counter), render the page.
    pub fn private(&self) -> Req {
        navigation(self.process.addr, "/private").cookie(&self.cookie)
    }
}

/// A page navigation: the headers a browser sends (the app may decide on them, so both
/// routes get the same).
fn navigation(addr: SocketAddr, path: &str) -> Req {
    Req::get(&addr.to_string(), path)
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-dest", "document")
}

/// Starts `bin` (the example app) in a scratch directory, with `demo`'s password set, and
/// logs in.
pub fn start(bin: &Path) -> anyhow::Result<RunningExample> {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-bench-example-")
        .tempdir()?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &addr.to_string()])
        .current_dir(dir.path())
        .env("EXAMPLE_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    let mut process = Process::spawn("example-app", cmd, addr, &dir.path().join("app.log"))?;
    process.wait_ready(
        &Req::get(&addr.to_string(), "/"),
        |s| s == 200,
        Duration::from_secs(30),
    )?;
    let cookie = form_login(addr)?;
    let running = RunningExample {
        process,
        cookie,
        _dir: dir,
    };
    // The figure is only worth something if the cookie opens the private page.
    let page = once_blocking(addr, &running.private())?;
    let body = String::from_utf8_lossy(&page.body);
    anyhow::ensure!(
        page.status == 200 && body.contains(USER) && body.contains("visits:"),
        "GET /private with the login's cookie answered {}: {}",
        page.status,
        body.chars().take(300).collect::<String>()
    );
    Ok(running)
}

/// `GET /login`, then its form posted back (hidden fields included, a CSRF token among them
/// if the app renders one) with `demo`'s password, same-origin; returns the `Cookie` header
/// with every cookie the two answers set.
fn form_login(addr: SocketAddr) -> anyhow::Result<String> {
    let host = addr.to_string();
    let page = once_blocking(addr, &navigation(addr, "/login"))?;
    anyhow::ensure!(page.status == 200, "GET /login answered {}", page.status);
    let mut jar = set_cookies(&page);
    let html = String::from_utf8_lossy(&page.body);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in hidden_inputs(&html) {
        form.append_pair(&name, &value);
    }
    form.append_pair("username", USER)
        .append_pair("password", PASSWORD);
    let mut req = Req::post(
        &host,
        "/login",
        "application/x-www-form-urlencoded",
        form.finish(),
    )
    .header("origin", &format!("http://{host}"))
    .header("sec-fetch-site", "same-origin")
    .header("sec-fetch-mode", "navigate")
    .header("sec-fetch-dest", "document");
    if !jar.is_empty() {
        req = req.cookie(&cookie_header(&jar));
    }
    let res = once_blocking(addr, &req)?;
    anyhow::ensure!(
        res.status == 303,
        "the login answered {}: {}",
        res.status,
        String::from_utf8_lossy(&res.body)
            .chars()
            .take(300)
            .collect::<String>()
    );
    for (name, value) in set_cookies(&res) {
        jar.retain(|(n, _)| *n != name);
        // An emptied cookie is a removal.
        if !value.is_empty() {
            jar.push((name, value));
        }
    }
    anyhow::ensure!(!jar.is_empty(), "the login set no cookie");
    Ok(cookie_header(&jar))
}

/// The `name=value` pairs of an answer's `Set-Cookie` headers.
fn set_cookies(a: &Answer) -> Vec<(String, String)> {
    a.headers
        .get_all(hyper::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `name`/`value` of every `<input type="hidden">` of `html` (attribute values quoted
/// with `"` or `'`, or bare; `&amp;`, `&quot;`, `&#39;`, `&lt;`, `&gt;` decoded).
fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("<input") {
        let start = from + at;
        let end = lower[start..].find('>').map_or(html.len(), |e| start + e);
        let tag = &html[start + "<input".len()..end];
        from = end;
        let attrs = attributes(tag);
        let get = |n: &str| attrs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        if get("type").is_some_and(|t| t.eq_ignore_ascii_case("hidden")) {
            if let Some(name) = get("name") {
                out.push((name.to_owned(), get("value").unwrap_or("").to_owned()));
            }
        }
    }
    out
}

fn attributes(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        if s.is_empty() {
            return out;
        }
        let name_end = s
            .find(|c: char| c.is_ascii_whitespace() || c == '=' || c == '/')
            .unwrap_or(s.len());
        let name = s[..name_end].to_ascii_lowercase();
        s = s[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, rest) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], &body[(close + 1).min(body.len())..])
                }
                _ => {
                    let close = after
                        .find(|c: char| c.is_ascii_whitespace())
                        .unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = raw
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&#x27;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            s = rest;
        }
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_inputs_are_read_as_a_browser_posts_them() {
        let html = r#"<form method=post><INPUT TYPE=hidden name=next value="/private">
            <input name="username"><input type="password" name="password">
            <input type='hidden' name='csrf_token' value='a&amp;b&quot;c'/></form>"#;
        assert_eq!(
            hidden_inputs(html),
            [
                ("next".to_owned(), "/private".to_owned()),
                ("csrf_token".to_owned(), "a&b\"c".to_owned()),
            ]
        );
        assert!(hidden_inputs("<p>no form</p>").is_empty());
    }
}
