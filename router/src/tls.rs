//! TLS material of a plan: the server config TLS ports hand to new connections, and per
//! pool the client config (and server names) backend connections use.
//!
//! Built from the `[tls]` and `[pools.NAME.tls]` files each time a plan is built: at start,
//! by `--check`, and on every SIGHUP. A reload whose files do not load is refused as a
//! whole, so the running certificates stay; a reload that loads them hands the new ones to
//! every connection opened from then on (connections already up keep their session).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use crate::config::{Config, ConfigError, Pool, TlsFiles};
use crate::socket::Transport;

/// What a backend connection (or health probe, or invalidation deleter) needs to open TLS
/// to one server.
#[derive(Clone)]
pub struct Connector {
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must be valid for.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({:?})", self.name)
    }
}

/// The TLS configs of one plan.
#[derive(Default, Clone)]
pub struct Material {
    /// `[tls]`: what TLS ports serve; `None` without a `[tls]` table.
    pub server: Option<Arc<ServerConfig>>,
    /// Per pool (as `config.pools`), per server: `None` for a plain-text pool.
    pub pools: Vec<Option<Vec<Connector>>>,
}

impl Material {
    /// Reads every certificate and key file `config` names; an error names the file, what
    /// is wrong, and the config line that names it.
    pub fn load(config: &Config) -> Result<Material, ConfigError> {
        let file = &config.routes.file;
        let server = match &config.tls {
            None => None,
            Some(t) => Some(
                server_config(t).map_err(|e| ConfigError::at(file, t.at, format!("[tls]: {e}")))?,
            ),
        };
        let pools = config
            .pools
            .iter()
            .map(|p| {
                pool_connectors(p).map_err(|e| {
                    let at = p
                        .tls
                        .as_ref()
                        .map(|t| t.at)
                        .unwrap_or(crate::config::At { line: 0, column: 0 });
                    ConfigError::at(file, at, format!("[pools.{}.tls]: {e}", p.name))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Material { server, pools })
    }
}

fn server_config(t: &TlsFiles) -> Result<Arc<ServerConfig>, marker::tls::TlsError> {
    marker::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
}

/// One connector per server of `pool`, or `None` for a plain-text pool.
pub fn pool_connectors(pool: &Pool) -> Result<Option<Vec<Connector>>, marker::tls::TlsError> {
    let Some(t) = &pool.tls else {
        return Ok(None);
    };
    let client = t.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let config = marker::tls::client_config(&t.ca, client)?;
    pool.servers
        .iter()
        .map(|s| {
            let name = t.server_name.as_deref().unwrap_or(&s.host);
            Ok(Connector {
                config: config.clone(),
                name: marker::tls::server_name(name).map_err(|e| {
                    marker::tls::TlsError(format!(
                        "server {}: {e}; set server_name to the name its certificate is for",
                        s.label
                    ))
                })?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A connection to `addr`: TCP, and with `tls` the TLS handshake on it (its failure says
/// what did not verify).
pub async fn connect(
    addr: impl tokio::net::ToSocketAddrs,
    tls: Option<&Connector>,
) -> std::io::Result<Transport> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let Some(c) = tls else {
        return Ok(Transport::Plain(stream));
    };
    let _ = stream.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(c.config.clone())
        .connect(c.name.clone(), stream)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
    Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Client(
        tls,
    ))))
}

/// Why a new connection on a TLS port did not become a TLS session.
pub enum Refused {
    /// Closed (or failed) before sending a byte: a port probe, nothing to tell.
    Closed,
    /// Sent nothing within the handshake timeout.
    Silent,
    /// Its first byte is not a TLS handshake record: a plain-text client, handed back so
    /// the port can tell it why it is closed.
    NotTls(tokio::net::TcpStream),
    /// No `[tls]` certificate is loaded (the config checks refuse that; kept safe).
    NoCertificate,
    /// The handshake failed: what did not verify.
    Handshake(std::io::Error),
    /// The handshake did not finish within the timeout.
    HandshakeTimeout,
}

/// The server side of a new connection on a TLS port, bounded by `within`: first byte
/// checked (a TLS client starts with a handshake record), then the handshake with `config`
/// (the certificate current at this accept). Both TLS ports (client and invalidation) take
/// connections this way and only count and log a refusal differently.
pub async fn accept(
    stream: tokio::net::TcpStream,
    config: impl FnOnce() -> Option<Arc<ServerConfig>>,
    within: std::time::Duration,
) -> Result<Transport, Refused> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(within, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(_) => return Err(Refused::Closed),
        Err(_) => return Err(Refused::Silent),
    }
    if first[0] != marker::tls::HANDSHAKE_RECORD {
        return Err(Refused::NotTls(stream));
    }
    let config = config().ok_or(Refused::NoCertificate)?;
    match tokio::time::timeout(
        within,
        tokio_rustls::TlsAcceptor::from(config).accept(stream),
    )
    .await
    {
        Ok(Ok(s)) => Ok(Transport::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))),
        Ok(Err(e)) => Err(Refused::Handshake(e)),
        Err(_) => Err(Refused::HandshakeTimeout),
    }
}
