//! TLS on the listener (`[tls] cert`, `key`): rustls with the `ring` provider, the
//! certificate chain and key read from PEM files, swapped in place by [`Tls::reload`] (on
//! SIGHUP) so new handshakes use the new pair while connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered, preferred first: HTTP/2, then HTTP/1.1.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of every TLS configuration of the server: `ring` (the only one built).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1) from
/// PEM files and checks that they belong together. Errors name the file, never its content.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no CERTIFICATE in the file",
            cert.display()
        ));
    }
    // The key's parse error says what was wrong with the PEM framing, never the key's bytes.
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls.key {}: {e} (expected a PEM private key: PKCS#8, RSA or EC)",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
        format!(
            "tls.cert {} and tls.key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// Picks the current certificate for every handshake. The lock is held only to clone an
/// `Arc`; a reload replaces it whole, so a handshake sees the old pair or the new, never a mix.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete pair (writers only assign an `Arc`).
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// The listener's TLS: the acceptors and the files they reload from.
#[derive(Clone)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
    /// HTTP/2 or HTTP/1.1, by ALPN.
    acceptor: TlsAcceptor,
    /// HTTP/1.1 only: the connections past the cap, answered `503` and closed.
    refusal: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the pair and builds the acceptors (TLS 1.2 and 1.3, rustls' safe defaults: no
    /// client certificates, no early data, no renegotiation).
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let current = Arc::new(Current(RwLock::new(Arc::new(load(cert, key)?))));
        let config = |alpn: &[&[u8]]| -> Result<TlsAcceptor, String> {
            let mut c = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsAcceptor::from(Arc::new(c)))
        };
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            acceptor: config(&ALPN)?,
            refusal: config(&ALPN[1..])?,
            current,
        })
    }

    /// Reads the files again and, if they hold a valid pair, makes it the one new handshakes
    /// get. On an error the pair in use stays (a half-written or mismatched file never takes
    /// the server off the air) and the error is returned for the log.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let pair = Arc::new(load(&self.cert, &self.key)?);
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(())
    }

    /// The acceptor of connections under the cap (ALPN `h2`, `http/1.1`).
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The acceptor of connections past the cap (ALPN `http/1.1` only).
    pub(crate) fn refusal(&self) -> &TlsAcceptor {
        &self.refusal
    }
}
