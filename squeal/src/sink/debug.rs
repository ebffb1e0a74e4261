//! The debug sink: writes `delete <key>` for every key to stdout (or, quiet, only counts the
//! keys and their bytes), and acknowledges at once.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Sink, SinkFuture};
use crate::batch::Batch;

pub struct DebugSink {
    quiet: bool,
    pub keys: AtomicU64,
    pub bytes: AtomicU64,
}

impl DebugSink {
    pub fn new(quiet: bool) -> DebugSink {
        DebugSink {
            quiet,
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Sink for DebugSink {
    fn name(&self) -> &str {
        "debug"
    }

    fn send(&self, batch: Arc<Batch>) -> SinkFuture {
        let mut n = 0u64;
        let mut bytes = 0u64;
        let mut out = Vec::with_capacity(if self.quiet { 0 } else { batch.bytes() });
        for k in batch.keys() {
            n += 1;
            bytes += k.len() as u64;
            if !self.quiet {
                out.extend_from_slice(b"delete ");
                out.extend_from_slice(k);
                out.push(b'\n');
            }
        }
        self.keys.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let r = if out.is_empty() {
            Ok(())
        } else {
            std::io::stdout()
                .lock()
                .write_all(&out)
                .map_err(|e| super::SinkError(format!("stdout: {e}")))
        };
        Box::pin(async move { r })
    }

    fn flush_all(&self) -> SinkFuture {
        if !self.quiet {
            println!("flush_all");
        }
        Box::pin(async { Ok(()) })
    }
}
