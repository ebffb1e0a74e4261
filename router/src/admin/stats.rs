//! The router's own `stats` command: `stats`, `stats servers|commands|routes` and
//! `stats route <op> <key>`, answered from the counters and the current plan.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::plan::Process;
use crate::protocol::Cmd;

/// The body of `stats` (memcached's `STAT name value` lines and `END`); `root` is the
/// route tree serving the asking client (for `stats route`).
pub fn render(p: &Process, root: usize, args: &[u8]) -> Vec<u8> {
    let mut s = String::new();
    let args = std::str::from_utf8(args).unwrap_or("").trim();
    match args {
        "" => general(p, &mut s),
        "servers" => server_lines(p, &mut s),
        "commands" => command_lines(p, &mut s),
        "routes" => route_lines(p, &mut s),
        a if a.starts_with("route ") => {
            let mut it = a.split_ascii_whitespace().skip(1);
            match (it.next(), it.next(), it.next()) {
                (Some(op), Some(key), None) => {
                    let plan = p.plan();
                    match plan.describe(root, op, key.as_bytes()) {
                        Ok(lines) => {
                            for l in lines {
                                let _ = write!(s, "STAT {l}\r\n");
                            }
                        }
                        Err(e) => return format!("CLIENT_ERROR {e}\r\n").into_bytes(),
                    }
                }
                _ => return b"CLIENT_ERROR usage: stats route <operation> <key>\r\n".to_vec(),
            }
        }
        _ => return b"ERROR\r\n".to_vec(),
    }
    s.push_str("END\r\n");
    s.into_bytes()
}

fn general(p: &Process, s: &mut String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut stat = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(s, "STAT {k} {v}\r\n");
    };
    stat("pid", &std::process::id());
    stat("uptime", &p.started.elapsed().as_secs());
    stat("time", &now);
    stat(
        "version",
        &concat!("squeal-router-", env!("CARGO_PKG_VERSION")),
    );
    stat("threads", &p.threads);
    stat("curr_connections", &p.curr_connections());
    stat("total_connections", &p.sum(|w| w.total_connections.get()));
    stat(
        "rejected_connections",
        &p.sum(|w| w.rejected_connections.get()),
    );
    for cmd in [Cmd::Get, Cmd::Set, Cmd::Delete, Cmd::Touch, Cmd::FlushAll] {
        let v = p.ops(cmd);
        stat(&format!("cmd_{}", cmd.name()), &v);
    }
    stat("get_hits", &p.sum(|w| w.get_hits.get()));
    stat("get_misses", &p.sum(|w| w.get_misses.get()));
    stat("client_errors", &p.sum(|w| w.client_errors.get()));
    stat("output_overflows", &p.sum(|w| w.output_overflows.get()));
    stat(
        "buffered_output_bytes",
        &crate::reply_queue::buffered_output(),
    );
    stat("backend_errors", &p.sum(|w| w.backend_errors.get()));
    stat("bytes_read", &p.sum(|w| w.bytes_read.get()));
    stat("bytes_written", &p.sum(|w| w.bytes_written.get()));
    for cmd in Cmd::ALL {
        let v = p.ops(cmd);
        stat(&format!("ops_{}", cmd.name()), &v);
    }
    route_lines(p, s);
    server_lines(p, s);
}

/// Route tree and reload counters (`stats routes`, and part of `stats`).
fn route_lines(p: &Process, s: &mut String) {
    let mut stat = |k: &str, v: u64| {
        let _ = write!(s, "STAT {k} {v}\r\n");
    };
    stat("route_failovers", p.sum(|w| w.failovers.get()));
    stat("route_gutter_sets", p.sum(|w| w.gutter_sets.get()));
    stat("route_async_failures", p.sum(|w| w.async_failures.get()));
    stat("route_backfills", p.sum(|w| w.backfills.get()));
    stat("route_warm_hits", p.sum(|w| w.warm_hits.get()));
    stat("route_holdoffs", p.sum(|w| w.holdoffs.get()));
    stat("route_tko_fast_fails", p.sum(|w| w.tko_fast_fails.get()));
    stat("route_eject_rehashes", p.sum(|w| w.eject_rehashes.get()));
    stat("config_generation", p.generation.load(Relaxed));
    stat("config_reloads", p.reloads.load(Relaxed));
    stat("config_reload_failures", p.reload_failures.load(Relaxed));
}

fn server_lines(p: &Process, s: &mut String) {
    for sv in &p.servers() {
        let p = format!("server:{}:{}", sv.pool, sv.addr);
        let _ = write!(s, "STAT {p}:state {}\r\n", sv.state());
        let _ = write!(s, "STAT {p}:connections_up {}\r\n", sv.up.load(Relaxed));
        let _ = write!(s, "STAT {p}:connects {}\r\n", sv.connects.load(Relaxed));
        let _ = write!(
            s,
            "STAT {p}:connect_failures {}\r\n",
            sv.connect_failures.load(Relaxed)
        );
        let _ = write!(s, "STAT {p}:timeouts {}\r\n", sv.timeouts.load(Relaxed));
        let _ = write!(s, "STAT {p}:desyncs {}\r\n", sv.desyncs.load(Relaxed));
        let _ = write!(s, "STAT {p}:resets {}\r\n", sv.resets.load(Relaxed));
        let _ = write!(s, "STAT {p}:errors {}\r\n", sv.errors.load(Relaxed));
        let _ = write!(s, "STAT {p}:tko_marks {}\r\n", sv.tko_marks.load(Relaxed));
        let _ = write!(
            s,
            "STAT {p}:probe_failures {}\r\n",
            sv.probe_failures.load(Relaxed)
        );
    }
}

fn command_lines(p: &Process, s: &mut String) {
    for cmd in Cmd::ALL {
        let _ = write!(s, "STAT {} {}\r\n", cmd.name(), p.ops(cmd));
    }
}
