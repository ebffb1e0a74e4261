//! The live binlog connection: registers as a replica with `mysql_async`, checks the
//! server's settings, asks for heartbeats and (on MariaDB) its own event types.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::*;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};

use super::schema::{Cascade, ColumnInfo, SchemaLookup};
use crate::config::SourceConfig;
use crate::model::Position;

/// The server is set up in a way squeal refuses to work with: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// `host:port` of the configured server, for log lines.
pub fn address(cfg: &SourceConfig) -> String {
    match opts(cfg) {
        Ok(o) => format!("{}:{}", o.ip_or_hostname(), o.tcp_port()),
        Err(_) => "the configured server".into(),
    }
}

/// Connects, retrying with backoff (`reconnect_min_ms` doubling to `reconnect_max_ms`)
/// while the server cannot be reached, logging the address each time; gives up only on a
/// stop signal (`Ok(None)`). A server that answers but refuses us (bad password, missing
/// grants) is retried too: an operator may be fixing it while squeal waits.
pub async fn connect_retrying(cfg: &SourceConfig) -> anyhow::Result<Option<Conn>> {
    let o = opts(cfg)?;
    let mut backoff = Duration::from_millis(cfg.reconnect_min_ms);
    let max = Duration::from_millis(cfg.reconnect_max_ms.max(cfg.reconnect_min_ms));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        match Conn::new(o.clone()).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                metrics::counter!("squeal_reconnects_total").increment(1);
                tracing::warn!(address = %address(cfg), error = %e, retry_in = ?backoff, "cannot connect to the server; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tokio::signal::ctrl_c() => return Ok(None),
            _ = sigterm.recv() => return Ok(None),
        }
        backoff = (backoff * 2).min(max);
    }
}

/// What the server is.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub mariadb: bool,
}

pub fn opts(cfg: &SourceConfig) -> anyhow::Result<Opts> {
    Opts::from_url(&cfg.url).map_err(|e| anyhow::anyhow!("[source] url: {e}"))
}

/// The server settings squeal depends on, as `SHOW GLOBAL VARIABLES` reports them (a
/// variable the server does not have, e.g. `binlog_row_metadata` before MySQL 8.0 /
/// MariaDB 10.5, is `None`).
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    pub version: String,
    pub server_id: u32,
    pub log_bin: String,
    pub binlog_format: String,
    pub binlog_row_image: Option<String>,
    pub binlog_row_metadata: Option<String>,
}

impl ServerSettings {
    pub fn mariadb(&self) -> bool {
        self.version.contains("MariaDB")
    }
}

/// Reads [`ServerSettings`].
pub async fn read_settings(conn: &mut Conn) -> anyhow::Result<ServerSettings> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .context("reading server settings")?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('server_id', 'log_bin', \
             'binlog_format', 'binlog_row_image', 'binlog_row_metadata')",
        )
        .await
        .context("reading server settings")?;
    let mut s = ServerSettings {
        version: version.unwrap_or_default(),
        ..Default::default()
    };
    for (name, value) in rows {
        match name.to_ascii_lowercase().as_str() {
            "server_id" => s.server_id = value.parse().unwrap_or(0),
            "log_bin" => s.log_bin = value,
            "binlog_format" => s.binlog_format = value,
            "binlog_row_image" => s.binlog_row_image = Some(value),
            "binlog_row_metadata" => s.binlog_row_metadata = Some(value),
            _ => {}
        }
    }
    Ok(s)
}

/// Why a row image setting other than FULL matters (shared by the start-up warning,
/// `--check` and the README).
pub const ROW_IMAGE_WHY: &str = "with binlog_row_image other than FULL the before image of \
     an UPDATE/DELETE holds only the primary key (MINIMAL) or lacks BLOB/TEXT columns (NOBLOB), \
     so a key built from another column cannot be computed; squeal treats that as an error \
     ([extract] on_missing_column). Set binlog_row_image=FULL (globally; a session may also \
     change it)";

/// Why squeal refuses `binlog_row_metadata` other than FULL by default.
pub const ROW_METADATA_WHY: &str = "without binlog_row_metadata=FULL the binlog carries no \
     column names, so squeal maps columns by position using information_schema, which \
     describes the table as it is now: an ALTER racing an UPDATE can map a row's columns \
     wrongly and produce wrong keys. Set binlog_row_metadata=FULL, or accept the risk with \
     [source] allow_minimal_metadata = true";

/// The problems of `s` for squeal: (fatal, message). Shared by start-up and `--check`.
pub fn setting_problems(s: &ServerSettings, cfg: &SourceConfig) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    if s.log_bin != "1" && !s.log_bin.eq_ignore_ascii_case("ON") {
        out.push((
            true,
            format!(
                "the server's binary log is off (log_bin={}); squeal needs --log-bin",
                s.log_bin
            ),
        ));
    }
    if !s.binlog_format.eq_ignore_ascii_case("ROW") {
        out.push((
            true,
            format!(
                "the server's binlog_format is {}; squeal needs ROW (SET GLOBAL binlog_format=ROW, \
                 or --binlog-format=ROW) to see every changed row",
                s.binlog_format
            ),
        ));
    }
    if s.server_id != 0 && s.server_id == cfg.server_id {
        out.push((
            true,
            format!(
                "[source] server_id = {} is the server's own server_id: a replica must use a \
                 server_id no other server or replica of this server uses",
                cfg.server_id
            ),
        ));
    }
    if let Some(img) = &s.binlog_row_image {
        if !img.eq_ignore_ascii_case("FULL") {
            out.push((
                false,
                format!("the server's binlog_row_image is {img}: {ROW_IMAGE_WHY}"),
            ));
        }
    }
    match &s.binlog_row_metadata {
        Some(m) if !m.eq_ignore_ascii_case("FULL") => out.push((
            !cfg.allow_minimal_metadata,
            format!("the server's binlog_row_metadata is {m}: {ROW_METADATA_WHY}"),
        )),
        None => out.push((
            !cfg.allow_minimal_metadata,
            format!("the server has no binlog_row_metadata setting: {ROW_METADATA_WHY}"),
        )),
        _ => {}
    }
    out
}

/// Checks the server's settings: refuses what squeal cannot work with (binlog off, not ROW,
/// our server_id is the server's, MINIMAL metadata without the opt-in); warns about a row
/// image other than FULL (once per process).
pub async fn check_server(conn: &mut Conn, cfg: &SourceConfig) -> anyhow::Result<ServerInfo> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let s = read_settings(conn).await?;
    let mut warn = Vec::new();
    for (fatal, msg) in setting_problems(&s, cfg) {
        if fatal {
            return Err(Refused(msg).into());
        }
        warn.push(msg);
    }
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        for msg in warn {
            tracing::warn!("{msg}");
        }
    }
    Ok(ServerInfo {
        mariadb: s.mariadb(),
        version: s.version,
    })
}

/// The zone TIMESTAMP values are shown in: `configured` (`[extract] time_zone`), else the
/// server's `@@time_zone` (its `@@system_time_zone` when that is `SYSTEM`), as the
/// application's sessions see them by default.
pub async fn time_zone(
    conn: &mut Conn,
    configured: Option<&str>,
) -> anyhow::Result<super::zone::Zone> {
    let row: Option<(String, String)> = conn
        .query_first("SELECT @@time_zone, @@system_time_zone")
        .await
        .context("reading the server's time zone")?;
    let (tz, system) = row.context("time zone query returned nothing")?;
    let name = configured.unwrap_or(&tz);
    super::zone::Zone::resolve(name, &system, std::path::Path::new("/usr/share/zoneinfo")).map_err(
        |e| {
            anyhow::anyhow!(
                "TIMESTAMP time zone: {e}. Set [extract] time_zone to a zone name in \
                 /usr/share/zoneinfo or an offset such as \"+00:00\" (the server has \
                 @@time_zone={tz}, @@system_time_zone={system})"
            )
        },
    )
}

/// `SHOW MASTER STATUS`.
pub async fn server_position(conn: &mut Conn) -> anyhow::Result<Position> {
    let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
    let row = row.context("SHOW MASTER STATUS returned nothing: is the binlog on?")?;
    Ok(Position {
        file: row.get::<String, _>(0).context("File")?,
        pos: row.get::<u64, _>(1).context("Position")?,
    })
}

/// `SHOW BINARY LOGS`: every file with its size.
pub async fn binary_logs(conn: &mut Conn) -> anyhow::Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// Opens a binlog stream at `pos`.
pub async fn open_stream(
    cfg: &SourceConfig,
    pos: &Position,
) -> anyhow::Result<(BinlogStream, ServerInfo)> {
    let mut conn = Conn::new(opts(cfg)?)
        .await
        .context("connecting to the server")?;
    let info = check_server(&mut conn, cfg).await?;
    let hb_ns = cfg.heartbeat_ms.saturating_mul(1_000_000);
    conn.query_drop(format!("SET @master_heartbeat_period = {hb_ns}"))
        .await
        .context("asking for heartbeats")?;
    if info.mariadb {
        conn.query_drop(format!(
            "SET @mariadb_slave_capability = {}",
            cfg.mariadb_capability
        ))
        .await
        .context("announcing MariaDB capabilities")?;
    }
    let req = BinlogStreamRequest::new(cfg.server_id)
        .with_filename(pos.file.as_bytes())
        .with_pos(pos.pos);
    let stream = conn
        .get_binlog_stream(req)
        .await
        .context("requesting the binlog stream")?;
    Ok((stream, info))
}

/// Column names from information_schema, cached per table until the next DDL.
pub struct InfoSchema {
    opts: Opts,
    conn: Option<Conn>,
    cache: HashMap<(String, String), Option<Vec<ColumnInfo>>>,
    handle: tokio::runtime::Handle,
}

impl InfoSchema {
    pub fn new(opts: Opts) -> InfoSchema {
        InfoSchema {
            opts,
            conn: None,
            cache: HashMap::new(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    async fn fetch(&mut self, db: &str, table: &str) -> anyhow::Result<Option<Vec<ColumnInfo>>> {
        if self.conn.is_none() {
            self.conn = Some(Conn::new(self.opts.clone()).await?);
        }
        let conn = self.conn.as_mut().expect("connected");
        let rows: Vec<(String, String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, DATA_TYPE, CHARACTER_SET_NAME \
                 FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (db, table),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.into_iter()
                .map(|(name, ty, data_type, charset)| {
                    let lower = ty.to_ascii_lowercase();
                    ColumnInfo {
                        name,
                        unsigned: lower.contains("unsigned"),
                        data_type: data_type.to_ascii_lowercase(),
                        column_type: ty,
                        charset,
                    }
                })
                .collect(),
        ))
    }
}

impl SchemaLookup for InfoSchema {
    fn columns(&mut self, db: &str, table: &str) -> Result<Option<Vec<ColumnInfo>>, String> {
        let key = (db.to_string(), table.to_string());
        if let Some(c) = self.cache.get(&key) {
            return Ok(c.clone());
        }
        let handle = self.handle.clone();
        let r = tokio::task::block_in_place(|| {
            handle.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), self.fetch(db, table)).await
            })
        });
        match r {
            Ok(Ok(c)) => {
                self.cache.insert(key, c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(format!("{e:#}"))
            }
            Err(_) => {
                self.conn = None;
                Err("information_schema query timed out".into())
            }
        }
    }

    fn invalidate(&mut self) {
        self.cache.clear();
    }
}

/// Foreign keys with a cascading action (CASCADE / SET NULL on delete or update), from
/// information_schema (REFERENTIAL_CONSTRAINTS for the actions, KEY_COLUMN_USAGE for the
/// columns in order).
pub async fn fk_cascades(conn: &mut Conn) -> anyhow::Result<Vec<Cascade>> {
    type Row = (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = conn
        .query(
            "SELECT rc.CONSTRAINT_SCHEMA, rc.CONSTRAINT_NAME, rc.TABLE_NAME, \
             k.REFERENCED_TABLE_SCHEMA, rc.REFERENCED_TABLE_NAME, \
             CONCAT('ON DELETE ', rc.DELETE_RULE, ', ON UPDATE ', rc.UPDATE_RULE), \
             k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME \
             FROM information_schema.REFERENTIAL_CONSTRAINTS rc \
             JOIN information_schema.KEY_COLUMN_USAGE k \
               ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA \
              AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME AND k.TABLE_NAME = rc.TABLE_NAME \
             WHERE rc.DELETE_RULE IN ('CASCADE', 'SET NULL') \
                OR rc.UPDATE_RULE IN ('CASCADE', 'SET NULL') \
             ORDER BY rc.CONSTRAINT_SCHEMA, rc.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION",
        )
        .await
        .context("reading foreign keys from information_schema")?;
    let mut out: Vec<Cascade> = Vec::new();
    for (db, name, child, pdb, parent, actions, col, pcol) in rows {
        match out.last_mut() {
            Some(c) if c.child_db == db && c.child_table == child && c.name == name => {
                c.child_columns.push(col);
                c.parent_columns.push(pcol);
            }
            _ => out.push(Cascade {
                name,
                child_db: db,
                child_table: child,
                child_columns: vec![col],
                parent_db: pdb,
                parent_table: parent,
                parent_columns: vec![pcol],
                actions,
            }),
        }
    }
    Ok(out)
}
