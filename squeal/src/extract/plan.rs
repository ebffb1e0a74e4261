//! Table plans: how the rows of one table map become keys, built once per TABLE_MAP event
//! from the rules that match the table, its columns' names and types, and how each column's
//! values become key text.
//!
//! Names come from the table map's FULL row metadata when the server writes it
//! (`binlog_row_metadata=FULL`), otherwise from `information_schema.COLUMNS` (a
//! [`SchemaLookup`], cached per table and dropped whenever a DDL statement passes in the
//! stream), so an ALTER that adds or reorders columns never makes a rule read the wrong
//! column. A table map whose column count disagrees with information_schema gets no rules
//! (counted, logged) rather than wrong keys.

use std::sync::Arc;

use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};

use super::rules::{bind, BoundPart, Rule};
use super::text::{Charset, CharsetInfo, ColumnMeta, TextForm};
use crate::source::decode::{is_numeric, ty, ColSpec};
use crate::source::schema::{compatible, ColumnInfo, SchemaLookup};
use crate::source::zone::Zone;

impl ColumnInfo {
    /// What information_schema tells about the key text of this column.
    fn meta(&self) -> ColumnMeta {
        let ct = self.column_type.as_str();
        let lower = ct.to_ascii_lowercase();
        let mut m = ColumnMeta {
            data_type: Some(self.data_type.clone()),
            ..Default::default()
        };
        let args = ct
            .find('(')
            .and_then(|i| ct[i + 1..].rfind(')').map(|j| &ct[i + 1..i + 1 + j]));
        if lower.contains("zerofill") {
            m.zerofill = args.and_then(|a| a.trim().parse().ok()).unwrap_or(0);
        }
        if matches!(self.data_type.as_str(), "float" | "double" | "real") {
            m.decimals = args
                .and_then(|a| a.split_once(','))
                .and_then(|(_, d)| d.trim().parse().ok());
        }
        if matches!(self.data_type.as_str(), "enum" | "set") {
            m.labels = args.map(|a| Arc::new(parse_labels(a)));
        }
        m.charset = match &self.charset {
            Some(n) => match Charset::from_name(n) {
                Some(c) => CharsetInfo::Known(c),
                None => CharsetInfo::Unknown(n.clone()),
            },
            None => CharsetInfo::Known(Charset::Binary),
        };
        m
    }
}

/// The labels of `'a','b''c'` (an ENUM/SET definition as information_schema shows it).
fn parse_labels(a: &str) -> Vec<Vec<u8>> {
    let b = a.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\'' {
            i += 1;
            continue;
        }
        let mut l = Vec::new();
        i += 1;
        while i < b.len() {
            if b[i] == b'\'' {
                if b.get(i + 1) == Some(&b'\'') {
                    l.push(b'\'');
                    i += 2;
                    continue;
                }
                i += 1;
                break;
            }
            l.push(b[i]);
            i += 1;
        }
        out.push(l);
    }
    out
}

/// What plans need beyond the table map: the TIMESTAMP time zone and the server flavour
/// (MariaDB lists GEOMETRY columns among the character columns of its charset metadata).
#[derive(Debug, Clone)]
pub struct PlanContext {
    pub zone: Arc<Zone>,
    pub mariadb: bool,
}

impl Default for PlanContext {
    fn default() -> Self {
        PlanContext {
            zone: Arc::new(Zone::utc()),
            mariadb: false,
        }
    }
}

/// How the rows of one table map become keys.
#[derive(Debug)]
pub struct TablePlan {
    pub db: String,
    pub table: String,
    pub cols: Vec<ColSpec>,
    pub names: Option<Vec<String>>,
    /// How each column's values become key text.
    pub text: Vec<TextForm>,
    /// Bound templates of every rule matching this table.
    pub templates: Vec<Vec<BoundPart>>,
    /// Column holding the key, for an outbox table.
    pub outbox: Option<usize>,
    pub json_cols: usize,
    /// Why rules could not be bound, if they could not.
    pub problem: Option<String>,
}

impl TablePlan {
    pub fn wants_rows(&self) -> bool {
        !self.templates.is_empty() || self.outbox.is_some()
    }
}

/// Builds the plan of a table map.
pub fn plan(
    tme: &TableMapEvent<'_>,
    rules: &[Rule],
    outboxes: &[(String, String, String)],
    schema: &mut dyn SchemaLookup,
    ctx: &PlanContext,
) -> TablePlan {
    let db = tme.database_name().into_owned();
    let table = tme.table_name().into_owned();
    let mut cols = column_specs(tme);
    let json_cols = cols.iter().filter(|c| c.ty == ty::JSON).count();
    let mut m = table_map_metadata(tme, &mut cols, ctx);
    let matching: Vec<&Rule> = rules.iter().filter(|r| r.matches(&db, &table)).collect();
    let outbox_col = outboxes
        .iter()
        .find(|(d, t, _)| (d == "*" || *d == db) && (t == "*" || *t == table))
        .map(|(_, _, c)| c.clone());
    let mut problem = None;
    if !matching.is_empty() || outbox_col.is_some() {
        problem = add_schema(&db, &table, &mut cols, &mut m, schema);
    }
    let text: Vec<TextForm> = cols
        .iter()
        .zip(&m.meta)
        .map(|(c, meta)| TextForm::of(c, meta, &ctx.zone))
        .collect();
    let mut templates = Vec::new();
    let mut outbox = None;
    if let Some(names) = &m.names {
        let where_ = format!("{db}.{table}");
        if let Some(p) = bind_templates(&where_, &matching, names, &text, &mut templates) {
            problem = Some(p);
        }
        if let Some(c) = outbox_col {
            outbox = names.iter().position(|n| n.eq_ignore_ascii_case(&c));
            if outbox.is_none() {
                problem = Some(format!("{db}.{table}: outbox column {c:?} not found"));
            }
        }
    }
    TablePlan {
        db,
        table,
        cols,
        text,
        names: m.names,
        templates,
        outbox,
        json_cols,
        problem,
    }
}

/// The layout of each column as the table map gives it (type and metadata bytes).
fn column_specs(tme: &TableMapEvent<'_>) -> Vec<ColSpec> {
    let n = tme.columns_count() as usize;
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
        let t = match tme.get_raw_column_type(i) {
            Ok(Some(c)) => c as u8,
            // Unknown type: rows of this table fail to decode (counted), never misread.
            _ => 20,
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        cols.push(ColSpec::new(t, meta, false));
    }
    cols
}

/// What the table map's optional (FULL row) metadata says about the columns.
struct TableMapMeta {
    names: Option<Vec<String>>,
    /// Signedness was given (and set on the numeric columns).
    signedness: bool,
    meta: Vec<ColumnMeta>,
    /// Character sets were given.
    have_charsets: bool,
}

/// Reads the FULL row metadata: names, signedness (set on `cols`), character sets and
/// ENUM/SET labels.
fn table_map_metadata(
    tme: &TableMapEvent<'_>,
    cols: &mut [ColSpec],
    ctx: &PlanContext,
) -> TableMapMeta {
    let n = cols.len();
    let mut names: Option<Vec<String>> = None;
    let mut signedness: Option<Vec<bool>> = None;
    // Character columns (in column order) and ENUM/SET columns, as the charset metadata
    // counts them.
    let is_char = |c: &ColSpec| {
        matches!(
            c.real_type(),
            ty::STRING | ty::VAR_STRING | ty::VARCHAR | ty::BLOB
        ) || (ctx.mariadb && c.ty == ty::GEOMETRY)
    };
    let char_cols: Vec<usize> = (0..n).filter(|&i| is_char(&cols[i])).collect();
    let enum_cols: Vec<usize> = (0..n)
        .filter(|&i| matches!(cols[i].real_type(), ty::ENUM | ty::SET))
        .collect();
    let mut meta: Vec<ColumnMeta> = vec![ColumnMeta::default(); n];
    let mut have_charsets = false;
    let mut enum_charset: Vec<Option<u16>> = vec![None; n];
    let set_charset = |list: &[usize], idx: usize, id: u16, meta: &mut Vec<ColumnMeta>| {
        if let Some(&c) = list.get(idx) {
            meta[c].charset = match Charset::from_collation(id) {
                Some(cs) => CharsetInfo::Known(cs),
                None => CharsetInfo::Unknown(format!("with collation id {id}")),
            };
        }
    };
    let mut enum_labels: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut set_labels: Vec<Vec<Vec<u8>>> = Vec::new();
    for field in tme.iter_optional_meta() {
        match field {
            Ok(OptionalMetadataField::ColumnName(cn)) => {
                let v: Result<Vec<String>, _> = cn
                    .iter_names()
                    .map(|r| r.map(|c| c.name().into_owned()))
                    .collect();
                if let Ok(v) = v {
                    if v.len() == n {
                        names = Some(v);
                    }
                }
            }
            Ok(OptionalMetadataField::Signedness(bits)) => {
                signedness = Some(bits.iter().by_vals().collect());
            }
            Ok(OptionalMetadataField::DefaultCharset(d)) => {
                have_charsets = true;
                for i in 0..char_cols.len() {
                    set_charset(&char_cols, i, d.default_charset(), &mut meta);
                }
                for nd in d.iter_non_default().flatten() {
                    set_charset(
                        &char_cols,
                        nd.column_index() as usize,
                        nd.charset(),
                        &mut meta,
                    );
                }
            }
            Ok(OptionalMetadataField::ColumnCharset(c)) => {
                have_charsets = true;
                for (i, id) in c.iter_charsets().flatten().enumerate() {
                    set_charset(&char_cols, i, id, &mut meta);
                }
            }
            Ok(OptionalMetadataField::EnumAndSetDefaultCharset(d)) => {
                for c in &enum_cols {
                    enum_charset[*c] = Some(d.default_charset());
                }
                for nd in d.iter_non_default().flatten() {
                    if let Some(&c) = enum_cols.get(nd.column_index() as usize) {
                        enum_charset[c] = Some(nd.charset());
                    }
                }
            }
            Ok(OptionalMetadataField::EnumAndSetColumnCharset(c)) => {
                for (i, id) in c.iter_charsets().flatten().enumerate() {
                    if let Some(&c) = enum_cols.get(i) {
                        enum_charset[c] = Some(id);
                    }
                }
            }
            Ok(OptionalMetadataField::EnumStrValue(v)) => {
                for e in v.iter_values().flatten() {
                    enum_labels.push(e.values().iter().map(|x| x.value_raw().to_vec()).collect());
                }
            }
            Ok(OptionalMetadataField::SetStrValue(v)) => {
                for e in v.iter_values().flatten() {
                    set_labels.push(e.values().iter().map(|x| x.value_raw().to_vec()).collect());
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(s) = &signedness {
        let mut it = s.iter();
        for c in cols.iter_mut() {
            if is_numeric(c.ty) {
                c.unsigned = it.next().copied().unwrap_or(false);
            }
        }
    }

    // ENUM/SET labels from the metadata, in their own character set.
    label_enums(
        cols,
        &enum_cols,
        &enum_charset,
        enum_labels,
        set_labels,
        &mut meta,
    );
    TableMapMeta {
        names,
        signedness: signedness.is_some(),
        meta,
        have_charsets,
    }
}

/// Sets the labels of each ENUM/SET column (in column order: ENUMs take from `enum_labels`,
/// SETs from `set_labels`), transcoded from the column's character set to UTF-8.
fn label_enums(
    cols: &[ColSpec],
    enum_cols: &[usize],
    enum_charset: &[Option<u16>],
    enum_labels: Vec<Vec<Vec<u8>>>,
    set_labels: Vec<Vec<Vec<u8>>>,
    meta: &mut [ColumnMeta],
) {
    let (mut e, mut st) = (enum_labels.into_iter(), set_labels.into_iter());
    for &c in enum_cols {
        let l = if cols[c].real_type() == ty::ENUM {
            e.next()
        } else {
            st.next()
        };
        if let Some(l) = l {
            let cs = enum_charset[c]
                .and_then(Charset::from_collation)
                .unwrap_or(Charset::Utf8);
            let l = l
                .iter()
                .map(|x| {
                    let mut o = Vec::new();
                    cs.transcode(x, &mut o);
                    o
                })
                .collect();
            meta[c].labels = Some(Arc::new(l));
        }
    }
}

/// Looks the table up in information_schema for what the table map could not say: names
/// (without FULL metadata, refused when count or types disagree with the row), signedness,
/// and the details a table map never carries (UUID/INET6 behind BINARY(16), FLOAT(M,D),
/// ZEROFILL). Returns why rules cannot be bound, if they cannot.
fn add_schema(
    db: &str,
    table: &str,
    cols: &mut [ColSpec],
    m: &mut TableMapMeta,
    schema: &mut dyn SchemaLookup,
) -> Option<String> {
    let n = cols.len();
    if let Some(names) = &m.names {
        // FULL metadata named the columns; information_schema still tells what the table
        // map cannot, matched by name.
        if let Ok(Some(info)) = schema.columns(db, table) {
            for (i, name) in names.iter().enumerate() {
                if let Some(ci) = info.iter().find(|c| c.name.eq_ignore_ascii_case(name)) {
                    if compatible(cols[i].ty, &ci.data_type) {
                        merge(&mut m.meta[i], ci.meta(), m.have_charsets);
                    }
                }
            }
        }
        return None;
    }
    match schema.columns(db, table) {
        Ok(Some(info))
            if info.len() == n
                && !info
                    .iter()
                    .zip(cols.iter())
                    .all(|(i, c)| compatible(c.ty, &i.data_type)) =>
        {
            Some(format!(
                "{db}.{table}: information_schema column types do not match the binlog \
                 row (schema changed since?); rules skipped"
            ))
        }
        Ok(Some(info)) if info.len() == n => {
            if !m.signedness {
                for (c, i) in cols.iter_mut().zip(&info) {
                    c.unsigned = i.unsigned;
                }
            }
            for (meta, i) in m.meta.iter_mut().zip(&info) {
                merge(meta, i.meta(), m.have_charsets);
            }
            m.names = Some(info.into_iter().map(|i| i.name).collect());
            None
        }
        Ok(Some(info)) => Some(format!(
            "{db}.{table}: the binlog row has {n} columns, information_schema {} \
             (schema changed since?); rules skipped",
            info.len()
        )),
        Ok(None) => Some(format!(
            "{db}.{table}: no column names (no FULL row metadata, table unknown to \
             information_schema); rules skipped"
        )),
        Err(e) => Some(format!("{db}.{table}: schema lookup failed: {e}")),
    }
}

/// Binds every template of the `matching` rules to the column `names` (into
/// `templates`). Returns the last problem: a template naming a column the table lacks, or
/// one using a column that cannot make a key.
fn bind_templates(
    table: &str,
    matching: &[&Rule],
    names: &[String],
    text: &[TextForm],
    templates: &mut Vec<Vec<BoundPart>>,
) -> Option<String> {
    let mut problem = None;
    for r in matching {
        for t in &r.templates {
            match bind(t, names) {
                Some(b) => {
                    for part in &b {
                        if let BoundPart::Col(c, _) = part {
                            if let Some(why) = text[*c].problem() {
                                problem = Some(format!(
                                    "{table}: template {:?}: column {} cannot make a key: \
                                     {why}",
                                    t.source, names[*c]
                                ));
                            }
                        }
                    }
                    templates.push(b)
                }
                None => {
                    problem = Some(format!(
                        "{table}: template {:?} names a column the table lacks",
                        t.source
                    ))
                }
            }
        }
    }
    problem
}

/// Adds what information_schema knows to what the table map said: its character set only
/// when the table map had none (the row's own metadata describes the row).
fn merge(m: &mut ColumnMeta, info: ColumnMeta, have_charsets: bool) {
    m.data_type = info.data_type;
    if !have_charsets {
        m.charset = info.charset;
    }
    if m.labels.is_none() {
        m.labels = info.labels;
    }
    m.zerofill = info.zerofill;
    m.decimals = info.decimals;
}
