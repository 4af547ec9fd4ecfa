//! TLS to PostgreSQL against real servers: the local test server with `sslmode=require` when
//! it has TLS on, and, for the modes that verify, a TLS front made here with a throwaway CA
//! (it answers the `SSLRequest`, does the handshake with the test CA's certificate for
//! `localhost`, and passes the bytes inside to the test server in plain text).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use sessiond_core::StoreError;
use sessiond_store_tests::service_or_skip;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::tests::{fresh_schema, key_value_url, url};
use crate::PostgresStore;

/// A CA (PEM) and a certificate it signed for `localhost` only, with its key.
struct TestCa {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn test_ca(name: &str) -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    TestCa {
        ca_pem: ca.pem(),
        cert: leaf.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// The test server's address, if the test URL names a TCP one.
async fn upstream() -> Option<SocketAddr> {
    let config: tokio_postgres::Config = url().parse().ok()?;
    let (Some(tokio_postgres::config::Host::Tcp(host)), Some(&port)) =
        (config.get_hosts().first(), config.get_ports().first())
    else {
        return None;
    };
    let found = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .next();
    found
}

/// The TLS front: PostgreSQL's `SSLRequest`, `S`, a handshake, then a pipe to `upstream`.
async fn tls_front(ca: &TestCa, upstream: SocketAddr) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ca.cert.clone()], ca.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // Length 8, code 80877103: the SSLRequest.
                let mut request = [0u8; 8];
                client.read_exact(&mut request).await?;
                assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "not an SSLRequest");
                client.write_all(b"S").await?;
                let mut tls = acceptor.accept(client).await?;
                let mut server = TcpStream::connect(upstream).await?;
                tokio::io::copy_bidirectional(&mut tls, &mut server).await?;
                Ok::<_, std::io::Error>(())
            });
        }
    });
    addr
}

/// A server that answers the `SSLRequest` with `N`: no TLS here.
async fn no_tls_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut request = [0u8; 8];
            if client.read_exact(&mut request).await.is_ok() {
                let _ = client.write_all(b"N").await;
                let _ = client.read(&mut request).await;
            }
        }
    });
    addr
}

/// `key_value_url` to `addr` as host `name` (`hostaddr` does the connecting), plus `extra`.
fn through(addr: SocketAddr, name: &str, extra: &str) -> String {
    let config: tokio_postgres::Config = url().parse().unwrap();
    let base = key_value_url(&config, addr).replacen(
        &format!("host={}", addr.ip()),
        &format!("host={name} hostaddr={}", addr.ip()),
        1,
    );
    format!("{base} {extra}")
}

async fn schema_version(url: &str) -> Result<i64, StoreError> {
    PostgresStore::connect_in_schema(url, &fresh_schema())
        .await?
        .schema_version()
        .await
}

/// The error of a connect, with its causes, for the assertions on why it failed.
async fn refusal(url: &str) -> String {
    let e = schema_version(url).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_verify_ca_and_require_against_a_throwaway_ca() {
    let Some(upstream) = upstream().await else {
        let _ = service_or_skip::<(), _>("PostgreSQL", Err("the test URL is not a TCP address"));
        return;
    };
    // Is the test server there at all?
    let Some(_) = service_or_skip("PostgreSQL", schema_version(&url()).await) else {
        return;
    };
    let ca = test_ca("main");
    let dir = std::env::temp_dir().join(format!("sessiond-pg-tls-{}", fresh_schema()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let other_file = dir.join("other.pem");
    std::fs::write(&other_file, test_ca("other").ca_pem).unwrap();
    let front = tls_front(&ca, upstream).await;
    let root = |p: &Path| format!("sslrootcert='{}'", p.display());

    // verify-full: the chain and the name.
    let ok = through(
        front,
        "localhost",
        &format!("sslmode=verify-full {}", root(&ca_file)),
    );
    assert!(schema_version(&ok).await.unwrap() > 0);
    // The URL form, the same.
    let config: tokio_postgres::Config = url().parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    if config.get_password().is_none() {
        let as_url = format!(
            "postgres://{user}@localhost:{}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
            front.port(),
            ca_file.display()
        );
        assert!(schema_version(&as_url).await.unwrap() > 0);
    }
    // Another CA: refused, at connect, as unavailable (never a plain-text retry).
    let other = through(
        front,
        "localhost",
        &format!("sslmode=verify-full {}", root(&other_file)),
    );
    let e = refusal(&other).await;
    assert!(
        e.contains("UnknownIssuer") || e.contains("unknown issuer"),
        "{e}"
    );
    // A name the certificate does not hold: verify-full refuses, verify-ca accepts.
    let wrong_name = format!("sslmode=verify-full {}", root(&ca_file));
    let e = refusal(&through(front, "127.0.0.1", &wrong_name)).await;
    assert!(e.contains("not valid for name"), "{e}");
    let chain_only = format!("sslmode=verify-ca {}", root(&ca_file));
    assert!(
        schema_version(&through(front, "127.0.0.1", &chain_only))
            .await
            .unwrap()
            > 0
    );
    // require: encrypted, nothing verified; require with sslrootcert verifies the chain.
    assert!(
        schema_version(&through(front, "127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
            > 0
    );
    let pinned = format!("sslmode=require {}", root(&other_file));
    let e = refusal(&through(front, "127.0.0.1", &pinned)).await;
    assert!(
        e.contains("UnknownIssuer") || e.contains("unknown issuer"),
        "{e}"
    );
    // verify-full with the system's roots: the test CA is not among them.
    let system = through(front, "localhost", "sslmode=verify-full");
    let e = refusal(&system).await;
    assert!(
        e.contains("UnknownIssuer") || e.contains("unknown issuer"),
        "{e}"
    );

    // A server without TLS: every mode that asks for it fails rather than going plain.
    let plain = no_tls_server().await;
    for mode in ["require", "verify-full"] {
        let url = through(
            plain,
            "localhost",
            &format!("sslmode={mode} {}", root(&ca_file)),
        );
        let e = refusal(&url).await;
        assert!(e.contains("does not support TLS"), "{mode}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sslmode=require` straight to the test server, when it has TLS on (Debian's default
/// cluster does, with its self-signed certificate); else said and skipped.
#[tokio::test]
async fn require_against_the_test_server_when_it_has_tls() {
    let made = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await;
    let Some((client, conn)) = service_or_skip("PostgreSQL", made) else {
        return;
    };
    tokio::spawn(conn);
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" {
        eprintln!("SKIP: the test PostgreSQL has ssl = {ssl}; sslmode=require untested against it");
        return;
    }
    let sep = if url().contains('?') { '&' } else { '?' };
    let tls_url = if url().starts_with("postgres") {
        format!("{}{sep}sslmode=require", url())
    } else {
        format!("{} sslmode=require", url())
    };
    let store = PostgresStore::connect_in_schema(&tls_url, &fresh_schema())
        .await
        .unwrap();
    let encrypted: bool = store
        .run(|c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await
                    .map_err(crate::pg)?;
                Ok(row.get(0))
            })
        })
        .await
        .unwrap();
    assert!(encrypted, "the connection is not encrypted");
}
