//! TLS to PostgreSQL with libpq's parameters, as managed databases (Cloud
//! SQL, RDS) require: `sslmode` (`disable`, `prefer`, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey` in the
//! URL, or `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` in the
//! environment, as libpq reads them.
//!
//! tokio-postgres parses only `disable`, `prefer` and `require`, so kyu
//! takes these parameters out of the URL itself and builds a rustls
//! connector whose verification matches the mode:
//!
//! | mode | encrypts | checks the certificate chain | checks the host name |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `prefer` (the default) | if the server offers it | only with a root certificate | no |
//! | `require` | yes | only with a root certificate (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The roots are `sslrootcert` when given (`sslrootcert=system` for the
//! system's), else the system's certificate store.

use std::path::PathBuf;
use std::sync::Arc;

use kyu_store::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt if the server offers it (libpq's default).
    Prefer,
    /// Encrypt, or fail.
    Require,
    /// Encrypt, and check the server's certificate chain.
    VerifyCa,
    /// Encrypt, check the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, StoreError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::Backend(
                    format!("sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full").into(),
                ));
            }
        })
    }

    /// The mode tokio-postgres is told (it only negotiates; kyu's connector verifies).
    pub(crate) fn driver(self) -> DriverMode {
        match self {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
        }
    }
}

/// The TLS settings of a connection URL.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// How far to trust the server.
    pub mode: SslMode,
    /// Root certificates (PEM); `None` for the system's.
    pub root_cert: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of `url`
/// (the driver would refuse `verify-ca` and `verify-full`), with the
/// environment's `PGSSL*` variables for those not in the URL.
pub(crate) fn split_tls(url: &str) -> Result<(String, TlsSettings), StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = None;
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    let mut rest = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "sslmode" => mode = Some(v),
            "sslrootcert" => root = Some(v),
            "sslcert" => cert = Some(v),
            "sslkey" => key = Some(v),
            _ => rest.push(kv),
        }
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mode = SslMode::parse(&mode.or_else(|| env("PGSSLMODE")).unwrap_or_else(|| "prefer".into()))?;
    let root = root.or_else(|| env("PGSSLROOTCERT")).filter(|r| r != "system").map(PathBuf::from);
    let client_cert = match (cert.or_else(|| env("PGSSLCERT")), key.or_else(|| env("PGSSLKEY"))) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        _ => return Err(StoreError::Backend("give sslcert and sslkey together".into())),
    };
    let url = if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
    Ok((url, TlsSettings { mode, root_cert: root, client_cert }))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tls_err(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("TLS to PostgreSQL: {what}").into())
}

/// The connector for these settings (also used for `disable`: the driver
/// then never starts TLS).
pub(crate) fn connector(s: &TlsSettings) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let verify_chain = matches!(s.mode, SslMode::VerifyCa | SslMode::VerifyFull) || s.root_cert.is_some();
    let builder = if verify_chain && s.mode != SslMode::Disable {
        let mut roots = rustls::RootCertStore::empty();
        match &s.root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| tls_err(format!("cannot read sslrootcert {}: {e}", path.display())))?;
                for c in certs {
                    roots.add(c.map_err(|e| tls_err(format!("sslrootcert {}: {e}", path.display())))?).map_err(tls_err)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(tls_err("no system root certificates found: give sslrootcert=PATH"));
                }
            }
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(tls_err)?;
        if s.mode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
        }
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
    };
    let config = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_err(format!("cannot read sslcert {}: {e}", cert.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(format!("sslcert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(format!("sslkey {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key).map_err(tls_err)?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, but the
/// server is not authenticated (libpq's meaning of these modes). The
/// handshake's signatures are still checked.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_come_out_of_the_url() {
        let (url, s) = split_tls("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&schema=x").unwrap();
        assert_eq!(url, "postgres://h/db?schema=x");
        assert_eq!((s.mode, s.root_cert), (SslMode::VerifyFull, Some(PathBuf::from("/etc/ca.pem"))));
        let (_, s) = split_tls("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert!(split_tls("postgres://h/db?sslmode=maybe").is_err());
        assert!(split_tls("postgres://h/db?sslcert=/c.pem").is_err());
    }
}
