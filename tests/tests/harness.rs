//! Proves the harness against the real servers: every later end-to-end test stands on it.

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use harness::twemproxy::TwemproxyPool;
use harness::{Broker, MariaDb, McClient, Memcached, Twemproxy};
use mysql_async::binlog::events::EventData;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::*;
use mysql_async::BinlogStreamRequest;

/// Rows written in MariaDB come back as ROW events, with column names (FULL row metadata)
/// and the statement text (annotate events), through `mysql_async`'s binlog stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_binlog_streams_written_rows() -> Result<()> {
    let db = MariaDb::start().await?;
    let (file, pos) = db.binlog_position().await?;
    db.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.users (id INT PRIMARY KEY, email VARCHAR(64)); \
         INSERT INTO shop.users VALUES (1, 'a@example.com'), (2, 'b@example.com'); \
         UPDATE shop.users SET email = 'c@example.com' WHERE id = 2",
    )
    .await?;

    let conn = db.conn().await?;
    let mut stream = conn
        .get_binlog_stream(
            BinlogStreamRequest::new(100)
                .with_filename(file.as_bytes())
                .with_pos(pos)
                .with_non_blocking(),
        )
        .await?;
    let (mut inserted, mut updated, mut column_names) = (0, 0, Vec::new());
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .context("binlog stream stalled")?
    {
        let event = event?;
        match event.read_data()? {
            Some(EventData::TableMapEvent(tme)) if tme.table_name() == "users" => {
                column_names = tme
                    .iter_optional_meta()
                    .filter_map(|m| match m {
                        Ok(mysql_async::binlog::events::OptionalMetadataField::ColumnName(
                            names,
                        )) => Some(
                            names
                                .iter_names()
                                .filter_map(|n| n.ok().map(|n| n.name().into_owned()))
                                .collect::<Vec<_>>(),
                        ),
                        _ => None,
                    })
                    .next()
                    .unwrap_or_default();
            }
            Some(EventData::RowsEvent(rows)) => {
                let tme = stream.get_tme(rows.table_id()).context("table map")?;
                for row in rows.rows(tme) {
                    let (before, after) = row?;
                    match (before, after) {
                        (None, Some(_)) => inserted += 1,
                        (Some(_), Some(after)) => {
                            match after.as_ref(1) {
                                Some(BinlogValue::Value(mysql_async::Value::Bytes(email))) => {
                                    assert_eq!(email, b"c@example.com")
                                }
                                other => panic!("after image email: {other:?}"),
                            }
                            updated += 1;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(inserted, 2, "two inserted rows in the binlog");
    assert_eq!(updated, 1, "one updated row in the binlog");
    assert_eq!(
        column_names,
        ["id", "email"],
        "FULL row metadata names columns"
    );
    Ok(())
}

/// A set through one path is a hit through another: memcached directly and twemproxy over
/// two servers, where the key must have landed on exactly one of them.
#[test]
fn memcached_and_twemproxy_store_and_serve() -> Result<()> {
    let servers = Memcached::start_many(2)?;
    let mut direct = McClient::connect(&servers[0].addr())?;
    direct.set("harness:direct", b"hello")?;
    assert_eq!(
        direct.get("harness:direct")?.as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(direct.delete("harness:direct")?, "DELETED");
    assert_eq!(direct.get("harness:direct")?, None);

    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let proxy = Twemproxy::start(&TwemproxyPool::ketama(&addrs))?;
    let mut via_proxy = McClient::connect(&proxy.addr())?;
    for i in 0..20 {
        via_proxy.set(&format!("harness:k{i}"), format!("v{i}").as_bytes())?;
    }
    let mut on_servers = [0; 2];
    for i in 0..20 {
        let key = format!("harness:k{i}");
        assert_eq!(via_proxy.get(&key)?, Some(format!("v{i}").into_bytes()));
        let holders: Vec<usize> = (0..2)
            .filter(|&s| {
                McClient::connect(&addrs[s])
                    .and_then(|mut c| c.get(&key))
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(holders.len(), 1, "{key} is on exactly one server");
        on_servers[holders[0]] += 1;
    }
    assert!(
        on_servers.iter().all(|&n| n > 0),
        "ketama spreads 20 keys over both servers: {on_servers:?}"
    );
    Ok(())
}

/// A message produced with the idempotent producer is consumed by a consumer group, and
/// the committed offset is what the broker then reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_produces_and_consumes_in_a_group() -> Result<()> {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;

    let broker = Broker::start()?;
    broker.create_topic("invalidations", 4)?;
    let producer: FutureProducer = broker.producer_config().create()?;
    producer
        .send(
            FutureRecord::to("invalidations")
                .key("user:1")
                .payload("delete user:1"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    let consumer: StreamConsumer = broker.consumer_config("routers").create()?;
    consumer.subscribe(&["invalidations"])?;
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .context("no message within 60 s")??;
    assert_eq!(message.key(), Some(&b"user:1"[..]));
    assert_eq!(message.payload(), Some(&b"delete user:1"[..]));
    consumer.commit_message(&message, CommitMode::Sync)?;
    let committed = consumer.committed(Duration::from_secs(10))?;
    let offset = committed
        .find_partition("invalidations", message.partition())
        .context("committed partition")?
        .offset();
    assert_eq!(offset, rdkafka::Offset::Offset(message.offset() + 1));
    Ok(())
}

/// A server that cannot start is an error carrying its log, not a hang.
#[test]
fn a_server_that_cannot_start_fails_with_its_log() -> Result<()> {
    let first = Memcached::start()?;
    let dir = harness::process::server_dir("memcached-clash")?;
    let mut cmd = std::process::Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &first.port().to_string(),
        "-U",
        "0",
    ]);
    if harness::process::is_root() {
        cmd.args(["-u", "root"]);
    }
    // Point the readiness check at a port nothing listens on: only the exit can end it.
    let nowhere = harness::process::loopback(harness::free_port());
    let started = std::time::Instant::now();
    let err = match harness::Server::spawn(
        "memcached-clash",
        dir,
        cmd,
        nowhere,
        Duration::from_secs(20),
    ) {
        Ok(_) => panic!("a second memcached on a taken port must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
    assert!(err.contains("exited"), "{err}");
    assert!(
        err.to_lowercase().contains("address already in use") || err.contains("bind"),
        "{err}"
    );
    Ok(())
}

/// The replica helper gives a second MariaDB that applies the primary's writes with GTID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replica_follows_primary() -> Result<()> {
    let primary = MariaDb::start().await?;
    let replica = MariaDb::start_replica_of(&primary, 2).await?;
    primary
        .exec(
            "CREATE DATABASE r; CREATE TABLE r.t (id INT PRIMARY KEY); INSERT INTO r.t VALUES (7)",
        )
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = replica.conn().await?;
        let got: Result<Option<u32>, _> = conn.query_first("SELECT id FROM r.t").await;
        conn.disconnect().await?;
        if let Ok(Some(7)) = got {
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica did not apply the write; log:\n{}",
            replica.server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
