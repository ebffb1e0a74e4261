//! The one count-down joiner of every fan-out: a request sent as several parts (to several
//! servers or children) whose replies come back in any order and make one answer. What the
//! answer is, is the [`Fold`]'s business: merge a split multi-get ([`MergeGet`], with
//! [`split_multi_get`] and [`per_key`]), `OK` from everyone ([`Gather`], [`broadcast`]),
//! merged `stats` ([`MergeStats`]), and in the fan-out routes the worst reply or the first
//! good one.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use super::{Completion, Part, Reply, RouteRef};
use crate::protocol::item_codec as wire;
use crate::protocol::{reply::value_blocks, MultiGetRequest, Request};

/// What a joiner does with the parts' replies.
pub trait Fold {
    /// Takes the reply of part `part`. `Some` answers now; later replies still come here
    /// (the fold knows it answered).
    fn add(&mut self, part: usize, reply: Reply) -> Option<Reply>;
    /// Once every part has replied: the answer, unless one was given already.
    fn finish(&mut self) -> Option<Reply>;
}

/// Waits for a number of replies, folds them and completes `done` once.
pub struct Joiner<F> {
    left: Cell<usize>,
    fold: RefCell<F>,
    done: Cell<Option<Completion>>,
}

impl<F: Fold + 'static> Joiner<F> {
    /// A joiner of `parts` replies. With none, `done` gets the fold's answer at once.
    pub fn new(parts: usize, fold: F, done: Completion) -> Rc<Joiner<F>> {
        let j = Rc::new(Joiner {
            left: Cell::new(parts),
            fold: RefCell::new(fold),
            done: Cell::new(Some(done)),
        });
        if parts == 0 {
            j.finish();
        }
        j
    }

    /// The completion of part `part`.
    pub fn part(self: &Rc<Self>, part: usize) -> Completion {
        Completion::Part(self.clone(), part)
    }

    fn finish(&self) {
        let answer = self.fold.borrow_mut().finish();
        if let (Some(done), Some(r)) = (self.done.take(), answer) {
            done.complete(r);
        }
    }
}

impl<F: Fold + 'static> Part for Joiner<F> {
    fn part_done(&self, part: usize, reply: Reply) {
        let now = self.fold.borrow_mut().add(part, reply);
        if let Some(r) = now {
            if let Some(done) = self.done.take() {
                done.complete(r);
            }
        }
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.finish();
        }
    }
}

/// Splits a multi-get by `pick(key)` (a child index), sends each share to `send` and
/// merges the replies back in the client's order. One share: the request as it is.
pub fn split_multi_get(
    req: MultiGetRequest,
    pick: impl Fn(&[u8]) -> usize,
    mut send: impl FnMut(usize, Request, Completion),
    done: Completion,
) {
    let targets: Vec<usize> = req.keys.iter().map(|k| pick(k)).collect();
    let first = targets.first().copied().unwrap_or(0);
    if targets.iter().all(|&t| t == first) {
        return send(first, Request::MultiGet(req), done);
    }
    // One part per child, in order of first appearance.
    let mut order: Vec<usize> = Vec::new();
    let mut parts: Vec<Vec<u32>> = Vec::new();
    for (pos, &t) in targets.iter().enumerate() {
        match order.iter().position(|&s| s == t) {
            Some(p) => parts[p].push(pos as u32),
            None => {
                order.push(t);
                parts.push(vec![pos as u32]);
            }
        }
    }
    let head = req.with_keys(Vec::new());
    let shares: Vec<Vec<Bytes>> = parts
        .iter()
        .map(|p| p.iter().map(|&i| req.keys[i as usize].clone()).collect())
        .collect();
    let merge = Joiner::new(order.len(), MergeGet::new(req.keys, parts), done);
    for (part, (child, keys)) in order.into_iter().zip(shares).enumerate() {
        send(
            child,
            Request::MultiGet(head.with_keys(keys)),
            merge.part(part),
        );
    }
}

/// Splits a multi-get into one-key gets, each sent to `send`, merged back in order. For
/// routes whose logic is per key (miss-failover, warm-up, master-slave-l1, failover).
pub fn per_key(req: MultiGetRequest, mut send: impl FnMut(Request, Completion), done: Completion) {
    let parts: Vec<Vec<u32>> = (0..req.keys.len() as u32).map(|i| vec![i]).collect();
    let head = req.with_keys(Vec::new());
    let keys = req.keys.clone();
    let merge = Joiner::new(keys.len(), MergeGet::new(req.keys, parts), done);
    for (part, key) in keys.into_iter().enumerate() {
        send(Request::Keyed(head.single(key)), merge.part(part));
    }
}

/// A multi-get split across servers, merged back in the order the client asked.
pub struct MergeGet {
    keys: Vec<Bytes>,
    /// Positions in `keys` that each part (server) was asked for, in order.
    parts: Vec<Vec<u32>>,
    found: Vec<Option<Bytes>>,
}

impl MergeGet {
    pub fn new(keys: Vec<Bytes>, parts: Vec<Vec<u32>>) -> MergeGet {
        MergeGet {
            found: vec![None; keys.len()],
            keys,
            parts,
        }
    }
}

impl Fold for MergeGet {
    fn add(&mut self, part: usize, reply: Reply) -> Option<Reply> {
        // A share answered by a composite route may come in pieces.
        let reply = match reply {
            Reply::Chunks(c) => Reply::Data(Bytes::from(c.concat())),
            other => other,
        };
        // A failed server's keys are misses: the rest of the multi-get still answers.
        if let Reply::Data(data) = reply {
            let wanted = &self.parts[part];
            let mut cursor = 0;
            for (key, block) in value_blocks(&data) {
                // The server answers hits in the order it was asked; skip the misses.
                while cursor < wanted.len()
                    && self.keys[wanted[cursor] as usize] != data[key.clone()]
                {
                    cursor += 1;
                }
                if cursor == wanted.len() {
                    break;
                }
                self.found[wanted[cursor] as usize] = Some(data.slice(block));
                cursor += 1;
            }
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        let mut chunks: Vec<Bytes> = std::mem::take(&mut self.found)
            .into_iter()
            .flatten()
            .collect();
        chunks.push(Bytes::from_static(b"END\r\n"));
        Some(Reply::Chunks(chunks))
    }
}

/// Sends `req` to every route of `to` (a `flush_all`): see [`Gather`].
pub fn broadcast<'r>(
    req: &Request,
    to: impl ExactSizeIterator<Item = &'r RouteRef>,
    done: Completion,
) {
    let gather = Joiner::new(to.len(), Gather::default(), done);
    for (i, r) in to.enumerate() {
        r.route(req.clone(), gather.part(i));
    }
}

/// A request sent to every server: answers `OK` when all did, else the first other reply.
#[derive(Default)]
pub struct Gather {
    worst: Option<Reply>,
}

impl Fold for Gather {
    fn add(&mut self, _part: usize, reply: Reply) -> Option<Reply> {
        let ok = matches!(&reply, Reply::Data(d) if &d[..] == b"OK\r\n");
        let keep_new = match &self.worst {
            None => true,
            Some(Reply::Data(d)) if &d[..] == b"OK\r\n" => !ok,
            Some(_) => false,
        };
        if keep_new {
            self.worst = Some(reply);
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        self.worst.take()
    }
}

/// `stats settings|items|slabs|sizes|conns|reset` asked of every server of a pool, merged
/// into the one reply a client of a single memcached expects: numeric values summed
/// (item and slab counts, memory, evictions...), except values that describe one server
/// and do not add up (sizes, ages, limits, settings: the first server's value is kept, or
/// the largest for ages). A server that failed makes the whole reply its error. `reset`
/// answers `RESET` once every server did.
#[derive(Default)]
pub struct MergeStats {
    /// Stat names in first-seen order, with their merged value.
    lines: Vec<(String, String)>,
    failed: Option<Reply>,
    other: Option<Reply>,
}

/// Stats whose value is the same kind of thing on every server (not a count to add).
fn kept_not_summed(name: &str) -> bool {
    let field = name.rsplit(':').next().unwrap_or(name);
    matches!(
        field,
        "chunk_size"
            | "chunks_per_page"
            | "age"
            | "age_hot"
            | "age_warm"
            | "evicted_time"
            | "active_slabs"
            | "pid"
            | "uptime"
            | "time"
            | "version"
            | "libevent"
            | "pointer_size"
            | "threads"
            | "maxconns"
            | "tcpport"
            | "udpport"
            | "item_size_max"
            | "slab_chunk_max"
            | "hash_power_level"
    ) || field.starts_with("lru")
}

impl Fold for MergeStats {
    fn add(&mut self, _part: usize, reply: Reply) -> Option<Reply> {
        let bytes = wire::bytes_of(&reply).into_owned();
        if reply.is_error() || bytes.starts_with(b"SERVER_ERROR") || bytes.starts_with(b"ERROR") {
            self.failed.get_or_insert(reply);
        } else if !bytes.starts_with(b"STAT ") {
            // `RESET`, or an empty `END`.
            self.other.get_or_insert(reply);
        } else {
            for line in bytes.split(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let Some(rest) = line.trim_end_matches('\r').strip_prefix("STAT ") else {
                    continue;
                };
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match self.lines.iter_mut().find(|(n, _)| n == name) {
                    None => self.lines.push((name.to_string(), value.to_string())),
                    Some((_, v)) => {
                        if let (Ok(a), Ok(b)) = (v.parse::<u64>(), value.parse::<u64>()) {
                            let field = name.rsplit(':').next().unwrap_or(name);
                            *v = if field.starts_with("age") || field == "evicted_time" {
                                a.max(b)
                            } else if kept_not_summed(name) {
                                a
                            } else {
                                a.saturating_add(b)
                            }
                            .to_string();
                        }
                    }
                }
            }
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        if let Some(f) = self.failed.take() {
            return Some(f);
        }
        let lines = std::mem::take(&mut self.lines);
        if lines.is_empty() {
            if let Some(o) = self.other.take() {
                return Some(o);
            }
        }
        let mut out = String::new();
        for (n, v) in lines {
            out.push_str("STAT ");
            out.push_str(&n);
            out.push(' ');
            out.push_str(&v);
            out.push_str("\r\n");
        }
        out.push_str("END\r\n");
        Some(Reply::Data(Bytes::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Answers with the concatenation of the parts in part order; `early` answers at once.
    struct Concat {
        got: Vec<Option<String>>,
        early: Option<usize>,
    }

    impl Fold for Concat {
        fn add(&mut self, part: usize, reply: Reply) -> Option<Reply> {
            let text = String::from_utf8_lossy(reply.head()).into_owned();
            self.got[part] = Some(text.clone());
            (self.early == Some(part)).then_some(reply)
        }
        fn finish(&mut self) -> Option<Reply> {
            let all: String = self.got.iter().flatten().cloned().collect();
            Some(Reply::Data(Bytes::from(all)))
        }
    }

    fn capture() -> (Completion, Rc<RefCell<Vec<String>>>) {
        let out = Rc::new(RefCell::new(Vec::new()));
        let o = out.clone();
        let c = Completion::then(move |r| {
            o.borrow_mut()
                .push(String::from_utf8_lossy(r.head()).into_owned())
        });
        (c, out)
    }

    fn data(s: &'static str) -> Reply {
        Reply::Data(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn completes_once_after_the_last_part_in_part_order() {
        let (done, out) = capture();
        let j = Joiner::new(
            3,
            Concat {
                got: vec![None; 3],
                early: None,
            },
            done,
        );
        j.part(2).complete(data("c"));
        j.part(0).complete(data("a"));
        assert!(out.borrow().is_empty(), "answered before the last part");
        j.part(1).complete(data("b"));
        assert_eq!(*out.borrow(), vec!["abc".to_string()]);
    }

    #[test]
    fn an_early_answer_is_the_only_one() {
        let (done, out) = capture();
        let j = Joiner::new(
            2,
            Concat {
                got: vec![None; 2],
                early: Some(1),
            },
            done,
        );
        j.part(1).complete(data("b"));
        assert_eq!(*out.borrow(), vec!["b".to_string()]);
        j.part(0).complete(data("a"));
        assert_eq!(
            *out.borrow(),
            vec!["b".to_string()],
            "finish answered again"
        );
    }

    #[test]
    fn gather_answers_ok_only_when_everyone_did() {
        let (done, out) = capture();
        let j = Joiner::new(3, Gather::default(), done);
        j.part(0).complete(data("OK\r\n"));
        j.part(1).complete(Reply::error("timeout"));
        j.part(2).complete(data("OK\r\n"));
        assert_eq!(*out.borrow(), vec!["SERVER_ERROR timeout\r\n".to_string()]);
        let (done, out) = capture();
        let j = Joiner::new(2, Gather::default(), done);
        j.part(1).complete(data("OK\r\n"));
        j.part(0).complete(data("OK\r\n"));
        assert_eq!(*out.borrow(), vec!["OK\r\n".to_string()]);
    }

    #[test]
    fn merge_get_puts_hits_back_in_the_clients_order() {
        let keys: Vec<Bytes> = ["a", "b", "c", "a"]
            .iter()
            .map(|k| Bytes::from_static(k.as_bytes()))
            .collect();
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        let done =
            Completion::then(move |r| *o.borrow_mut() = Some(wire::bytes_of(&r).into_owned()));
        let j = Joiner::new(2, MergeGet::new(keys, vec![vec![1], vec![0, 2, 3]]), done);
        j.part(1)
            .complete(data("VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n"));
        j.part(0).complete(Reply::error("down"));
        assert_eq!(
            out.borrow().as_deref(),
            Some(&b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n"[..]),
            "b failed (a miss), c missed, a asked twice"
        );
    }

    #[test]
    fn merge_stats_sums_counts_and_keeps_settings() {
        let (done, out) = capture_all();
        let j = Joiner::new(2, MergeStats::default(), done);
        j.part(0).complete(data(
            "STAT items:1:number 3\r\nSTAT items:1:age 10\r\nSTAT maxconns 1024\r\nEND\r\n",
        ));
        j.part(1).complete(data(
            "STAT items:1:number 4\r\nSTAT items:1:age 30\r\nSTAT maxconns 2048\r\nEND\r\n",
        ));
        assert_eq!(
            out.borrow().as_deref(),
            Some("STAT items:1:number 7\r\nSTAT items:1:age 30\r\nSTAT maxconns 1024\r\nEND\r\n")
        );
        let (done, out) = capture_all();
        let j = Joiner::new(2, MergeStats::default(), done);
        j.part(0).complete(data("STAT a 1\r\nEND\r\n"));
        j.part(1).complete(Reply::error("down"));
        assert_eq!(out.borrow().as_deref(), Some("SERVER_ERROR down\r\n"));
    }

    /// The whole reply (not just its head).
    fn capture_all() -> (Completion, Rc<RefCell<Option<String>>>) {
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        let c = Completion::then(move |r| {
            *o.borrow_mut() = Some(String::from_utf8_lossy(&wire::bytes_of(&r)).into_owned())
        });
        (c, out)
    }

    #[test]
    fn no_parts_answers_at_once() {
        let (done, out) = capture();
        let _j = Joiner::new(
            0,
            Concat {
                got: Vec::new(),
                early: None,
            },
            done,
        );
        assert_eq!(*out.borrow(), vec![String::new()]);
    }
}
