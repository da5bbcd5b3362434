//! wss:// (feature `tls`): the server's certificate, reloadable while it runs, and whom a
//! [`WsClient`](super::WsClient) trusts. rustls with the ring provider; no OpenSSL.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate, a key or a trust root could not be used. Its text is a sentence for the
/// operator, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read, or holds nothing of the kind expected.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        /// "certificate chain" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate or the key (a key that does not match the certificate, an
    /// unsupported key type, a malformed trust root).
    #[error("{0}")]
    Rejected(String),
}

/// The server side of wss://: a certificate chain and its private key, for
/// [`WsConfig::tls`](super::WsConfig::tls).
///
/// Clones share the certificate: [`reload_pem_files`](Self::reload_pem_files) on any of them
/// switches every new connection to the new certificate, without touching open ones (what
/// `ws_server` does on SIGHUP).
///
/// ```no_run
/// # fn run() -> Result<(), peer_signal::TlsError> {
/// use peer_signal::{ServerTls, SignalConfig, WsConfig};
///
/// let tls = ServerTls::from_pem_files("fullchain.pem", "privkey.pem")?;
/// let ws = WsConfig::for_server(&SignalConfig::default()).with_tls(tls);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerTls {
    certificate: Arc<Reloadable>,
    config: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// A certificate chain (leaf first) and its private key, from PEM files.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when a file cannot be read or parsed, or the key does not match.
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let certified = load_pem_files(chain.as_ref(), key.as_ref())?;
        Self::from_certified(certified)
    }

    /// A certificate chain (leaf first) and its private key, in DER.
    ///
    /// # Errors
    ///
    /// [`TlsError::Rejected`] when the key is unsupported or does not match the certificate.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        Self::from_certified(certified_key(chain, key)?)
    }

    fn from_certified(certified: CertifiedKey) -> Result<Self, TlsError> {
        let certificate = Arc::new(Reloadable(RwLock::new(Arc::new(certified))));
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        Ok(Self { certificate, config: Arc::new(config) })
    }

    /// Reads the certificate chain and key again, for the connections that start from now on.
    ///
    /// # Errors
    ///
    /// As [`from_pem_files`](Self::from_pem_files); the certificate in use stays.
    pub fn reload_pem_files(&self, chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<(), TlsError> {
        let certified = load_pem_files(chain.as_ref(), key.as_ref())?;
        *self.certificate.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }

    /// As [`reload_pem_files`](Self::reload_pem_files), for files that may be being replaced
    /// right now: a pair that does not load (a file half-written, or a new certificate whose key
    /// is not written yet, so that the two do not match) is read again, up to `attempts` times in
    /// all, `delay` apart. Returns how many attempts it took.
    ///
    /// Tools that renew certificates write the chain and the key one after the other; a reload
    /// signalled in between would otherwise keep the old certificate until the next signal,
    /// which may come only after it has expired. [`RELOAD_ATTEMPTS`](Self::RELOAD_ATTEMPTS) and
    /// [`RELOAD_DELAY`](Self::RELOAD_DELAY) are what `ws_server` uses on SIGHUP.
    ///
    /// # Errors
    ///
    /// The last attempt's error, after `attempts` attempts (at least one); the certificate in use
    /// stays.
    pub async fn reload_pem_files_retrying(
        &self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        attempts: u32,
        delay: std::time::Duration,
    ) -> Result<u32, TlsError> {
        let mut attempt = 1;
        loop {
            match self.reload_pem_files(chain.as_ref(), key.as_ref()) {
                Ok(()) => return Ok(attempt),
                Err(error) if attempt >= attempts => return Err(error),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Attempts of a reload on SIGHUP in `ws_server`: 5.
    pub const RELOAD_ATTEMPTS: u32 = 5;

    /// The wait between two attempts of a reload on SIGHUP in `ws_server`: 200 ms. With
    /// [`RELOAD_ATTEMPTS`](Self::RELOAD_ATTEMPTS), the pair has 800 ms to settle after the
    /// first attempt: writing two files of a few KiB takes milliseconds, and a signal that
    /// arrives while a renewal writes them is answered with the new pair, not the old one.
    pub const RELOAD_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

    pub(super) fn config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.config)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is not printed.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Two `ServerTls` are equal when they share their certificate (one is a clone of the other).
impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.certificate, &other.certificate)
    }
}

impl Eq for ServerTls {}

/// The certificate in use, swapped by a reload.
struct Reloadable(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner)))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    if chain.is_empty() {
        return Err(TlsError::Rejected("the certificate chain is empty".into()));
    }
    CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Rejected(format!("certificate and key: {e}")))
}

fn load_pem_files(chain: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = |what: &'static str, path: &Path, reason: String| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(chain)
        .map_err(|e| pem("certificate chain", chain, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("certificate chain", chain, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("certificate chain", chain, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem("private key", key, e.to_string()))?;
    certified_key(certs, key_der)
}

/// Whom a [`WsClient`](super::WsClient) trusts for wss://.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla root certificates, as the webpki-roots crate ships them.
    #[default]
    WebPki,
    /// These certificates only: a private CA, or a self-signed server certificate.
    Custom(Vec<CertificateDer<'static>>),
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WebPki => f.write_str("WebPki"),
            Self::Custom(roots) => write!(f, "Custom({} certificates)", roots.len()),
        }
    }
}

impl TlsRoots {
    /// The client configuration that trusts these roots.
    pub(super) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut store = rustls::RootCertStore::empty();
        match self {
            Self::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Self::Custom(roots) => {
                for root in roots {
                    store.add(root.clone()).map_err(|e| TlsError::Rejected(format!("trust root: {e}")))?;
                }
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected(e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}
