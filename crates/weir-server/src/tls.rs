//! TLS for the API (`weir serve --tls-cert --tls-key`): the certificate chain and
//! key read from PEM files into a rustls `ServerConfig`, held so that it can be
//! replaced while the server runs ([`ServerTls::reload`], which `weir serve` calls
//! on SIGHUP). The connection layer (`conn.rs`) takes the config in force when it
//! accepts a connection, so a reload reaches new connections only: open ones keep
//! the session they negotiated.
//!
//! TLS 1.2 and 1.3 with rustls's `ring` provider, named here rather than taken
//! from a process-wide default so that nothing else linked in can change it. ALPN
//! offers `http/1.1` only: the server speaks HTTP/1 and nothing else.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest certificate or key file read, in bytes. A chain of a few certificates
/// is a few KiB; this only keeps a wrong path (a log file, a device) from being
/// read into memory.
pub const TLS_PEM_BYTES_MAX: u64 = 1 << 20;

/// Where the server's certificate chain and private key are, both PEM. The chain
/// starts with the server's own certificate, then any intermediates; the key is
/// PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (`--tls-cert`).
    pub cert: PathBuf,
    /// The private key of the chain's first certificate (`--tls-key`).
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded. Each names the file at fault;
/// none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than [`TLS_PEM_BYTES_MAX`].
    #[error("{} is larger than {TLS_PEM_BYTES_MAX} bytes: not a PEM certificate or key", path.display())]
    TooLarge { path: PathBuf },
    /// A file is not well-formed PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no private key section.
    #[error("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)", path.display())]
    NoKey { path: PathBuf },
    /// rustls refused the pair: an unsupported key type, a key that does not
    /// belong to the chain's first certificate, a certificate it cannot parse.
    #[error("the key {} does not fit the certificate {}: {source}", key.display(), cert.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The server's TLS configuration, replaceable while it serves. Cheap to clone:
/// every clone is a handle on the same configuration, so the clone `weir serve`
/// keeps for SIGHUP reloads what the accept loop hands out.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    /// The configuration new connections get.
    current: ArcSwap<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the pair. Fails, naming the file, if either cannot be
    /// read, holds no certificate or key, or the key does not fit the certificate.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                files,
                current: ArcSwap::from(config),
            }),
        })
    }

    /// Reads the pair again from the same paths and, if it loads, makes it the
    /// one new connections get; connections already open keep theirs. On an
    /// error nothing changes: the server goes on with the pair it had. Reads files,
    /// so an async caller runs it off the runtime's threads (`spawn_blocking`).
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.inner.files)?;
        self.inner.current.store(config);
        Ok(())
    }

    /// The paths the pair is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The configuration for a connection accepted now.
    pub(crate) fn current(&self) -> Arc<rustls::ServerConfig> {
        self.inner.current.load_full()
    }
}

/// The rustls configuration for `files`.
fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read_pem(&files.cert)?;
    let key_pem = read_pem(&files.key)?;
    let pem_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&files.cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: files.key.clone(),
            })
        }
        Err(source) => return Err(pem_error(&files.key)(source)),
    };
    let pair_error = |source| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(pair_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A file's bytes, at most [`TLS_PEM_BYTES_MAX`] of them.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(TLS_PEM_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > TLS_PEM_BYTES_MAX {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}
