//! Table schemas as the server describes them: a column's name, signedness and SQL type
//! ([`ColumnInfo`]) from information_schema, behind [`SchemaLookup`] (the live source's
//! cached lookup, a fixed one for tests, none offline), and whether a table-map column
//! type fits an SQL type ([`compatible`]).

use std::collections::HashMap;

use super::decode::ty;

/// A column as information_schema describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnInfo {
    pub name: String,
    pub unsigned: bool,
    /// SQL type name (`int`, `varchar`, ...), lower case; empty if unknown.
    pub data_type: String,
    /// The whole `COLUMN_TYPE` (`enum('a','b')`, `int(5) unsigned zerofill`,
    /// `float(7,2)`), for ENUM/SET labels, ZEROFILL widths and fixed decimals.
    pub column_type: String,
    /// `CHARACTER_SET_NAME` (None for non-character columns and binary strings).
    pub charset: Option<String>,
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

/// One foreign key with a cascading action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cascade {
    pub name: String,
    pub child_db: String,
    pub child_table: String,
    pub child_columns: Vec<String>,
    pub parent_db: String,
    pub parent_table: String,
    pub parent_columns: Vec<String>,
    /// e.g. `ON DELETE CASCADE, ON UPDATE SET NULL`.
    pub actions: String,
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
