//! The Processor's hooks for squeal-inspect, on real binlog fixtures: the optional origins
//! hook (per-table metrics) is off by default and, when asked for, names the table of every
//! row-rule key of the last commit; MySQL 8's microsecond commit time is exposed, MariaDB
//! has none.

use std::path::PathBuf;

use squeal::config::{ExtractConfig, RuleConfig};
use squeal::extract::file::read_file;
use squeal::extract::process::Processor;
use squeal::source::schema::NoSchema;

fn fixtures() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/mysql-binlogs");
    assert!(
        d.is_dir(),
        "binlog fixtures not found at {} (shared/ must sit beside the checkout)",
        d.display()
    );
    d
}

fn fixture() -> PathBuf {
    fixtures().join("mariadb-bin.000001")
}

fn processor() -> Processor {
    let cfg = ExtractConfig {
        rules: vec![RuleConfig {
            database: "*".into(),
            table: "*".into(),
            keys: vec!["row:{id}".into()],
        }],
        on_table_reset: squeal::config::OnTableReset::Flush,
        ..Default::default()
    };
    Processor::new(&cfg, Box::new(NoSchema)).unwrap()
}

#[test]
fn origins_are_recorded_only_when_asked_and_name_each_keys_table() {
    let mut off = processor();
    read_file(&fixture(), &mut off, |_| {}).unwrap();
    assert!(
        off.take_origins().is_empty(),
        "squeal never pays for the hook"
    );

    let mut on = processor();
    on.record_origins();
    let mut last_keys = Vec::new();
    read_file(&fixture(), &mut on, |c| {
        let mut keys = Vec::new();
        c.keys.for_each(|k| keys.push(k.to_vec())).unwrap();
        if !keys.is_empty() {
            last_keys = keys;
        }
    })
    .unwrap();
    let origins = on.take_origins();
    assert!(
        !origins.is_empty(),
        "the last commit's keys came from a rule"
    );
    for (table, key) in &origins {
        assert_eq!(table.split('.').count(), 2, "db.table: {table}");
        assert!(last_keys.contains(key), "{key:?} not among {last_keys:?}");
    }
    assert!(on.take_origins().is_empty(), "taken once");
}

#[test]
fn mysql_8_commit_times_come_in_microseconds() {
    let mut p = processor();
    let mut seconds = Vec::new();
    read_file(&fixtures().join("json.binlog.000001"), &mut p, |c| {
        seconds.push(c.commit_ts)
    })
    .unwrap();
    let us = p
        .last_commit_micros()
        .expect("MySQL 8 GTID events carry it");
    let last = *seconds.last().unwrap() as u64;
    // The event timestamp is the statement's start second; the commit is no earlier.
    assert!(
        us / 1_000_000 >= last && us / 1_000_000 <= last + 60,
        "{us} vs {last}"
    );

    let mut m = processor();
    read_file(&fixture(), &mut m, |_| {}).unwrap();
    assert_eq!(
        m.last_commit_micros(),
        None,
        "MariaDB has whole seconds only"
    );
}
