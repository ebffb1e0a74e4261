//! TLS settings every Squeal party builds the same way: certificates and keys read from PEM
//! files into rustls configs, with errors that name the file and say what to fix.
//!
//! The router serves TLS on its client and invalidation ports and speaks it to memcached;
//! squeal speaks it to the router's invalidation port. Both read the same kinds of files
//! (a certificate chain, its private key, a CA bundle), so the loading and its checks live
//! here: a key that does not belong to its certificate, an empty CA file or a file that is
//! not PEM is refused when the config is checked (`--check`) or loaded, never at the first
//! handshake.
//!
//! Crypto is rustls' `ring` provider, chosen explicitly (not the process default), so a
//! config means the same thing whatever else the binary links.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A TLS setting that cannot be used, with the file it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path` (a chain: the leaf first, then the
/// intermediates; or a CA bundle). At least one is required.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not a valid PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in it (expected a PEM block \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        TlsError(format!(
            "{}: no usable private key in it ({e}); expected a PEM block \
             \"-----BEGIN PRIVATE KEY-----\" (or RSA / EC PRIVATE KEY)",
            path.display()
        ))
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| {
            TlsError(format!(
                "{}: a certificate in it cannot be a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The key-mismatch error of rustls, said with the two file names.
fn keypair_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError(format!(
            "{} does not match the certificate in {}: give the key the certificate was \
             issued for (or the certificate of this key)",
            key.display(),
            cert.display()
        )),
        e => TlsError(format!(
            "certificate {} with key {}: {e}",
            cert.display(),
            key.display()
        )),
    }
}

/// A TLS server: this certificate chain and key, and with `client_ca`, mutual TLS (only
/// clients presenting a certificate issued by that CA get through the handshake).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError(format!("client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, private)
        .map_err(|e| keypair_error(cert, key, e))?;
    Ok(Arc::new(config))
}

/// A TLS client that trusts the CAs in `ca` and, with `client`, presents that certificate
/// chain and key (for a server that asks for client certificates).
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|e| TlsError(format!("ca {}: {e}", ca.display())))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?
        .with_webpki_verifier(verifier);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| keypair_error(cert, key, e))?,
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate must be valid for: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        TlsError(format!(
            "{name:?} is neither a DNS name nor an IP address, so no certificate can be checked against it"
        ))
    })
}

/// The host part of `host:port` (an IPv6 literal in brackets loses them), the default name
/// a server's certificate is checked against.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The first byte of every TLS connection: a handshake record. A port that requires TLS
/// tells a plain-text client apart by it.
pub const HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("127.0.0.1:11211"), "127.0.0.1");
        assert_eq!(host_of("cache-a.example:11211"), "cache-a.example");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("cache-a"), "cache-a");
    }

    #[test]
    fn bad_files_say_which_and_why() {
        let dir = std::env::temp_dir().join(format!("marker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = load_certs(&missing).unwrap_err().0;
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = load_certs(&empty).unwrap_err().0;
        assert!(e.contains("no certificate in it"), "{e}");
        let e = load_key(&empty).unwrap_err().0;
        assert!(e.contains("no usable private key"), "{e}");
        let e = server_config(&empty, &empty, None).unwrap_err().0;
        assert!(e.contains("no certificate"), "{e}");
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("cache.example").is_ok());
        assert!(server_name("bad name!").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
