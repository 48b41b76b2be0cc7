//! The optional TLS listener: rustls (ring provider) through tokio-rustls,
//! wrapped around the same connection loop as plain HTTP (warp 0.4 has no
//! TLS of its own). TLS adds transport privacy for metadata (which names a
//! client asks for, how large the answers are); the protocol's own
//! encryption already protects requests and values.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds an acceptor from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, String> {
    crate::client::install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tls.cert_file {}: {e}; expected a PEM certificate chain",
                cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {} holds no certificate",
            cert_file.display()
        ));
    }
    if let Some(mode) = crate::fsutil::loose_permissions(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?
    {
        return Err(format!(
            "tls.key_file {} has mode {mode:03o}, readable by others; run `chmod 600 {}`",
            key_file.display(),
            key_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "tls.key_file {}: {e}; expected a PEM private key",
            key_file.display()
        )
    })?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
