//! The live binlog connection: registers as a replica with `mysql_async`, checks the
//! server's settings, asks for heartbeats and (on MariaDB) its own event types.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use mysql_async::prelude::*;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts};

use super::process::Position;
use super::schema::{ColumnInfo, SchemaLookup};
use crate::config::SourceConfig;

/// What the server is.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub mariadb: bool,
}

pub fn opts(cfg: &SourceConfig) -> anyhow::Result<Opts> {
    Opts::from_url(&cfg.url).map_err(|e| anyhow::anyhow!("[source] url: {e}"))
}

/// Checks that the binlog is on and in ROW format; refuses otherwise.
pub async fn check_server(conn: &mut Conn) -> anyhow::Result<ServerInfo> {
    let row: Option<(String, String, String)> = conn
        .query_first("SELECT VERSION(), @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
        .await
        .context("reading server settings")?;
    let (version, log_bin, format) = row.context("server settings query returned nothing")?;
    if log_bin != "1" && !log_bin.eq_ignore_ascii_case("ON") {
        bail!("the server's binary log is off (log_bin={log_bin}); squeal needs --log-bin");
    }
    if !format.eq_ignore_ascii_case("ROW") {
        bail!(
            "the server's binlog_format is {format}; squeal needs ROW (SET GLOBAL binlog_format=ROW, \
             or --binlog-format=ROW) to see every changed row"
        );
    }
    Ok(ServerInfo {
        mariadb: version.contains("MariaDB"),
        version,
    })
}

/// The zone TIMESTAMP values are shown in: `configured` (`[extract] time_zone`), else the
/// server's `@@time_zone` (its `@@system_time_zone` when that is `SYSTEM`), as the
/// application's sessions see them by default.
pub async fn time_zone(
    conn: &mut Conn,
    configured: Option<&str>,
) -> anyhow::Result<super::text::Zone> {
    let row: Option<(String, String)> = conn
        .query_first("SELECT @@time_zone, @@system_time_zone")
        .await
        .context("reading the server's time zone")?;
    let (tz, system) = row.context("time zone query returned nothing")?;
    let name = configured.unwrap_or(&tz);
    super::text::Zone::resolve(name, &system, std::path::Path::new("/usr/share/zoneinfo")).map_err(
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
    let info = check_server(&mut conn).await?;
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
