//! squeal end to end, one extraction mode at a time: cache a value, commit a change in real
//! MariaDB, and the key is gone from the real memcached.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::mariadb::MariaDbOptions;
use harness::squeal::{cache, config, expect_invalidated as expect, Squeal};
use harness::{MariaDb, Memcached};

struct Env {
    db: MariaDb,
    mc: Memcached,
    squeal: Squeal,
    _dir: tempfile::TempDir,
}

async fn env(extra: &str, db_args: &[&str]) -> Result<Env> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: db_args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    // Debian's MariaDB ships BLACKHOLE as a plugin.
    db.exec("INSTALL SONAME 'ha_blackhole'").await?;
    db.exec(
        "CREATE DATABASE app; CREATE TABLE app.users (id INT UNSIGNED PRIMARY KEY, \
         email VARCHAR(100), name VARCHAR(100)) ENGINE=InnoDB; \
         CREATE TABLE app.cache_outbox (cache_key VARBINARY(250) NOT NULL) ENGINE=BLACKHOLE; \
         CREATE TABLE app.log (id INT PRIMARY KEY AUTO_INCREMENT, msg TEXT) ENGINE=InnoDB; \
         CREATE DATABASE other; CREATE TABLE other.t (id INT PRIMARY KEY)",
    )
    .await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = config(
        &db.url(),
        &[mc.addr()],
        &dir.path().join("checkpoint.toml"),
        extra,
    );
    if db_args.contains(&"--binlog-row-metadata=MINIMAL") {
        // squeal refuses MINIMAL metadata unless told to accept its risk.
        cfg = cfg.replace(
            "server_id = 777",
            "server_id = 777\nallow_minimal_metadata = true",
        );
    }
    let squeal = Squeal::start(&cfg)?;
    Ok(Env {
        db,
        mc,
        squeal,
        _dir: dir,
    })
}

const RULES: &str = r#"
[extract]
annotation_databases = ["app"]

[[extract.rule]]
database = "app"
table = "users"
keys = ["user:{id}", "user_by_email:{email}"]

[[extract.outbox]]
database = "app"
table = "cache_outbox"
column = "cache_key"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_rules_insert_update_delete() -> Result<()> {
    let e = env(RULES, &[]).await?;
    cache(
        &e.mc,
        &[
            "user:1",
            "user_by_email:a@x",
            "user:2",
            "user_by_email:b@x",
            "user:3",
        ],
    )?;
    e.db.exec("INSERT INTO app.users VALUES (1, 'a@x', 'A')")
        .await?;
    expect(
        &e.mc,
        &["user:1", "user_by_email:a@x"],
        &["user:2", "user:3"],
        &e.squeal,
    )?;

    // UPDATE that changes the email: the old and the new email key both go.
    cache(
        &e.mc,
        &["user:1", "user_by_email:a@x", "user_by_email:new@x"],
    )?;
    e.db.exec("UPDATE app.users SET email = 'new@x' WHERE id = 1")
        .await?;
    expect(
        &e.mc,
        &["user:1", "user_by_email:a@x", "user_by_email:new@x"],
        &["user:2"],
        &e.squeal,
    )?;

    // DELETE uses the before image.
    e.db.exec("INSERT INTO app.users VALUES (2, 'b@x', 'B')")
        .await?;
    expect(
        &e.mc,
        &["user:2", "user_by_email:b@x"],
        &["user:3"],
        &e.squeal,
    )?;
    cache(&e.mc, &["user:2", "user_by_email:b@x"])?;
    e.db.exec("DELETE FROM app.users WHERE id = 2").await?;
    expect(
        &e.mc,
        &["user:2", "user_by_email:b@x"],
        &["user:3"],
        &e.squeal,
    )?;

    // A rolled-back transaction emits nothing.
    cache(&e.mc, &["user:3"])?;
    let mut conn = e.db.conn().await?;
    use mysql_async::prelude::*;
    conn.query_drop("BEGIN").await?;
    conn.query_drop("INSERT INTO app.users VALUES (3, 'c@x', 'C')")
        .await?;
    conn.query_drop("ROLLBACK").await?;
    // A later committed change proves squeal read past the rollback.
    cache(&e.mc, &["user:1"])?;
    e.db.exec("UPDATE app.users SET name = 'AA' WHERE id = 1")
        .await?;
    expect(&e.mc, &["user:1"], &["user:3"], &e.squeal)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_and_malformed_ones() -> Result<()> {
    let e = env(RULES, &[]).await?;
    let odd = "100%*/x";
    let c = marker::annotation::comment(["feed:9", "profile:9", odd])?;
    cache(&e.mc, &["feed:9", "profile:9", odd, "good:1", "other:1"])?;
    e.db.exec(&format!("INSERT INTO app.log (msg) VALUES ('hi') {c}"))
        .await?;
    expect(
        &e.mc,
        &["feed:9", "profile:9", odd],
        &["good:1", "other:1"],
        &e.squeal,
    )?;

    // One bad token: counted; the good token and the row rules of the same transaction
    // still apply.
    cache(&e.mc, &["good:1", "user:5"])?;
    e.db.exec(
        "BEGIN; INSERT INTO app.log (msg) VALUES ('x') /* squeal:inv bad%zz good:1 */; \
         INSERT INTO app.users VALUES (5, 'e@x', 'E'); COMMIT",
    )
    .await?;
    expect(&e.mc, &["good:1", "user:5"], &["other:1"], &e.squeal)?;
    e.squeal
        .wait_metric("squeal_bad_annotations_total", 1.0, Duration::from_secs(5))?;

    // Annotations of a transaction that changed no row of an annotated database (filtered)
    // emit nothing.
    e.db.exec("INSERT INTO other.t VALUES (1) /* squeal:inv other:1 */")
        .await?;
    cache(&e.mc, &["user:5"])?;
    e.db.exec("UPDATE app.users SET name = 'EE' WHERE id = 5")
        .await?;
    expect(&e.mc, &["user:5"], &["other:1"], &e.squeal)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_blackhole_table() -> Result<()> {
    let e = env(RULES, &[]).await?;
    cache(&e.mc, &["page:home", "page:about", "page:other"])?;
    e.db.exec(
        "BEGIN; INSERT INTO app.log (msg) VALUES ('edit'); \
         INSERT INTO app.cache_outbox VALUES ('page:home'), ('page:about'); COMMIT",
    )
    .await?;
    expect(
        &e.mc,
        &["page:home", "page:about"],
        &["page:other"],
        &e.squeal,
    )?;
    // Nothing was stored (BLACKHOLE), the binlog carried it.
    let mut conn = e.db.conn().await?;
    use mysql_async::prelude::*;
    let n: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM app.cache_outbox")
        .await?;
    assert_eq!(n, Some(0));
    Ok(())
}

/// Without FULL row metadata, names come from information_schema; an ALTER that adds a
/// column first and reorders the others must not make a rule read the wrong column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_with_minimal_metadata() -> Result<()> {
    let e = env(RULES, &["--binlog-row-metadata=MINIMAL"]).await?;
    cache(&e.mc, &["user:7", "user_by_email:g@x"])?;
    e.db.exec("INSERT INTO app.users VALUES (7, 'g@x', 'G')")
        .await?;
    expect(&e.mc, &["user:7", "user_by_email:g@x"], &[], &e.squeal)?;

    e.db.exec(
        "ALTER TABLE app.users ADD COLUMN nick VARCHAR(20) FIRST, \
         MODIFY COLUMN email VARCHAR(100) AFTER nick",
    )
    .await?;
    cache(
        &e.mc,
        &["user:8", "user_by_email:h@x", "user:h@x", "user_by_email:8"],
    )?;
    e.db.exec("INSERT INTO app.users (id, email, name, nick) VALUES (8, 'h@x', 'H', 'n')")
        .await?;
    expect(
        &e.mc,
        &["user:8", "user_by_email:h@x"],
        &["user:h@x", "user_by_email:8"],
        &e.squeal,
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_statement_format() -> Result<()> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: vec!["--binlog-format=STATEMENT".into()],
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        &db.url(),
        &["127.0.0.1:1".into()],
        &dir.path().join("cp.toml"),
        "",
    );
    let err = match Squeal::start(&cfg) {
        Ok(_) => panic!("squeal started on a STATEMENT binlog"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("binlog_format is STATEMENT"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sink_prints_keys() -> Result<()> {
    let extra = format!("{RULES}\n[[sink]]\ntype = \"debug\"\n");
    let e = env(&extra, &[]).await?;
    e.db.exec("INSERT INTO app.users VALUES (11, 'k@x', 'K')")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&e.squeal.server.log)?;
        if log.contains("delete user:11\n") && log.contains("delete user_by_email:k@x\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "debug sink printed nothing:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `mariadb_capability = 4`: MariaDB sends its native GTID events (decoded from their raw
/// bodies); row rules work and the checkpoint carries the GTID position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mariadb_gtid_events() -> Result<()> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: vec![],
    })
    .await?;
    db.exec("CREATE DATABASE app; CREATE TABLE app.users (id INT UNSIGNED PRIMARY KEY, email VARCHAR(100), name VARCHAR(100))").await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(&db.url(), &[mc.addr()], &cp, RULES)
        .replace("server_id = 777", "server_id = 777\nmariadb_capability = 4");
    let squeal = Squeal::start(&cfg)?;
    cache(&mc, &["user:21", "user_by_email:u@x"])?;
    db.exec("INSERT INTO app.users VALUES (21, 'u@x', 'U')")
        .await?;
    expect(&mc, &["user:21", "user_by_email:u@x"], &[], &squeal)?;
    // The checkpoint reaches the insert and names its GTID (domain 0, server 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&cp).unwrap_or_default();
        if text.contains("gtid = \"0-1-") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint without GTID: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Catching up across an ALTER that reordered columns, without FULL metadata:
/// information_schema describes the new layout, the older rows the old one. squeal must not
/// read the wrong columns: the mismatch is counted and those rows' rules skipped (use
/// binlog_row_metadata=FULL to keep them), and rows after the ALTER work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_across_reordering_alter_never_misreads() -> Result<()> {
    let mut e = env(RULES, &["--binlog-row-metadata=MINIMAL"]).await?;
    e.db.exec("INSERT INTO app.users VALUES (49, 'o@x', 'O')")
        .await?;
    expect(&e.mc, &[], &[], &e.squeal)?;
    e.squeal.wait_metric(
        "squeal_checkpoint_writes_total",
        1.0,
        Duration::from_secs(10),
    )?;
    e.squeal.server.terminate(Duration::from_secs(10));
    let wrong = ["user:p@x", "user_by_email:50"];
    cache(&e.mc, &wrong)?;
    cache(&e.mc, &["user:51", "user_by_email:q@x"])?;
    e.db.exec("INSERT INTO app.users VALUES (50, 'p@x', 'P')")
        .await?;
    e.db.exec("ALTER TABLE app.users MODIFY COLUMN email VARCHAR(100) FIRST")
        .await?;
    e.db.exec("INSERT INTO app.users (id, email, name) VALUES (51, 'q@x', 'Q')")
        .await?;
    e.squeal.restart()?;
    expect(&e.mc, &["user:51", "user_by_email:q@x"], &wrong, &e.squeal)?;
    e.squeal
        .wait_metric("squeal_schema_problems_total", 1.0, Duration::from_secs(10))?;
    Ok(())
}
