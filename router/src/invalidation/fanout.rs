//! Applies an invalidation batch: every cache key is deleted on its server in every
//! front-end cluster, every marker key in the regional pool(s); what cannot be delivered is
//! spooled, and a replayer drains the spool when servers come back.

use crate::tls::Connector;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use marker::batch::{Batch, EntryKind};
use tracing::{info, warn};

use super::deleter::Deleter;
use super::spool::{Record, Spool, SpoolError};
use crate::placement::Placement;

/// One pool invalidations are applied to: its placement (the data path's own, so an
/// invalidation reaches the server that holds the value) and its server addresses.
pub struct Target {
    pub name: String,
    pub placement: Arc<Placement>,
    /// Addresses (`host:port`) of the pool's servers, indexed like the placement's.
    pub servers: Vec<String>,
    /// Per server (as `servers`): how to open TLS to it, for a TLS pool.
    pub tls: Vec<Option<Connector>>,
    /// Set while the pool is a cold cluster being warmed: deletes there leave a hold-off.
    pub holdoff_secs: Option<u32>,
    /// Ejecting pool (twemproxy's `auto_eject_hosts`): per server, the placement without
    /// it. While a router has a server ejected, its keys are cached on the server they
    /// hash to over the rest, so a delete goes there too (one extra delete per key: the
    /// fan-out does not know which servers the data path has ejected right now).
    pub without: Vec<Option<(Placement, Vec<usize>)>>,
}

impl Target {
    /// The servers that may hold `key`: one for a hashed pool, all of them for a
    /// replicated (random) pool.
    fn servers_for(&self, key: &[u8], out: &mut Vec<String>) {
        if self.placement.is_replicated() {
            out.extend(self.servers.iter().cloned());
        } else {
            let owner = self.placement.server_for(key);
            out.push(self.servers[owner].clone());
            if let Some(Some((rest, index))) = self.without.get(owner) {
                out.push(self.servers[index[rest.server_for(key)]].clone());
            }
        }
    }

    /// `without` for `placement` (empty unless it is an ejecting pool's).
    pub fn ejections(
        placement: &Placement,
        servers: usize,
    ) -> Vec<Option<(Placement, Vec<usize>)>> {
        if placement.ejecting.is_none() {
            return Vec::new();
        }
        (0..servers)
            .map(|i| {
                let mut out = vec![false; servers];
                out[i] = true;
                placement.without(&out)
            })
            .collect()
    }
}

/// What applying one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Deletes that reached their server.
    pub deleted: u64,
    /// Deletes written to the spool for a server that could not take them now.
    pub spooled: u64,
}

/// The fan-out: targets, one deleter per server, and the spool.
pub struct Fanout {
    clusters: Vec<Target>,
    marker_pools: Vec<Target>,
    deleters: HashMap<String, Arc<Deleter>>,
    spool: Arc<Spool>,
}

impl Fanout {
    /// `clusters` receive cache-key deletes; `marker_pools` receive marker-key deletes.
    pub fn new(
        clusters: Vec<Target>,
        marker_pools: Vec<Target>,
        spool: Arc<Spool>,
        timeout: Duration,
    ) -> Fanout {
        let mut holdoff: HashMap<String, (Option<u32>, Option<Connector>)> = HashMap::new();
        for target in clusters.iter().chain(&marker_pools) {
            for (i, server) in target.servers.iter().cloned().enumerate() {
                let (h, tls) = holdoff.entry(server).or_default();
                // A server in a warming pool and another pool gets the safer treatment.
                *h = (*h).max(target.holdoff_secs);
                if tls.is_none() {
                    *tls = target.tls.get(i).cloned().flatten();
                }
            }
        }
        let mut deleters: HashMap<String, Arc<Deleter>> = holdoff
            .into_iter()
            .map(|(server, (h, tls))| {
                (
                    server.clone(),
                    Arc::new(Deleter::new(server, timeout, h, tls)),
                )
            })
            .collect();
        // Servers with spooled deletes from an earlier run that are no longer configured
        // still get their deletes: a value they hold may come back into service.
        for server in spool.servers_pending() {
            deleters
                .entry(server.clone())
                .or_insert_with(|| Arc::new(Deleter::new(server, timeout, None, None)));
        }
        Fanout {
            clusters,
            marker_pools,
            deleters,
            spool,
        }
    }

    /// Applies every delete of `batch`, concurrently per server. `Ok` means each delete was
    /// applied or durably spooled: the batch may be acknowledged. `Err` (spool full or
    /// failing) means it must not be: the sender retries.
    pub async fn apply(&self, batch: &Batch) -> Result<Applied, SpoolError> {
        let started = Instant::now();
        let mut per_server: HashMap<String, Vec<&[u8]>> = HashMap::new();
        let mut servers = Vec::new();
        for (kind, key) in &batch.entries {
            let targets = match kind {
                EntryKind::Key => &self.clusters,
                EntryKind::Marker => &self.marker_pools,
            };
            for target in targets {
                servers.clear();
                target.servers_for(key, &mut servers);
                for server in servers.drain(..) {
                    let keys = per_server.entry(server).or_default();
                    // One server may sit in two targets; one delete is enough.
                    if !keys.contains(&key.as_slice()) {
                        keys.push(key);
                    }
                }
            }
        }
        let groups = per_server
            .into_iter()
            .map(|(server, keys)| self.apply_server(server, keys));
        let mut applied = Applied::default();
        for result in futures_util::future::join_all(groups).await {
            let one = result?;
            applied.deleted += one.deleted;
            applied.spooled += one.spooled;
        }
        metrics::counter!("squeal_router_invalidation_keys_total", "outcome" => "deleted")
            .increment(applied.deleted);
        metrics::counter!("squeal_router_invalidation_keys_total", "outcome" => "spooled")
            .increment(applied.spooled);
        metrics::histogram!("squeal_router_invalidation_apply_seconds")
            .record(started.elapsed().as_secs_f64());
        if batch.commit_time_us > 0 {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as u64;
            metrics::histogram!("squeal_router_commit_to_delete_seconds")
                .record(now_us.saturating_sub(batch.commit_time_us) as f64 / 1e6);
        }
        Ok(applied)
    }

    async fn apply_server(&self, server: String, keys: Vec<&[u8]>) -> Result<Applied, SpoolError> {
        let count = keys.len() as u64;
        // A server with spooled deletes gets new ones through the spool, in order.
        if !self.spool.has_pending(&server) {
            let deleter = self
                .deleters
                .get(&server)
                .expect("a deleter per target server");
            match deleter.delete_all(&keys).await {
                Ok(()) => {
                    return Ok(Applied {
                        deleted: count,
                        spooled: 0,
                    })
                }
                Err(e) => warn!(%server, error = %e, keys = count, "delete failed; spooling"),
            }
        }
        let spool = self.spool.clone();
        let owned: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        // fsync blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            spool.append(&server, owned.iter().map(|k| k.as_slice()))
        })
        .await
        .expect("spool append does not panic")
        .inspect_err(|e| {
            metrics::gauge!("squeal_router_spool_full").set(1.0);
            tracing::error!(error = %e, "ALARM: cannot spool invalidations; rejecting batch");
        })?;
        Ok(Applied {
            deleted: 0,
            spooled: count,
        })
    }

    /// Runs `flush_all` on every server of every cluster and marker pool, concurrently.
    /// `Ok` means each server was flushed or a flush was durably spooled for it (in order
    /// after its spooled deletes, when it has some): the flush may be acknowledged. In the
    /// returned counts, `deleted` is servers flushed now, `spooled` servers whose flush waits
    /// in the spool.
    pub async fn flush_all(&self) -> Result<Applied, SpoolError> {
        let mut servers: Vec<String> = self
            .clusters
            .iter()
            .chain(&self.marker_pools)
            .flat_map(|t| t.servers.iter().cloned())
            .collect();
        servers.sort();
        servers.dedup();
        let mut applied = Applied::default();
        let flushes = servers.into_iter().map(|s| self.flush_server(s));
        for result in futures_util::future::join_all(flushes).await {
            if result? {
                applied.spooled += 1;
            } else {
                applied.deleted += 1;
            }
        }
        metrics::counter!("squeal_router_invalidation_flush_servers_total", "outcome" => "flushed")
            .increment(applied.deleted);
        metrics::counter!("squeal_router_invalidation_flush_servers_total", "outcome" => "spooled")
            .increment(applied.spooled);
        info!(
            flushed = applied.deleted,
            spooled = applied.spooled,
            "flush_all applied to every cluster and marker pool"
        );
        Ok(applied)
    }

    /// Flushes one server now, or spools the flush (true) if it has spooled deletes waiting
    /// (the flush must follow them) or cannot be reached.
    async fn flush_server(&self, server: String) -> Result<bool, SpoolError> {
        if !self.spool.has_pending(&server) {
            let deleter = self
                .deleters
                .get(&server)
                .expect("a deleter per target server");
            match deleter.flush_all().await {
                Ok(()) => return Ok(false),
                Err(e) => warn!(%server, error = %e, "flush_all failed; spooling it"),
            }
        }
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.append_flush(&server))
            .await
            .expect("spool append does not panic")
            .inspect_err(|e| {
                metrics::gauge!("squeal_router_spool_full").set(1.0);
                tracing::error!(error = %e, "ALARM: cannot spool a flush; rejecting it");
            })?;
        Ok(true)
    }

    /// Drains the spool for ever: every `interval`, each server with pending deletes gets
    /// them replayed in order, in chunks, the cursor advancing after each applied chunk. A
    /// server that still fails is retried with exponential backoff (up to 5 s).
    pub async fn replay_forever(self: Arc<Self>, interval: Duration) {
        let mut backoff: HashMap<String, (Duration, Instant)> = HashMap::new();
        loop {
            self.publish_spool_depth();
            for server in self.spool.servers_pending() {
                let now = Instant::now();
                if let Some((_, next)) = backoff.get(&server) {
                    if now < *next {
                        continue;
                    }
                }
                match self.replay_server(&server).await {
                    Ok(replayed) => {
                        if replayed > 0 {
                            info!(server, replayed, "replayed spooled deletes");
                        }
                        backoff.remove(&server);
                    }
                    Err(e) => {
                        let delay = backoff
                            .get(&server)
                            .map_or(interval, |(d, _)| (*d * 2).min(Duration::from_secs(5)));
                        backoff.insert(server.clone(), (delay, now + delay));
                        tracing::debug!(server, error = %e, ?delay, "replay failed; backing off");
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Replays `server`'s spool until it is empty or a delete fails. Returns the count.
    pub async fn replay_server(&self, server: &str) -> anyhow::Result<u64> {
        let deleter = match self.deleters.get(server) {
            Some(d) => d.clone(),
            None => Arc::new(Deleter::new(
                server.to_string(),
                Duration::from_secs(1),
                None,
                None,
            )),
        };
        let mut total = 0;
        loop {
            let spool = self.spool.clone();
            let name = server.to_string();
            let (records, offset) =
                tokio::task::spawn_blocking(move || spool.peek(&name, 1000)).await??;
            if records.is_empty() {
                return Ok(total);
            }
            // In order: a flush supersedes the deletes before it (they need not be sent),
            // and the deletes after it go out after it.
            let mut refs: Vec<&[u8]> = Vec::with_capacity(records.len());
            for record in &records {
                match record {
                    Record::Delete(key) => refs.push(key),
                    Record::FlushAll => {
                        refs.clear();
                        deleter.flush_all().await?;
                        metrics::counter!("squeal_router_spool_replayed_flushes_total")
                            .increment(1);
                    }
                }
            }
            deleter.delete_all(&refs).await?;
            let n = records.len() as u64;
            let spool = self.spool.clone();
            let name = server.to_string();
            let drained =
                tokio::task::spawn_blocking(move || spool.commit(&name, offset, &records))
                    .await??;
            total += n;
            metrics::counter!("squeal_router_spool_replayed_total").increment(n);
            if drained {
                metrics::gauge!("squeal_router_spool_full").set(0.0);
                return Ok(total);
            }
        }
    }

    fn publish_spool_depth(&self) {
        let pending = self.spool.pending();
        let keys: u64 = pending.iter().map(|p| p.keys).sum();
        let bytes: u64 = pending.iter().map(|p| p.bytes).sum();
        metrics::gauge!("squeal_router_spool_pending_keys").set(keys as f64);
        metrics::gauge!("squeal_router_spool_pending_bytes").set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::hash::HashFn;

    fn target(ejecting: bool) -> Target {
        let names: Vec<(String, u32)> = (0..3).map(|i| (format!("s{i}"), 1)).collect();
        let mut placement = Placement::new(HashFn::Md5, "ketama", &names);
        if ejecting {
            placement = placement.ejecting("ketama", names);
        }
        Target {
            name: "p".into(),
            without: Target::ejections(&placement, 3),
            placement: Arc::new(placement),
            servers: (0..3).map(|i| format!("127.0.0.1:{}", 11211 + i)).collect(),
            tls: vec![None; 3],
            holdoff_secs: None,
        }
    }

    /// A key of an ejecting pool is deleted on its server and on the one it moves to while
    /// that server is ejected; a plain pool deletes on the owner only.
    #[test]
    fn ejecting_pools_delete_where_an_ejected_servers_keys_move() {
        let (plain, ejecting) = (target(false), target(true));
        let mut out = Vec::new();
        for i in 0..200 {
            let key = format!("k{i}");
            out.clear();
            plain.servers_for(key.as_bytes(), &mut out);
            assert_eq!(out.len(), 1);
            let owner = out[0].clone();
            out.clear();
            ejecting.servers_for(key.as_bytes(), &mut out);
            assert_eq!(out.len(), 2, "{key}: {out:?}");
            assert_eq!(out[0], owner);
            assert_ne!(out[1], owner, "the fallback is another server");
            // The fallback is where the data path sends the key with the owner out.
            let o = ejecting.servers.iter().position(|s| *s == owner).unwrap();
            let mut down = vec![false; 3];
            down[o] = true;
            let (rest, index) = ejecting.placement.without(&down).unwrap();
            assert_eq!(
                out[1],
                ejecting.servers[index[rest.server_for(key.as_bytes())]]
            );
        }
    }
}
