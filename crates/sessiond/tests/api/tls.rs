//! Issue 19, TLS on the listener: HTTPS with a certificate from a throwaway CA made here,
//! HTTP/2 by ALPN, the handshake under the header-read timeout, the connection cap's `503`
//! over TLS, and a SIGHUP that swaps the certificate while open connections go on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{StatusCode, Version};
use sessiond::Overrides;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::*;

/// A CA of its own (PEM), and a server certificate it signed for `localhost` and 127.0.0.1.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the server's pair as `cert.pem` and `key.pem` in `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// A client that trusts this CA only (not the system's roots).
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
    }
}

/// A server with `[tls]` (and `extra` config) in process; returns it and its `https://` base.
async fn spawn_tls(ca: &TestCa, extra: &str) -> (TestApp, String) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let (cert, key) = ca.write(dir.path());
    let file = format!(
        "public_url = \"https://localhost:{{port}}\"\n{extra}\n[tls]\ncert = {cert:?}\nkey = {key:?}\n"
    );
    let app = spawn_app_full(dir, &file, Overrides::default()).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    (app, format!("https://localhost:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_by_alpn_and_http1_for_clients_that_want_it() {
    let ca = TestCa::new("main");
    let (app, base) = spawn_tls(&ca, "").await;
    app.add_user("alice").await;

    // HTTP/2, negotiated by ALPN; a login (POST, the CSRF check with the public origin) and
    // the session it opened, over it.
    let client = ca.client_builder().cookie_store(true).build().unwrap();
    let res = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2);
    let res = client
        .post(format!("{base}/api/login"))
        .header("origin", &base)
        .json(&serde_json::json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let me = client
        .get(format!("{base}/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.version(), Version::HTTP_2);
    // The login page's form (the HTML side, which reads the host) renders over HTTP/2 too.
    let page = client.get(format!("{base}/login")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // A client that offers only HTTP/1.1 gets it.
    let h1 = ca.client_builder().http1_only().build().unwrap();
    let res = h1.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_11);

    // A client that does not trust the CA is refused by its own side, and plain HTTP on the
    // TLS port gets no HTTP answer.
    let stranger = TestCa::new("other").client();
    assert!(stranger
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", app.base))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered on the TLS port");
    app.stop().await;
}

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A handshake that never finishes (nothing sent, or half a ClientHello) is cut off by the
/// header-read timeout (here 1 s), like a request head sent slowly; others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_cut_off_by_the_header_timeout() {
    let ca = TestCa::new("main");
    let (app, base) = spawn_tls(&ca, "[server]\nheader_read_timeout = \"1s\"").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut half = TcpStream::connect(&addr).await.unwrap();
    // A TLS record header announcing a 512-byte handshake message, and a few bytes of it.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    let res = ca
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for (what, s) in [("silent", &mut silent), ("half a ClientHello", &mut half)] {
        let closed = closed_within(s, Duration::from_secs(4)).await;
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 4 s"));
        assert!(
            closed < Duration::from_secs(3),
            "{what}: closed after {closed:?}"
        );
    }
    app.stop().await;
}

/// Past the cap, a TLS connection gets its `503 overloaded` over TLS (HTTP/1.1), not bytes it
/// cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_over_tls() {
    let ca = TestCa::new("main");
    let (app, base) = spawn_tls(
        &ca,
        "[server]\nheader_read_timeout = \"5s\"\nmax_connections = 1",
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Holds the one place: a connection in its handshake.
    let held = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = ca
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.version(), Version::HTTP_11);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    drop(held);
    // Once it is gone, clients are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = ca
            .client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the place freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// The binary: `--tls-cert`/`--tls-key`, then a SIGHUP after the files changed to a pair of
/// another CA. New connections get the new certificate; a connection opened before goes on
/// (its client trusts only the old CA, so a request that succeeds went over it). A SIGHUP with
/// a broken key file keeps the pair in use and says so in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (TestCa::new("old"), TestCa::new("new"));
    let (cert, key) = old.write(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("stderr.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("SESSIOND_DATABASE", db_url(dir.path()))
        .env("SESSIOND_PUBLIC_URL", format!("https://localhost:{port}"))
        .env("SESSIOND_ADMIN_PASSWORD", "admin password 1")
        .env("SESSIOND_HASH_WORKER", "threads")
        .env_remove("SESSIOND_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let before = old.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = before.get(format!("{base}/healthz")).send().await {
            assert_eq!(res.version(), Version::HTTP_2);
            break;
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    new.write(dir.path());
    hup(server.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while new
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New connections get the new certificate: a fresh client of the old CA is refused…
    assert!(old
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    // …while the connection opened before the reload still serves its client.
    let res = before.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // A broken key file: the reload fails, the new pair stays, the log says so.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    hup(server.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("not reloaded") {
            assert!(
                !text.contains("not a key"),
                "the key file's content was logged"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for the failed reload:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = new
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(server.try_wait().unwrap().is_none(), "the server exited");

    server.kill().unwrap();
    server.wait().unwrap();
}

/// The configuration: both files or neither, and they must load at start.
#[tokio::test]
async fn tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("main");
    let (cert, key) = ca.write(dir.path());
    let other = TestCa::new("other");
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let missing = dir.path().join("missing.pem");
    let check = |cert: Option<&Path>, key: Option<&Path>| {
        sessiond::Config::resolve(
            sessiond::FileConfig::default(),
            Overrides {
                tls_cert: cert.map(Path::to_owned),
                tls_key: key.map(Path::to_owned),
                database: Some(db_url(dir.path())),
                ..Overrides::default()
            },
        )
        .map_err(|e| e.0)
    };
    let ok = check(Some(&cert), Some(&key)).unwrap();
    assert_eq!(
        ok.public_url.scheme(),
        "https",
        "the default public URL follows TLS"
    );
    assert!(check(Some(&cert), None).unwrap_err().contains("tls.key"));
    assert!(check(None, Some(&key)).unwrap_err().contains("tls.cert"));
    let e = check(Some(&missing), Some(&key)).unwrap_err();
    assert!(e.contains("missing.pem"), "{e}");
    // A key of another pair is refused, and no key material reaches the message.
    let e = check(Some(&cert), Some(&other_key)).unwrap_err();
    assert!(e.contains("tls.cert") && e.contains("tls.key"), "{e}");
    assert!(!e.contains("PRIVATE KEY"), "{e}");
    // The key where the certificate belongs: no certificate in it.
    let e = check(Some(&key), Some(&key)).unwrap_err();
    assert!(e.contains("no CERTIFICATE"), "{e}");
    // Without TLS the public URL may still be https (a proxy terminates TLS).
    let behind_proxy = sessiond::Config::resolve(
        sessiond::FileConfig::default(),
        Overrides {
            public_url: Some("https://auth.example.com".into()),
            database: Some(db_url(dir.path())),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert!(behind_proxy.tls.is_none());
}

/// HTTP/2 keeps the idle limit: a connection that made one request and then stays quiet is
/// closed by the server within the header-read timeout (here 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_by_the_header_timeout() {
    let ca = TestCa::new("main");
    let (app, _) = spawn_tls(&ca, "[server]\nheader_read_timeout = \"1s\"").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get(format!(
        "https://localhost:{}/healthz",
        app.base.rsplit(':').next().unwrap()
    ))
    .body(http_body_util::Empty::<hyper::body::Bytes>::new())
    .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let start = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(4), driver).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection is still open after 4 s"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
    app.stop().await;
}

/// `sessiond config check` shows the pair, and refuses one that does not load (exit 1).
#[test]
fn config_check_shows_and_checks_the_tls_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = TestCa::new("main").write(dir.path());
    let check = |cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sessiond"))
            .args(["config", "check", "--database", &db_url(dir.path())])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env_remove("SESSIOND_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = check(&cert, &key);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("[tls]") && stdout.contains("cert.pem"),
        "{stdout}"
    );
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, TestCa::new("other").key_pem).unwrap();
    let out = check(&cert, &other);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tls.key"), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
