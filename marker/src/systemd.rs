//! systemd's readiness notification (`Type=notify`): one `READY=1` datagram to the socket
//! in `$NOTIFY_SOCKET`, sent once the daemon serves. Both daemons link this crate and it
//! needs only the standard library, so it lives here rather than twice. Without
//! `$NOTIFY_SOCKET` (not started by systemd) it does nothing.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is up. An error (a socket that is gone) is returned for the
/// caller to log; it never stops the daemon.
pub fn notify_ready() -> std::io::Result<bool> {
    notify("READY=1")
}

/// Sends `state` (e.g. `READY=1`, `STATUS=...`) to `$NOTIFY_SOCKET`; `Ok(false)` if unset.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name (Linux).
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(true);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract NOTIFY_SOCKET off Linux"));
        }
    }
    sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("squeal-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        // No other test of this crate reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &dir);
        assert!(notify_ready().unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(!notify_ready().unwrap(), "unset: nothing sent");
        let _ = std::fs::remove_file(&dir);
    }
}
