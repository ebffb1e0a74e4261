//! The lag metrics: how far the reader is behind the server's current position, in binlog
//! bytes (from `SHOW BINARY LOGS`) and in seconds (from the last event's timestamp).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::live;
use crate::config::Config;
use crate::model::Position;

/// Polls the server's position for the lag metrics.
pub async fn poll(cfg: Config, reader: Arc<Mutex<(Position, u32)>>) {
    let mut conn: Option<mysql_async::Conn> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if conn.is_none() {
            conn = match live::opts(&cfg.source) {
                Ok(o) => mysql_async::Conn::new(o).await.ok(),
                Err(_) => None,
            };
        }
        let Some(c) = conn.as_mut() else { continue };
        let (rpos, ts) = reader.lock().map(|g| g.clone()).unwrap_or_default();
        let logs = match live::binary_logs(c).await {
            Ok(l) => l,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let mut behind = 0u64;
        let mut seen = false;
        for (f, size) in &logs {
            if *f == rpos.file {
                seen = true;
                behind += size.saturating_sub(rpos.pos);
            } else if seen || f.as_str() > rpos.file.as_str() {
                behind += size.saturating_sub(4);
            }
        }
        metrics::gauge!("squeal_lag_bytes").set(behind as f64);
        let lag = if behind == 0 || ts == 0 {
            0.0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            now.saturating_sub(ts as u64) as f64
        };
        metrics::gauge!("squeal_lag_seconds").set(lag);
    }
}
