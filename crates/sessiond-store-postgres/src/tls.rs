//! TLS to PostgreSQL: the `sslmode` and `sslrootcert` of a connection string, read the way
//! libpq reads them, turned into a rustls client configuration (`ring` provider).
//!
//! tokio-postgres itself knows `sslmode=disable|prefer|require` only, and no `sslrootcert`:
//! [`split`] takes both out of the string (any form: URL or `key=value`), hands tokio-postgres
//! `sslmode=require` for every mode that encrypts, and keeps the verification for the
//! connector.
//!
//! | `sslmode` | what sessiond does |
//! |---|---|
//! | `disable`, `prefer` (the default), absent | plain text (`prefer` does not try TLS: an unverified, optional TLS stops no attacker who can touch the traffic) |
//! | `require` | TLS, the server's certificate **not** verified (encrypts against eavesdroppers only); with `sslrootcert`, as `verify-ca` (as libpq does) |
//! | `verify-ca` | TLS, the chain verified against `sslrootcert` or the system's roots; any host name |
//! | `verify-full` | TLS, the chain verified and the certificate valid for the host connected to |
//!
//! `sslrootcert=FILE` (PEM, one or more CA certificates) or `sslrootcert=system`; without it,
//! the system's roots (libpq would read `~/.postgresql/root.crt`). Client certificates
//! (`sslcert`, `sslkey`) are not supported: tokio-postgres refuses those keys.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sessiond_core::StoreError;

/// How the server's certificate is checked, once TLS is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verify {
    /// `require` without `sslrootcert`: not at all.
    Nothing,
    /// `verify-ca` (or `require` with `sslrootcert`): the chain.
    Chain(Roots),
    /// `verify-full`: the chain and the host name.
    ChainAndName(Roots),
}

/// The trust anchors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The operating system's store.
    System,
    /// CA certificates in a PEM file.
    File(PathBuf),
}

/// The connection string tokio-postgres can parse, and the TLS to use (`None`: plain text).
#[derive(Debug)]
pub(crate) struct Split {
    pub(crate) url: String,
    pub(crate) tls: Option<Verify>,
}

fn config_error(msg: impl Into<String>) -> StoreError {
    StoreError::Config(msg.into())
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or `key=value` pairs).
/// Errors name the option, never the string (it may hold a password).
pub(crate) fn split(url: &str) -> Result<Split, StoreError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut mode = None;
    let mut root = None;
    let rest = if is_url {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(decode(v)?),
                Some(("sslrootcert", v)) => root = Some(decode(v)?),
                _ => kept.push(pair),
            }
        }
        Rest::Url { base, kept }
    } else {
        let mut kept = Vec::new();
        for (k, v) in pairs(url)? {
            match k.as_str() {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root = Some(v),
                _ => kept.push((k, v)),
            }
        }
        Rest::Pairs(kept)
    };
    let roots = || match root.as_deref() {
        None | Some("system") => Roots::System,
        Some(file) => Roots::File(file.into()),
    };
    let (pg_mode, tls) = match mode.as_deref() {
        None => (None, None),
        Some(m @ ("disable" | "prefer")) => (Some(m), None),
        Some("require") if root.is_some() => (Some("require"), Some(Verify::Chain(roots()))),
        Some("require") => (Some("require"), Some(Verify::Nothing)),
        Some("verify-ca") => (Some("require"), Some(Verify::Chain(roots()))),
        Some("verify-full") => (Some("require"), Some(Verify::ChainAndName(roots()))),
        Some(_) => {
            return Err(config_error(
                "invalid PostgreSQL URL: sslmode must be disable, prefer, require, verify-ca \
                 or verify-full",
            ))
        }
    };
    let url = match rest {
        Rest::Url { base, mut kept } => {
            let set = pg_mode.map(|m| format!("sslmode={m}"));
            if let Some(s) = &set {
                kept.push(s);
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        }
        Rest::Pairs(mut kept) => {
            if let Some(m) = pg_mode {
                kept.push(("sslmode".into(), m.into()));
            }
            kept.iter()
                .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    Ok(Split { url, tls })
}

enum Rest<'a> {
    Url { base: &'a str, kept: Vec<&'a str> },
    Pairs(Vec<(String, String)>),
}

/// A percent-encoded query value.
fn decode(v: &str) -> Result<String, StoreError> {
    percent_encoding::percent_decode_str(v)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| config_error("invalid PostgreSQL URL: an ssl option is not UTF-8"))
}

/// libpq's `key=value` form: keys and values separated by whitespace, `=` possibly surrounded
/// by spaces, values optionally in single quotes with `\` escapes.
fn pairs(s: &str) -> Result<Vec<(String, String)>, StoreError> {
    let bad = || config_error("invalid PostgreSQL connection string: expected key=value pairs");
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(bad());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next().ok_or_else(bad)? {
                    '\'' => break,
                    '\\' => value.push(chars.next().ok_or_else(bad)?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(bad)?);
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `verify`. The roots are read now: a missing or empty
/// `sslrootcert` is a configuration error at connect, not a failure of every query.
pub(crate) fn client_config(verify: &Verify) -> Result<ClientConfig, StoreError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider())),
        Verify::Chain(roots) => Arc::new(ChainOnly(webpki(roots)?)),
        Verify::ChainAndName(roots) => webpki(roots)?,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn webpki(roots: &Roots) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(config_error(
                    "PostgreSQL TLS: no CA certificates in the system's store; name one with \
                     sslrootcert=FILE",
                ));
            }
        }
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| config_error(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(config_error(format!(
                    "sslrootcert {}: no CA certificate in the file",
                    path.display()
                )));
            }
        }
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| config_error(format!("PostgreSQL TLS: {e}")))
}

/// `sslmode=require`: the certificate is taken as it comes (the handshake's signatures are
/// still checked, so the session keys belong to whoever holds that certificate's key). This
/// is what `require` means in libpq, and all it buys is protection from eavesdroppers.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // webpki checks the name last, after the chain, its validity and its usage: an
            // error about the name alone means everything else held.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_options_are_taken_out_of_urls_and_key_value_strings() {
        let cases = [
            ("postgres://u:pw@h/db", "postgres://u:pw@h/db", None),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/db?sslmode=disable",
                None,
            ),
            (
                "postgres://u@h/db?application_name=x&sslmode=require",
                "postgres://u@h/db?application_name=x&sslmode=require",
                Some(Verify::Nothing),
            ),
            (
                "postgresql://u@h/db?sslmode=verify-full",
                "postgresql://u@h/db?sslmode=require",
                Some(Verify::ChainAndName(Roots::System)),
            ),
            (
                "postgres://u@h/db?sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-ca",
                "postgres://u@h/db?sslmode=require",
                Some(Verify::Chain(Roots::File("/etc/ca.pem".into()))),
            ),
            (
                "postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem",
                "postgres://u@h/db?sslmode=require",
                Some(Verify::Chain(Roots::File("/ca.pem".into()))),
            ),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=system",
                "postgres://u@h/db?sslmode=require",
                Some(Verify::ChainAndName(Roots::System)),
            ),
            (
                "host=h user=u password='p w\\'x' sslmode = verify-full sslrootcert='/my ca.pem'",
                "host='h' user='u' password='p w\\'x' sslmode='require'",
                Some(Verify::ChainAndName(Roots::File("/my ca.pem".into()))),
            ),
            ("host=h dbname=d", "host='h' dbname='d'", None),
        ];
        for (given, url, tls) in cases {
            let s = split(given).unwrap();
            assert_eq!(s.url, url, "{given}");
            assert_eq!(s.tls, tls, "{given}");
            // What we hand on, tokio-postgres parses.
            s.url.parse::<tokio_postgres::Config>().unwrap();
        }
        for bad in [
            "postgres://u:hunter2@h/db?sslmode=verify-everything",
            "host=h password='hunter2",
            "host=h =x",
        ] {
            let e = split(bad).unwrap_err();
            assert!(matches!(e, StoreError::Config(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn roots_must_exist_and_hold_a_certificate() {
        let dir = tempfile_dir();
        let missing = dir.join("missing.pem");
        let e = client_config(&Verify::ChainAndName(Roots::File(missing))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let e = client_config(&Verify::Chain(Roots::File(empty))).unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        client_config(&Verify::Nothing).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "sessiond-pg-tls-{:016x}",
            u64::from_be_bytes(random)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
