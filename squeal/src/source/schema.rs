//! Table schemas: what each column of a TABLE_MAP event is called and whether it is
//! unsigned, and the plan that turns a table's rows into keys.
//!
//! Names come from the table map's FULL row metadata when the server writes it
//! (`binlog_row_metadata=FULL`), otherwise from `information_schema.COLUMNS`, cached per
//! table and dropped whenever a DDL statement passes in the stream, so an ALTER that adds or
//! reorders columns never makes a rule read the wrong column. A table map whose column
//! count disagrees with information_schema gets no rules (counted, logged) rather than wrong
//! keys.

use std::collections::HashMap;

use mysql_common::binlog::events::{OptionalMetadataField, TableMapEvent};

use super::decode::{is_numeric, ty, ColSpec};
use crate::extract::rules::{bind, BoundPart, Rule};

/// A column as information_schema describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub unsigned: bool,
    /// SQL type name (`int`, `varchar`, ...), lower case; empty if unknown.
    pub data_type: String,
}

/// Whether a table-map column type can be the binlog form of an SQL type. Used to refuse
/// information_schema names that describe a different layout than the row (catching up
/// across an ALTER without FULL metadata): a reordered table shows as a type mismatch.
pub fn compatible(binlog_type: u8, data_type: &str) -> bool {
    let want: &[u8] = match data_type {
        "" => return true,
        "tinyint" | "bool" | "boolean" => &[ty::TINY],
        "smallint" => &[ty::SHORT],
        "mediumint" => &[ty::INT24],
        "int" | "integer" => &[ty::LONG],
        "bigint" => &[ty::LONGLONG],
        "float" => &[ty::FLOAT],
        "double" | "real" => &[ty::DOUBLE],
        "decimal" | "numeric" | "dec" | "fixed" => &[ty::NEWDECIMAL, ty::DECIMAL],
        "date" => &[ty::DATE, ty::NEWDATE],
        "datetime" => &[ty::DATETIME, ty::DATETIME2],
        "timestamp" => &[ty::TIMESTAMP, ty::TIMESTAMP2],
        "time" => &[ty::TIME, ty::TIME2],
        "year" => &[ty::YEAR],
        "bit" => &[ty::BIT],
        "varchar" | "varbinary" => &[ty::VARCHAR, ty::VAR_STRING],
        "char" | "binary" | "enum" | "set" => &[ty::STRING, ty::ENUM, ty::SET],
        "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob" | "mediumblob"
        | "longblob" => &[ty::BLOB],
        "json" => &[ty::JSON, ty::BLOB],
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => &[ty::GEOMETRY],
        // Types this list does not know (inet6, uuid, vector...): do not judge.
        _ => return true,
    };
    want.contains(&binlog_type)
}

/// Where column names come from when the table map has none.
pub trait SchemaLookup: Send {
    /// Columns of `db`.`table` in ordinal order; `Ok(None)` if unknown.
    fn columns(&mut self, db: &str, table: &str) -> Result<Option<Vec<ColumnInfo>>, String>;
    /// Forgets what it cached (after DDL).
    fn invalidate(&mut self);
}

/// No lookup (parsing files offline): tables without FULL metadata have no names.
pub struct NoSchema;

impl SchemaLookup for NoSchema {
    fn columns(&mut self, _: &str, _: &str) -> Result<Option<Vec<ColumnInfo>>, String> {
        Ok(None)
    }
    fn invalidate(&mut self) {}
}

/// A fixed schema (tests, or a cache filled by the live source).
#[derive(Default)]
pub struct StaticSchema(pub HashMap<(String, String), Vec<ColumnInfo>>);

impl SchemaLookup for StaticSchema {
    fn columns(&mut self, db: &str, table: &str) -> Result<Option<Vec<ColumnInfo>>, String> {
        Ok(self.0.get(&(db.to_string(), table.to_string())).cloned())
    }
    fn invalidate(&mut self) {}
}

/// How the rows of one table map become keys.
#[derive(Debug)]
pub struct TablePlan {
    pub db: String,
    pub table: String,
    pub cols: Vec<ColSpec>,
    pub names: Option<Vec<String>>,
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
) -> TablePlan {
    let db = tme.database_name().into_owned();
    let table = tme.table_name().into_owned();
    let n = tme.columns_count() as usize;
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
        let t = match tme.get_raw_column_type(i) {
            Ok(Some(c)) => c as u8,
            // Unknown type: rows of this table fail to decode (counted), never misread.
            _ => 20,
        };
        let meta = tme.get_column_metadata(i).unwrap_or(&[]);
        let mut m = [0u8; 2];
        let ml = meta.len().min(2);
        m[..ml].copy_from_slice(&meta[..ml]);
        cols.push(ColSpec {
            ty: t,
            meta: m,
            meta_len: ml as u8,
            unsigned: false,
        });
    }
    let json_cols = cols.iter().filter(|c| c.ty == ty::JSON).count();

    // FULL metadata: names and signedness.
    let mut names: Option<Vec<String>> = None;
    let mut signedness: Option<Vec<bool>> = None;
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

    let matching: Vec<&Rule> = rules.iter().filter(|r| r.matches(&db, &table)).collect();
    let outbox_col = outboxes
        .iter()
        .find(|(d, t, _)| (d == "*" || *d == db) && (t == "*" || *t == table))
        .map(|(_, _, c)| c.clone());
    let mut problem = None;
    if (!matching.is_empty() || outbox_col.is_some()) && names.is_none() {
        match schema.columns(&db, &table) {
            Ok(Some(info))
                if info.len() == n
                    && !info
                        .iter()
                        .zip(&cols)
                        .all(|(i, c)| compatible(c.ty, &i.data_type)) =>
            {
                problem = Some(format!(
                    "{db}.{table}: information_schema column types do not match the binlog \
                     row (schema changed since?); rules skipped"
                ))
            }
            Ok(Some(info)) if info.len() == n => {
                if signedness.is_none() {
                    for (c, i) in cols.iter_mut().zip(&info) {
                        c.unsigned = i.unsigned;
                    }
                }
                names = Some(info.into_iter().map(|i| i.name).collect());
            }
            Ok(Some(info)) => {
                problem = Some(format!(
                    "{db}.{table}: the binlog row has {n} columns, information_schema {} \
                     (schema changed since?); rules skipped",
                    info.len()
                ))
            }
            Ok(None) => {
                problem = Some(format!(
                    "{db}.{table}: no column names (no FULL row metadata, table unknown to \
                     information_schema); rules skipped"
                ))
            }
            Err(e) => problem = Some(format!("{db}.{table}: schema lookup failed: {e}")),
        }
    }
    let mut templates = Vec::new();
    let mut outbox = None;
    if let Some(names) = &names {
        for r in &matching {
            for t in &r.templates {
                match bind(t, names) {
                    Some(b) => templates.push(b),
                    None => {
                        problem = Some(format!(
                            "{db}.{table}: template {:?} names a column the table lacks",
                            t.source
                        ))
                    }
                }
            }
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
        names,
        templates,
        outbox,
        json_cols,
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_compatibility() {
        assert!(compatible(ty::LONG, "int"));
        assert!(!compatible(ty::VARCHAR, "int"));
        assert!(!compatible(ty::LONG, "varchar"));
        assert!(compatible(ty::BLOB, "text"));
        assert!(compatible(ty::STRING, "enum"));
        assert!(compatible(ty::DATETIME2, "datetime"));
        assert!(compatible(ty::STRING, "inet6"));
        assert!(compatible(ty::LONG, ""));
    }
}
