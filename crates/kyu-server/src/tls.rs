//! HTTPS: the server serves TLS itself with `--tls-cert` and `--tls-key`
//! (PEM files), and reloads them on SIGHUP, so a renewed certificate (Let's
//! Encrypt, a Kubernetes secret) takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate chain and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The acceptor in force; replaced whole on reload.
pub(crate) struct Tls {
    files: TlsFiles,
    acceptor: RwLock<tokio_rustls::TlsAcceptor>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong.
    pub(crate) fn load(files: TlsFiles) -> Result<Arc<Tls>, String> {
        let acceptor = RwLock::new(acceptor(&files)?);
        Ok(Arc::new(Tls { files, acceptor }))
    }

    /// The acceptor for the next connection.
    pub(crate) fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.read().expect("tls lock").clone()
    }

    /// Reads the files again; on error the old certificate stays in force.
    pub(crate) fn reload(&self) {
        match acceptor(&self.files) {
            Ok(a) => {
                *self.acceptor.write().expect("tls lock") = a;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays in force"),
        }
    }
}

fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert and --tls-key do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--tls-cert {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in the file", path.display()));
    }
    Ok(chain)
}
