//! Placement: which server of a pool holds a key. Hash functions (`hash/`: twemproxy's,
//! ketama's continuum, mcrouter's furc and WeightedCh3) and the one [`Placement`] type that the data path
//! (`crate::route::pool`) and the invalidation fan-out share, so a delete reaches the server
//! a value was put on. A configured pool builds its placement once
//! (`crate::config::Pool::placement`); the plan holds it for everyone.

pub mod hash;

use hash::{ketama::Continuum, HashFn};

/// How keys spread over servers (twemproxy's `distribution:`).
#[derive(Debug, Clone)]
pub enum Distribution {
    Ketama(Continuum),
    /// `hash % n` over a list where each server appears `weight` times.
    Modula(Vec<u32>),
    /// mcrouter's `Ch3` (`furc_hash` over the number of servers; weights ignored).
    Ch3(u32),
    /// mcrouter's `WeightedCh3`: Ch3 with each server keeping a fraction of its keys.
    WeightedCh3(Vec<f64>),
    /// A random entry of the same weighted list: for replicated, read-mostly data.
    Random(Vec<u32>),
}

/// The placement of a pool, process read-only by all workers.
#[derive(Debug, Clone)]
pub struct Placement {
    pub hash: HashFn,
    pub dist: Distribution,
    /// twemproxy's `hash_tag`: only the part of a key between these two bytes is hashed.
    pub hash_tag: Option<[u8; 2]>,
    /// Set for a pool that ejects failing servers (twemproxy's `auto_eject_hosts`): what
    /// the placement was built from, to build it again over the servers still in.
    pub ejecting: Option<(String, Vec<(String, u32)>)>,
}

impl Placement {
    pub fn new(hash: HashFn, kind: &str, servers: &[(String, u32)]) -> Placement {
        let weighted = || {
            servers
                .iter()
                .enumerate()
                .flat_map(|(i, s)| std::iter::repeat_n(i as u32, s.1 as usize))
                .collect::<Vec<_>>()
        };
        let dist = match kind {
            "modula" => Distribution::Modula(weighted()),
            "random" => Distribution::Random(weighted()),
            "ch3" => Distribution::Ch3(servers.len() as u32),
            "libmemcached_ketama" => Distribution::Ketama(Continuum::libmemcached(
                &servers.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
                hash,
            )),
            _ => Distribution::Ketama(Continuum::new(servers)),
        };
        Placement {
            hash,
            dist,
            hash_tag: None,
            ejecting: None,
        }
    }

    /// The same placement, able to leave servers out ([`Placement::without`]).
    pub fn ejecting(mut self, kind: &str, servers: Vec<(String, u32)>) -> Placement {
        self.ejecting = Some((kind.to_string(), servers));
        self
    }

    /// For an ejecting pool, the placement over the servers not marked in `out`, and each
    /// of its indexes' server in the whole pool: as twemproxy rebuilds its distribution
    /// over the live servers, so a key of an ejected server moves, and only such keys do
    /// (for ketama). `None`: not an ejecting pool, or no server left.
    pub fn without(&self, out: &[bool]) -> Option<(Placement, Vec<usize>)> {
        let (kind, servers) = self.ejecting.as_ref()?;
        let live: Vec<usize> = (0..servers.len())
            .filter(|&i| !out.get(i).copied().unwrap_or(false))
            .collect();
        if live.is_empty() {
            return None;
        }
        let names: Vec<(String, u32)> = live.iter().map(|&i| servers[i].clone()).collect();
        let p = Placement::new(self.hash, kind, &names).with_hash_tag(self.hash_tag);
        Some((p, live))
    }

    /// The same placement, hashing only the tagged part of keys (twemproxy's `hash_tag`).
    pub fn with_hash_tag(mut self, tag: Option<[u8; 2]>) -> Placement {
        self.hash_tag = tag;
        self
    }

    /// What is hashed of `key`: as twemproxy, the bytes between the first `tag[0]` and the
    /// next `tag[1]` after it, if there are any; else the whole key.
    pub fn hashed_part<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let Some([open, close]) = self.hash_tag else {
            return key;
        };
        let Some(start) = memchr::memchr(open, key) else {
            return key;
        };
        match memchr::memchr(close, &key[start + 1..]) {
            Some(len) if len > 0 => &key[start + 1..start + 1 + len],
            _ => key,
        }
    }

    /// True for a pool that keeps a copy of every item on every server (`random`): an
    /// invalidation must reach all of them.
    pub fn is_replicated(&self) -> bool {
        matches!(self.dist, Distribution::Random(_))
    }

    /// Index of the server that holds `key`.
    pub fn server_for(&self, key: &[u8]) -> usize {
        let key = self.hashed_part(key);
        match &self.dist {
            Distribution::Ketama(c) => c.lookup(self.hash.hash(key)),
            Distribution::Modula(list) => {
                list[(self.hash.hash(key) as usize) % list.len().max(1)] as usize
            }
            Distribution::Random(list) => list[fastrand::usize(..list.len().max(1))] as usize,
            Distribution::Ch3(n) => hash::furc::furc_hash(key, *n) as usize,
            Distribution::WeightedCh3(w) => hash::wch3::weighted_ch3(key, w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_moves_only_the_ejected_servers_keys() {
        let names: Vec<(String, u32)> = (0..4).map(|i| (format!("s{i}"), 1)).collect();
        let p = Placement::new(HashFn::Md5, "ketama", &names).ejecting("ketama", names.clone());
        let (q, live) = p.without(&[false, true, false, false]).unwrap();
        assert_eq!(live, vec![0, 2, 3]);
        let mut moved = 0;
        for i in 0..2000 {
            let k = format!("k{i}");
            let (a, b) = (p.server_for(k.as_bytes()), live[q.server_for(k.as_bytes())]);
            assert_ne!(b, 1, "a key still hashed to the ejected server");
            if a != 1 {
                // twemproxy rescales points by the live weight, so a few keys of live
                // servers move too; most stay.
                moved += (a != b) as usize;
            }
        }
        assert!(moved < 300, "{moved} keys of live servers moved");
        assert!(Placement::new(HashFn::Md5, "ketama", &names)
            .without(&[true; 4])
            .is_none());
    }

    #[test]
    fn hash_tag_hashes_the_tagged_part_as_twemproxy_does() {
        let p = Placement::new(HashFn::Md5, "ketama", &[("a".into(), 1), ("b".into(), 1)])
            .with_hash_tag(Some(*b"{}"));
        assert_eq!(p.hashed_part(b"user:{42}:name"), b"42");
        assert_eq!(p.hashed_part(b"{42}"), b"42");
        assert_eq!(
            p.hashed_part(b"a{}b"),
            b"a{}b",
            "an empty tag hashes the whole key"
        );
        assert_eq!(p.hashed_part(b"a{b"), b"a{b", "no closing character");
        assert_eq!(
            p.hashed_part(b"a}b{c}"),
            b"c",
            "the close must follow the open"
        );
        assert_eq!(p.server_for(b"x:{7}:1"), p.server_for(b"y:{7}:2"));
        let untagged = Placement::new(HashFn::Md5, "ketama", &[("a".into(), 1)]);
        assert_eq!(untagged.hashed_part(b"user:{42}"), b"user:{42}");
    }
}
