//! squeal's key text of column values against real MariaDB: a table with a column of every
//! type, edge rows, and for each row and column the key squeal emits compared byte for byte
//! with the key built from a text-protocol `SELECT` of the same row, as an application
//! builds it. Also: template filters end to end, types that cannot make a key (counted),
//! and hostile string literals around SQL annotations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use harness::mariadb::MariaDbOptions;
use harness::squeal::{cache, config, expect_invalidated as expect, Squeal};
use harness::{MariaDb, Memcached};
use mysql_async::prelude::*;

/// Every column of `app.types` but `id`: name and SQL type.
const COLUMNS: &[(&str, &str)] = &[
    ("ti", "TINYINT"),
    ("tiu", "TINYINT UNSIGNED"),
    ("si", "SMALLINT"),
    ("siu", "SMALLINT UNSIGNED"),
    ("mi", "MEDIUMINT"),
    ("miu", "MEDIUMINT UNSIGNED"),
    ("i", "INT"),
    ("iu", "INT UNSIGNED"),
    ("bi", "BIGINT"),
    ("biu", "BIGINT UNSIGNED"),
    ("izf", "INT(6) UNSIGNED ZEROFILL"),
    ("dec1", "DECIMAL(20,5)"),
    ("dec2", "DECIMAL(65,30)"),
    ("dec0", "DECIMAL(10,0)"),
    ("f", "FLOAT"),
    ("d", "DOUBLE"),
    ("f72", "FLOAT(7,2)"),
    ("dt", "DATE"),
    ("dtm", "DATETIME"),
    ("dtm3", "DATETIME(3)"),
    ("dtm6", "DATETIME(6)"),
    ("ts", "TIMESTAMP NULL"),
    ("ts6", "TIMESTAMP(6) NULL"),
    ("tm", "TIME"),
    ("tm2", "TIME(2)"),
    ("tm6", "TIME(6)"),
    ("y", "YEAR"),
    ("ch", "CHAR(10)"),
    ("vc", "VARCHAR(100)"),
    ("tx", "TEXT"),
    ("lat", "VARCHAR(50) CHARACTER SET latin1"),
    ("lattx", "TEXT CHARACTER SET latin1"),
    ("asc1", "VARCHAR(20) CHARACTER SET ascii"),
    ("u8", "VARCHAR(20) CHARACTER SET utf8mb3"),
    ("bin", "BINARY(8)"),
    ("vb", "VARBINARY(50)"),
    ("bl", "BLOB"),
    ("e", "ENUM('a','bé','c d')"),
    ("st", "SET('x','y','zé')"),
    ("elat", "ENUM('é','b') CHARACTER SET latin1"),
    ("bt", "BIT(10)"),
    ("bt1", "BIT(1)"),
    ("bt64", "BIT(64)"),
    ("js", "JSON"),
    ("uu", "UUID"),
    ("ip", "INET6"),
];

/// Edge rows, one SQL value list each (in `COLUMNS` order, after `id`).
const ROWS: &[&str] = &[
    // Minimum values, empty strings.
    "-128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, 0, \
     -999999999999999.99999, -99999999999999999999999999999999999.999999999999999999999999999999, \
     -9999999999, -3.40282e38, -1.7976931348623157e308, -99999.99, '1000-01-01', \
     '1000-01-01 00:00:00', '1000-01-01 00:00:00.000', '1000-01-01 00:00:00.000000', \
     '1970-01-01 05:30:01', '1970-01-01 05:30:01.000000', '-838:59:59', '-838:59:59.99', \
     '-838:59:59.999999', 1901, '', '', '', '', '', '', '', '', '', '', 'a', '', 'b', b'0', b'0', \
     b'0', '[]', '00000000-0000-0000-0000-000000000000', '::'",
    // Maximum values, unicode, every latin1 oddity.
    "127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, \
     18446744073709551615, 999999, 999999999999999.99999, \
     99999999999999999999999999999999999.999999999999999999999999999999, 9999999999, \
     3.40282e38, 1.7976931348623157e308, 99999.99, '9999-12-31', '9999-12-31 23:59:59', \
     '9999-12-31 23:59:59.999', '9999-12-31 23:59:59.999999', '2038-01-19 08:44:07', \
     '2038-01-19 08:44:07.999999', '838:59:59', '838:59:59.99', '838:59:59.000000', 2155, \
     'ünïcödé☃', 'ünïcödé ☃ 😀 \"q\" \\\\ ''s', 'ünï\\ncödé 😀', 'café € Œ ÿ ‰', \
     'Ünï – “x” ‚', 'plain ascii', 'utf8mb3 é ☃', 'ab', 'é\\0\\n', 'blob ☃', 'bé', 'x,y,zé', 'é', \
     b'1111111111', b'1', b'1111111111111111111111111111111111111111111111111111111111111111', \
     '{\"k\": [1, 2.5, \"é\"], \"b\": {\"n\": null}}', 'ffffffff-ffff-ffff-ffff-ffffffffffff', \
     'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'",
    // Zero dates and zero values.
    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '0000-00-00', '0000-00-00 00:00:00', \
     '0000-00-00 00:00:00.000', '0000-00-00 00:00:00.000000', '0000-00-00 00:00:00', \
     '0000-00-00 00:00:00.000000', '00:00:00', '00:00:00.00', '00:00:00.000000', 0, 'a', 'a', \
     'a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', '', 'b', b'0', b'0', b'0', '0', \
     '01020304-0506-0708-090a-0b0c0d0e0f10', '::1'",
    // Everything NULL.
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL",
    // Ordinary values: fractions, floats the server shortens, IPv4 in IPv6, v1 UUIDs.
    "-1, 1, -2, 2, -3, 3, -4, 4, -5, 5, 42, -0.5, 0.000000000000000000000000000001, 7, 1.1, \
     0.1, 1.5, '2024-01-31', '2024-01-31 12:34:56', '2024-01-31 12:34:56.789', \
     '2024-01-31 12:34:56.000001', '2024-01-31 12:34:56', '2024-01-31 12:34:56.123456', \
     '12:34:56', '-00:00:01.5', '-12:34:56.000001', 2024, 'x y', 'Mixed Case', 'tab\\there', \
     'l\\'apostrophe', '\\'quoted\\'', 'a-b', 'x', 'z', 'v', 'b', 'c d', 'zé,x', 'b', b'1010', \
     b'0', b'10', '{\"a\": 1}', 'f81d4fae-7dec-11d0-a765-00a0c91e6bf6', '::ffff:192.0.2.1'",
    // Float shapes: exponent thresholds, six-digit FLOAT rounding.
    "1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 123456789, 1e15, 0.005, '2024-02-29', \
     '2024-02-29 00:00:00', '2024-02-29 00:00:00.5', '2024-02-29 00:00:00.5', \
     '2024-07-01 00:00:00', '2024-07-01 00:00:00.5', '1:2:3', '1:2:3.4', '1:2:3.4', 1999, \
     'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'a', 'x', 'é', b'1', b'1', b'1', \
     'true', '123e4567-e89b-12d3-a456-426614174000', '2001:db8::ff00:42:8329'",
    "2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1e-7, 1e-16, -0.001, '2000-01-01', \
     '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00', \
     '2000-01-01 00:00:00', '2000-01-01 00:00:00', '0:0:0', '0:0:0', '0:0:0', 2000, 'a', 'b', \
     'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'a', 'x', 'é', b'1', b'1', b'1', '1.5e300', \
     '123e4567-e89b-42d3-a456-426614174000', '1:0:0:0:0:0:0:8'",
    "3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1.17549e-38, 123456789012345678, 1e-5, \
     '2000-01-01', '2000-01-01 00:00:00', '2000-01-01 00:00:00', '2000-01-01 00:00:00', \
     '2000-01-01 00:00:00', '2000-01-01 00:00:00', '0:0:0', '0:0:0', '0:0:0', 2000, 'a', 'b', \
     'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'a', 'x', 'é', b'1', b'1', b'1', '\"s\"', \
     '123e4567-e89b-42d3-a456-426614174000', '1:2:3:4:5:6:7:8'",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every `delete <key>` the debug sink printed so far.
fn printed_keys(squeal: &Squeal) -> Result<BTreeSet<String>> {
    let log = std::fs::read_to_string(&squeal.server.log)?;
    Ok(log
        .lines()
        .filter_map(|l| l.strip_prefix("delete "))
        .map(str::to_string)
        .collect())
}

fn wait_for(squeal: &Squeal, key: &str) -> Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = printed_keys(squeal)?;
        if keys.contains(key) {
            return Ok(keys);
        }
        assert!(
            Instant::now() < deadline,
            "squeal never printed {key}; log:\n{}",
            squeal.server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With FULL row metadata (charsets, ENUM/SET labels from the table map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_keys_as_a_text_protocol_select_returns_it() -> Result<()> {
    every_type(&[]).await
}

/// With MINIMAL row metadata: the same from information_schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_keys_the_same_with_minimal_row_metadata() -> Result<()> {
    every_type(&["--binlog-row-metadata=MINIMAL"]).await
}

async fn every_type(db_args: &[&str]) -> Result<()> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: db_args.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    // TIMESTAMP renders in the server's zone: make it one that is not UTC.
    db.exec("SET GLOBAL time_zone = '+05:30'").await?;
    let cols: Vec<String> = COLUMNS.iter().map(|(n, t)| format!("{n} {t}")).collect();
    db.exec(&format!(
        "CREATE DATABASE app; CREATE TABLE app.types (id INT PRIMARY KEY, {}, \
         g GEOMETRY NULL) DEFAULT CHARSET=utf8mb4",
        cols.join(", ")
    ))
    .await?;
    let mut rules = String::from(
        "[[extract.rule]]\ndatabase = \"app\"\ntable = \"types\"\nkeys = [\n  \"done:{id}\",\n",
    );
    for (n, _) in COLUMNS {
        rules.push_str(&format!("  \"c_{n}:{{id}}:{{{n}|hex}}\",\n"));
    }
    // Filters chain; a plain (unfiltered) placeholder; a type with no key text.
    rules.push_str(
        "  \"sha:{id}:{vc|lower|sha1}\",\n  \"plain:{id}:{i}:{dt}\",\n  \"geo:{id}:{g|hex}\",\n  \"raw:{id}:{vc}\",\n]\n",
    );
    rules.push_str("\n[[sink]]\ntype = \"debug\"\n");
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let mut cfg = config(
        &db.url(),
        &[mc.addr()],
        &dir.path().join("checkpoint.toml"),
        &rules,
    );
    if db_args.contains(&"--binlog-row-metadata=MINIMAL") {
        // squeal refuses MINIMAL metadata unless told to accept its risk.
        cfg = cfg.replace(
            "server_id = 777",
            "server_id = 777\nallow_minimal_metadata = true",
        );
    }
    let squeal = Squeal::start(&cfg)?;

    let mut conn = db.conn().await?;
    for (i, row) in ROWS.iter().enumerate() {
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        conn.query_drop(format!(
            "INSERT INTO app.types (id, {}) VALUES ({i}, {row})",
            names.join(", ")
        ))
        .await?;
    }
    // One row with a geometry value: its template is a counted drop, not a silent one.
    conn.query_drop("INSERT INTO app.types (id, g) VALUES (100, POINT(1, 2))")
        .await?;
    conn.query_drop("INSERT INTO app.types (id) VALUES (101)")
        .await?;
    let keys = wait_for(&squeal, "done:101")?;

    // What an application reads: text protocol (a plain query string, not a prepared
    // statement), on mysql_async's utf8mb4 connection.
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    let rows: Vec<mysql_async::Row> = conn
        .query(format!(
            "SELECT id, {}, SHA1(LOWER(vc)) FROM app.types WHERE id < 100 ORDER BY id",
            names.join(", ")
        ))
        .await?;
    assert_eq!(rows.len(), ROWS.len());
    let mut by_prefix: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for k in &keys {
        if let Some((p, _)) = k.rsplit_once(':') {
            by_prefix.entry(p.to_string()).or_default().push(k);
        }
    }
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for row in &rows {
        let id: i64 = row.get(0).expect("id");
        for (c, (name, ty)) in COLUMNS.iter().enumerate() {
            let prefix = format!("c_{name}:{id}");
            let got = by_prefix.get(&prefix).cloned().unwrap_or_default();
            let want = match row.as_ref(c + 1).expect("column") {
                mysql_async::Value::NULL => None,
                mysql_async::Value::Bytes(b) => Some(format!("{prefix}:{}", hex(b))),
                other => panic!("text protocol gave {other:?}"),
            };
            compared += 1;
            let ok = match &want {
                None => got.is_empty(),
                Some(w) => got.len() == 1 && got[0] == w,
            };
            if !ok {
                let select = match row.as_ref(c + 1) {
                    Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => "NULL".into(),
                };
                let squeal: Vec<String> = got
                    .iter()
                    .map(|k| {
                        let h = k.rsplit_once(':').unwrap().1;
                        let b: Vec<u8> = (0..h.len() / 2)
                            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(b'?'))
                            .collect();
                        String::from_utf8_lossy(&b).into_owned()
                    })
                    .collect();
                mismatches.push(format!(
                    "row {id} column {name} {ty}: SELECT gives {select:?}, squeal {squeal:?}"
                ));
            }
        }
        // Filter chain: lower then sha1, as SHA1(LOWER(vc)) in SQL.
        if let Some(mysql_async::Value::Bytes(sha)) = row.as_ref(COLUMNS.len() + 1) {
            let want = format!("sha:{id}:{}", String::from_utf8_lossy(sha));
            if !keys.contains(&want) {
                mismatches.push(format!("row {id}: no {want}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {compared} values differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // No placeholder form: integers and dates are legal keys as they are.
    assert!(keys.contains("plain:4:-4:2024-01-31"), "{keys:?}");
    // Illegal keys (a space in the unfiltered value) are counted drops, by reason and table.
    let vc = COLUMNS.iter().position(|c| c.0 == "vc").unwrap() + 1;
    let with_space = rows
        .iter()
        .filter(|r| {
            matches!(r.as_ref(vc), Some(mysql_async::Value::Bytes(b)) if b.iter().any(|&c| c <= b' '))
        })
        .count();
    assert!(with_space >= 2);
    assert!(!keys
        .iter()
        .any(|k| k.starts_with("raw:") && k.contains(' ')));
    let m = squeal.metrics_text()?;
    let bad = harness::prometheus::sample(
        &m,
        "squeal_keys_dropped_total{reason=\"bad_byte\",table=\"app.types\"}",
    );
    assert_eq!(bad, Some(with_space as f64), "{m}");
    // Geometry: no key, counted by reason and table, and said in the log.
    assert!(!keys.iter().any(|k| k.starts_with("geo:")));
    let m = squeal.metrics_text()?;
    let dropped = harness::prometheus::sample(
        &m,
        "squeal_keys_dropped_total{reason=\"unsupported_type\",table=\"app.types\"}",
    );
    assert_eq!(dropped, Some(1.0), "{m}");
    let log = std::fs::read_to_string(&squeal.server.log)?;
    assert!(
        log.contains("GEOMETRY values have no key text"),
        "{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// Data values that look like annotations never delete anything, whatever the quoting
/// (text SQL with either escape style, double quotes, quoted identifiers, line comments,
/// server-side prepared statements); an annotation after any literal is always found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_inside_literals_never_delete_and_after_literals_always_do() -> Result<()> {
    let db = MariaDb::start().await?;
    db.exec(
        "CREATE DATABASE app; CREATE TABLE app.users (id INT PRIMARY KEY, \
         email VARCHAR(100), name VARCHAR(200)); INSERT INTO app.users VALUES (1, 'a', 'b')",
    )
    .await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let rules = "[[extract.rule]]\ndatabase = \"app\"\ntable = \"users\"\nkeys = [\"user:{id}\"]\n";
    let cfg = config(&db.url(), &[mc.addr()], &dir.path().join("cp.toml"), rules);
    let squeal = Squeal::start(&cfg)?;
    let victims = [
        "victim:1", "victim:2", "victim:3", "victim:4", "victim:5", "victim:6", "victim:7",
        "victim:8",
    ];
    let found = [
        "user:77", "after:1", "after:2", "after:3", "after:4", "after:5",
    ];
    let mut all: Vec<&str> = victims.to_vec();
    all.extend(found);
    cache(&mc, &all)?;

    let mut conn = db.conn().await?;
    for sql in [
        // The issue's two cases.
        "UPDATE app.users SET name='/* squeal:inv victim:1 */' WHERE id=1",
        "UPDATE app.users SET name='x/*y' WHERE id=1 /* squeal:inv user:77 */",
        // Backslash-escaped and doubled quotes inside the literal.
        r"UPDATE app.users SET name='it\'s /* squeal:inv victim:3 */' WHERE id=1",
        "UPDATE app.users SET name='it''s /* squeal:inv victim:8 */' WHERE id=1",
        r#"UPDATE app.users SET name="dq \" /* squeal:inv victim:4 */" WHERE id=1"#,
        "UPDATE app.users AS `/* squeal:inv victim:5 */` SET name='q' WHERE id=1",
        "UPDATE app.users SET name='lc' WHERE id=1 -- /* squeal:inv victim:6 */",
        // Annotations after literals that end in escapes or hold comment openers.
        r"UPDATE app.users SET name='a\\' WHERE id=1 /* squeal:inv after:1 */",
        "UPDATE app.users SET name='q''/*', email='*/' WHERE id=1 /* squeal:inv after:2 */",
        "UPDATE app.users SET name=\"/*\" WHERE id=1 /* squeal:inv after:3 */",
        "UPDATE app.users SET name='#', email='-- ' WHERE id=1 /* squeal:inv after:4 */",
    ] {
        conn.query_drop(sql).await?;
    }
    // A server-side prepared statement: the binlog holds the statement with the value
    // quoted by the server.
    conn.exec_drop(
        "UPDATE app.users SET name=? WHERE id=1",
        ("it's \\ \"x\" /* squeal:inv victim:2 */ '/* squeal:inv victim:7 */",),
    )
    .await?;
    conn.exec_drop(
        "UPDATE app.users SET name=? WHERE id=1 /* squeal:inv after:5 */",
        ("'/*\\",),
    )
    .await?;
    expect(&mc, &found, &victims, &squeal)?;
    Ok(())
}
