//! Parser tests on real MySQL 8 and MariaDB binlog files (../shared/fixtures/mysql-binlogs):
//! every file is read by the code production runs, the fast row decoder agrees with
//! mysql_common's general one on every row, and damaged input gives errors, never panics.

use std::path::PathBuf;

use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::{EventData, RowsEventData, TransactionPayloadEvent};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::binlog::EventStreamReader;
use mysql_common::value::Value;
use proptest::prelude::*;
use squeal::config::{ExtractConfig, RuleConfig};
use squeal::extract::file::{read_events, read_file, FileError};
use squeal::extract::plan::{plan, PlanContext};
use squeal::extract::process::Processor;
use squeal::extract::text::{format, TextForm};
use squeal::model::Committed;
use squeal::source::decode::read_image;
use squeal::source::schema::NoSchema;

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/mysql-binlogs");
    assert!(
        d.is_dir(),
        "binlog fixtures not found at {} (shared/ must sit beside the checkout)",
        d.display()
    );
    d
}

fn files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    v.sort();
    assert!(v.len() >= 10, "expected the fixture files, found {v:?}");
    v
}

fn catch_all() -> ExtractConfig {
    ExtractConfig {
        rules: vec![RuleConfig {
            database: "*".into(),
            table: "*".into(),
            keys: vec!["row:{id}".into()],
        }],
        // The fixtures DROP their tables; reading on past that needs the flush.
        on_table_reset: squeal::config::OnTableReset::Flush,
        ..Default::default()
    }
}

fn read(name: &str) -> (Result<usize, FileError>, Vec<Committed>, Processor) {
    let mut p = Processor::new(&catch_all(), Box::new(NoSchema)).unwrap();
    let mut out = Vec::new();
    let r = read_file(&dir().join(name), &mut p, |c| out.push(c));
    (r, out, p)
}

fn keys(c: Committed) -> Vec<String> {
    let mut v = Vec::new();
    c.keys
        .for_each(|k| v.push(String::from_utf8_lossy(k).into_owned()))
        .unwrap();
    v
}

#[test]
fn every_fixture_reads_or_fails_clearly() {
    for f in files() {
        let mut p = Processor::new(&catch_all(), Box::new(NoSchema)).unwrap();
        let r = read_file(&f, &mut p, |_| {});
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("truncated") {
            let e = r.expect_err("the truncated file must fail");
            let msg = e.to_string();
            assert!(msg.contains(&name) && msg.contains("event 0"), "{msg}");
        } else {
            let n = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(n > 0, "{name}: no events");
            assert_eq!(p.stats.decode_errors, 0, "{name}: {:?}", p.problems);
        }
    }
}

#[test]
fn mysql_gtid_transaction() {
    let (r, out, p) = read("binlog_transaction_with_GTID.000001");
    r.unwrap();
    assert!(!out.is_empty());
    let gtid = p.last_gtid.clone().expect("a GTID");
    let (uuid, n) = gtid.split_once(':').expect("uuid:n");
    assert_eq!(uuid.len(), 36, "{gtid}");
    assert!(n.parse::<u64>().is_ok(), "{gtid}");
    // Every committed transaction's position lies inside the file and grows.
    let len = std::fs::metadata(dir().join("binlog_transaction_with_GTID.000001"))
        .unwrap()
        .len();
    let mut last = 0;
    for c in &out {
        assert!(c.pos.pos > last && c.pos.pos <= len, "{:?}", c.pos);
        last = c.pos.pos;
    }
}

#[test]
fn mysql_compressed_transaction_payload() {
    let (r, out, p) = read("transaction_compression.000001");
    r.unwrap();
    assert!(p.stats.rows >= 1, "{:?}", p.stats);
    assert_eq!(out.len(), 1, "one committed transaction");
    // The commit inside the payload ends where the payload event ends (file end here).
    let len = std::fs::metadata(dir().join("transaction_compression.000001"))
        .unwrap()
        .len();
    assert!(out[0].pos.pos <= len && out[0].pos.pos > 4);
}

#[test]
fn mariadb_events_and_full_metadata_rules() {
    let (r, out, p) = read("mariadb-bin.000001");
    r.unwrap();
    let all: Vec<String> = out.into_iter().flat_map(keys).collect();
    assert_eq!(all, vec!["row:62".to_string(), "row:63".to_string()]);
    // GTID_LIST / GTID events decoded from their raw bodies.
    let g = p.last_gtid.clone().expect("MariaDB GTID");
    assert_eq!(g.split('-').count(), 3, "{g}");
}

#[test]
fn savepoints_do_not_lose_the_transaction() {
    let (r, out, p) = read("binlog_savepoint.000001");
    r.unwrap();
    assert_eq!(p.stats.txns as usize, out.len());
    assert!(!out.is_empty());
}

/// Walks every rows event of every file with both decoders and compares each value.
#[test]
fn fast_decoder_agrees_with_mysql_common() {
    let mut compared = 0;
    for f in files() {
        if f.to_string_lossy().contains("truncated") {
            continue;
        }
        let data = std::fs::read(&f).unwrap();
        let mut esr = EventStreamReader::new(BinlogVersion::Version4);
        let mut input = &data[4..];
        let mut events = Vec::new();
        while let Some(ev) = esr.read(&mut input).unwrap() {
            if ev.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
                let tpe: TransactionPayloadEvent = ev.read_event().unwrap();
                let mut r = tpe.decompressed().unwrap();
                while let Some(inner) = esr.read_decompressed(&mut r).unwrap() {
                    events.push(inner);
                }
            }
            events.push(ev);
        }
        let mut tmes = std::collections::HashMap::new();
        for ev in &events {
            match ev.read_data() {
                Ok(Some(EventData::TableMapEvent(t))) => {
                    tmes.insert(t.table_id(), t.into_owned());
                }
                Ok(Some(EventData::RowsEvent(re))) => {
                    let tme = &tmes[&re.table_id()];
                    let p = plan(tme, &[], &[], &mut NoSchema, &PlanContext::default());
                    compared += compare(&re, tme, &p.cols, &p.text);
                }
                _ => {}
            }
        }
    }
    assert!(compared > 50, "only {compared} values compared");
}

fn compare(
    re: &RowsEventData<'_>,
    tme: &mysql_common::binlog::events::TableMapEvent<'_>,
    cols: &[squeal::source::decode::ColSpec],
    text: &[TextForm],
) -> usize {
    let raw = re.rows_data();
    let before = re
        .columns_before_image()
        .map(|b| bits(b.iter(), cols.len()));
    let after = re.columns_after_image().map(|b| bits(b.iter(), cols.len()));
    let mut pos = 0;
    let mut slots = Vec::new();
    let mut n = 0;
    let partial = matches!(re, RowsEventData::PartialUpdateRowsEvent(_));
    for row in re.rows(tme) {
        let (b, a) = row.expect("mysql_common decodes the fixture");
        for (img, bm, is_after) in [(b, &before, false), (a, &after, true)] {
            let Some(img) = img else { continue };
            let bm = bm.as_ref().unwrap();
            let json_cols = cols.iter().filter(|c| c.ty == 245).count();
            read_image(
                raw,
                &mut pos,
                cols,
                bm,
                (partial && is_after).then_some(json_cols),
                &mut slots,
            )
            .expect("fast decoder decodes the fixture");
            let mut k = 0;
            for (i, slot) in slots.iter().enumerate() {
                if bm[i / 8] & (1 << (i % 8)) == 0 {
                    continue;
                }
                let theirs = img.as_ref(k);
                k += 1;
                let theirs = theirs.expect("value");
                match (slot, theirs) {
                    (None, BinlogValue::Value(Value::NULL)) => {}
                    (Some((s, e)), BinlogValue::Value(v)) => {
                        let mut mine = Vec::new();
                        if format(&text[i], &raw[*s..*e], &mut mine).is_ok() {
                            let txt = String::from_utf8_lossy(&mine).into_owned();
                            let want = match v {
                                // ENUM/SET: mysql_common gives the index, squeal the label.
                                // TIMESTAMP: mysql_common gives epoch seconds, squeal the
                                // date and time in the zone.
                                _ if matches!(
                                    text[i],
                                    TextForm::Enum(_)
                                        | TextForm::Set(_)
                                        | TextForm::Timestamp { .. }
                                ) =>
                                {
                                    mine.clone()
                                }
                                Value::Int(x) => x.to_string().into_bytes(),
                                Value::UInt(x) => x.to_string().into_bytes(),
                                Value::Bytes(b) if cols[i].ty != 245 => b.clone(),
                                // Floats: the server's form, which reads back as the value.
                                Value::Float(f) => {
                                    assert_eq!(txt.parse::<f32>().ok(), Some(*f), "{txt}");
                                    mine.clone()
                                }
                                Value::Double(f) => {
                                    assert_eq!(txt.parse::<f64>().ok(), Some(*f), "{txt}");
                                    mine.clone()
                                }
                                _ => mine.clone(), // temporal and JSON: own tests
                            };
                            assert_eq!(
                                String::from_utf8_lossy(&mine),
                                String::from_utf8_lossy(&want),
                                "column {i} type {}",
                                cols[i].ty
                            );
                        }
                        n += 1;
                    }
                    (Some(_), _) => n += 1, // JSON: length-skipped, checked by the walk below
                    (None, other) => {
                        panic!("column {i}: fast decoder saw NULL, mysql_common {other:?}")
                    }
                }
            }
        }
    }
    assert_eq!(pos, raw.len(), "the fast decoder consumed the whole event");
    n
}

fn bits<I: IntoIterator<Item = B>, B: std::ops::Deref<Target = bool>>(it: I, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n.div_ceil(8)];
    for (i, bit) in it.into_iter().enumerate() {
        if *bit {
            v[i / 8] |= 1 << (i % 8);
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Damaged files (bytes flipped, cut short) give errors or fewer keys, never a panic.
    #[test]
    fn mutated_fixtures_never_panic(file in 0usize..11, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let fs = files();
        let f = &fs[file % fs.len()];
        let mut data = std::fs::read(f).unwrap();
        for (i, b) in flips {
            let i = i.index(data.len());
            if i >= 4 { data[i] ^= b | 1; }
        }
        let cut = 4 + cut.index(data.len() - 3);
        data.truncate(cut.min(data.len()));
        let mut p = Processor::new(&catch_all(), Box::new(NoSchema)).unwrap();
        let _ = read_events(&data[4..], &mut p, &mut |_| {});
    }
}

/// Builds one binlog event (no checksum) for synthetic streams.
fn event(ty: u8, body: &[u8], log_pos: u32) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    e.push(ty);
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(19 + body.len() as u32).to_le_bytes());
    e.extend_from_slice(&log_pos.to_le_bytes());
    e.extend_from_slice(&0u16.to_le_bytes());
    e.extend_from_slice(body);
    e
}

/// MySQL's Rows_query events carry the statement text: annotations in it are read, a bad
/// token is counted, and the keys leave at the XID.
#[test]
fn mysql_rows_query_annotations() {
    let mut stream = Vec::new();
    let mut rq = vec![0u8]; // length byte (ignored by servers and by the parser)
    rq.extend_from_slice(b"UPDATE t SET a=1 /* squeal:inv user:1 bad%zz feed%3A1 */");
    stream.extend(event(29, &rq, 200));
    stream.extend(event(16, &42u64.to_le_bytes(), 300));
    let mut p = Processor::new(&ExtractConfig::default(), Box::new(NoSchema)).unwrap();
    let mut out = Vec::new();
    read_events(&stream, &mut p, &mut |c| out.push(c)).unwrap_or_else(|_| panic!("read"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].pos.pos, 300);
    assert_eq!(p.stats.bad_annotations, 1);
    let got = keys(out.pop().unwrap());
    assert_eq!(got, vec!["user:1".to_string(), "feed:1".to_string()]);
}

/// MariaDB's GTID (162) starts a transaction; its keys leave at the XID; ANNOTATE_ROWS (160)
/// carries annotations; a standalone GTID does not open a transaction.
#[test]
fn mariadb_raw_events() {
    let mut stream = Vec::new();
    let mut gtid = 7u64.to_le_bytes().to_vec();
    gtid.extend_from_slice(&0u32.to_le_bytes());
    gtid.push(0);
    stream.extend(event(162, &gtid, 100));
    stream.extend(event(
        160,
        b"INSERT INTO t VALUES (1) /* squeal:inv a:1 */",
        150,
    ));
    stream.extend(event(16, &1u64.to_le_bytes(), 200));
    let mut p = Processor::new(&ExtractConfig::default(), Box::new(NoSchema)).unwrap();
    let mut out = Vec::new();
    read_events(&stream, &mut p, &mut |c| out.push(c)).unwrap_or_else(|_| panic!("read"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].gtid.as_deref(), Some("0-1-7"));
    assert_eq!(keys(out.pop().unwrap()), vec!["a:1".to_string()]);
}

#[test]
fn a_dropped_rule_table_stops_by_default_and_flushes_when_asked() {
    let f = dir().join("binlog_transaction_with_GTID.000001");
    let cfg = ExtractConfig {
        on_table_reset: Default::default(),
        ..catch_all()
    };
    let mut p = Processor::new(&cfg, Box::new(NoSchema)).unwrap();
    let err = read_file(&f, &mut p, |_| {}).expect_err("DROP TABLE of a rule table must stop");
    let msg = err.to_string();
    assert!(
        msg.contains("DROP TABLE of test.t1")
            && msg.contains("binlog_transaction_with_GTID.000001:"),
        "{msg}"
    );
    let (r, out, _) = read("binlog_transaction_with_GTID.000001");
    r.unwrap();
    assert!(
        out.iter().any(|c| c.flush),
        "the DROP's commit must carry the flush"
    );
}

/// MySQL 8 binary JSON (json.binlog.000001: `CREATE TABLE t(id INT PRIMARY KEY
/// AUTO_INCREMENT, json_col JSON, name VARCHAR(100) AS (json_col->>'$.name'), age INT AS
/// (json_col->'$.age'))`) renders as `SELECT json_col` prints it: keys in stored order,
/// `": "` and `", "` separators. The file's partial JSON updates carry diffs, not documents,
/// in their after images: those keys are counted drops with the reason, never a wrong key.
#[test]
fn mysql_binary_json_renders_as_the_server_prints_it() {
    let cfg = ExtractConfig {
        rules: vec![RuleConfig {
            database: "*".into(),
            table: "*".into(),
            keys: vec!["j:{json_col|hex}".into(), "n:{name}:{age}".into()],
        }],
        // The file DROPs its table; reading on past that needs the flush. Its partial JSON
        // updates were logged with binlog_row_image=MINIMAL: warn, do not stop.
        on_table_reset: squeal::config::OnTableReset::Flush,
        on_missing_column: squeal::config::OnMissingColumn::Warn,
        ..Default::default()
    };
    let mut schema = squeal::source::schema::StaticSchema::default();
    let col = |n: &str, t: &str| squeal::source::schema::ColumnInfo {
        name: n.into(),
        data_type: t.into(),
        column_type: t.into(),
        charset: (t == "varchar").then(|| "utf8mb4".into()),
        ..Default::default()
    };
    schema.0.insert(
        ("mysql".into(), "t".into()),
        vec![
            col("id", "int"),
            col("json_col", "json"),
            col("name", "varchar"),
            col("age", "int"),
        ],
    );
    let mut p = Processor::new(&cfg, Box::new(schema)).unwrap();
    let mut out = Vec::new();
    read_file(&dir().join("json.binlog.000001"), &mut p, |c| out.push(c)).unwrap();
    let mut docs = Vec::new();
    let mut names = Vec::new();
    for c in out {
        for k in keys(c) {
            if let Some(h) = k.strip_prefix("j:") {
                let b: Vec<u8> = (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                docs.push(String::from_utf8(b).unwrap());
            } else {
                names.push(k);
            }
        }
    }
    assert_eq!(
        &docs[..3],
        [
            r#"{"age": 24, "data": "xxxxxxxxxx", "name": "Joe"}"#,
            r#"{"age": 32, "data": "yyyyyyyyyy", "name": "Sue"}"#,
            r#"{"age": 40, "data": "zzzzzzzzzz", "name": "Pete"}"#,
        ]
    );
    // The generated columns hold what the JSON holds.
    for d in &docs {
        let name = d
            .split("\"name\": \"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"}");
        let age = d
            .split("\"age\": ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert!(names.contains(&format!("n:{name}:{age}")), "{d} {names:?}");
    }
    let partial = p
        .problems
        .iter()
        .filter(|m| m.contains("json_col") && m.contains("binary JSON"))
        .count();
    assert!(
        partial > 0 && p.stats.bad_keys as usize == partial,
        "{:?}",
        p.problems
    );
}
