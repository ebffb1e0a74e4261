//! What squeal requires of the server and what it does when a change reaches the binlog
//! without the rows it needs, end to end against real MariaDB and memcached: a template
//! column missing from a row image (binlog_row_image MINIMAL, session or global) stops
//! squeal or, with `on_missing_column = "warn"`, is counted and logged; TRUNCATE / DROP /
//! RENAME of a rule table stops squeal or flushes every target; foreign-key cascades are
//! reported and a parent rule covers them; `--check` checks the live server; start-up
//! waits for an unreachable server, refuses the server's own server_id, turns a server_id
//! collision into a clear error, and a first start writes its start position before
//! reading.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::mariadb::MariaDbOptions;
use harness::squeal::{cache, config, read_checkpoint, Squeal};
use harness::{MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

const USERS: &str = r#"
[[extract.rule]]
database = "app"
table = "users"
keys = ["user:{id}", "user_by_email:{email}"]
"#;

async fn db(args: &[&str]) -> Result<MariaDb> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    db.exec(
        "CREATE DATABASE app; CREATE TABLE app.users (id INT PRIMARY KEY, \
         email VARCHAR(100), name VARCHAR(100)) ENGINE=InnoDB; \
         INSERT INTO app.users VALUES (1, 'a@x', 'A'), (2, 'b@x', 'B'), (3, 'c@x', 'C')",
    )
    .await?;
    Ok(db)
}

fn cached(mc: &Memcached, key: &str) -> Result<bool> {
    Ok(McClient::connect(&mc.addr())?.get(key)?.is_some())
}

/// Waits until none of `keys` is cached.
fn wait_gone(mc: &Memcached, keys: &[&str], squeal: &Squeal) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| cached(mc, k).unwrap_or(true))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "still cached: {left:?}; squeal log:\n{}",
                squeal.server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the squeal process exits; returns its whole log.
fn wait_exit(squeal: &mut Squeal, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    while squeal.server.check_alive().is_ok() {
        if Instant::now() > deadline {
            bail!(
                "squeal still running after {timeout:?}; log:\n{}",
                squeal.server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(std::fs::read_to_string(&squeal.server.log)?)
}

/// Runs the squeal binary with `args` and `config` (written to `dir`) to its end, at most
/// `timeout`: (exit success, stdout + stderr).
fn run_squeal(
    dir: &Path,
    config: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<(bool, String)> {
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!("{config}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )?;
    let out_path = dir.join("run.out");
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new(harness::project::bin("squeal"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "squeal {args:?} did not end within {timeout:?}:\n{}",
                std::fs::read_to_string(&out_path)?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((status.success(), std::fs::read_to_string(&out_path)?))
}

/// Line number (1-based) of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{text}"))
}

fn set_config(squeal: &Squeal, from: &str, to: &str) -> Result<()> {
    let text = std::fs::read_to_string(&squeal.config)?;
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(&squeal.config, text.replace(from, to))?;
    Ok(())
}

/// A session's `binlog_row_image=MINIMAL` UPDATE: its before image holds only the primary
/// key, so `user_by_email:{email}` cannot be computed. squeal stops with the error (named
/// table, column, position, and the setting to change), checkpoints nothing past it, and
/// stops again on a restart: never a silent skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_minimal_row_image_stops_squeal() -> Result<()> {
    let db = db(&[]).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let mut squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, USERS))?;
    // A FULL-image UPDATE works as always.
    cache(&mc, &["user:1", "user_by_email:a@x"])?;
    db.exec("UPDATE app.users SET name = 'AA' WHERE id = 1")
        .await?;
    wait_gone(&mc, &["user:1", "user_by_email:a@x"], &squeal)?;
    // A NULL column is in the image (as NULL): not missing, no key for that template.
    cache(&mc, &["user:4"])?;
    db.exec("INSERT INTO app.users VALUES (4, NULL, 'D')")
        .await?;
    wait_gone(&mc, &["user:4"], &squeal)?;
    squeal.server.check_alive()?;
    squeal.wait_metric(
        "squeal_checkpoint_writes_total",
        1.0,
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let (file, before_update) = db.binlog_position().await?;

    let mut conn = db.conn().await?;
    conn.query_drop("SET SESSION binlog_row_image = MINIMAL")
        .await?;
    conn.query_drop("UPDATE app.users SET name = 'BB' WHERE id = 2")
        .await?;
    drop(conn);
    let log = wait_exit(&mut squeal, Duration::from_secs(15))?;
    for want in [
        "app.users",
        "email",
        "binlog_row_image=FULL",
        &format!("{file}:"),
        "on_missing_column",
    ] {
        assert!(
            log.contains(want),
            "{want:?} missing from the error; log:\n{log}"
        );
    }
    let (_, at) = read_checkpoint(&cp)?.expect("a checkpoint");
    assert!(
        at <= before_update,
        "checkpointed past the UPDATE it could not read: {at} > {before_update}"
    );
    // A restart reads the same event again and stops again.
    let (ok, out) = run_squeal(
        dir.path(),
        &config(&db.url(), &[mc.addr()], &cp, USERS),
        &[],
        Duration::from_secs(30),
    )?;
    assert!(
        !ok && out.contains("email") && out.contains("binlog_row_image"),
        "{out}"
    );
    Ok(())
}

/// The global setting: squeal warns at start; a DELETE's MINIMAL before image lacks
/// `email`: squeal stops; with `on_missing_column = "warn"` the restart counts it
/// (`squeal_rule_columns_missing_total{table,column}`), logs it, deletes the key it can
/// compute (`user:3`) and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_minimal_row_image_stops_or_warns() -> Result<()> {
    let db = db(&["--binlog-row-image=MINIMAL"]).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let mut squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, USERS))?;
    cache(&mc, &["user:3", "user_by_email:c@x"])?;
    db.exec("DELETE FROM app.users WHERE id = 3").await?;
    let log = wait_exit(&mut squeal, Duration::from_secs(15))?;
    assert!(
        log.contains("binlog_row_image is MINIMAL"),
        "no start-up warning:\n{log}"
    );
    assert!(
        log.contains("email") && log.contains("DELETE") && log.contains("binlog_row_image=FULL"),
        "{log}"
    );
    assert!(
        cached(&mc, "user:3")?,
        "stopped squeal must not have delivered past the error"
    );

    set_config(
        &squeal,
        "[[extract.rule]]",
        "[extract]\non_missing_column = \"warn\"\n\n[[extract.rule]]",
    )?;
    squeal.restart()?;
    wait_gone(&mc, &["user:3"], &squeal)?;
    squeal.wait_metric(
        "squeal_rule_columns_missing_total",
        1.0,
        Duration::from_secs(10),
    )?;
    let text = squeal.metrics_text()?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("squeal_rule_columns_missing_total")
                && l.contains("table=\"app.users\"")
                && l.contains("column=\"email\"")),
        "{text}"
    );
    let log = std::fs::read_to_string(&squeal.server.log)?;
    let after = &log[log.rfind("binlog_row_image is MINIMAL").unwrap_or(0)..];
    assert!(
        after.contains("not in the before image"),
        "no log line:\n{log}"
    );
    assert!(
        cached(&mc, "user_by_email:c@x")?,
        "a key it cannot compute stays (counted)"
    );
    squeal.server.check_alive()?;
    Ok(())
}

/// TRUNCATE, RENAME and DROP of a rule table: by default a clear error naming the table
/// and the binlog position (squeal stops, nothing checkpointed past it); with
/// `on_table_reset = "flush"` the restart flushes memcached through the memcache sink
/// (every key gone, also those no rule names) and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_resets_stop_or_flush() -> Result<()> {
    let db = db(&[]).await?;
    db.exec("CREATE TABLE app.users_new LIKE app.users").await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(
        &db.url(),
        &[mc.addr()],
        &cp,
        &format!("[extract]\non_table_reset = \"stop\"\n{USERS}"),
    );
    let mut squeal = Squeal::start(&cfg)?;
    let statements = [
        ("TRUNCATE TABLE app.users", "TRUNCATE of app.users"),
        (
            "RENAME TABLE app.users TO app.users_old, app.users_new TO app.users",
            "RENAME TABLE of app.users",
        ),
        (
            "ALTER TABLE users ADD COLUMN extra INT, RENAME TO users_alt",
            "ALTER TABLE ... RENAME of app.users",
        ),
        (
            "CREATE TABLE users LIKE users_alt; \
             /* cleanup */ DROP TABLE IF EXISTS `app`.`users`, app.users_old",
            "DROP TABLE of app.users",
        ),
    ];
    for (i, (sql, what)) in statements.iter().enumerate() {
        let keys = [format!("user:{i}"), format!("unrelated:{i}")];
        let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        cache(&mc, &refs)?;
        let (file, _) = db.binlog_position().await?;
        // Statements in `USE app` resolve unqualified names through the event's schema.
        let mut conn = db.conn().await?;
        conn.query_drop("USE app").await?;
        conn.query_drop(*sql).await?;
        drop(conn);
        let log = wait_exit(&mut squeal, Duration::from_secs(15))?;
        assert!(
            log.contains(what) && log.contains(&format!("binlog {file}:")),
            "{sql}: no error naming the table and position; log:\n{log}"
        );
        for k in &refs {
            assert!(cached(&mc, k)?, "{k} gone although squeal stopped");
        }
        let flushes = |s: &Squeal| s.metric("squeal_flushes_total").unwrap_or(0.0);
        set_config(
            &squeal,
            "on_table_reset = \"stop\"",
            "on_table_reset = \"flush\"",
        )?;
        squeal.restart()?;
        wait_gone(&mc, &refs, &squeal)?;
        assert!(flushes(&squeal) >= 1.0, "keys gone without a flush?");
        // The flush is acknowledged, so it is checkpointed: back to the default.
        std::thread::sleep(Duration::from_millis(300));
        squeal.server.terminate(Duration::from_secs(10));
        set_config(
            &squeal,
            "on_table_reset = \"flush\"",
            "on_table_reset = \"stop\"",
        )?;
        squeal.restart()?;
    }
    Ok(())
}

/// `ON DELETE/UPDATE CASCADE` child rows are not in the binlog. squeal reports a cascade
/// whose child has a rule (at start, and after the DDL that adds it), and a rule on the
/// parent with the child's template over the referenced column covers it end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fk_cascades_are_reported_and_covered_by_the_parent_rule() -> Result<()> {
    let db = db(&[]).await?;
    db.exec(
        "CREATE TABLE app.orders (id INT PRIMARY KEY, user_id INT, \
         INDEX (user_id)) ENGINE=InnoDB; \
         INSERT INTO app.orders VALUES (10, 1), (11, 1), (20, 2)",
    )
    .await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let child = r#"
[[extract.rule]]
database = "app"
table = "orders"
keys = ["orders_by_user:{user_id}"]
"#;
    let mut squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, child))?;
    let gauge = "squeal_fk_cascades_uncovered";
    assert_eq!(squeal.metric(gauge), None, "no foreign key yet");
    // The DDL that adds the cascade makes squeal look again.
    db.exec(
        "ALTER TABLE app.orders ADD CONSTRAINT fk_user FOREIGN KEY (user_id) \
         REFERENCES app.users (id) ON DELETE CASCADE ON UPDATE CASCADE",
    )
    .await?;
    squeal.wait_metric(gauge, 1.0, Duration::from_secs(10))?;
    let text = squeal.metrics_text()?;
    assert!(
        text.contains("parent=\"app.users\"") && text.contains("child=\"app.orders\""),
        "{text}"
    );
    let log = std::fs::read_to_string(&squeal.server.log)?;
    assert!(
        log.contains("foreign key fk_user")
            && log.contains("app.orders (user_id) references app.users (id)")
            && log.contains("annotation")
            && log.contains("rule for app.users"),
        "{log}"
    );

    // The documented cover: the child's template on the parent's rule, over users.id.
    squeal.server.terminate(Duration::from_secs(10));
    let both = format!(
        "{child}\n[[extract.rule]]\ndatabase = \"app\"\ntable = \"users\"\n\
         keys = [\"user:{{id}}\", \"orders_by_user:{{id}}\"]\n"
    );
    drop(squeal);
    let squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, &both))?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        squeal.metric(gauge),
        Some(0.0),
        "covered: no uncovered template"
    );
    cache(
        &mc,
        &[
            "orders_by_user:1",
            "orders_by_user:2",
            "orders_by_user:200",
            "user:1",
        ],
    )?;
    db.exec("DELETE FROM app.users WHERE id = 1").await?;
    wait_gone(&mc, &["orders_by_user:1", "user:1"], &squeal)?;
    db.exec("UPDATE app.users SET id = 200 WHERE id = 2")
        .await?;
    wait_gone(&mc, &["orders_by_user:2", "orders_by_user:200"], &squeal)?;
    // The cascades did happen, without a binlogged child row.
    let mut conn = db.conn().await?;
    let n: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM app.orders WHERE user_id = 1")
        .await?;
    assert_eq!(n, Some(0));
    let n: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM app.orders WHERE user_id = 200")
        .await?;
    assert_eq!(n, Some(1));
    Ok(())
}

/// `--check` against the live server: each misconfiguration fails with its config line;
/// a good config passes; offline it says what it could not check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_the_live_server() -> Result<()> {
    let db = db(&[]).await?;
    db.exec(
        "CREATE USER 'weak'@'%' IDENTIFIED BY 'pw'; GRANT SELECT ON app.* TO 'weak'@'%'; \
         CREATE USER 'repl'@'%' IDENTIFIED BY 'pw'; \
         GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'repl'@'%'; \
         GRANT SELECT ON app.* TO 'repl'@'%'",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("cp.toml");
    let base = config(&db.url(), &["127.0.0.1:11211".into()], &cp, USERS);
    let check = |cfg: &str| run_squeal(dir.path(), cfg, &["--check"], Duration::from_secs(30));

    let (ok, out) = check(&base)?;
    eprintln!("--check of a good config:\n{out}");
    assert!(ok && out.contains("run.toml: ok"), "good config:\n{out}");
    let repl = base.replace("mysql://root@", "mysql://repl:pw@");
    let (ok, out) = check(&repl)?;
    assert!(ok, "a user with the replication grants:\n{out}");

    let cases: Vec<(String, &str, &str)> = vec![
        (
            base.replace("user:{id}", "user:{idd}"),
            "user:{idd}",
            "no column \"idd\"",
        ),
        (
            base.replace("database = \"app\"", "database = \"nope\""),
            "database = \"nope\"",
            "does not exist",
        ),
        (
            base.replace("table = \"users\"", "table = \"userz\""),
            "table = \"userz\"",
            "app.userz does not exist",
        ),
        (
            base.replace(
                "type = \"memcache\"\nendpoints = [\"127.0.0.1:11211\"]",
                "type = \"router\"\nendpoints = [\"127.0.0.1:7000\"]",
            ),
            "type = \"router\"",
            "secret",
        ),
        (
            base.replace("server_id = 777", "server_id = 1"),
            "server_id = 1",
            "the server's own server_id",
        ),
        (
            base.replace("mysql://root@", "mysql://weak:pw@"),
            "url = ",
            "REPLICATION SLAVE",
        ),
        (
            base.replace("mysql://root@", "mysql://weak:wrong@"),
            "url = ",
            "refused the connection",
        ),
    ];
    for (cfg, line_needle, msg) in &cases {
        let (ok, out) = check(cfg)?;
        eprintln!("--check:\n{out}");
        let line = line_of(cfg, line_needle);
        assert!(
            !ok && out.contains(&format!("run.toml:{line}: ")) && out.contains(msg),
            "expected a failure at line {line} with {msg:?}:\n{out}"
        );
    }

    // Offline: says what it could not check (and the sink check still runs).
    let offline = base.replace(&format!(":{}/", db.port()), ":1/");
    let (ok, out) = check(&offline)?;
    assert!(
        ok && out.contains("could not reach") && out.contains("NOT checked"),
        "{out}"
    );
    Ok(())
}

/// Start-up: an unreachable server is retried with backoff (the log names the address)
/// until it comes up; a server_id equal to the server's own is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_retried_and_own_server_id_refused() -> Result<()> {
    let mut db = db(&[]).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(&db.url(), &[mc.addr()], &cp, USERS);

    let (ok, out) = run_squeal(
        dir.path(),
        &cfg.replace("server_id = 777", "server_id = 1"),
        &[],
        Duration::from_secs(30),
    )?;
    assert!(
        !ok && out.contains("server_id = 1 is the server's own"),
        "{out}"
    );

    db.kill();
    let starting = std::thread::spawn(move || Squeal::start(&cfg));
    std::thread::sleep(Duration::from_secs(3));
    db.restart().await?;
    let squeal = starting.join().expect("start thread")?;
    let log = std::fs::read_to_string(&squeal.server.log)?;
    assert!(
        log.contains("cannot connect to the server; retrying")
            && log.contains(&format!("127.0.0.1:{}", db.port())),
        "{log}"
    );
    cache(&mc, &["user:1"])?;
    db.exec("UPDATE app.users SET name = 'x' WHERE id = 1")
        .await?;
    wait_gone(&mc, &["user:1"], &squeal)?;
    Ok(())
}

/// A real replica with squeal's server_id: the server drops one of the two connections
/// whenever the other connects; squeal stops with a clear error after a few times, and
/// `--check` names the collision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_server_id_is_a_clear_error() -> Result<()> {
    let db = db(&[]).await?;
    let _replica = MariaDb::start_replica_of(&db, 777).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(&db.url(), &[mc.addr()], &cp, USERS);
    // The replica is registered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = db.conn().await?;
        let rows: Vec<mysql_async::Row> = c.query("SHOW SLAVE HOSTS").await?;
        if !rows.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = run_squeal(dir.path(), &cfg, &["--check"], Duration::from_secs(30))?;
    assert!(
        !ok && out.contains(&format!("run.toml:{}: ", line_of(&cfg, "server_id = 777")))
            && out.contains("already registered"),
        "{out}"
    );
    let (ok, out) = run_squeal(dir.path(), &cfg, &[], Duration::from_secs(60))?;
    eprintln!("squeal with a duplicate server_id:\n{out}");
    assert!(
        !ok && out.contains("server_id = 777 is used by another replica"),
        "{out}"
    );
    Ok(())
}

/// The first start (no checkpoint) writes its start position before reading: killed
/// (SIGKILL) before its first acknowledgement, it restarts there and re-delivers, instead
/// of restarting at a later "current" position and skipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_killed_before_its_first_ack_redelivers() -> Result<()> {
    let db = db(&[]).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let (file, start) = db.binlog_position().await?;
    let mut squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, USERS))?;
    assert_eq!(
        read_checkpoint(&cp)?,
        Some((file.clone(), start)),
        "the first start must checkpoint its start position"
    );
    cache(&mc, &["user:2", "user_by_email:b@x"])?;
    // memcached stops answering: nothing can be acknowledged.
    mc.server.signal("STOP");
    db.exec("UPDATE app.users SET name = 'x' WHERE id = 2")
        .await?;
    squeal.wait_metric("squeal_rows_total", 1.0, Duration::from_secs(10))?;
    squeal.server.kill();
    assert_eq!(
        read_checkpoint(&cp)?,
        Some((file, start)),
        "nothing was acknowledged: the checkpoint stays at the start"
    );
    // memcached may still apply the delete the dead squeal had written to its socket:
    // cache the keys again, so only a re-delivery removes them.
    mc.server.signal("CONT");
    std::thread::sleep(Duration::from_millis(300));
    cache(&mc, &["user:2", "user_by_email:b@x"])?;
    db.exec("INSERT INTO app.users VALUES (9, 'z@x', 'Z')")
        .await?;
    squeal.restart()?;
    wait_gone(&mc, &["user:2", "user_by_email:b@x"], &squeal)?;
    Ok(())
}

/// The flush travels in order with the batches: with a debug sink beside the memcache
/// sink, every delete committed before the TRUNCATE is printed before `flush_all`, and every
/// delete committed after it comes after (the dispatcher holds later batches until every
/// sink acknowledged the flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_reset_flush_is_ordered_with_the_batches() -> Result<()> {
    let db = db(&[]).await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let extra =
        format!("[extract]\non_table_reset = \"flush\"\n{USERS}\n[[sink]]\ntype = \"debug\"\n");
    let squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, &extra))?;
    let mut conn = db.conn().await?;
    for i in 100..120 {
        conn.exec_drop(
            "INSERT INTO app.users VALUES (?, ?, 'x')",
            (i, format!("{i}@x")),
        )
        .await?;
    }
    conn.query_drop("TRUNCATE TABLE app.users").await?;
    for i in 200..220 {
        conn.exec_drop(
            "INSERT INTO app.users VALUES (?, ?, 'x')",
            (i, format!("{i}@x")),
        )
        .await?;
    }
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = std::fs::read_to_string(&squeal.server.log)?;
        if log.contains("delete user:219\n") {
            break log;
        }
        assert!(Instant::now() < deadline, "not all delivered:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not printed:\n{log}"))
    };
    let flush = at("flush_all\n");
    for i in 100..120 {
        assert!(
            at(&format!("delete user:{i}\n")) < flush,
            "user:{i} after the flush"
        );
    }
    for i in 200..220 {
        assert!(
            at(&format!("delete user:{i}\n")) > flush,
            "user:{i} before the flush"
        );
    }
    assert_eq!(log.matches("flush_all\n").count(), 1, "{log}");
    Ok(())
}

/// `binlog_row_metadata=MINIMAL` is refused at start and by `--check` (saying why and how
/// to opt in) unless `[source] allow_minimal_metadata = true`; `--check` warns about a row
/// image other than FULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_metadata_is_refused_unless_allowed() -> Result<()> {
    let db = db(&["--binlog-row-metadata=MINIMAL", "--binlog-row-image=NOBLOB"]).await?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(&db.url(), &["127.0.0.1:11211".into()], &cp, USERS);
    let (ok, out) = run_squeal(dir.path(), &cfg, &[], Duration::from_secs(30))?;
    assert!(
        !ok && out.contains("binlog_row_metadata is MINIMAL")
            && out.contains("ALTER racing an UPDATE")
            && out.contains("allow_minimal_metadata = true"),
        "{out}"
    );
    let (ok, out) = run_squeal(dir.path(), &cfg, &["--check"], Duration::from_secs(30))?;
    assert!(
        !ok && out.contains("binlog_row_metadata is MINIMAL"),
        "{out}"
    );
    let allowed = cfg.replace(
        "server_id = 777",
        "server_id = 777\nallow_minimal_metadata = true",
    );
    let (ok, out) = run_squeal(dir.path(), &allowed, &["--check"], Duration::from_secs(30))?;
    assert!(
        ok && out.contains("warning: the server's binlog_row_image is NOBLOB"),
        "{out}"
    );
    Ok(())
}
