//! Ketama consistent hashing as twemproxy builds it (`nc_ketama.c`), which libmemcached's
//! weighted ketama matches: per server `floor(weight/total * 160/4 * n + 1e-10) * 4`
//! points, named `"<name>-<i>"`, four points per md5 digest; a key goes to the first point
//! at or after its hash, wrapping around.

use super::md5;

/// Points per server with equal weights.
const POINTS_PER_SERVER: u32 = 160;
const POINTS_PER_HASH: u32 = 4;

#[derive(Debug, Clone)]
pub struct Continuum {
    /// (point value, server index), sorted by value.
    points: Vec<(u32, u32)>,
}

impl Continuum {
    /// `servers`: the ketama name (twemproxy: the configured name, else `host` when the
    /// port is 11211, else `host:port`) and the weight of each server, in config order.
    pub fn new(servers: &[(String, u32)]) -> Continuum {
        let total: u32 = servers.iter().map(|s| s.1).sum();
        let n = servers.len() as f32;
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER as usize);
        for (index, (name, weight)) in servers.iter().enumerate() {
            // Same float arithmetic as twemproxy, so rounding agrees for odd weights.
            let pct = *weight as f32 / total as f32;
            let x = pct * POINTS_PER_SERVER as f32 / 4.0 * n;
            let per_server = (((x as f64) + 0.0000000001) as f32).floor() as u32 * 4;
            for i in 0..per_server / POINTS_PER_HASH {
                let digest = md5(format!("{name}-{i}").as_bytes());
                for a in 0..POINTS_PER_HASH as usize {
                    let v = u32::from_le_bytes([
                        digest[a * 4],
                        digest[a * 4 + 1],
                        digest[a * 4 + 2],
                        digest[a * 4 + 3],
                    ]);
                    points.push((v, index as u32));
                }
            }
        }
        points.sort_by_key(|p| p.0);
        Continuum { points }
    }

    /// libmemcached's non-weighted ketama (`MEMCACHED_BEHAVIOR_KETAMA`, pylibmc's
    /// `behaviors={"ketama": True}`): 100 points per server whatever its weight, point `i`
    /// is the pool's own key hash of `"<host>-<i>"` (port 11211) or `"<host>:<port>-<i>"`
    /// (libmemcached's `update_continuum`).
    pub fn libmemcached(servers: &[String], hash: super::HashFn) -> Continuum {
        const POINTS: u32 = 100;
        let mut points = Vec::with_capacity(servers.len() * POINTS as usize);
        for (index, host_port) in servers.iter().enumerate() {
            let name = host_port.strip_suffix(":11211").unwrap_or(host_port);
            for i in 0..POINTS {
                points.push((hash.hash(format!("{name}-{i}").as_bytes()), index as u32));
            }
        }
        points.sort_by_key(|p| p.0);
        Continuum { points }
    }

    /// Server index for a key hash.
    pub fn lookup(&self, hash: u32) -> usize {
        if self.points.is_empty() {
            return 0;
        }
        let i = self.points.partition_point(|p| p.0 < hash);
        let i = if i == self.points.len() { 0 } else { i };
        self.points[i].1 as usize
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_give_160_points_each() {
        let c = Continuum::new(&[("a:1".into(), 1), ("b:2".into(), 1), ("c:3".into(), 1)]);
        assert_eq!(c.len(), 480);
    }

    #[test]
    fn weights_shift_points() {
        let c = Continuum::new(&[("a:1".into(), 1), ("b:2".into(), 3)]);
        assert_eq!(c.len(), 80 + 240);
        let to_b = (0..1000u32)
            .filter(|i| c.lookup(super::super::HashFn::Md5.hash(format!("k{i}").as_bytes())) == 1)
            .count();
        assert!(to_b > 600, "{to_b}");
    }
}
