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

/// The login form posted as a browser posts it (same-origin, `demo`'s password); returns the
/// `Cookie` header with the cookies the answer set. (The example's form carries no token of
/// its own: its CSRF defence is the `Origin` check of `auth.layer()`.)
fn form_login(addr: SocketAddr) -> anyhow::Result<String> {
    let host = addr.to_string();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("username", USER)
        .append_pair("password", PASSWORD)
        .finish();
    let req = Req::post(&host, "/login", "application/x-www-form-urlencoded", form)
        .header("origin", &format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document");
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
    // An emptied cookie is a removal.
    let jar: Vec<_> = set_cookies(&res)
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
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
