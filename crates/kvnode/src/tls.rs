//! TLS with rustls and its `ring` provider (no OpenSSL, nothing to build but Rust
//! and a little C from crates.io).
//!
//! - With `tls_cert` and `tls_key` the node serves HTTPS only.
//! - With `tls_ca` it verifies `https://` peers against those CA certificates
//!   (typically the cluster's own CA); without it, against the public web roots.
//!
//! Peers authenticate each other with the cluster secret, sent over this
//! channel; client certificates are not used.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, ConfigError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError(format!("{setting}: cannot read {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "{setting}: no PEM certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// The server's TLS configuration, when `tls_cert` and `tls_key` are set.
pub fn server_config(config: &Config) -> Result<Option<ServerConfig>, ConfigError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = certificates(cert, "tls_cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ConfigError(format!(
            "tls_key: cannot read a PEM private key from {}: {e}",
            key.display()
        ))
    })?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError(format!("tls_cert and tls_key do not make a pair: {e}")))?;
    Ok(Some(server))
}

/// The TLS configuration of requests to peers, when `tls_ca` is set.
pub fn peer_client_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let Some(ca) = &config.tls_ca else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "tls_ca")? {
        roots
            .add(cert)
            .map_err(|e| ConfigError(format!("tls_ca: {}: {e}", ca.display())))?;
    }
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(client)))
}

/// A client for requests to peers: HTTPS verified with `tls` when given (else
/// the public web roots), the bearer token when there is one, no redirects.
pub fn peer_client(
    timeout: std::time::Duration,
    secret: Option<&crate::config::Secret>,
    tls: Option<&Arc<ClientConfig>>,
) -> awc::Client {
    let mut builder = awc::Client::builder().timeout(timeout).disable_redirects();
    if let Some(secret) = secret {
        builder = builder.bearer_auth(secret.expose());
    }
    match tls {
        Some(tls) => builder
            .connector(awc::Connector::new().rustls_0_23(tls.clone()))
            .finish(),
        None => builder.finish(),
    }
}
