//! Administration: the router's own `stats` command, the Prometheus exporter and live
//! reload. They read the counters and the published plan; nothing below imports them.

pub mod metrics;
pub mod reload;
pub mod stats;
