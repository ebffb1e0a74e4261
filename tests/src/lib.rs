//! Test harness: starts the real servers Squeal works with (MariaDB with its binlog,
//! memcached, twemproxy, the tansu Kafka-protocol broker) and Squeal's own programs, on
//! loopback, with ports picked at run time.
//!
//! Every server is a [`process::Server`]: it is killed when dropped, also when a test
//! panics, and in that case its working directory (logs, datadir) is kept and its path
//! printed, so a failure can be read after the fact.
//!
//! The first server started in a test process runs `tests/setup.sh`, which installs whatever
//! is missing, so `cargo test` works on a fresh machine.

pub mod checked;
pub mod hostile;
pub mod inspect;
pub mod kafka;
pub mod mariadb;
pub mod memcache;
pub mod memcached;
pub mod process;
pub mod project;
pub mod prometheus;
pub mod region;
pub mod regions;
pub mod router;
pub mod squeal;
pub mod tls;
pub mod twemproxy;
pub mod wire;
pub mod workload;

use std::time::{Duration, Instant};

pub use kafka::Broker;
pub use mariadb::MariaDb;
pub use memcache::McClient;
pub use memcached::Memcached;
pub use process::{free_port, Server};
pub use twemproxy::Twemproxy;

/// Polls `f` every 20 ms until it holds; panics after 10 s, naming `what`.
pub fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
