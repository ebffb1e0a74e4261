//! Delivery: the dispatcher between the batcher and the sinks. It keeps up to
//! `max_in_flight` batches outstanding, acknowledges them strictly in order, and retries a
//! failed send with backoff forever (deletes are idempotent, so a retry is harmless;
//! skipping one is not). What is acknowledged ([`Acked`]) is what the checkpoint may record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::batch::{Batch, KEY_OVERHEAD};
use crate::config::BatchConfig;
use crate::model::Position;
use crate::sink::Sink;

/// What has been acknowledged: the last position (and GTID) whose batches all arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    pub seq: u64,
    pub pos: Option<Position>,
    pub gtid: Option<String>,
    pub keys: u64,
}

/// Sends `batch` to every sink at once (so a second sink adds no round trip), each
/// retried with backoff until it succeeds; resolves when all have acknowledged.
async fn deliver(sinks: Arc<Vec<Arc<dyn Sink>>>, batch: Arc<Batch>) -> Arc<Batch> {
    futures_util::future::join_all(sinks.iter().map(|s| deliver_to(s, &batch))).await;
    batch
}

async fn deliver_to(sink: &Arc<dyn Sink>, batch: &Arc<Batch>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = std::time::Instant::now();
        match sink.send(batch.clone()).await {
            Ok(()) => {
                metrics::histogram!("squeal_sink_latency_seconds", "sink" => sink.name().to_string())
                    .record(started.elapsed().as_secs_f64());
                return;
            }
            Err(e) => {
                metrics::counter!("squeal_sink_errors_total", "sink" => sink.name().to_string())
                    .increment(1);
                tracing::warn!(sink = sink.name(), seq = batch.seq, error = %e, "delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// `flush_all` on every sink, each retried with backoff until it succeeds (a flush that is
/// skipped would leave stale values behind; one that is repeated only costs cache misses).
async fn flush_every_sink(sinks: &[Arc<dyn Sink>]) {
    for sink in sinks {
        let mut backoff = Duration::from_millis(50);
        loop {
            match sink.flush_all().await {
                Ok(()) => {
                    metrics::counter!("squeal_flushes_total", "sink" => sink.name().to_string())
                        .increment(1);
                    tracing::warn!(sink = sink.name(), "flushed every target");
                    break;
                }
                Err(e) => {
                    metrics::counter!("squeal_sink_errors_total", "sink" => sink.name().to_string())
                        .increment(1);
                    tracing::warn!(sink = sink.name(), error = %e, "flush_all failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Where this run's batch numbers start: the start time in microseconds since the epoch,
/// so numbers keep increasing across restarts (a router counts a number it has already
/// seen from this source as a re-sent duplicate; restarting at 1 made every batch of a
/// restarted squeal look like one). A run would need more than one batch per microsecond
/// of downtime to collide with its predecessor.
fn first_seq() -> u64 {
    crate::model::now_micros()
}

/// How the dispatcher packs pieces into packets (from `[batch]`).
#[derive(Debug, Clone, Copy)]
pub struct Packing {
    pub max_bytes: usize,
    pub max_in_flight: usize,
    /// Under load, a packet waits for this many keys (0: never waits).
    pub busy_keys: usize,
    /// ... for at most this long after its first key was read.
    pub busy_wait: Duration,
}

impl From<&BatchConfig> for Packing {
    fn from(c: &BatchConfig) -> Packing {
        Packing {
            max_bytes: c.max_bytes,
            max_in_flight: c.max_in_flight.max(1),
            busy_keys: c.busy_keys,
            busy_wait: Duration::from_micros(c.busy_wait_us),
        }
    }
}

/// The packet being filled while others are in flight: TCP's Nagle rule for batches. A
/// partly filled packet leaves only when nothing is in flight; a full one leaves while
/// fewer than `max_in_flight` are. So the idle path sends each transaction at once (no
/// timer), and under load keys pile up for as long as a round trip takes.
///
/// A round trip to a nearby sink is short (100-300 us), so at tens of thousands of
/// transactions a second that alone makes packets of a few keys, each costing the
/// receivers a read and a write per cluster. So when keys arrive fast enough that a packet
/// of `busy_keys` fills within `busy_wait` (an average of recent gaps between keys says
/// so), a packet with nothing in flight also waits, for those keys or that time. Idle, the
/// gaps are long and nothing waits.
struct Packer {
    packing: Packing,
    open: Option<Batch>,
    /// The piece that did not fit into `open`: the next packet's first.
    next: Option<Batch>,
    seq: u64,
    /// Recent time between keys, in seconds (an exponential average over pieces).
    key_gap: f64,
    last_piece: Option<Instant>,
}

impl Packer {
    fn new(packing: Packing) -> Packer {
        Packer {
            packing,
            open: None,
            next: None,
            seq: first_seq(),
            key_gap: 1.0,
            last_piece: None,
        }
    }

    /// Room for more pieces (the dispatcher stops taking them when not: the channel fills
    /// and the binlog reader waits).
    fn has_room(&self) -> bool {
        self.next.is_none() && !self.open.as_ref().is_some_and(|b| b.flush)
    }

    fn add(&mut self, piece: Batch, now: Instant) {
        let gap = self
            .last_piece
            .map_or(1.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_piece = Some(now);
        // A piece of n keys after a gap: n gaps of gap/n; weight 1/8 per piece.
        let per_key = gap / piece.len().max(1) as f64;
        self.key_gap += (per_key - self.key_gap) / 8.0;
        match &mut self.open {
            None => self.open = Some(piece),
            Some(open) if open.bytes() + piece.bytes() <= self.packing.max_bytes && !open.flush => {
                open.append(piece)
            }
            Some(_) => self.next = Some(piece),
        }
    }

    /// Full: nothing more fits, or it carries a flush (which goes alone, after the rest).
    fn is_full(&self) -> bool {
        self.next.is_some()
            || self.open.as_ref().is_some_and(|b| {
                b.flush || b.bytes() + KEY_OVERHEAD + MIN_KEY > self.packing.max_bytes
            })
    }

    /// Until when the open packet waits for more keys with nothing in flight: only under
    /// load, and only while it has fewer than `busy_keys`.
    fn busy_until(&self) -> Option<Instant> {
        let p = &self.packing;
        let open = self.open.as_ref()?;
        let busy = p.busy_keys > 0
            && self.key_gap * p.busy_keys as f64 <= p.busy_wait.as_secs_f64()
            && open.len() < p.busy_keys
            && !self.is_full();
        busy.then(|| open.born + p.busy_wait)
    }

    /// The open packet, numbered, if the rules let it leave now with `in_flight` batches
    /// outstanding.
    fn take(&mut self, in_flight: usize, now: Instant) -> Option<Batch> {
        let open = self.open.as_ref()?;
        let may = if open.flush {
            in_flight == 0
        } else if self.is_full() {
            in_flight < self.packing.max_in_flight
        } else {
            in_flight == 0 && self.busy_until().is_none_or(|until| now >= until)
        };
        if !may {
            return None;
        }
        let mut b = self.open.take().expect("checked");
        self.open = self.next.take();
        self.seq += 1;
        b.seq = self.seq;
        metrics::histogram!("squeal_keys_per_packet").record(b.len() as f64);
        metrics::histogram!("squeal_packet_bytes").record(b.bytes() as f64);
        // How long the packet's oldest key waited in squeal since its commit was read.
        metrics::histogram!("squeal_batch_wait_seconds").record(b.born.elapsed().as_secs_f64());
        Some(b)
    }
}

/// A packet with less room than this for another key counts as full (a typical key).
const MIN_KEY: usize = 250;

/// Sends batches to every sink and publishes what is acknowledged, in order. Pieces from
/// the batcher are packed into packets ([`Packer`]): one leaves at once when nothing is in
/// flight, otherwise when full, up to `max_in_flight` outstanding. A flush batch waits for
/// everything before it, goes alone, and nothing after it leaves until every sink flushed.
/// Returns when the batch channel closes and all is delivered.
pub async fn dispatch(
    mut rx: mpsc::Receiver<Batch>,
    sinks: Vec<Arc<dyn Sink>>,
    packing: Packing,
    acked: watch::Sender<Acked>,
) {
    let sinks = Arc::new(sinks);
    let mut inflight = FuturesOrdered::new();
    let mut packer = Packer::new(packing);
    let mut open = true;
    let mut state = Acked::default();
    let ack = |b: Arc<Batch>, state: &mut Acked| {
        metrics::counter!("squeal_keys_delivered_total").increment(b.len() as u64);
        metrics::histogram!("squeal_batch_ack_seconds").record(b.born.elapsed().as_secs_f64());
        state.seq = b.seq;
        state.keys += b.len() as u64;
        if let Some(p) = &b.pos {
            state.pos = Some(p.clone());
            state.gtid = b.gtid.clone();
        }
        acked.send_replace(state.clone());
    };
    loop {
        // Everything already queued joins the open packet before it may leave.
        while packer.has_room() {
            match rx.try_recv() {
                Ok(piece) => packer.add(piece, Instant::now()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while let Some(b) = packer.take(inflight.len(), Instant::now()) {
            if b.flush {
                // Everything before it is acknowledged (take waited for that), then its
                // own keys, then the flush itself; its position is acknowledged
                // (checkpointable) only then.
                let b = deliver(sinks.clone(), Arc::new(b)).await;
                flush_every_sink(&sinks).await;
                ack(b, &mut state);
            } else {
                inflight.push_back(deliver(sinks.clone(), Arc::new(b)));
            }
        }
        if !open && inflight.is_empty() && packer.open.is_none() {
            break;
        }
        let busy_until = packer.busy_until();
        tokio::select! {
            piece = rx.recv(), if open && packer.has_room() => match piece {
                Some(piece) => packer.add(piece, Instant::now()),
                None => open = false,
            },
            () = tokio::time::sleep_until(busy_until.unwrap_or_else(Instant::now).into()),
                if busy_until.is_some() && inflight.is_empty() => {}
            Some(b) = inflight.next(), if !inflight.is_empty() => ack(b, &mut state),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::sync::oneshot;

    use super::*;
    use crate::sink::{SinkError, SinkFuture};

    /// A sink whose sends complete when the test says so.
    struct Gated {
        sent: mpsc::UnboundedSender<(Arc<Batch>, oneshot::Sender<()>)>,
        flushes: mpsc::UnboundedSender<()>,
    }

    impl Sink for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        fn send(&self, batch: Arc<Batch>) -> SinkFuture {
            let (done, wait) = oneshot::channel();
            let _ = self.sent.send((batch, done));
            Box::pin(async move { wait.await.map_err(|_| SinkError("dropped".into())) })
        }
        fn flush_all(&self) -> SinkFuture {
            let _ = self.flushes.send(());
            Box::pin(async { Ok(()) })
        }
    }

    struct Rig {
        pieces: mpsc::Sender<Batch>,
        sent: mpsc::UnboundedReceiver<(Arc<Batch>, oneshot::Sender<()>)>,
        flushes: mpsc::UnboundedReceiver<()>,
        acked: watch::Receiver<Acked>,
    }

    fn rig(max_bytes: usize, max_in_flight: usize) -> Rig {
        let (pieces, rx) = mpsc::channel(64);
        let (stx, sent) = mpsc::unbounded_channel();
        let (ftx, flushes) = mpsc::unbounded_channel();
        let (atx, acked) = watch::channel(Acked::default());
        let sink: Arc<dyn Sink> = Arc::new(Gated {
            sent: stx,
            flushes: ftx,
        });
        let packing = Packing {
            max_bytes,
            max_in_flight,
            busy_keys: 0,
            busy_wait: Duration::ZERO,
        };
        tokio::spawn(dispatch(rx, vec![sink], packing, atx));
        Rig {
            pieces,
            sent,
            flushes,
            acked,
        }
    }

    fn piece(key: &str, pos: u64) -> Batch {
        let mut b = Batch {
            seq: 0,
            data: Vec::new(),
            ends: Vec::new(),
            pos: Some(Position {
                file: "f".into(),
                pos,
            }),
            gtid: None,
            txns: 1,
            commit_time_us: 0,
            born: Instant::now(),
            flush: false,
        };
        b.push_key(key.as_bytes());
        b
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn keys(b: &Batch) -> Vec<String> {
        b.keys()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn idle_sends_at_once_busy_packs_until_the_ack() {
        let mut r = rig(16 * 1024, 8);
        r.pieces.send(piece("a", 1)).await.unwrap();
        let (first, done) = r.sent.recv().await.unwrap();
        assert_eq!(keys(&first), ["a"]);
        for (i, k) in ["b", "c", "d"].iter().enumerate() {
            r.pieces.send(piece(k, 2 + i as u64)).await.unwrap();
        }
        settle().await;
        assert!(
            r.sent.try_recv().is_err(),
            "held while a packet is in flight"
        );
        done.send(()).unwrap();
        let (second, done2) = r.sent.recv().await.unwrap();
        assert_eq!(keys(&second), ["b", "c", "d"], "one packet, in order");
        assert_eq!(second.txns, 3);
        assert!(second.seq > first.seq);
        assert_eq!(r.acked.borrow().pos.as_ref().unwrap().pos, 1);
        done2.send(()).unwrap();
        r.acked.changed().await.unwrap();
        settle().await;
        assert_eq!(r.acked.borrow().pos.as_ref().unwrap().pos, 4);
        assert_eq!(r.acked.borrow().keys, 4);
    }

    #[tokio::test]
    async fn every_sink_gets_a_packet_at_once_and_it_is_acked_when_all_did() {
        let (pieces, rx) = mpsc::channel(64);
        let (atx, acked) = watch::channel(Acked::default());
        let (mut gates, mut sinks) = (Vec::new(), Vec::<Arc<dyn Sink>>::new());
        for _ in 0..2 {
            let (stx, sent) = mpsc::unbounded_channel();
            let (ftx, _flushes) = mpsc::unbounded_channel();
            sinks.push(Arc::new(Gated {
                sent: stx,
                flushes: ftx,
            }));
            gates.push(sent);
        }
        let packing = Packing {
            max_bytes: 16 * 1024,
            max_in_flight: 8,
            busy_keys: 0,
            busy_wait: Duration::ZERO,
        };
        tokio::spawn(dispatch(rx, sinks, packing, atx));
        pieces.send(piece("a", 1)).await.unwrap();
        // Both sinks have it before either acknowledged.
        let (_, d0) = gates[0].recv().await.unwrap();
        let (_, d1) = tokio::time::timeout(Duration::from_secs(5), gates[1].recv())
            .await
            .expect("the second sink got it while the first had not acknowledged")
            .unwrap();
        d1.send(()).unwrap();
        settle().await;
        assert_eq!(acked.borrow().pos, None, "one sink of two is not delivered");
        d0.send(()).unwrap();
        let mut acked = acked;
        acked.changed().await.unwrap();
        assert_eq!(acked.borrow().pos.as_ref().unwrap().pos, 1);
    }

    #[tokio::test]
    async fn full_packets_go_while_in_flight_up_to_the_limit() {
        // Each piece costs 9 + 100 bytes: two fill a 250-byte packet.
        let mut r = rig(250, 2);
        let key = |c: char| c.to_string().repeat(100);
        r.pieces.send(piece(&key('a'), 1)).await.unwrap();
        let (_, d1) = r.sent.recv().await.unwrap();
        for (i, c) in "bcdefg".chars().enumerate() {
            r.pieces.send(piece(&key(c), 2 + i as u64)).await.unwrap();
        }
        let (p2, d2) = r.sent.recv().await.unwrap();
        assert_eq!(p2.len(), 2, "full, so it went with one in flight");
        settle().await;
        assert!(r.sent.try_recv().is_err(), "max_in_flight = 2 reached");
        d1.send(()).unwrap();
        let (p3, d3) = r.sent.recv().await.unwrap();
        assert_eq!(p3.len(), 2);
        d2.send(()).unwrap();
        d3.send(()).unwrap();
        let (p4, d4) = r.sent.recv().await.unwrap();
        assert_eq!(keys(&p4), [key('f'), key('g')]);
        d4.send(()).unwrap();
        drop(r.pieces);
        while r.acked.changed().await.is_ok() {}
        assert_eq!(r.acked.borrow().pos.as_ref().unwrap().pos, 7);
    }

    #[tokio::test]
    async fn a_flush_waits_for_everything_before_it_and_holds_what_follows() {
        let mut r = rig(16 * 1024, 8);
        r.pieces.send(piece("a", 1)).await.unwrap();
        let (_, d1) = r.sent.recv().await.unwrap();
        let mut f = piece("b", 2);
        f.flush = true;
        r.pieces.send(f).await.unwrap();
        r.pieces.send(piece("c", 3)).await.unwrap();
        settle().await;
        assert!(r.sent.try_recv().is_err());
        d1.send(()).unwrap();
        let (p, d2) = r.sent.recv().await.unwrap();
        assert_eq!(keys(&p), ["b"], "the flush's own keys go alone");
        settle().await;
        assert!(r.flushes.try_recv().is_err(), "keys first, then the flush");
        d2.send(()).unwrap();
        r.flushes.recv().await.unwrap();
        let (p, d3) = r.sent.recv().await.unwrap();
        assert_eq!(keys(&p), ["c"]);
        assert_eq!(r.acked.borrow().pos.as_ref().unwrap().pos, 2);
        d3.send(()).unwrap();
    }

    #[test]
    fn under_load_a_packet_waits_for_busy_keys_idle_it_never_waits() {
        let packing = Packing {
            max_bytes: 16 * 1024,
            max_in_flight: 8,
            busy_keys: 4,
            busy_wait: Duration::from_millis(2),
        };
        let at = |key: &str, pos: u64, t: Instant| {
            let mut b = piece(key, pos);
            b.born = t;
            b
        };
        let mut p = Packer::new(packing);
        let t0 = Instant::now();
        // Idle: one key after a long silence leaves at once.
        p.add(at("a", 1, t0), t0);
        assert!(p.busy_until().is_none());
        assert_eq!(keys(&p.take(0, t0).unwrap()), ["a"]);
        // A key every 100 us: 4 keys fill in 400 us < 2 ms, so once the average of the
        // gaps says so, packets wait for 4 keys.
        let mut t = t0;
        let mut sizes = Vec::new();
        for i in 0..200 {
            t += Duration::from_micros(100);
            p.add(at("k", 2 + i, t), t);
            if let Some(b) = p.take(0, t) {
                sizes.push(b.len());
            }
        }
        assert_eq!(sizes[0], 1, "not busy yet: {sizes:?}");
        assert!(
            sizes[sizes.len() - 10..].iter().all(|&n| n == 4),
            "{sizes:?}"
        );
        // A busy packet short of keys leaves at busy_wait.
        while p.take(0, t + Duration::from_secs(1)).is_some() {}
        p.add(at("x", 300, t), t);
        let until = p.busy_until().expect("still busy");
        assert_eq!(until, t + Duration::from_millis(2));
        assert!(p.take(0, t).is_none(), "waits for more keys");
        assert!(p.take(1, until).is_none(), "and for what is in flight");
        assert_eq!(
            keys(&p.take(0, until).unwrap()),
            ["x"],
            "but not past busy_wait"
        );
        // busy_keys = 0: never waits.
        let mut q = Packer::new(Packing {
            busy_keys: 0,
            ..packing
        });
        for i in 0..100 {
            t += Duration::from_micros(10);
            q.add(at("q", i, t), t);
        }
        assert!(q.busy_until().is_none());
        assert_eq!(q.take(0, t).unwrap().len(), 100);
    }

    /// Steps of a random run of the packer: a piece arrives (keys of these lengths, at most
    /// 4 of them so that a piece fits in 600 bytes as the batcher's do; maybe a flush) some microseconds after the last, or the oldest packet in flight is acked.
    #[derive(Debug, Clone)]
    enum Step {
        Piece {
            keys: Vec<usize>,
            flush: bool,
            after_us: u64,
        },
        Ack,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (proptest::collection::vec(1usize..120, 1..5), proptest::bool::weighted(0.05), 0u64..400)
                .prop_map(|(keys, flush, after_us)| Step::Piece { keys, flush, after_us }),
            2 => Just(Step::Ack),
        ]
    }

    proptest::proptest! {
        /// Whatever the arrivals and acks: every key leaves exactly once and in order, no
        /// packet exceeds max_bytes, at most max_in_flight are out, a flush goes only with
        /// nothing in flight, and sequence numbers increase.
        #[test]
        fn packing_never_loses_reorders_or_overfills(
            steps in proptest::collection::vec(step(), 1..200),
            max_in_flight in 1usize..4,
            busy_keys in 0usize..8,
        ) {
            let packing = Packing {
                max_bytes: 600,
                max_in_flight,
                busy_keys,
                busy_wait: Duration::from_micros(500),
            };
            let mut p = Packer::new(packing);
            let mut now = Instant::now();
            let mut inflight: std::collections::VecDeque<Batch> = Default::default();
            let (mut sent, mut added) = (Vec::new(), Vec::new());
            let mut last_seq = 0;
            let mut n = 0u64;
            let mut check = |b: &Batch, inflight_before: usize| {
                assert!(b.bytes() <= 600, "{} bytes", b.bytes());
                assert!(inflight_before < max_in_flight || (b.flush && inflight_before == 0));
                if b.flush {
                    assert_eq!(inflight_before, 0);
                }
                assert!(b.seq > last_seq);
                last_seq = b.seq;
            };
            for s in steps {
                match s {
                    Step::Piece { keys: lens, flush, after_us } => {
                        if !p.has_room() {
                            // The dispatcher would not read it now: pretend acks came.
                            inflight.clear();
                        } else {
                            now += Duration::from_micros(after_us);
                            n += 1;
                            let mut b = piece(&"x".repeat(lens[0]), n);
                            b.born = now;
                            for (i, l) in lens[1..].iter().enumerate() {
                                b.push_key(format!("{n}-{i}-{}", "y".repeat(*l)).as_bytes());
                            }
                            b.flush = flush;
                            added.extend(keys(&b));
                            p.add(b, now);
                        }
                    }
                    Step::Ack => {
                        inflight.pop_front();
                    }
                }
                while let Some(b) = p.take(inflight.len(), now) {
                    check(&b, inflight.len());
                    sent.extend(keys(&b));
                    if !b.flush {
                        inflight.push_back(b);
                    }
                }
            }
            // Drain: everything acked, time past every wait.
            let later = now + Duration::from_secs(1);
            while p.open.is_some() {
                inflight.clear();
                let b = p.take(0, later).expect("an idle packer sends what it holds");
                check(&b, 0);
                sent.extend(keys(&b));
            }
            proptest::prop_assert_eq!(sent, added);
        }
    }
}
