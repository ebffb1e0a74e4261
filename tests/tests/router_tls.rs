//! TLS on every port, against real servers: a router whose client port requires TLS, in
//! front of memcached started with `-Z` (TLS only), with certificates from a throw-away CA;
//! what a plain-text client on the TLS port is told; certificates replaced on SIGHUP (and a
//! broken one refused); `--check` on bad files; and squeal delivering invalidations to the
//! router's TLS invalidation port with a client certificate (mutual TLS), from a MariaDB
//! row change to the key gone from the TLS memcached.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::router::Router;
use harness::squeal::Squeal;
use harness::tls::{Leaf, Pki, TlsMc};
use harness::{MariaDb, Memcached};

/// memcached accepting TLS only, with `leaf` as its certificate.
fn tls_memcached(leaf: &Leaf) -> Result<Memcached> {
    let opts = format!(
        "ssl_chain_cert={},ssl_key={}",
        leaf.cert.display(),
        leaf.key.display()
    );
    Memcached::start_with(&["-Z", "-o", &opts])
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ok()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a plain-text client reads from `addr` after sending `get k`, until the close.
fn plain_text_reply(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"get k\r\n")?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)?;
    Ok(String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn tls_clients_and_backends_plain_text_refused_and_certs_reloaded() -> Result<()> {
    let pki = Pki::new("cache")?;
    let mc_leaf = pki.issue("memcached", 10)?;
    let first = pki.issue("router-1", 1)?;
    let second = pki.issue("router-2", 2)?;
    let mc = tls_memcached(&mc_leaf)?;

    // The router serves its certificate from files it re-reads on SIGHUP.
    let cert = pki.dir.path().join("router.crt");
    let key = pki.dir.path().join("router.key");
    std::fs::copy(&first.cert, &cert)?;
    std::fs::copy(&first.key, &key)?;
    let tls_port = harness::free_port();
    let config = format!(
        "workers = 2\nroute = \"main\"\n\
         [tls]\ncert = {:?}\nkey = {:?}\n\
         [listeners.\"127.0.0.1:{tls_port}\"]\nroute = \"main\"\ntls = true\n\
         [pools.main]\nservers = [{:?}]\n\
         [pools.main.tls]\nca = {:?}\n",
        cert.display().to_string(),
        key.display().to_string(),
        mc.addr(),
        pki.ca.display().to_string(),
    );
    let router = Router::start_config(&config)?;
    let tls_addr = format!("127.0.0.1:{tls_port}");

    // Through the router over TLS, and the value lives in the TLS-only memcached.
    let mut c = TlsMc::connect(&tls_addr, &pki.ca, None)?;
    assert_eq!(
        c.peer_cert(),
        first.der()?,
        "the router presents [tls] cert"
    );
    c.set("tls:k", b"over-tls")?;
    assert_eq!(c.get("tls:k")?.as_deref(), Some(&b"over-tls"[..]));
    let mut direct = TlsMc::connect(&mc.addr(), &pki.ca, None)?;
    assert_eq!(direct.get("tls:k")?.as_deref(), Some(&b"over-tls"[..]));
    // memcached -Z really refuses plain text: the router could only have used TLS.
    let plain = plain_text_reply(&mc.addr()).unwrap_or_default();
    assert!(
        !plain.contains("END"),
        "memcached -Z answered plain text: {plain:?}"
    );

    // A plain-text client on the TLS port is told so, then closed, and counted.
    let not_tls = "squeal_router_clients_closed_total{reason=\"not_tls\"}";
    assert_eq!(router.metric(not_tls), 0.0);
    assert_eq!(
        plain_text_reply(&tls_addr)?,
        "SERVER_ERROR this port requires TLS\r\n"
    );
    wait_until("the not_tls count", Duration::from_secs(5), || {
        Ok(router.metric(not_tls) == 1.0)
    })?;

    // SIGHUP with a new certificate: new connections get it, the open one keeps working.
    std::fs::copy(&second.cert, &cert)?;
    std::fs::copy(&second.key, &key)?;
    router.server.signal("HUP");
    wait_until("the reload", Duration::from_secs(5), || {
        Ok(router.metric("squeal_router_config_reloads_total") == 1.0)
    })?;
    let mut after = TlsMc::connect(&tls_addr, &pki.ca, None)?;
    assert_eq!(
        after.peer_cert(),
        second.der()?,
        "new connections see the new cert"
    );
    assert_eq!(after.get("tls:k")?.as_deref(), Some(&b"over-tls"[..]));
    assert_eq!(c.get("tls:k")?.as_deref(), Some(&b"over-tls"[..]));

    // A broken reload (the first key with the second certificate) keeps the running cert.
    std::fs::copy(&first.key, &key)?;
    router.server.signal("HUP");
    wait_until("the refused reload", Duration::from_secs(5), || {
        Ok(router.metric("squeal_router_tls_reload_failures_total") == 1.0)
    })?;
    assert_eq!(
        router.metric("squeal_router_config_reload_failures_total"),
        1.0
    );
    let mut kept = TlsMc::connect(&tls_addr, &pki.ca, None)?;
    assert_eq!(kept.peer_cert(), second.der()?, "the running cert stays");
    assert_eq!(kept.get("tls:k")?.as_deref(), Some(&b"over-tls"[..]));
    let log = std::fs::read_to_string(&router.server.log)?;
    assert!(
        log.contains("does not match the certificate"),
        "the log says what to fix:\n{log}"
    );

    // A client that does not trust the router's CA fails its handshake, counted.
    let other = Pki::new("other")?;
    assert!(TlsMc::connect(&tls_addr, &other.ca, None).is_err());
    wait_until(
        "the handshake failure count",
        Duration::from_secs(5),
        || Ok(router.metric("squeal_router_clients_closed_total{reason=\"tls_handshake\"}") >= 1.0),
    )?;
    Ok(())
}

#[test]
fn check_refuses_unreadable_invalid_and_mismatched_files() -> Result<()> {
    let pki = Pki::new("check")?;
    let a = pki.issue("a", 1)?;
    let b = pki.issue("b", 2)?;
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n")?;
    let config = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        format!(
            "listen = [\"127.0.0.1:1\"]\nroute = \"main\"\n\
             [tls]\ncert = {:?}\nkey = {:?}\n\
             [listeners.\"127.0.0.1:2\"]\nroute = \"main\"\ntls = true\n\
             [pools.main]\nservers = [\"127.0.0.1:11211\"]\n[pools.main.tls]\nca = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            ca.display().to_string(),
        )
    };
    let (ok, err) = Router::check(&config(&a.cert, &a.key, &pki.ca))?;
    assert!(ok, "good files pass: {err}");
    let missing = pki.dir.path().join("missing.crt");
    for (text, says) in [
        (config(&missing, &a.key, &pki.ca), "cannot read"),
        (config(&garbage, &a.key, &pki.ca), "no certificate in it"),
        (config(&a.cert, &garbage, &pki.ca), "no usable private key"),
        (
            config(&a.cert, &b.key, &pki.ca),
            "does not match the certificate",
        ),
        (config(&a.cert, &a.key, &garbage), "[pools.main.tls]"),
    ] {
        let (ok, err) = Router::check(&text)?;
        assert!(!ok, "refused:\n{text}");
        assert!(err.contains(says), "{says:?} in {err}");
        assert!(err.contains("router.toml:"), "names the config line: {err}");
    }
    let (ok, err) = Router::check(
        "listen = [\"127.0.0.1:1\"]\nroute = \"main\"\n\
         [listeners.\"127.0.0.1:2\"]\nroute = \"main\"\ntls = true\n\
         [pools.main]\nservers = [\"127.0.0.1:11211\"]\n",
    )?;
    assert!(!ok && err.contains("no [tls] table"), "{err}");
    Ok(())
}

/// squeal -> router over TLS with a client certificate, end to end: a row change deletes
/// the cached key from the TLS memcached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squeal_invalidates_over_mutual_tls() -> Result<()> {
    let pki = Pki::new("region")?;
    let router_leaf = pki.issue("router", 1)?;
    let mc_leaf = pki.issue("memcached", 2)?;
    let squeal_leaf = pki.issue("squeal", 3)?;
    let db = MariaDb::start_with(harness::mariadb::MariaDbOptions::fast()).await?;
    db.exec("CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, v INT)")
        .await?;
    let mc = tls_memcached(&mc_leaf)?;
    let inv_port = harness::free_port();
    let spool = tempfile::tempdir()?;
    let config = format!(
        "workers = 1\nroute = \"main\"\n\
         [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\
         [pools.main]\nservers = [{:?}]\n[pools.main.tls]\nca = {:?}\n\
         [invalidation]\nlisten = \"127.0.0.1:{inv_port}\"\ntls = true\nsecret = \"s3\"\n\
         clusters = [\"main\"]\nspool_dir = {:?}\ntimeout_ms = 500\n",
        router_leaf.cert.display().to_string(),
        router_leaf.key.display().to_string(),
        pki.ca.display().to_string(),
        mc.addr(),
        pki.ca.display().to_string(),
        spool.path().display().to_string(),
    );
    let router = Router::start_config(&config)?;
    let dir = tempfile::tempdir()?;
    let squeal_config = format!(
        "[source]\nurl = \"{}\"\nserver_id = 991\nheartbeat_ms = 500\n\
         [[extract.rule]]\ndatabase = \"app\"\ntable = \"items\"\nkeys = [\"item:{{id}}\"]\n\
         [[sink]]\ntype = \"router\"\nendpoints = [\"127.0.0.1:{inv_port}\"]\nsecret = \"s3\"\n\
         timeout_ms = 2000\n\
         [sink.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n\
         [checkpoint]\npath = {:?}\ninterval_ms = 100\n",
        db.url(),
        pki.ca.display().to_string(),
        squeal_leaf.cert.display().to_string(),
        squeal_leaf.key.display().to_string(),
        dir.path().join("checkpoint.toml").display().to_string(),
    );
    let squeal = Squeal::start(&squeal_config)?;

    let mut direct = TlsMc::connect(&mc.addr(), &pki.ca, None)?;
    direct.set("item:7", b"cached")?;
    db.exec("INSERT INTO app.items VALUES (7, 1)").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while direct.get("item:7")?.is_some() {
        if Instant::now() > deadline {
            bail!(
                "item:7 was not invalidated over TLS; squeal log:\n{}\nrouter log:\n{}",
                squeal.server.log_tail(),
                router.server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(router.metric("squeal_router_invalidation_batches_total{transport=\"native\"}") >= 1.0);
    // Mutual TLS: without a client certificate, the port refuses the handshake (counted).
    let refused = "squeal_router_invalidation_frames_rejected_total{reason=\"tls_handshake\"}";
    let before = router.metric(refused);
    let no_client_cert =
        TlsMc::connect(&format!("127.0.0.1:{inv_port}"), &pki.ca, None).and_then(|mut c| c.line());
    assert!(no_client_cert.is_err(), "{no_client_cert:?}");
    wait_until("the refused handshake", Duration::from_secs(5), || {
        Ok(router.metric(refused) > before)
    })?;
    Ok(())
}
