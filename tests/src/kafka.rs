//! The tansu Kafka-protocol broker (memory storage), standing in for Apache Kafka.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{free_port, loopback, server_dir, setup, Server};

/// One tansu broker on loopback, killed on drop.
pub struct Broker {
    pub server: Server,
    tansu: std::path::PathBuf,
}

impl Broker {
    pub fn start() -> Result<Broker> {
        let tansu = setup().to_path_buf();
        let port = free_port();
        let dir = server_dir("tansu")?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&tansu);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn");
        let server = Server::spawn("tansu", dir, cmd, loopback(port), Duration::from_secs(20))?;
        Ok(Broker { server, tansu })
    }

    /// `127.0.0.1:port`, librdkafka's `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.server.addr.to_string()
    }

    /// Creates a topic with the broker's own CLI.
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let out = Command::new(&self.tansu)
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.bootstrap()))
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .context("running tansu topic create")?;
        if !out.status.success() {
            bail!(
                "creating topic {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Consumer settings tansu needs in tests: it holds a group join for about half the
    /// session timeout, so the default (45 s) would make every rebalance take 23 s.
    pub fn consumer_config(&self, group: &str) -> rdkafka::ClientConfig {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", self.bootstrap())
            .set("group.id", group)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        cfg
    }

    /// Idempotent producer with acks=all, as squeal's Kafka sink uses.
    pub fn producer_config(&self) -> rdkafka::ClientConfig {
        let mut cfg = rdkafka::ClientConfig::new();
        cfg.set("bootstrap.servers", self.bootstrap())
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "10000");
        cfg
    }
}
