//! The balance journal: files, records and recovery. Plain `std::fs`, no runtime: the shards
//! run [`Appender::append`] on glommio's blocking pool, the admin thread calls it directly.
//!
//! Files in `journal.dir`, one *generation* `G` at a time:
//! - `snapshot`: the balances and settlement keys at the start of generation `G`;
//! - `journal-G-<shard>`: each shard's committed balance changes since then;
//! - `settlements-G`: settlements posted on the admin port since then.
//!
//! Every file is a sequence of records `[len u32][crc32 u32][payload]` (little-endian), the
//! first one a header naming the node, the generation and the accounted peers (records refer
//! to peers by their index in that list). Recovery at start: the snapshot plus every record
//! of its generation; a record that is cut short or fails its checksum ends its file (one
//! warning: it was never acknowledged as durable). The result is written as the snapshot of
//! `G + 1` (temporary file, fsync, rename, fsync of the directory) before the old files are
//! removed, so a crash at any point recovers the same balances. A shard's own journal is
//! compacted in place the same way (one record with its running sums replaces its history).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const HEADER: u8 = 0;
const DELTAS: u8 = 1;
const SETTLEMENT: u8 = 2;
const BALANCES: u8 = 3;
/// Shard number written in the snapshot's and the settlement file's headers.
const NO_SHARD: u16 = u16::MAX;
/// Largest record accepted when reading (a corrupt length must not make us allocate GiBs).
const MAX_RECORD: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("journal {path} belongs to node {found:?}, not {ours:?}: refusing to use it (point journal.dir elsewhere)")]
    OtherNode {
        path: String,
        found: String,
        ours: String,
    },
    #[error("journal {path} holds a balance of {balance} for peer {peer:?}, which has no `balance` in the config: restore the peer or move the journal away")]
    PeerGone {
        path: String,
        peer: String,
        balance: i64,
    },
    #[error("journal {path} is not a journal of this connector (bad header)")]
    BadHeader { path: String },
    #[error("journal {path} is in use by another running node")]
    InUse { path: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Header {
        generation: u64,
        shard: u16,
        node_id: String,
        peers: Vec<String>,
    },
    /// Balance changes by peer index.
    Deltas(Vec<(u16, i64)>),
    Settlement {
        peer: u16,
        amount: i64,
        key: String,
    },
    /// Absolute balances (the snapshot) and the settlement keys already applied.
    Balances {
        balances: Vec<(u16, i64)>,
        keys: Vec<String>,
    },
}

impl Record {
    /// Appends `[len][crc][payload]` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Header {
                generation,
                shard,
                node_id,
                peers,
            } => {
                out.push(HEADER);
                out.extend_from_slice(&generation.to_le_bytes());
                out.extend_from_slice(&shard.to_le_bytes());
                put_str(out, node_id);
                out.extend_from_slice(&(peers.len() as u16).to_le_bytes());
                for p in peers {
                    put_str(out, p);
                }
            }
            Record::Deltas(d) => {
                out.push(DELTAS);
                put_pairs(out, d);
            }
            Record::Settlement { peer, amount, key } => {
                out.push(SETTLEMENT);
                out.extend_from_slice(&peer.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
                put_str(out, key);
            }
            Record::Balances { balances, keys } => {
                out.push(BALANCES);
                put_pairs(out, balances);
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for k in keys {
                    put_str(out, k);
                }
            }
        }
        let len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(p: &[u8]) -> Option<Record> {
        let mut r = Cursor(p);
        let rec = match r.u8()? {
            HEADER => Record::Header {
                generation: r.u64()?,
                shard: r.u16()?,
                node_id: r.str()?,
                peers: (0..r.u16()?).map(|_| r.str()).collect::<Option<_>>()?,
            },
            DELTAS => Record::Deltas(r.pairs()?),
            SETTLEMENT => Record::Settlement {
                peer: r.u16()?,
                amount: r.i64()?,
                key: r.str()?,
            },
            BALANCES => Record::Balances {
                balances: r.pairs()?,
                keys: (0..r.u32()?).map(|_| r.str()).collect::<Option<_>>()?,
            },
            _ => return None,
        };
        r.0.is_empty().then_some(rec)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_pairs(out: &mut Vec<u8>, pairs: &[(u16, i64)]) {
    out.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    for (i, v) in pairs {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn pairs(&mut self) -> Option<Vec<(u16, i64)>> {
        (0..self.u16()?)
            .map(|_| Some((self.u16()?, self.i64()?)))
            .collect()
    }
}

/// Reads every intact record of a file. Returns the records and, when the file ends in a
/// torn or corrupt record, the offset where the intact part ends.
pub fn read_records(path: &Path) -> Result<(Vec<Record>, Option<u64>), JournalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    Ok(parse_records(&bytes))
}

/// The intact records at the start of `bytes`, and where they end if something follows
/// (a torn or corrupt record). Never panics (fuzzed: `fuzz/fuzz_targets/journal_records.rs`).
pub fn parse_records(bytes: &[u8]) -> (Vec<Record>, Option<u64>) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let intact = (rest.len() >= 8)
            .then(|| {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                let payload = rest.get(8..8 + len).filter(|_| len <= MAX_RECORD)?;
                (crc32fast::hash(payload) == crc)
                    .then(|| Record::decode(payload))
                    .flatten()
                    .map(|r| (r, 8 + len))
            })
            .flatten();
        match intact {
            Some((r, n)) => {
                out.push(r);
                at += n;
            }
            None => return (out, Some(at as u64)),
        }
    }
    (out, None)
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// The generation the node now writes.
    pub generation: u64,
    /// Balances aligned with the `peers` given to [`recover`].
    pub balances: Vec<i64>,
    pub settlement_keys: HashSet<String>,
    /// One line per torn or corrupt tail that was dropped.
    pub warnings: Vec<String>,
}

/// Takes the journal directory's lock (`dir/lock`, created if needed) for as long as the
/// returned file is open; the kernel drops it however the process ends.
pub fn lock(dir: &Path) -> Result<File, JournalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::InUse {
            path: dir.display().to_string(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(JournalError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

pub fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("snapshot")
}

pub fn journal_path(dir: &Path, generation: u64, shard: usize) -> PathBuf {
    dir.join(format!("journal-{generation}-{shard}"))
}

pub fn settlements_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("settlements-{generation}"))
}

/// Recovers the balances of `peers` (the accounted peers, in config order) from `dir`,
/// writes them as the snapshot of the next generation and removes the older files.
pub fn recover(dir: &Path, node_id: &str, peers: &[String]) -> Result<Recovered, JournalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let snap = snapshot_path(dir);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut keys = HashSet::new();
    let mut warnings = Vec::new();
    let mut generation = 0;
    if snap.exists() {
        let (recs, torn) = read_records(&snap)?;
        // The snapshot is written whole before it is renamed into place: it cannot be torn.
        let (
            Some(Record::Header {
                generation: g,
                node_id: owner,
                peers: names,
                ..
            }),
            None,
        ) = (recs.first(), torn)
        else {
            return Err(JournalError::BadHeader {
                path: snap.display().to_string(),
            });
        };
        if owner != node_id {
            return Err(JournalError::OtherNode {
                path: snap.display().to_string(),
                found: owner.clone(),
                ours: node_id.into(),
            });
        }
        generation = *g;
        for r in &recs[1..] {
            if let Record::Balances { balances, keys: k } = r {
                apply(&mut totals, names, balances);
                keys.extend(k.iter().cloned());
            }
        }
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with(&format!("journal-{generation}-"))
                    || name == format!("settlements-{generation}")
            })
            .collect();
        files.sort();
        for path in files {
            let (recs, torn) = read_records(&path)?;
            if let Some(at) = torn {
                warnings.push(format!(
                    "{}: torn or corrupt tail at byte {at} dropped (never acknowledged)",
                    path.display()
                ));
            }
            let Some(Record::Header {
                generation: g,
                node_id: owner,
                peers: names,
                ..
            }) = recs.first()
            else {
                // Created but its header never made it to disk: nothing in it counted.
                continue;
            };
            if *g != generation || owner != node_id {
                return Err(JournalError::BadHeader {
                    path: path.display().to_string(),
                });
            }
            for r in &recs[1..] {
                match r {
                    Record::Deltas(d) => add(&mut totals, names, d),
                    Record::Balances { balances, .. } => add(&mut totals, names, balances),
                    Record::Settlement { peer, amount, key } => {
                        if keys.insert(key.clone()) {
                            add(&mut totals, names, &[(*peer, *amount)]);
                        }
                    }
                    Record::Header { .. } => {}
                }
            }
        }
    }
    for (peer, balance) in &totals {
        if *balance != 0 && !peers.contains(peer) {
            return Err(JournalError::PeerGone {
                path: snap.display().to_string(),
                peer: peer.clone(),
                balance: *balance,
            });
        }
    }
    let balances: Vec<i64> = peers
        .iter()
        .map(|p| totals.get(p).copied().unwrap_or(0))
        .collect();
    let next = generation + 1;
    let mut sorted_keys: Vec<String> = keys.iter().cloned().collect();
    sorted_keys.sort();
    let mut out = Vec::new();
    header(next, NO_SHARD, node_id, peers).encode(&mut out);
    Record::Balances {
        balances: balances
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u16, *b))
            .collect(),
        keys: sorted_keys,
    }
    .encode(&mut out);
    replace_file(dir, &snap, &out)?;
    // The new snapshot is durable: the old generation's files are history.
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("journal-") || name.starts_with("settlements-") {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(Recovered {
        generation: next,
        balances,
        settlement_keys: keys,
        warnings,
    })
}

fn apply(totals: &mut BTreeMap<String, i64>, names: &[String], values: &[(u16, i64)]) {
    for (i, v) in values {
        if let Some(n) = names.get(*i as usize) {
            totals.insert(n.clone(), *v);
        }
    }
}

fn add(totals: &mut BTreeMap<String, i64>, names: &[String], deltas: &[(u16, i64)]) {
    for (i, v) in deltas {
        if let Some(n) = names.get(*i as usize) {
            let t = totals.entry(n.clone()).or_insert(0);
            *t = t.saturating_add(*v);
        }
    }
}

pub fn header(generation: u64, shard: u16, node_id: &str, peers: &[String]) -> Record {
    Record::Header {
        generation,
        shard,
        node_id: node_id.into(),
        peers: peers.to_vec(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync the directory.
pub fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// An append-only journal file: each [`append`](Appender::append) is written and
/// `fdatasync`ed before it returns.
#[derive(Debug)]
pub struct Appender {
    file: File,
    path: PathBuf,
    dir: PathBuf,
    len: u64,
    first: Vec<u8>,
}

impl Appender {
    /// Creates the file with its header record (durable, directory entry too).
    pub fn create(dir: &Path, path: PathBuf, header: &Record) -> Result<Appender, JournalError> {
        let mut first = Vec::new();
        header.encode(&mut first);
        replace_file(dir, &path, &first)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Appender {
            file,
            len: first.len() as u64,
            path,
            dir: dir.to_owned(),
            first,
        })
    }

    /// Appends encoded records and makes them durable.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), JournalError> {
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.first.len() as u64
    }

    /// Replaces the file's history by `summary` (the same header first), atomically.
    pub fn compact(&mut self, summary: &Record) -> Result<(), JournalError> {
        let mut bytes = self.first.clone();
        summary.encode(&mut bytes);
        replace_file(&self.dir, &self.path, &bytes)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ilp-journal-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn peers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records_round_trip() {
        let recs = [
            header(7, 1, "node", &peers(&["a", "b"])),
            Record::Deltas(vec![(0, 5), (1, -9_000_000_000_000)]),
            Record::Settlement {
                peer: 1,
                amount: -3,
                key: "k1".into(),
            },
            Record::Balances {
                balances: vec![(0, i64::MAX), (1, i64::MIN)],
                keys: vec!["x".into(), "y".into()],
            },
        ];
        let dir = tmpdir("rt");
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        let mut ends = vec![0];
        for r in &recs {
            r.encode(&mut bytes);
            ends.push(bytes.len());
        }
        let path = dir.join("f");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_records(&path).unwrap(), (recs.to_vec(), None));
        // Every cut and every flipped byte: the intact prefix, never a panic, never garbage.
        for cut in 0..bytes.len() {
            fs::write(&path, &bytes[..cut]).unwrap();
            let (got, torn) = read_records(&path).unwrap();
            assert!(got.len() < recs.len());
            assert_eq!(got[..], recs[..got.len()]);
            assert_eq!(torn.is_some(), !ends.contains(&cut));
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            fs::write(&path, &b).unwrap();
            let (got, _) = read_records(&path).unwrap();
            assert_eq!(got[..], recs[..got.len()]);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        /// The short form of the fuzz target: arbitrary bytes never panic, and what is read
        /// re-encodes to exactly the intact prefix.
        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let (records, torn) = parse_records(&data);
            let mut again = Vec::new();
            for r in &records {
                r.encode(&mut again);
            }
            let intact = torn.map_or(data.len(), |t| t as usize);
            proptest::prop_assert_eq!(&again[..], &data[..intact]);
        }
    }

    #[test]
    fn recovers_across_generations_and_drops_a_torn_tail() {
        let dir = tmpdir("recover");
        let ps = peers(&["alice", "bob"]);
        let r = recover(&dir, "n1", &ps).unwrap();
        assert_eq!((r.generation, r.balances.clone()), (1, vec![0, 0]));
        let mut j =
            Appender::create(&dir, journal_path(&dir, 1, 0), &header(1, 0, "n1", &ps)).unwrap();
        let mut b = Vec::new();
        Record::Deltas(vec![(0, 100), (1, -40)]).encode(&mut b);
        j.append(&b).unwrap();
        let mut s = Appender::create(
            &dir,
            settlements_path(&dir, 1),
            &header(1, NO_SHARD, "n1", &ps),
        )
        .unwrap();
        let mut b = Vec::new();
        Record::Settlement {
            peer: 1,
            amount: 40,
            key: "pay-1".into(),
        }
        .encode(&mut b);
        s.append(&b).unwrap();
        // A torn tail: half a record.
        let mut b = Vec::new();
        Record::Deltas(vec![(0, 1_000_000)]).encode(&mut b);
        j.append(&b[..b.len() / 2]).unwrap();
        let r = recover(&dir, "n1", &ps).unwrap();
        assert_eq!(r.generation, 2);
        assert_eq!(r.balances, vec![100, 0]);
        assert!(r.settlement_keys.contains("pay-1"));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        // Generation 1's files are gone; recovering again changes nothing.
        assert!(!journal_path(&dir, 1, 0).exists());
        let r = recover(&dir, "n1", &ps).unwrap();
        assert_eq!((r.generation, r.balances), (3, vec![100, 0]));
        // A compacted journal sums the same.
        let mut j =
            Appender::create(&dir, journal_path(&dir, 3, 1), &header(3, 1, "n1", &ps)).unwrap();
        let mut b = Vec::new();
        Record::Deltas(vec![(0, 5)]).encode(&mut b);
        j.append(&b).unwrap();
        j.append(&b).unwrap();
        j.compact(&Record::Balances {
            balances: vec![(0, 10)],
            keys: vec![],
        })
        .unwrap();
        j.append(&b).unwrap();
        let r = recover(&dir, "n1", &ps).unwrap();
        assert_eq!(r.balances, vec![115, 0]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_another_nodes_journal_and_a_dropped_peer_with_a_balance() {
        let dir = tmpdir("refuse");
        let ps = peers(&["alice"]);
        recover(&dir, "n1", &ps).unwrap();
        let mut j =
            Appender::create(&dir, journal_path(&dir, 1, 0), &header(1, 0, "n1", &ps)).unwrap();
        let mut b = Vec::new();
        Record::Deltas(vec![(0, 7)]).encode(&mut b);
        j.append(&b).unwrap();
        let e = recover(&dir, "n2", &ps).unwrap_err();
        assert!(matches!(e, JournalError::OtherNode { .. }), "{e}");
        let e = recover(&dir, "n1", &peers(&["bob"])).unwrap_err();
        assert!(e.to_string().contains("\"alice\""), "{e}");
        let held = lock(&dir).unwrap();
        assert!(matches!(lock(&dir), Err(JournalError::InUse { .. })));
        drop(held);
        drop(lock(&dir).unwrap());
        // A new peer joins with balance 0; the old ones keep theirs.
        let r = recover(&dir, "n1", &peers(&["bob", "alice"])).unwrap();
        assert_eq!(r.balances, vec![0, 7]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
