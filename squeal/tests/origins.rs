//! The Processor's optional origins hook (used by squeal-inspect for its per-table
//! metrics), on a real MariaDB binlog fixture: off by default, and when asked for it names
//! the table of every row-rule key of the last commit.

use std::path::PathBuf;

use squeal::config::{ExtractConfig, RuleConfig};
use squeal::source::process::Processor;
use squeal::source::read_file;
use squeal::source::schema::NoSchema;

fn fixture() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/mysql-binlogs");
    assert!(
        d.is_dir(),
        "binlog fixtures not found at {} (shared/ must sit beside the checkout)",
        d.display()
    );
    d.join("mariadb-bin.000001")
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
