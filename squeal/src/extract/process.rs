//! The processor, the synchronous core of extraction: binlog events in, committed
//! transactions (their deduplicated keys and the position after their commit) out. The live
//! stream and the file reader both feed it, so the fixture tests run the code production runs.

use std::collections::HashMap;
use std::sync::Arc;

use mysql_common::binlog::consts::{EventType, StatusVarKey};
use mysql_common::binlog::events::{
    Event, GtidEvent as MyGtidEvent, QueryEvent, RotateEvent, RowsQueryEvent, StatusVarVal,
    TableMapEvent,
};

use super::plan::{plan, PlanContext, TablePlan};
use super::rules::{BoundPart, Rule};
use super::text::{append_part, format, NoText};
use crate::config::{ExtractConfig, OnMissingColumn, OnTableReset};
use crate::model::transaction::TxnKeys;
use crate::model::{Committed, Position};
use crate::source::decode::{lenenc, read_image};
use crate::source::mariadb;
use crate::source::schema::SchemaLookup;
use crate::source::zone::Zone;

/// Counters the processor keeps (exported as metrics by the caller).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub rows: u64,
    pub keys: u64,
    pub txns: u64,
    pub rolled_back: u64,
    pub bad_annotations: u64,
    pub bad_keys: u64,
    pub decode_errors: u64,
    pub schema_problems: u64,
    pub ddl: u64,
    /// Rows events whose images lacked a template column.
    pub missing_columns: u64,
    /// TRUNCATE / DROP / RENAME statements of rule tables.
    pub table_resets: u64,
}

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("unsupported binlog event {0}: {1}")]
    Unsupported(u8, &'static str),
    #[error("reading event type {0} at {1}: {2}")]
    Event(u8, String, std::io::Error),
    #[error("spilling transaction keys: {0}")]
    Spill(std::io::Error),
    /// A template column is not in a row image ([extract] on_missing_column = "stop").
    #[error("{0}")]
    MissingColumn(String),
    /// TRUNCATE / DROP / RENAME of a rule table ([extract] on_table_reset = "stop").
    #[error("{0}")]
    TableReset(String),
}

/// What an event does to the stream position (the resume point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Advance {
    /// The position moves past the event, unless a transaction is open.
    Past,
    /// The event set the position itself, or must not move it.
    Kept,
}

/// Events in, committed transactions out.
pub struct Processor {
    rules: Vec<Rule>,
    outboxes: Vec<(String, String, String)>,
    annotations: bool,
    annotation_dbs: Vec<String>,
    on_missing_column: OnMissingColumn,
    on_table_reset: OnTableReset,
    /// Columns of the current rows event absent from the after image of an UPDATE (taken
    /// from the before image: an absent column is one the statement did not change).
    fill: Vec<usize>,
    /// The next commit must flush every target (a table reset with on_table_reset=flush).
    flush_pending: bool,
    schema: Box<dyn SchemaLookup>,
    tables: HashMap<u64, (Vec<u8>, Arc<TablePlan>)>,
    pub file: String,
    /// End of the last event read (position of the next one).
    pub pos: u64,
    /// End position of an event that carried log_pos 0 (inside a compressed payload).
    outer_pos: u64,
    in_txn: bool,
    txn: TxnKeys,
    annot: TxnKeys,
    annot_allowed: bool,
    gtid: Option<String>,
    pub last_gtid: Option<String>,
    pub stats: Stats,
    slots_a: Vec<Option<(usize, usize)>>,
    slots_b: Vec<Option<(usize, usize)>>,
    key: Vec<u8>,
    /// Last problem message, for logging by the caller (rate-limited there).
    pub problems: Vec<String>,
    /// Server timestamp of the last event (seconds since the epoch).
    pub last_ts: u32,
    current_end: u64,
    /// Quoting rules of the session that wrote the current statements (its `sql_mode`, as
    /// the last Query event recorded it): where annotation comments can be.
    dialect: marker::annotation::Dialect,
    /// The dialect of transactions whose events do not say (`[extract]
    /// annotation_sql_mode`).
    default_dialect: marker::annotation::Dialect,
    /// Time zone and server flavour for table plans.
    ctx: PlanContext,
    /// Scratch buffers for filtered placeholders.
    scratch: (Vec<u8>, Vec<u8>),
    /// Optional hook (off unless [`Processor::record_origins`]): the table (`db.table`) each
    /// row-rule or outbox key of the open transaction came from, moved to `last_origins` at
    /// its commit. squeal-inspect labels its per-table metrics with it; squeal never pays.
    origins: Option<Vec<(String, Vec<u8>)>>,
    last_origins: Vec<(String, Vec<u8>)>,
    /// MySQL 8's `immediate_commit_timestamp` (microseconds) of the open transaction's GTID
    /// event, and of the last committed one (squeal-inspect dates commits with it).
    commit_us: Option<u64>,
    last_commit_us: Option<u64>,
}

impl Processor {
    pub fn new(cfg: &ExtractConfig, schema: Box<dyn SchemaLookup>) -> Result<Processor, String> {
        let rules = cfg.rules.iter().map(Rule::new).collect::<Result<_, _>>()?;
        Ok(Processor {
            rules,
            outboxes: cfg
                .outboxes
                .iter()
                .map(|o| (o.database.clone(), o.table.clone(), o.column.clone()))
                .collect(),
            annotations: cfg.annotations,
            annotation_dbs: cfg.annotation_databases.clone(),
            on_missing_column: cfg.on_missing_column,
            on_table_reset: cfg.on_table_reset,
            fill: Vec::new(),
            flush_pending: false,
            schema,
            tables: HashMap::new(),
            file: String::new(),
            pos: 4,
            outer_pos: 4,
            in_txn: false,
            txn: TxnKeys::new(cfg.max_transaction_bytes),
            annot: TxnKeys::new(cfg.max_transaction_bytes),
            annot_allowed: cfg.annotation_databases.is_empty(),
            gtid: None,
            last_gtid: None,
            stats: Stats::default(),
            slots_a: Vec::new(),
            slots_b: Vec::new(),
            key: Vec::new(),
            problems: Vec::new(),
            last_ts: 0,
            current_end: 4,
            dialect: dialect_of(&cfg.annotation_sql_mode),
            default_dialect: dialect_of(&cfg.annotation_sql_mode),
            ctx: PlanContext::default(),
            scratch: Default::default(),
            origins: None,
            last_origins: Vec::new(),
            commit_us: None,
            last_commit_us: None,
        })
    }

    /// From now on, remember which table each row-rule or outbox key came from (see
    /// [`Processor::take_origins`]). Costs a copy of every such key.
    pub fn record_origins(&mut self) {
        self.origins.get_or_insert_with(Vec::new);
    }

    /// `(db.table, key)` for the row-rule and outbox keys of the last committed transaction
    /// (annotation keys have no table and are absent); empty unless
    /// [`Processor::record_origins`] was called. Take it after each `handle` that committed.
    pub fn take_origins(&mut self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.last_origins)
    }

    /// The commit time of the last committed transaction in microseconds since the epoch,
    /// when the stream carries it (MySQL 8's GTID events); `None` otherwise (MariaDB, older
    /// MySQL: only the events' whole-second timestamps).
    pub fn last_commit_micros(&self) -> Option<u64> {
        self.last_commit_us
    }

    /// The zone TIMESTAMP values are shown in (default UTC); applies to tables mapped from
    /// now on.
    pub fn set_time_zone(&mut self, zone: Zone) {
        self.ctx.zone = Arc::new(zone);
        self.tables.clear();
    }

    /// Starts reading at `pos` (after a reconnect): forgets any half-read transaction.
    pub fn reset_to(&mut self, pos: &Position) {
        self.file = pos.file.clone();
        self.pos = pos.pos;
        self.outer_pos = pos.pos;
        self.tables.clear();
        self.abort_txn();
    }

    /// The position after the last whole transaction: where a reconnect resumes.
    pub fn position(&self) -> Position {
        Position {
            file: self.file.clone(),
            pos: self.pos,
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    fn abort_txn(&mut self) {
        self.commit_us = None;
        if let Some(o) = &mut self.origins {
            o.clear();
        }
        self.flush_pending = false;
        self.dialect = self.default_dialect;
        self.txn.clear();
        self.annot.clear();
        self.in_txn = false;
        self.annot_allowed = self.annotation_dbs.is_empty();
        self.gtid = None;
    }

    fn begin(&mut self) {
        if !self.in_txn {
            self.in_txn = true;
        }
    }

    fn commit(&mut self, out: &mut Vec<Committed>) -> Result<(), ProcessError> {
        let mut keys = self.txn.take();
        let annot = self.annot.take();
        if self.annot_allowed && !annot.is_empty() {
            let mut err = None;
            annot
                .for_each(|k| {
                    if let Err(e) = keys.insert(k) {
                        err = Some(e);
                    }
                })
                .map_err(ProcessError::Spill)?;
            if let Some(e) = err {
                return Err(ProcessError::Spill(e));
            }
        }
        if let Some(o) = &mut self.origins {
            self.last_origins = std::mem::take(o);
        }
        self.last_commit_us = self.commit_us.take();
        self.stats.txns += 1;
        self.stats.keys += keys.len();
        if self.gtid.is_some() {
            self.last_gtid = self.gtid.take();
        }
        out.push(Committed {
            keys,
            pos: self.position(),
            gtid: self.last_gtid.clone(),
            commit_ts: self.last_ts,
            commit_us: self.last_commit_us,
            received: std::time::Instant::now(),
            flush: std::mem::take(&mut self.flush_pending),
        });
        self.in_txn = false;
        self.annot_allowed = self.annotation_dbs.is_empty();
        // The next transaction's session may quote differently.
        self.dialect = self.default_dialect;
        Ok(())
    }

    fn annotate(&mut self, text: &[u8]) -> Result<(), ProcessError> {
        if !self.annotations {
            return Ok(());
        }
        for r in marker::annotation::parse_with(text, self.dialect) {
            match r {
                Ok(k) => self.annot.insert(&k).map_err(ProcessError::Spill)?,
                Err(e) => {
                    self.stats.bad_annotations += 1;
                    self.problems.push(format!("malformed annotation: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Handles one event; committed transactions are appended to `out`.
    pub fn handle(&mut self, ev: &Event, out: &mut Vec<Committed>) -> Result<(), ProcessError> {
        let h = ev.header();
        let t = h.event_type_raw();
        self.stats.events += 1;
        if h.timestamp() != 0 {
            self.last_ts = h.timestamp();
        }
        let log_pos = h.log_pos() as u64;
        // Inner events of a compressed payload have log_pos 0: they end where it ends.
        let end = if log_pos != 0 {
            log_pos
        } else {
            self.outer_pos
        };
        self.current_end = end;
        let advance = match self.mysql_event(ev, t, end, out)? {
            Some(a) => a,
            None => self.mariadb_event(ev, t)?,
        };
        if advance == Advance::Past && !self.in_txn {
            self.pos = end;
        }
        Ok(())
    }

    /// The event types MySQL and MariaDB share (and MySQL's own); `None` for any other.
    fn mysql_event(
        &mut self,
        ev: &Event,
        t: u8,
        end: u64,
        out: &mut Vec<Committed>,
    ) -> Result<Option<Advance>, ProcessError> {
        let err =
            |e: std::io::Error, file: &str| ProcessError::Event(t, format!("{file}:{end}"), e);
        Ok(Some(match t {
            x if x == EventType::ROTATE_EVENT as u8 => {
                let r: RotateEvent = ev.read_event().map_err(|e| err(e, &self.file))?;
                self.file = rotate_name(ev, r.name_raw());
                self.pos = r.position();
                self.outer_pos = self.pos;
                if !r.is_fake() {
                    self.tables.clear();
                }
                Advance::Kept
            }
            x if x == EventType::FORMAT_DESCRIPTION_EVENT as u8
                || x == EventType::PREVIOUS_GTIDS_EVENT as u8
                || x == EventType::STOP_EVENT as u8
                || x == EventType::INCIDENT_EVENT as u8
                || x == EventType::IGNORABLE_EVENT as u8
                || x == EventType::INTVAR_EVENT as u8
                || x == EventType::RAND_EVENT as u8
                || x == EventType::USER_VAR_EVENT as u8 =>
            {
                Advance::Past
            }
            // Carries the server's position; not a stream position to resume from.
            x if x == EventType::HEARTBEAT_EVENT as u8 => Advance::Kept,
            x if x == EventType::TRANSACTION_PAYLOAD_EVENT as u8 => {
                self.outer_pos = end;
                // The decompressed events follow (the reader unpacks them); the payload
                // itself ends at `end`, which its inner XID makes the commit position.
                Advance::Kept
            }
            x if x == EventType::GTID_EVENT as u8
                || x == EventType::ANONYMOUS_GTID_EVENT as u8
                || x == EventType::GTID_TAGGED_LOG_EVENT as u8 =>
            {
                self.begin();
                if let Ok(g) = ev.read_event::<MyGtidEvent>() {
                    let us = g.immediate_commit_timestamp();
                    self.commit_us = (us != 0).then_some(us);
                    if x != EventType::ANONYMOUS_GTID_EVENT as u8 {
                        self.gtid = Some(format!("{}:{}", uuid(&g.sid()), g.gno()));
                    }
                }
                Advance::Past
            }
            x if x == EventType::QUERY_EVENT as u8 => {
                let q: QueryEvent = ev.read_event().map_err(|e| err(e, &self.file))?;
                if let Some(v) = q.status_vars().get_status_var(StatusVarKey::SqlMode) {
                    if let Ok(StatusVarVal::SqlMode(m)) = v.get_value() {
                        self.dialect = marker::annotation::Dialect::from_sql_mode(m.0);
                    }
                }
                self.table_resets(q.query_raw(), &q.schema())?;
                self.query(q.query_raw(), out)?;
                Advance::Past
            }
            x if x == EventType::ROWS_QUERY_EVENT as u8 => {
                let q: RowsQueryEvent = ev.read_event().map_err(|e| err(e, &self.file))?;
                self.annotate(q.query_raw())?;
                Advance::Past
            }
            // An XA PREPARE: the transaction's changes are final once prepared; release its
            // keys now (at least once: an XA ROLLBACK afterwards only costs extra deletes).
            x if x == EventType::XID_EVENT as u8 || x == EventType::XA_PREPARE_LOG_EVENT as u8 => {
                self.pos = end;
                self.commit(out)?;
                Advance::Kept
            }
            x if x == EventType::TABLE_MAP_EVENT as u8 => {
                self.table_map(ev, end)?;
                Advance::Past
            }
            23 | 24 | 25 | 30 | 31 | 32 | 39 => {
                self.rows(ev, t)?;
                Advance::Past
            }
            _ => return Ok(None),
        }))
    }

    /// MariaDB's own event types; any other unknown type is passed over.
    fn mariadb_event(&mut self, ev: &Event, t: u8) -> Result<Advance, ProcessError> {
        match t {
            mariadb::ANNOTATE_ROWS => {
                let text = mariadb::annotate_rows_text(ev.data()).to_vec();
                self.annotate(&text)?;
            }
            mariadb::GTID => match mariadb::GtidEvent::parse(ev.data(), ev.header().server_id()) {
                Ok(g) => {
                    self.gtid = Some(g.gtid.to_string());
                    if !g.standalone() {
                        self.begin();
                    }
                }
                Err(e) => {
                    self.decode_problem(e.to_string());
                    self.begin();
                }
            },
            mariadb::GTID_LIST => match mariadb::parse_gtid_list(ev.data()) {
                Ok(list) if !list.is_empty() => {
                    self.last_gtid = Some(mariadb::format_gtid_list(&list));
                }
                Ok(_) => {}
                Err(e) => self.decode_problem(e.to_string()),
            },
            mariadb::BINLOG_CHECKPOINT => {
                if let Err(e) = mariadb::parse_binlog_checkpoint(ev.data()) {
                    self.decode_problem(e.to_string());
                }
            }
            mariadb::START_ENCRYPTION => {
                return Err(ProcessError::Unsupported(t, "encrypted binlogs"));
            }
            mariadb::COMPRESSED_FIRST..=mariadb::COMPRESSED_LAST => {
                return Err(ProcessError::Unsupported(
                    t,
                    "MariaDB binlog compression (log_bin_compress=OFF is required)",
                ));
            }
            _ => {}
        }
        Ok(Advance::Past)
    }

    /// An event that could not be decoded: counted and logged, the stream goes on.
    fn decode_problem(&mut self, msg: String) {
        self.stats.decode_errors += 1;
        self.problems.push(msg);
    }

    fn query(&mut self, sql: &[u8], out: &mut Vec<Committed>) -> Result<(), ProcessError> {
        let trimmed = strip_leading_comments(sql);
        let word = first_word(trimmed);
        match word.as_slice() {
            b"BEGIN" => {
                self.begin();
                return Ok(());
            }
            b"COMMIT" => {
                self.pos = self.pending_end();
                return self.commit(out);
            }
            b"ROLLBACK" => {
                let rest = first_word(&trimmed[8.min(trimmed.len())..]);
                if rest.as_slice() != b"TO" {
                    self.stats.rolled_back += 1;
                    self.pos = self.pending_end();
                    self.abort_txn();
                }
                return Ok(());
            }
            b"SAVEPOINT" | b"XA" => return Ok(()),
            _ => {}
        }
        self.annotate(sql)?;
        if matches!(
            word.as_slice(),
            b"ALTER" | b"CREATE" | b"DROP" | b"RENAME" | b"TRUNCATE"
        ) {
            self.stats.ddl += 1;
            self.schema.invalidate();
            self.tables.clear();
        }
        // A table reset (TRUNCATE/DROP/RENAME) is never part of a larger transaction, even
        // after a MySQL GTID event opened one: it commits itself with its flush.
        if !self.in_txn || self.flush_pending {
            // A standalone statement (DDL) commits itself.
            self.annot_allowed = true;
            self.pos = self.pending_end();
            self.commit(out)?;
        }
        Ok(())
    }

    /// TRUNCATE / DROP / RENAME of a table with a rule: the binlog holds no row images for
    /// the rows it removes. Stops with an error (default; the position stays before the
    /// statement) or marks the statement's commit to flush every target (`flush`).
    fn table_resets(&mut self, sql: &[u8], schema: &str) -> Result<(), ProcessError> {
        let resets = super::ddl::reset_tables(sql, schema);
        let hit: Vec<String> = resets
            .iter()
            .filter(|r| {
                self.rules.iter().any(|rule| {
                    if r.table == "*" {
                        rule.database == "*" || rule.database == r.database
                    } else {
                        rule.matches(&r.database, &r.table)
                    }
                })
            })
            .map(|r| format!("{} of {}.{}", r.verb, r.database, r.table))
            .collect();
        if hit.is_empty() {
            return Ok(());
        }
        self.stats.table_resets += 1;
        metrics::counter!("squeal_table_resets_total").increment(1);
        let what = hit.join(", ");
        match self.on_table_reset {
            OnTableReset::Stop => Err(ProcessError::TableReset(format!(
                "{what} (a table with a rule) in the statement ending at binlog {}:{}: the \
                 binlog holds no row images for it, so the keys of the rows it removed cannot \
                 be computed. squeal stops here and checkpoints nothing past it. Either flush \
                 the caches yourself and move the checkpoint past the statement, or set \
                 [extract] on_table_reset = \"flush\" so squeal flushes every target through \
                 its sinks and goes on",
                self.file, self.current_end
            ))),
            OnTableReset::Flush => {
                self.problems.push(format!(
                    "{what} at binlog {}:{}: flushing every target (on_table_reset = \"flush\")",
                    self.file, self.current_end
                ));
                self.flush_pending = true;
                Ok(())
            }
        }
    }

    /// End of the event being handled (set by `handle` through `outer_pos`/log_pos).
    fn pending_end(&self) -> u64 {
        self.current_end
    }

    fn table_map(&mut self, ev: &Event, _end: u64) -> Result<(), ProcessError> {
        let data = ev.data();
        // Table id: first 6 bytes of the post-header.
        if data.len() < 6 {
            return Err(ProcessError::Event(
                19,
                self.file.clone(),
                std::io::Error::other("short TABLE_MAP"),
            ));
        }
        let id = le48(data);
        if let Some((raw, _)) = self.tables.get(&id) {
            if raw.as_slice() == data {
                return Ok(());
            }
        }
        let tme: TableMapEvent = ev
            .read_event()
            .map_err(|e| ProcessError::Event(19, self.file.clone(), e))?;
        self.ctx.mariadb = ev
            .fde()
            .server_version_raw()
            .windows(7)
            .any(|w| w == b"MariaDB");
        let p = plan(
            &tme,
            &self.rules,
            &self.outboxes,
            self.schema.as_mut(),
            &self.ctx,
        );
        if let Some(problem) = &p.problem {
            self.stats.schema_problems += 1;
            self.problems.push(problem.clone());
        }
        self.tables.insert(id, (data.to_vec(), Arc::new(p)));
        Ok(())
    }

    fn rows(&mut self, ev: &Event, t: u8) -> Result<(), ProcessError> {
        self.begin();
        let data = ev.data();
        let is_update = matches!(t, 24 | 31 | 39);
        let is_delete = matches!(t, 25 | 32);
        let RowsHeader {
            id,
            ncols,
            bitmaps,
            mut p,
        } = rows_header(ev, t, is_update)?;
        let bm = ncols.div_ceil(8);
        let bm1 = &data[bitmaps..bitmaps + bm];
        let bm2 = if is_update {
            &data[bitmaps + bm..bitmaps + 2 * bm]
        } else {
            bm1
        };
        let Some((_, plan)) = self.tables.get(&id) else {
            self.stats.decode_errors += 1;
            self.problems
                .push(format!("rows event for unknown table id {id}; skipped"));
            return Ok(());
        };
        let plan = plan.clone();
        if plan.cols.len() != ncols {
            self.stats.decode_errors += 1;
            self.problems.push(format!(
                "{}.{}: rows event has {ncols} columns, table map {}",
                plan.db,
                plan.table,
                plan.cols.len()
            ));
            return Ok(());
        }
        if !plan.annotation_match(&self.annotation_dbs) {
            // Rows of other databases do not allow annotations.
        } else {
            self.annot_allowed = true;
        }
        if plan.wants_rows() {
            self.check_images(&plan, is_update, is_delete, bm1, bm2)?;
        }
        let rows_data = &data[..data.len()];
        let partial = if t == 39 { Some(plan.json_cols) } else { None };
        while p < rows_data.len() {
            let mut sa = std::mem::take(&mut self.slots_a);
            let mut sb = std::mem::take(&mut self.slots_b);
            let r = (|| -> Result<(), crate::source::decode::DecodeError> {
                read_image(rows_data, &mut p, &plan.cols, bm1, None, &mut sa)?;
                if is_update {
                    read_image(rows_data, &mut p, &plan.cols, bm2, partial, &mut sb)?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                self.slots_a = sa;
                self.slots_b = sb;
                self.stats.decode_errors += 1;
                self.problems
                    .push(format!("{}.{}: {e}", plan.db, plan.table));
                return Ok(());
            }
            self.stats.rows += 1;
            if plan.wants_rows() {
                let _ = is_delete;
                self.row_keys(&plan, rows_data, &sa)?;
                if is_update {
                    for &c in &self.fill {
                        sb[c] = sa[c];
                    }
                    self.row_keys(&plan, rows_data, &sb)?;
                }
            }
            self.slots_a = sa;
            self.slots_b = sb;
        }
        Ok(())
    }

    /// Finds the template (and outbox) columns a rows event's images lack
    /// (`binlog_row_image` MINIMAL or NOBLOB, set globally or by the session): counted per
    /// column, then an error (default) or a logged problem. A NULL value is not missing: it
    /// is in the image. An UPDATE's after image lacks the columns the statement did not
    /// change; those are taken from the before image (`self.fill`), so only a column absent
    /// from the before image (or from an INSERT's / DELETE's only image) is missing.
    fn check_images(
        &mut self,
        plan: &TablePlan,
        is_update: bool,
        is_delete: bool,
        bm1: &[u8],
        bm2: &[u8],
    ) -> Result<(), ProcessError> {
        let has = |bm: &[u8], c: usize| bm.get(c / 8).is_some_and(|b| b & (1 << (c % 8)) != 0);
        self.fill.clear();
        let mut missing: Vec<usize> = Vec::new();
        let cols = plan
            .templates
            .iter()
            .flatten()
            .filter_map(|p| match p {
                BoundPart::Col(c, _) => Some(*c),
                _ => None,
            })
            .chain(plan.outbox);
        for c in cols {
            if !has(bm1, c) {
                if !missing.contains(&c) {
                    missing.push(c);
                }
            } else if is_update && !has(bm2, c) && !self.fill.contains(&c) {
                self.fill.push(c);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let (kind, image) = match (is_update, is_delete) {
            (true, _) => ("UPDATE", "before"),
            (_, true) => ("DELETE", "before"),
            _ => ("INSERT", "only"),
        };
        let table = format!("{}.{}", plan.db, plan.table);
        let mut names = Vec::new();
        for &c in &missing {
            let name = plan
                .names
                .as_ref()
                .and_then(|n| n.get(c).cloned())
                .unwrap_or_else(|| format!("#{c}"));
            metrics::counter!("squeal_rule_columns_missing_total", "table" => table.clone(), "column" => name.clone())
                .increment(1);
            names.push(name);
        }
        self.stats.missing_columns += 1;
        let msg = format!(
            "{table}: column(s) {} not in the {image} image of the {kind} rows event ending at \
             {}:{}, so the keys built from them cannot be computed (the server logged it with \
             binlog_row_image MINIMAL or NOBLOB, set globally or by the session). Set \
             binlog_row_image=FULL (SET GLOBAL binlog_row_image=FULL, in my.cnf, and in any \
             session that changes it); or set [extract] on_missing_column = \"warn\" to go on \
             without those keys",
            names.join(", "),
            self.file,
            self.current_end
        );
        match self.on_missing_column {
            OnMissingColumn::Stop => Err(ProcessError::MissingColumn(msg)),
            OnMissingColumn::Warn => {
                self.problems.push(msg);
                Ok(())
            }
        }
    }

    fn row_keys(
        &mut self,
        plan: &TablePlan,
        data: &[u8],
        slots: &[Option<(usize, usize)>],
    ) -> Result<(), ProcessError> {
        for tpl in &plan.templates {
            self.key.clear();
            let mut ok = true;
            for part in tpl {
                match part {
                    BoundPart::Lit(l) => self.key.extend_from_slice(l),
                    BoundPart::Col(c, filters) => match slots[*c] {
                        Some((s, e)) => {
                            let v = &data[s..e];
                            let r = append_part(
                                &plan.text[*c],
                                filters,
                                v,
                                &mut self.key,
                                &mut self.scratch,
                            );
                            if let Err(e) = r {
                                self.drop_value(plan, *c, e);
                                ok = false;
                                break;
                            }
                        }
                        None => {
                            ok = false;
                            break;
                        }
                    },
                }
            }
            if ok {
                self.push_key(plan)?;
            }
        }
        if let Some(c) = plan.outbox {
            if let Some((s, e)) = slots[c] {
                self.key.clear();
                match format(&plan.text[c], &data[s..e], &mut self.key) {
                    Ok(()) => self.push_key(plan)?,
                    Err(e) => self.drop_value(plan, c, e),
                }
            }
        }
        Ok(())
    }

    /// A key dropped: counted by reason and table, and a problem line for the log.
    fn dropped(&mut self, plan: &TablePlan, reason: &'static str, msg: String) {
        self.stats.bad_keys += 1;
        metrics::counter!(
            "squeal_keys_dropped_total",
            "reason" => reason,
            "table" => format!("{}.{}", plan.db, plan.table)
        )
        .increment(1);
        self.problems.push(msg);
    }

    fn drop_value(&mut self, plan: &TablePlan, col: usize, e: NoText) {
        let name = plan
            .names
            .as_ref()
            .and_then(|n| n.get(col))
            .map_or_else(|| format!("#{col}"), |n| n.clone());
        let msg = format!(
            "{}.{}: column {name} gave no key text, key dropped ({}): {}",
            plan.db, plan.table, e.reason, e.why
        );
        self.dropped(plan, e.reason, msg);
    }

    fn push_key(&mut self, plan: &TablePlan) -> Result<(), ProcessError> {
        match marker::key::validate(&self.key) {
            Ok(()) => {
                if let Some(o) = &mut self.origins {
                    o.push((format!("{}.{}", plan.db, plan.table), self.key.clone()));
                }
                self.txn.insert(&self.key).map_err(ProcessError::Spill)
            }
            Err(e) => {
                let reason = match e {
                    marker::key::KeyError::Empty => "empty",
                    marker::key::KeyError::TooLong(_) => "too_long",
                    marker::key::KeyError::BadByte(_) => "bad_byte",
                };
                let msg = format!(
                    "{}.{}: key {:?} is not a legal memcache key, dropped: {e} (a template \
                     filter such as {{col|sha1}} or {{col|hex}} makes a legal key of any value)",
                    plan.db,
                    plan.table,
                    String::from_utf8_lossy(&self.key[..self.key.len().min(300)])
                );
                self.dropped(plan, reason, msg);
                Ok(())
            }
        }
    }
}

impl TablePlan {
    fn annotation_match(&self, dbs: &[String]) -> bool {
        dbs.is_empty() || dbs.contains(&self.db)
    }
}

/// Where a rows event's parts are: its table id, column count, the column bitmaps (one,
/// two for an UPDATE) and the first row.
struct RowsHeader {
    id: u64,
    ncols: usize,
    /// Offset of the first bitmap.
    bitmaps: usize,
    /// Offset of the first row image.
    p: usize,
}

/// Reads the post-header of a rows event (v1 or v2) up to its first row.
fn rows_header(ev: &Event, t: u8, is_update: bool) -> Result<RowsHeader, ProcessError> {
    let data = ev.data();
    let et = EventType::try_from(t).map_err(|_| ProcessError::Unsupported(t, "rows"))?;
    let post = ev.fde().get_event_type_header_length(et) as usize;
    let bad =
        |what: &str| ProcessError::Event(t, String::new(), std::io::Error::other(what.to_string()));
    if data.len() < post || post < 8 {
        return Err(bad("short rows event header"));
    }
    let id = if post == 6 {
        u32::from_le_bytes(data[..4].try_into().expect("4")) as u64
    } else {
        le48(data)
    };
    let mut p = post;
    if post == 10 {
        // v2: extra data length counts its own two bytes.
        let extra = u16::from_le_bytes([data[8], data[9]]) as usize;
        p = post + extra.saturating_sub(2);
    }
    let (ncols, n) = lenenc(data, p).map_err(|e| bad(&e.to_string()))?;
    p += n;
    let ncols = ncols as usize;
    let bm = ncols.div_ceil(8);
    let nbm = if is_update { 2 } else { 1 };
    if data.len() < p + bm * nbm {
        return Err(bad("short rows event bitmaps"));
    }
    Ok(RowsHeader {
        id,
        ncols,
        bitmaps: p,
        p: p + bm * nbm,
    })
}

/// The quoting rules of a `sql_mode` setting such as `"ANSI_QUOTES,NO_BACKSLASH_ESCAPES"`.
fn dialect_of(mode: &str) -> marker::annotation::Dialect {
    let m = mode.to_ascii_uppercase();
    let has = |f: &str| m.split(',').any(|x| x.trim() == f);
    marker::annotation::Dialect {
        backslash_escapes: !has("NO_BACKSLASH_ESCAPES"),
        ansi_quotes: has("ANSI_QUOTES") || has("ANSI"),
    }
}

/// The file name of a ROTATE event. The fake ROTATE a server sends first comes before the
/// FORMAT_DESCRIPTION that announces checksums, so its CRC32 may still be glued to the name:
/// strip it when it verifies.
fn rotate_name(ev: &Event, name: &[u8]) -> String {
    let h = ev.header();
    if name.len() > 4 {
        let (n, crc) = name.split_at(name.len() - 4);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&h.timestamp().to_le_bytes());
        hasher.update(&[h.event_type_raw()]);
        hasher.update(&h.server_id().to_le_bytes());
        hasher.update(&h.event_size().to_le_bytes());
        hasher.update(&h.log_pos().to_le_bytes());
        hasher.update(&h.flags_raw().to_le_bytes());
        let data = ev.data();
        hasher.update(&data[..data.len().saturating_sub(4)]);
        if hasher.finalize().to_le_bytes() == crc && data.ends_with(crc) {
            return String::from_utf8_lossy(n).into_owned();
        }
    }
    String::from_utf8_lossy(name).into_owned()
}

fn le48(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&d[..6]);
    u64::from_le_bytes(b)
}

fn uuid(sid: &[u8; 16]) -> String {
    let h: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn strip_leading_comments(mut s: &[u8]) -> &[u8] {
    loop {
        while let Some((&c, rest)) = s.split_first() {
            if c.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        if s.starts_with(b"/*") && !s.starts_with(b"/*!") && !s.starts_with(b"/*M!") {
            match s.windows(2).position(|w| w == b"*/") {
                Some(i) if i >= 2 => s = &s[i + 2..],
                _ => return s,
            }
        } else if s.starts_with(b"#") || s.starts_with(b"-- ") {
            match s.iter().position(|&c| c == b'\n') {
                Some(i) => s = &s[i + 1..],
                None => return &[],
            }
        } else {
            return s;
        }
    }
}

fn first_word(s: &[u8]) -> Vec<u8> {
    let s = strip_leading_comments(s);
    s.iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .take(16)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(first_word(b"  /* x */ begin"), b"BEGIN");
        assert_eq!(first_word(b"# c\nALTER TABLE"), b"ALTER");
        assert_eq!(first_word(b"ROLLBACK TO SAVEPOINT a"), b"ROLLBACK");
        assert_eq!(first_word(b""), b"");
        assert_eq!(first_word(b"/* unterminated"), b"");
    }
}
