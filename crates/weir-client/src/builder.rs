//! [`ClientBuilder`]: a [`Client`] with the settings a deployment needs beyond a
//! URL: an API key, a CA to trust for `https://` (a private one, or a server's
//! self-signed certificate), and the size of the connection pool.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderValue;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::CertificateDer;

use crate::Client;

/// Largest CA certificate file read, in bytes. A bundle of a few hundred
/// certificates fits; this only keeps a wrong path from being read into memory.
pub const CA_CERT_BYTES_MAX: u64 = 1 << 20;

/// Why a [`ClientBuilder`] could not build its client. No variant carries the
/// API key, and neither does its message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The API key is empty.
    #[error("the API key is empty")]
    EmptyApiKey,
    /// The API key cannot be an HTTP header value (a control character, a
    /// non-ASCII one).
    #[error("the API key has a character an HTTP header cannot carry (use visible ASCII)")]
    InvalidApiKey,
    /// The CA certificate file could not be read.
    #[error("reading the CA certificate {}: {source}", path.display())]
    ReadCaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA certificate is not PEM or holds no certificate.
    #[error("the CA certificate {origin} {problem}")]
    CaCert {
        /// The file's path, or `(PEM bytes)`.
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// reqwest refused the configuration (a certificate rustls cannot parse).
    #[error("building the HTTP client")]
    Http(#[source] reqwest::Error),
}

/// Where a CA certificate comes from.
#[derive(Clone)]
enum CaSource {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// Builds a [`Client`]: `Client::builder(url)`, then any of the settings, then
/// [`build`](ClientBuilder::build), which reads and checks them all. Cloning a
/// builder is cheap, so a program that needs several clients of one server (a
/// load generator, one pool each) configures one and builds it several times.
///
/// ```no_run
/// # fn f() -> Result<(), weir_client::BuildError> {
/// let client = weir_client::Client::builder("https://weir.internal:7700")
///     .api_key(std::env::var("WEIR_API_KEY").unwrap_or_default())
///     .ca_cert_file("/etc/weir/ca.pem")
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    base: String,
    /// Shown by `Debug` only as whether there is one.
    api_key: Option<String>,
    ca_certs: Vec<CaSource>,
    pool_max_idle_per_host: Option<usize>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ca_certs: Vec<String> = self
            .ca_certs
            .iter()
            .map(|c| match c {
                CaSource::File(p) => p.display().to_string(),
                CaSource::Pem(_) => "(PEM bytes)".to_owned(),
            })
            .collect();
        f.debug_struct("ClientBuilder")
            .field("base", &self.base)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("ca_certs", &ca_certs)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(base_url: String) -> ClientBuilder {
        ClientBuilder {
            base: base_url,
            api_key: None,
            ca_certs: Vec::new(),
            pool_max_idle_per_host: None,
        }
    }

    /// Sends `Authorization: Bearer <key>` with every request. The key is kept
    /// out of `Debug` output and errors.
    pub fn api_key(mut self, key: impl Into<String>) -> ClientBuilder {
        self.api_key = Some(key.into());
        self
    }

    /// Trusts the CA certificates in this PEM file (one or more), besides the
    /// built-in roots (Mozilla's, from webpki-roots), for `https://` servers. A
    /// server's self-signed certificate can be given as its own CA if it does not
    /// have the CA flag (webpki refuses a CA certificate as a server's). Read by
    /// `build`.
    pub fn ca_cert_file(mut self, path: impl Into<PathBuf>) -> ClientBuilder {
        self.ca_certs.push(CaSource::File(path.into()));
        self
    }

    /// As [`ca_cert_file`](ClientBuilder::ca_cert_file), from PEM bytes.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> ClientBuilder {
        self.ca_certs.push(CaSource::Pem(pem.into()));
        self
    }

    /// Idle connections kept per host (reqwest's default: no limit).
    pub fn pool_max_idle_per_host(mut self, connections: usize) -> ClientBuilder {
        self.pool_max_idle_per_host = Some(connections);
        self
    }

    /// Reads the CA certificates, checks the API key, and builds the client.
    pub fn build(self) -> Result<Client, BuildError> {
        let auth = self.api_key.as_deref().map(bearer).transpose()?;
        let mut http = Client::http_builder();
        let mut ca_certs = Vec::new();
        for source in &self.ca_certs {
            for der in certificates(source)? {
                let cert = reqwest::Certificate::from_der(&der).map_err(BuildError::Http)?;
                http = http.add_root_certificate(cert);
                ca_certs.push(der);
            }
        }
        if let Some(n) = self.pool_max_idle_per_host {
            http = http.pool_max_idle_per_host(n);
        }
        let http = http.build().map_err(BuildError::Http)?;
        let mut client = Client::with_http(self.base, http);
        client.auth = auth;
        client.ca_certs = ca_certs.into();
        Ok(client)
    }
}

/// The `Authorization` header for `key`, marked sensitive: hyper and reqwest
/// then keep it out of their `Debug` output (`Sensitive`), and so does every
/// `Debug` of a `Client`.
fn bearer(key: &str) -> Result<HeaderValue, BuildError> {
    if key.is_empty() {
        return Err(BuildError::EmptyApiKey);
    }
    let mut value =
        HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| BuildError::InvalidApiKey)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The DER certificates of one source; at least one, or an error saying why.
fn certificates(source: &CaSource) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let (origin, read);
    let bytes: &[u8] = match source {
        CaSource::File(path) => {
            origin = path.display().to_string();
            read = read_capped(path)?;
            &read
        }
        CaSource::Pem(bytes) => {
            origin = "(PEM bytes)".to_owned();
            bytes
        }
    };
    let problem = |problem: String| BuildError::CaCert {
        origin: origin.clone(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| problem(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(problem(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(certs)
}

/// A file's bytes, refusing one over [`CA_CERT_BYTES_MAX`].
fn read_capped(path: &Path) -> Result<Vec<u8>, BuildError> {
    let read_error = |source| BuildError::ReadCaCert {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_error)?
        .take(CA_CERT_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > CA_CERT_BYTES_MAX {
        return Err(BuildError::CaCert {
            origin: path.display().to_string(),
            problem: format!("is larger than {CA_CERT_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "wk_live_s3cr3t";

    #[test]
    fn the_key_is_in_no_debug_output_or_error() {
        let builder = Client::builder("http://127.0.0.1:1").api_key(KEY);
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains(KEY) && shown.contains("<redacted>"),
            "{shown}"
        );
        let client = builder.build().unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains(KEY), "{shown}");

        let bad = format!("{KEY}\n");
        let e = Client::builder("http://h")
            .api_key(&bad)
            .build()
            .unwrap_err();
        assert!(matches!(e, BuildError::InvalidApiKey));
        assert!(!format!("{e} {e:?}").contains(KEY));
        let e = Client::builder("http://h").api_key("").build().unwrap_err();
        assert!(matches!(e, BuildError::EmptyApiKey), "{e}");
    }

    #[test]
    fn a_bad_ca_certificate_is_named() {
        let e = Client::builder("https://h")
            .ca_cert_file("/nonexistent/ca.pem")
            .build()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
        assert!(matches!(e, BuildError::ReadCaCert { .. }), "{e:?}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let msg = Client::builder("https://h")
            .ca_cert_file(&path)
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ca.pem") && msg.contains("holds no PEM certificate"),
            "{msg}"
        );

        let msg = Client::builder("https://h")
            .ca_cert_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
            .build()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not valid PEM"), "{msg}");
    }
}
