//! The keys of one transaction, gathered until its commit: deduplicated in memory without a
//! per-key allocation, and spilled to a temporary file past a memory bound so a transaction
//! of any size runs in bounded memory (keys of the spilled part are deduplicated per chunk).

use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};

use hashbrown::HashTable;

/// Keys of the transaction being read.
pub struct TxnKeys {
    buf: Vec<u8>,
    /// (offset, len) into `buf`, in insertion order.
    keys: Vec<(u32, u32)>,
    set: HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    spill: Option<BufWriter<File>>,
    spilled_keys: u64,
    max_bytes: usize,
}

impl TxnKeys {
    pub fn new(max_bytes: usize) -> TxnKeys {
        TxnKeys {
            buf: Vec::new(),
            keys: Vec::new(),
            set: HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            spill: None,
            spilled_keys: 0,
            max_bytes: max_bytes.max(4096),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.spilled_keys == 0
    }

    /// Distinct keys held (in memory, plus those spilled).
    pub fn len(&self) -> u64 {
        self.keys.len() as u64 + self.spilled_keys
    }

    /// Adds a key (already validated); a duplicate is dropped.
    pub fn insert(&mut self, key: &[u8]) -> std::io::Result<()> {
        let hash = self.hasher.hash_one(key);
        let (buf, keys) = (&self.buf, &self.keys);
        let found = self
            .set
            .find(hash, |&i| {
                let (o, l) = keys[i as usize];
                &buf[o as usize..(o + l) as usize] == key
            })
            .is_some();
        if found {
            return Ok(());
        }
        if self.buf.len() + key.len() > self.max_bytes {
            self.spill_now()?;
        }
        let off = self.buf.len() as u32;
        self.buf.extend_from_slice(key);
        let idx = self.keys.len() as u32;
        self.keys.push((off, key.len() as u32));
        let (buf, keys, hasher) = (&self.buf, &self.keys, &self.hasher);
        self.set.insert_unique(hash, idx, |&i| {
            let (o, l) = keys[i as usize];
            hasher.hash_one(&buf[o as usize..(o + l) as usize])
        });
        Ok(())
    }

    fn spill_now(&mut self) -> std::io::Result<()> {
        if self.spill.is_none() {
            self.spill = Some(BufWriter::new(tempfile_in_tmp()?));
        }
        let w = self.spill.as_mut().expect("just set");
        for &(o, l) in &self.keys {
            w.write_all(&self.buf[o as usize..(o + l) as usize])?;
            w.write_all(b"\n")?;
        }
        self.spilled_keys += self.keys.len() as u64;
        self.buf.clear();
        self.keys.clear();
        self.set.clear();
        Ok(())
    }

    /// Drops everything (rollback).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.keys.clear();
        self.set.clear();
        self.spill = None;
        self.spilled_keys = 0;
    }

    /// Takes the keys out, leaving an empty set behind.
    pub fn take(&mut self) -> TxnKeys {
        let mut fresh = TxnKeys::new(self.max_bytes);
        std::mem::swap(self, &mut fresh);
        fresh
    }

    /// Visits every key: spilled ones first (read back in chunks), then those in memory.
    pub fn for_each(self, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
        let mut r = self.into_reader()?;
        let mut k = Vec::new();
        while r.next_key(&mut k)? {
            f(&k);
        }
        Ok(())
    }

    /// A pull-style reader over the keys, so a caller can await between keys.
    pub fn into_reader(self) -> std::io::Result<KeyReader> {
        let spill = match self.spill {
            Some(w) => {
                let mut file = w.into_inner().map_err(|e| e.into_error())?;
                file.rewind()?;
                Some(BufReader::with_capacity(1 << 16, file))
            }
            None => None,
        };
        Ok(KeyReader {
            spill,
            buf: self.buf,
            keys: self.keys,
            next: 0,
        })
    }
}

/// See [`TxnKeys::into_reader`].
pub struct KeyReader {
    spill: Option<BufReader<File>>,
    buf: Vec<u8>,
    keys: Vec<(u32, u32)>,
    next: usize,
}

impl KeyReader {
    /// Puts the next key in `out`; false when there is none left.
    pub fn next_key(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        out.clear();
        if let Some(r) = self.spill.as_mut() {
            if r.read_until(b'\n', out)? > 0 {
                if out.last() == Some(&b'\n') {
                    out.pop();
                }
                return Ok(true);
            }
            self.spill = None;
        }
        match self.keys.get(self.next) {
            Some(&(o, l)) => {
                self.next += 1;
                out.extend_from_slice(&self.buf[o as usize..(o + l) as usize]);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

fn tempfile_in_tmp() -> std::io::Result<File> {
    // An unnamed file: removed by the OS when closed.
    let dir = std::env::temp_dir();
    for i in 0..100u32 {
        let path = dir.join(format!(
            "squeal-txn-{}-{}-{i}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        match File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no temporary file name available"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(t: TxnKeys) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        t.for_each(|k| v.push(k.to_vec())).unwrap();
        v
    }

    #[test]
    fn dedups_in_order() {
        let mut t = TxnKeys::new(1 << 20);
        for k in ["a", "b", "a", "c", "b"] {
            t.insert(k.as_bytes()).unwrap();
        }
        assert_eq!(t.len(), 3);
        assert_eq!(
            collect(t),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn spills_past_the_bound_and_keeps_every_key() {
        let mut t = TxnKeys::new(4096);
        for i in 0..10_000 {
            t.insert(format!("key:{i}").as_bytes()).unwrap();
        }
        assert!(t.spilled_keys > 0);
        assert!(t.buf.len() <= 4096);
        let got = collect(t);
        assert_eq!(got.len(), 10_000);
        let mut want: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("key:{i}").into_bytes())
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want);
    }

    #[test]
    fn clear_drops_everything() {
        let mut t = TxnKeys::new(4096);
        t.insert(b"x").unwrap();
        t.clear();
        assert!(t.is_empty());
    }
}
