//! TLS for the tests: a throw-away CA and certificates made with the `openssl` command, and
//! a blocking memcache client over rustls (for the router's TLS ports and memcached `-Z`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, StreamOwned};

/// A CA in a directory of its own, and the certificates it issues.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// A certificate issued by a [`Pki`], and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Leaf {
    /// The DER of the certificate, to compare with what a peer presented.
    pub fn der(&self) -> Result<Vec<u8>> {
        Ok(marker::tls::load_certs(&self.cert)?.remove(0).to_vec())
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Pki {
    /// A new CA (EC P-256: quick to make).
    pub fn new(name: &str) -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join(format!("{name}-ca.crt"));
        let ca_key = dir.path().join(format!("{name}-ca.key"));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            ca_key.to_str().unwrap(),
            "-out",
            ca.to_str().unwrap(),
        ])?;
        Ok(Pki { dir, ca, ca_key })
    }

    /// A certificate for `127.0.0.1` and `localhost` (server and client use), with this
    /// serial number, in files named after `name`.
    pub fn issue(&self, name: &str, serial: u32) -> Result<Leaf> {
        let d = self.dir.path();
        let key = d.join(format!("{name}.key"));
        let csr = d.join(format!("{name}.csr"));
        let cert = d.join(format!("{name}.crt"));
        let ext = d.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            self.ca.to_str().unwrap(),
            "-CAkey",
            self.ca_key.to_str().unwrap(),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ])?;
        Ok(Leaf { cert, key })
    }
}

/// A blocking memcache text-protocol client over TLS.
pub struct TlsMc {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsMc {
    /// Connects to `addr`, checks its certificate against `ca` for `127.0.0.1`, and
    /// presents `client` if given; the handshake is complete on return.
    pub fn connect(addr: &str, ca: &Path, client: Option<&Leaf>) -> Result<TlsMc> {
        let config =
            marker::tls::client_config(ca, client.map(|l| (l.cert.as_path(), l.key.as_path())))?;
        let name = ServerName::try_from("127.0.0.1".to_string())?;
        let conn = ClientConnection::new(config, name)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.set_nodelay(true)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .context("TLS handshake")?;
        }
        Ok(TlsMc {
            stream,
            buf: Vec::new(),
        })
    }

    /// The certificate the server presented (its leaf).
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c: &CertificateDer| c.to_vec())
            .unwrap_or_default()
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// One reply line, without its `\r\n`.
    pub fn line(&mut self) -> Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        self.send(&req)?;
        match self.line()?.as_str() {
            "STORED" => Ok(()),
            other => bail!("set {key}: {other}"),
        }
    }

    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.send(format!("get {key}\r\n").as_bytes())?;
        let head = self.line()?;
        if head == "END" {
            return Ok(None);
        }
        let len: usize = head
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("get {key}: {head}"))?;
        let value = self.line()?.into_bytes();
        anyhow::ensure!(
            value.len() == len,
            "get {key}: value of {} bytes, not {len}",
            value.len()
        );
        anyhow::ensure!(self.line()? == "END", "get {key}: no END");
        Ok(Some(value))
    }
}
