//! Headless Chromium for the examples' browser tests: chromedriver on a free port, and a
//! browser window driven through fantoccini (W3C WebDriver).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them [`browser_installed`] prints `SKIP: …` and the test
//! passes, unless `SESSIOND_REQUIRE_SERVICES=1` is set, in which case it fails.

#![allow(dead_code)] // Each test binary uses its own part.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long chromedriver gets to come up.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the browser gets to reach a page.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

/// Whether Chromium and chromedriver are there; without them, fails under
/// `SESSIOND_REQUIRE_SERVICES=1` and otherwise says the test is skipped.
pub fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("SESSIOND_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "SESSIOND_REQUIRE_SERVICES=1 but {} not installed \
         (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    eprintln!("SKIP: chromium/chromedriver not installed");
    false
}

/// chromedriver on a free port.
#[derive(Debug)]
pub struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ChromeDriver {
    pub async fn start(dir: &Path) -> Self {
        let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = dir.join("chromedriver.log");
        let output = File::create(&log).expect("create the chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Self { child, addr, log };
        driver.wait_until_ready().await;
        driver
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_until_ready(&mut self) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited early ({status})\n{}", self.log());
            }
            if let Ok(res) = http.get(format!("{}/status", self.url())).send().await {
                if let Ok(status) = res.json::<serde_json::Value>().await {
                    if status["value"]["ready"] == true {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {STARTUP:?}\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // A failed test never reaches `Browser::quit`, and killing chromedriver outright would
        // orphan its Chromium: chromedriver's own `/shutdown` closes every browser first.
        let _ = shutdown_chromedriver(self.addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- chromedriver output ---\n{}", self.log());
        }
    }
}

/// `GET /shutdown` by hand: `Drop` cannot await an async client.
fn shutdown_chromedriver(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(())
}

/// One headless Chromium window on the app.
pub struct Browser {
    pub client: Client,
    pub base: url::Url,
}

impl Browser {
    /// A window on the site at `base`, with its profile in `profile`.
    pub async fn start(driver: &ChromeDriver, base: &url::Url, profile: &Path) -> Self {
        std::fs::create_dir_all(profile).expect("create the browser profile");
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 10_000 },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-proxy-server",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal");
        };
        // chromedriver is local and speaks plain HTTP: no TLS stack in the client.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| panic!("could not start Chromium: {e}\n{}", driver.log()));
        Self {
            client,
            base: base.clone(),
        }
    }

    pub async fn quit(self) {
        self.client.close().await.expect("close the browser");
    }

    pub async fn goto(&self, path: &str) {
        let url = self.base.join(path).expect("a URL on the app");
        self.client
            .goto(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("go to {url}: {e}"));
    }

    /// Waits until the browser shows the app's `path`, loaded; returns the whole URL.
    pub async fn wait_for_path(&self, path: &str) -> url::Url {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(url) = self.client.current_url().await {
                if url.origin() == self.base.origin() && url.path() == path {
                    let state = self
                        .client
                        .execute("return document.readyState;", vec![])
                        .await;
                    if matches!(state, Ok(serde_json::Value::String(s)) if s == "complete") {
                        return url;
                    }
                }
            }
            if Instant::now() >= deadline {
                let at = self.client.current_url().await.map(|u| u.to_string());
                panic!(
                    "the browser did not reach {path} within {WAIT:?}; it is at {at:?} showing:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Types `value` into the field matching CSS `selector`.
    pub async fn fill(&self, selector: &str, value: &str) {
        let field = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no {selector} on the page ({e})"));
        field.clear().await.expect("clear a field");
        field.send_keys(value).await.expect("type into a field");
    }

    /// Clicks the element matching the XPath `xpath`.
    pub async fn click(&self, xpath: &str) {
        match self.client.find(Locator::XPath(xpath)).await {
            Ok(element) => element.click().await.expect("click"),
            Err(e) => panic!("nothing matches {xpath} ({e})\n{}", self.source().await),
        }
    }

    /// The text the page shows.
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn source(&self) -> String {
        self.client.source().await.unwrap_or_default()
    }
}
