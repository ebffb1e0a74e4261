//! `squeal --check`: the configuration checked against itself and, when the server is
//! reachable, against the live server: every rule's database, table and columns exist and
//! can form keys; the binlog settings squeal requires (`log_bin`, `binlog_format=ROW`,
//! `binlog_row_image`, `binlog_row_metadata`); the user's replication grants; `server_id`
//! differs from the server's own and from every registered replica's; every sink has what
//! it needs. Each problem names its config line (`file:line: problem`); what could not be
//! checked offline is said, never passed over in silence.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::*;
use serde::Deserialize;
use toml::Spanned;

use crate::config::template::Template;
use crate::config::{Config, SinkConfig};
use crate::source::live;

/// Where the keys of a config file are: a mirror of the parts `--check` talks about, with
/// spans (unknown keys are ignored here; the real parser refuses them).
#[derive(Debug, Default, Deserialize)]
struct Spans {
    #[serde(default)]
    source: HashMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    extract: ExtractSpans,
    #[serde(default)]
    sink: Vec<Spanned<HashMap<String, Spanned<toml::Value>>>>,
    #[serde(default)]
    batch: HashMap<String, Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
struct ExtractSpans {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpans>>,
    #[serde(default)]
    outbox: Vec<Spanned<HashMap<String, Spanned<toml::Value>>>>,
}

#[derive(Debug, Deserialize)]
struct RuleSpans {
    database: Option<Spanned<toml::Value>>,
    table: Option<Spanned<toml::Value>>,
    keys: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// The problems found, each with its line.
pub struct Report {
    file: String,
    text: String,
    spans: Spans,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    fn line(&self, span: Range<usize>) -> usize {
        let before = &self.text[..span.start.min(self.text.len())];
        before.matches('\n').count() + 1
    }

    fn problem(&mut self, span: Option<Range<usize>>, msg: impl Into<String>) {
        let line = span.map(|s| self.line(s)).unwrap_or(1);
        self.problems
            .push(format!("{}:{line}: {}", self.file, msg.into()));
    }

    fn source_span(&self, key: &str) -> Option<Range<usize>> {
        self.spans.source.get(key).map(|v| v.span())
    }

    fn rule_span(&self, i: usize, what: &str) -> Option<Range<usize>> {
        let r = self.spans.extract.rule.get(i)?;
        let inner = r.get_ref();
        match what {
            "database" => inner.database.as_ref().map(|v| v.span()),
            "table" => inner.table.as_ref().map(|v| v.span()),
            _ => None,
        }
        .or(Some(r.span()))
    }

    fn key_span(&self, i: usize, k: usize) -> Option<Range<usize>> {
        let r = self.spans.extract.rule.get(i)?;
        r.get_ref()
            .keys
            .as_ref()
            .and_then(|ks| ks.get_ref().get(k).map(|v| v.span()))
            .or(Some(r.span()))
    }

    fn sink_span(&self, i: usize, key: &str) -> Option<Range<usize>> {
        let s = self.spans.sink.get(i)?;
        s.get_ref().get(key).map(|v| v.span()).or(Some(s.span()))
    }

    fn outbox_span(&self, i: usize, key: &str) -> Option<Range<usize>> {
        let s = self.spans.extract.outbox.get(i)?;
        s.get_ref().get(key).map(|v| v.span()).or(Some(s.span()))
    }
}

/// Checks `cfg` (read from `path`, whose text is `text`); prints nothing.
pub async fn check(path: &Path, text: &str, cfg: &Config) -> Report {
    let mut r = Report {
        file: path.display().to_string(),
        text: text.to_string(),
        spans: toml::from_str(text).unwrap_or_default(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    check_sinks(&mut r, cfg);
    for (key, msg) in cfg.ignored_settings() {
        let line = r.spans.batch.get(key).map(|v| r.line(v.span()));
        r.notes.push(match line {
            Some(l) => format!("{}:{l}: warning: {msg}", r.file),
            None => format!("{}: warning: {msg}", r.file),
        });
    }
    let addr = live::address(&cfg.source);
    // Err((refused, why)): refused is true when the server answered and said no (bad
    // password, unknown user): a problem with the config, not "offline".
    let conn = match live::opts(&cfg.source) {
        Ok(o) => tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(o))
            .await
            .map_err(|_| (false, "timed out".to_string()))
            .and_then(|c| {
                c.map_err(|e| (matches!(e, mysql_async::Error::Server(_)), e.to_string()))
            }),
        Err(e) => Err((true, format!("{e:#}"))),
    };
    match conn {
        Ok(mut c) => {
            if let Err(e) = check_server(&mut r, cfg, &mut c).await {
                r.problems.push(format!(
                    "{}: checking the server at {addr} failed: {e:#}",
                    r.file
                ));
            }
            let _ = c.disconnect().await;
        }
        Err((true, e)) => {
            let sp = r.source_span("url");
            r.problem(
                sp,
                format!("the server at {addr} refused the connection: {e}"),
            );
        }
        Err((false, e)) => r.notes.push(format!(
            "could not reach the server at {addr} ({e}); NOT checked: log_bin, binlog_format, \
             binlog_row_image, binlog_row_metadata, the user's grants, server_id against the \
             server and its replicas, and that every rule's database, table and columns exist"
        )),
    }
    r
}

/// The batch secret of a router or Kafka sink: neither `secret` nor `secret_file` (or both)
/// is a problem; a `secret_file` this host cannot read is a warning (`--check` may run
/// elsewhere than squeal, e.g. in CI), since squeal itself would refuse to start.
fn check_secret(r: &mut Report, i: usize, auth: &crate::config::AuthConfig) {
    let Err(e) = auth.secret() else { return };
    if auth.secret_file.is_some() && auth.secret.is_none() {
        let line = r
            .sink_span(i, "secret_file")
            .map(|s| r.line(s))
            .unwrap_or(1);
        r.notes.push(format!(
            "{}:{line}: warning: {e:#}: squeal will not start on this host until it can read it",
            r.file
        ));
    } else {
        let sp = r.sink_span(i, "type");
        r.problem(
            sp,
            format!("{e:#} (the routers' [invalidation] secret: set secret or secret_file)"),
        );
    }
}

fn check_sinks(r: &mut Report, cfg: &Config) {
    for (i, s) in cfg.sinks.iter().enumerate() {
        match s {
            SinkConfig::Router {
                endpoints,
                auth,
                tls,
                ..
            } => {
                if endpoints.is_empty() {
                    let sp = r.sink_span(i, "endpoints");
                    r.problem(sp, "router sink: endpoints is empty");
                }
                check_secret(r, i, auth);
                if let Some(t) = tls {
                    if let Err(p) = t.check(endpoints) {
                        let sp = r.sink_span(i, "tls");
                        r.problem(sp, format!("router sink: {p}"));
                    }
                }
            }
            SinkConfig::Kafka {
                brokers,
                topic,
                auth,
                ..
            } => {
                if brokers.trim().is_empty() {
                    let sp = r.sink_span(i, "brokers");
                    r.problem(sp, "kafka sink: brokers is empty");
                }
                if topic.trim().is_empty() {
                    let sp = r.sink_span(i, "topic");
                    r.problem(sp, "kafka sink: topic is empty");
                }
                check_secret(r, i, auth);
            }
            SinkConfig::Memcache { endpoints, .. } => {
                for e in endpoints {
                    if !e.contains(':') {
                        let sp = r.sink_span(i, "endpoints");
                        r.problem(
                            sp,
                            format!("memcache sink: endpoint {e:?} is not host:port"),
                        );
                    }
                }
            }
            SinkConfig::Debug { .. } => {}
        }
    }
}

fn template_columns(t: &Template) -> Vec<String> {
    t.columns().map(str::to_string).collect()
}

/// Types whose values cannot be a memcache key as text.
fn keyless_type(data_type: &str) -> bool {
    matches!(
        data_type,
        "geometry"
            | "point"
            | "linestring"
            | "polygon"
            | "multipoint"
            | "multilinestring"
            | "multipolygon"
            | "geometrycollection"
            | "vector"
    )
}

async fn check_server(
    r: &mut Report,
    cfg: &Config,
    conn: &mut mysql_async::Conn,
) -> anyhow::Result<()> {
    let s = live::read_settings(conn).await?;
    for (fatal, msg) in live::setting_problems(&s, &cfg.source) {
        let key = if msg.contains("server_id") {
            "server_id"
        } else if msg.contains("binlog_row_metadata") {
            "allow_minimal_metadata"
        } else {
            "url"
        };
        let sp = r.source_span(key).or(r.source_span("url"));
        if fatal {
            r.problem(sp, msg);
        } else {
            let line = sp.map(|s| r.line(s)).unwrap_or(1);
            r.notes.push(format!("{}:{line}: warning: {msg}", r.file));
        }
    }

    // Other replicas with our server_id.
    match conn
        .query::<mysql_async::Row, _>("SHOW SLAVE HOSTS")
        .await
    {
        Ok(rows) => {
            for row in rows {
                let id: Option<u32> = row.get(0);
                if id == Some(cfg.source.server_id) {
                    let host: Option<String> = row.get(1);
                    let port: Option<String> = row.get(2).or_else(|| row.get::<u32, _>(2).map(|p| p.to_string()));
                    let sp = r.source_span("server_id");
                    r.problem(
                        sp,
                        format!(
                            "server_id = {} is already registered with the server by a replica \
                             (host {:?}, port {:?}; SHOW SLAVE HOSTS). Each replica needs its own \
                             server_id: the server disconnects the older of two connections with \
                             the same one (if that replica is this squeal, running, stop it \
                             first)",
                            cfg.source.server_id,
                            host.unwrap_or_default(),
                            port.unwrap_or_default()
                        ),
                    );
                }
            }
        }
        Err(e) => r
            .notes
            .push(format!("could not list replicas (SHOW SLAVE HOSTS: {e}); server_id uniqueness among replicas NOT checked")),
    }

    // Grants.
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.unwrap_or_default();
    let global: Vec<String> = grants
        .iter()
        .filter(|g| g.contains(" ON *.* "))
        .map(|g| g.to_ascii_uppercase())
        .collect();
    let has = |p: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(p))
    };
    let url_span = r.source_span("url");
    if grants.is_empty() {
        r.notes
            .push("could not read SHOW GRANTS; the user's grants NOT checked".into());
    } else {
        if !has("REPLICATION SLAVE") {
            r.problem(
                url_span.clone(),
                "the user lacks REPLICATION SLAVE ON *.* (needed to read the binlog): \
                 GRANT REPLICATION SLAVE ON *.* TO <user>",
            );
        }
        let monitor = if s.mariadb() {
            has("BINLOG MONITOR") || has("REPLICATION CLIENT") || has("SUPER")
        } else {
            has("REPLICATION CLIENT") || has("SUPER")
        };
        if !monitor {
            r.problem(
                url_span.clone(),
                format!(
                    "the user lacks {} ON *.* (needed for SHOW MASTER STATUS / SHOW BINARY LOGS)",
                    if s.mariadb() {
                        "BINLOG MONITOR (or REPLICATION CLIENT)"
                    } else {
                        "REPLICATION CLIENT"
                    }
                ),
            );
        }
    }

    // Rules: databases, tables, columns.
    for (i, rule) in cfg.extract.rules.iter().enumerate() {
        if rule.database == "*" {
            r.notes.push(format!(
                "[[extract.rule]] #{}: database \"*\": tables and columns NOT checked",
                i + 1
            ));
            continue;
        }
        let dbs: Vec<String> = conn
            .exec(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (rule.database.as_str(),),
            )
            .await?;
        if dbs.is_empty() {
            let sp = r.rule_span(i, "database");
            r.problem(
                sp,
                format!(
                    "rule database {:?} does not exist on the server (or the user cannot see it: \
                     it needs SELECT on the rule tables)",
                    rule.database
                ),
            );
            continue;
        }
        let rows: Vec<(String, String, String)> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (rule.database.as_str(),),
            )
            .await?;
        let mut tables: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (t, c, ty) in rows {
            tables
                .entry(t)
                .or_default()
                .push((c, ty.to_ascii_lowercase()));
        }
        let templates: Vec<Template> = rule
            .keys
            .iter()
            .filter_map(|k| Template::parse(k).ok())
            .collect();
        if rule.table != "*" {
            let Some(cols) = tables.get(&rule.table) else {
                let sp = r.rule_span(i, "table");
                r.problem(
                    sp,
                    format!(
                        "rule table {}.{} does not exist on the server (or the user cannot see \
                         it: it needs SELECT on it)",
                        rule.database, rule.table
                    ),
                );
                continue;
            };
            for (k, t) in templates.iter().enumerate() {
                for c in template_columns(t) {
                    match cols.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c)) {
                        None => {
                            let sp = r.key_span(i, k);
                            r.problem(
                                sp,
                                format!(
                                    "template {:?}: table {}.{} has no column {c:?} (it has: {})",
                                    t.source,
                                    rule.database,
                                    rule.table,
                                    cols.iter()
                                        .map(|(n, _)| n.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            );
                        }
                        Some((_, ty)) if keyless_type(ty) => {
                            let sp = r.key_span(i, k);
                            r.problem(
                                sp,
                                format!(
                                    "template {:?}: column {c:?} of {}.{} is {ty}, which cannot \
                                     form a key",
                                    t.source, rule.database, rule.table
                                ),
                            );
                        }
                        Some(_) => {}
                    }
                }
            }
        } else {
            let fits = |cols: &Vec<(String, String)>| {
                templates.iter().all(|t| {
                    template_columns(t)
                        .iter()
                        .all(|c| cols.iter().any(|(n, _)| n.eq_ignore_ascii_case(c)))
                })
            };
            let lacking: Vec<&str> = tables
                .iter()
                .filter(|(_, c)| !fits(c))
                .map(|(t, _)| t.as_str())
                .collect();
            if lacking.len() == tables.len() {
                let sp = r.rule_span(i, "table");
                r.problem(
                    sp,
                    format!(
                        "rule {}.*: no table of {} has every template column",
                        rule.database, rule.database
                    ),
                );
            } else if !lacking.is_empty() {
                let line = r.rule_span(i, "table").map(|s| r.line(s)).unwrap_or(1);
                r.notes.push(format!(
                    "{}:{line}: rule {}.*: these tables lack a template column and get no keys \
                     from it: {}",
                    r.file,
                    rule.database,
                    lacking.join(", ")
                ));
            }
        }
    }
    for (i, o) in cfg.extract.outboxes.iter().enumerate() {
        if o.database == "*" || o.table == "*" {
            continue;
        }
        let n: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                (o.database.as_str(), o.table.as_str(), o.column.as_str()),
            )
            .await?;
        if n.is_empty() {
            let sp = r.outbox_span(i, "table");
            r.problem(
                sp,
                format!(
                    "outbox {}.{} with column {:?} does not exist on the server",
                    o.database, o.table, o.column
                ),
            );
        }
    }

    // Cascading foreign keys the rules do not cover (a warning, as at start).
    let rules: Vec<crate::extract::rules::Rule> = cfg
        .extract
        .rules
        .iter()
        .filter_map(|x| crate::extract::rules::Rule::new(x).ok())
        .collect();
    match live::fk_cascades(conn).await {
        Ok(fks) => {
            for f in crate::extract::cascade::findings(&fks, &rules) {
                if !f.uncovered.is_empty() {
                    r.notes.push(format!("warning: {}", f.message()));
                }
            }
        }
        Err(e) => r
            .notes
            .push(format!("foreign-key cascades NOT checked: {e:#}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_their_line() {
        let text = include_str!("../../deploy/squeal.toml");
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| l.contains(needle))
                .map(|i| i + 1)
                .unwrap()
        };
        let r = Report {
            file: "squeal.toml".into(),
            text: text.into(),
            spans: toml::from_str(text).unwrap(),
            problems: Vec::new(),
            notes: Vec::new(),
        };
        assert_eq!(r.line(r.key_span(0, 1).unwrap()), line_of("user:{id}"));
        assert_eq!(
            r.line(r.rule_span(1, "table").unwrap()),
            line_of("any table of app")
        );
        assert_eq!(
            r.line(r.source_span("server_id").unwrap()),
            line_of("server_id =")
        );
        assert_eq!(
            r.line(r.sink_span(0, "endpoints").unwrap()),
            line_of("11211")
        );
        assert_eq!(
            r.line(r.outbox_span(0, "table").unwrap()),
            line_of("cache_outbox\" ")
        );
    }

    #[tokio::test]
    async fn a_router_sink_without_secret_fails_offline() {
        let text = "[source]\nurl = \"mysql://root@127.0.0.1:1/\"\nserver_id = 7\n\
                    [checkpoint]\npath = \"/tmp/x\"\n\n[[sink]]\ntype = \"router\"\n\
                    endpoints = [\"127.0.0.1:7000\"]\n";
        let cfg = Config::parse(text).unwrap();
        let r = check(Path::new("c.toml"), text, &cfg).await;
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].starts_with("c.toml:8: "), "{:?}", r.problems);
        assert!(
            r.notes.iter().any(|n| n.contains("NOT checked")),
            "{:?}",
            r.notes
        );
    }

    #[tokio::test]
    async fn an_ignored_setting_is_a_warning_on_its_line() {
        let text = "[source]\nurl = \"mysql://root@127.0.0.1:1/\"\nserver_id = 7\n\
                    [checkpoint]\npath = \"/tmp/x\"\n[batch]\nlinger_us = 500\n\n\
                    [[sink]]\ntype = \"debug\"\n";
        let cfg = Config::parse(text).unwrap();
        let r = check(Path::new("c.toml"), text, &cfg).await;
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("c.toml:7: warning: [batch] linger_us = 500 is ignored")),
            "{:?}",
            r.notes
        );
    }
}
