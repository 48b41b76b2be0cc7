//! TLS, in one place and on one crypto library.
//!
//! Every TLS connection locket makes or accepts runs on rustls with the
//! AWS-LC provider (`aws-lc-rs`), the same library that does the protocol's
//! RSA-OAEP (see `docs/crypto.md`). Nothing links ring. rustls needs a
//! process-wide default provider for reqwest's `rustls-no-provider` build;
//! [`http_client`] installs it once, and the server's acceptor names the
//! provider explicitly, so no other module touches rustls' set-up.
//!
//! The optional TLS listener wraps the same connection loop as plain HTTP
//! (warp 0.4 has no TLS of its own). TLS adds transport privacy for metadata
//! (which names a client asks for, how large the answers are); the
//! protocol's own encryption already protects requests and values.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The one rustls provider: AWS-LC.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        // reqwest (built without a provider of its own) asks rustls for the
        // process default. Another library may have installed one first;
        // then that one is used for reqwest, which is still sound.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }))
}

/// Which certificate authorities an HTTP client trusts.
#[derive(Debug)]
pub enum Roots {
    /// The operating system's store (for `https://` servers).
    System,
    /// Only these (a `ca_file`).
    Only(Vec<reqwest::Certificate>),
    /// None: for plain `http://` servers. A minimal machine or a build
    /// sandbox has no CA certificates, and loading them would fail.
    None,
}

impl Roots {
    /// [`Roots::System`] when any of `urls` is `https://`, else [`Roots::None`].
    pub fn for_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Self {
        if urls.into_iter().any(|u| u.starts_with("https://")) {
            Roots::System
        } else {
            Roots::None
        }
    }
}

/// A reqwest builder on locket's provider, trusting `roots`.
pub fn http_client(roots: Roots) -> reqwest::ClientBuilder {
    let _ = provider();
    let builder = reqwest::Client::builder();
    match roots {
        Roots::System => builder,
        Roots::Only(certs) => builder.tls_certs_only(certs),
        Roots::None => builder.tls_certs_only(Vec::new()),
    }
}

/// Why a TLS listener could not be set up. Names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[allow(
    missing_docs,
    reason = "each variant is documented by its #[error] message"
)]
pub enum TlsError {
    #[error("tls.cert_file {path}: {source}; expected a PEM certificate chain")]
    Certificates {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("tls.cert_file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("tls.key_file {path}: {source}")]
    KeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls.key_file {path} has mode {mode:03o}, readable by others; run `chmod 600 {path}`")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("tls.key_file {path}: {source}; expected a PEM private key")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the TLS certificate and key do not fit together: {0}")]
    Mismatch(#[source] rustls::Error),
}

/// Builds a server-side acceptor from a PEM certificate chain and a PEM
/// private key (which must not be readable by others).
pub(crate) fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: cert_file.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    if let Some(mode) =
        crate::fsutil::loose_permissions(key_file).map_err(|source| TlsError::KeyRead {
            path: key_file.to_owned(),
            source,
        })?
    {
        return Err(TlsError::KeyPermissions {
            path: key_file.to_owned(),
            mode,
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
