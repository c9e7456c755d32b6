//! Optional TLS (rustls) for the coordinator and its workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{Error, Result};

/// The coordinator's certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// Certificate chain (PEM).
    pub cert_pem_path: PathBuf,
    /// Private key (PEM).
    pub key_pem_path: PathBuf,
}

/// How a worker checks the coordinator's certificate.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// CA certificate (PEM) that signed the coordinator's certificate; a
    /// self-signed certificate is its own CA.
    pub ca_pem_path: PathBuf,
    /// Name the certificate must be valid for (e.g. the coordinator's
    /// host name).
    pub domain: String,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

// Both sides bound the handshake: without a limit, a peer that opens a
// connection and never answers holds it (and its task) for ever.

impl TlsServer {
    pub(crate) fn config(&self, handshake: Duration) -> Result<ServerTlsConfig> {
        let cert = read(&self.cert_pem_path)?;
        let key = read(&self.key_pem_path)?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(handshake))
    }
}

impl TlsClient {
    pub(crate) fn config(&self, handshake: Duration) -> Result<ClientTlsConfig> {
        let ca = read(&self.ca_pem_path)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(self.domain.clone())
            .timeout(handshake))
    }
}
