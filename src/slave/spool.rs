//! The disk spool: every finished result is a file here before it is sent, and stays until the
//! master acknowledged it. Also keeps the slave's small state (dropped total, last config).
//!
//! Layout of the spool folder:
//!
//! ```text
//! lock                 held (flock) while a slave uses the folder
//! state.json           {"DroppedTotal": n}: results dropped because the spool was full, ever
//! config.json          the last targets document the master sent
//! results/SEQ-ID.json  one result each, SEQ a 20-digit counter (oldest first), ID its UUID
//! rejected/            results the master refused for good, with a .why file each
//! tmp/                 files being written; whatever is here at start is a torn write, removed
//! ```
//!
//! Crash safety: a file is written whole under `tmp/`, fsynced, then renamed into `results/`
//! and the folder fsynced. Rename is atomic, so after `kill -9` (or a power cut) at any instant
//! a name in `results/` holds a complete result or does not exist. Removal happens only after
//! the master's 200; a removal lost to a crash means one resend, which the master stores once
//! because the result keeps its ID.

use crate::proto::TraceResult;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Limits of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most results kept.
    pub max_results: u64,
    /// Most bytes of result files kept.
    pub max_bytes: u64,
}

/// One spooled result, as listed (its content is read only when it is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Order of arrival.
    pub seq: u64,
    /// The result's ID.
    pub id: String,
    /// File size in bytes.
    pub size: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    next_seq: u64,
    dropped_total: u64,
}

/// A spool folder in use by this process.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    caps: Caps,
    index: Mutex<Index>,
    /// Serialises writes of state.json so the newest total is the one left on disk.
    state: Mutex<()>,
    /// Held for the spool's life: a second slave on the same folder would send twice.
    _lock: File,
}

/// What [`Spool::read`] found.
#[derive(Debug)]
pub enum Read {
    /// The result.
    Result(Box<TraceResult>),
    /// Dropped (spool full) since it was listed.
    Gone,
    /// Not a result: never written by this program, or damaged on disk.
    Corrupt(String),
}

/// What [`Spool::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// Oldest results removed to make room (0 mostly).
    pub dropped: u64,
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync folder {}", dir.display()))
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let tmp = tmp_dir.join(format!("{name}.{}-{n}.tmp", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    if sync {
        f.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
    }
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if sync {
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

fn file_name(seq: u64, id: &str) -> String {
    format!("{seq:020}-{id}.json")
}

/// `(seq, id)` of a result file name written by [`file_name`].
fn parse_name(name: &str) -> Option<(u64, String)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('-')?;
    if seq.len() != 20 || id.is_empty() {
        return None;
    }
    Some((seq.parse().ok()?, id.to_owned()))
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct State {
    #[serde(default)]
    dropped_total: u64,
}

impl Spool {
    /// Opens (creating) the spool in `dir`: removes torn writes, lists what is waiting.
    pub fn open(dir: &Path, caps: Caps) -> anyhow::Result<Spool> {
        for sub in ["results", "rejected", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("cannot create {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "the spool {} is in use by another slave: give each slave its own -spool",
                dir.display()
            );
        }
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            // A file still in tmp/ was never renamed into results/: a write cut short.
            let _ = fs::remove_file(e.path());
        }
        let mut index = Index::default();
        if let Ok(text) = fs::read(dir.join("state.json")) {
            match serde_json::from_slice::<State>(&text) {
                Ok(s) => index.dropped_total = s.dropped_total,
                Err(e) => log::warn!("spool state.json does not decode ({e}); dropped total 0"),
            }
        }
        let results = dir.join("results");
        for e in fs::read_dir(&results)
            .with_context(|| format!("cannot list {}", results.display()))?
            .flatten()
        {
            let name = e.file_name();
            let Some((seq, id)) = name.to_str().and_then(parse_name) else {
                log::warn!(
                    "spool: {} is not a result file; moved to rejected/",
                    e.path().display()
                );
                let _ = fs::rename(e.path(), dir.join("rejected").join(&name));
                continue;
            };
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            index.bytes += size;
            index.next_seq = index.next_seq.max(seq + 1);
            index.entries.insert(seq, Entry { seq, id, size });
        }
        Ok(Spool {
            dir: dir.to_owned(),
            caps,
            index: Mutex::new(index),
            state: Mutex::new(()),
            _lock: lock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, seq: u64, id: &str) -> PathBuf {
        self.dir.join("results").join(file_name(seq, id))
    }

    /// Writes a result durably; when that overflows the caps, the oldest results are dropped.
    pub fn put(&self, result: &TraceResult) -> anyhow::Result<Put> {
        self.put_with(result, true)
    }

    /// [`Spool::put`] without the syncs, for filling a spool in bulk (benchmarks, tests):
    /// the result survives a crash of the process but not of the machine.
    pub fn put_unsynced(&self, result: &TraceResult) -> anyhow::Result<Put> {
        self.put_with(result, false)
    }

    fn put_with(&self, result: &TraceResult, sync: bool) -> anyhow::Result<Put> {
        let bytes = serde_json::to_vec(result).context("cannot encode a result")?;
        // The ID goes into a file name: keep it to what a UUID can hold.
        let id: String = result
            .id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        // Room is made before the new result is written, so the spool on disk never holds
        // more than its caps, not even for a moment (a crash in between loses only what was
        // dropped anyway).
        let size = bytes.len() as u64;
        let (seq, dropped) = {
            let mut ix = self.lock();
            ix.next_seq += 1;
            let seq = ix.next_seq - 1;
            let mut dropped = Vec::new();
            while !ix.entries.is_empty()
                && (ix.entries.len() as u64 + 1 > self.caps.max_results
                    || ix.bytes + size > self.caps.max_bytes)
            {
                let Some((_, oldest)) = ix.entries.pop_first() else {
                    break;
                };
                ix.bytes -= oldest.size;
                dropped.push(oldest);
            }
            ix.dropped_total += dropped.len() as u64;
            (seq, dropped)
        };
        if !dropped.is_empty() {
            for e in &dropped {
                let _ = fs::remove_file(self.path_of(e.seq, &e.id));
            }
            self.save_state()?;
        }
        write_atomic(&self.dir.join("tmp"), &self.path_of(seq, &id), &bytes, sync)?;
        {
            let mut ix = self.lock();
            ix.bytes += size;
            ix.entries.insert(seq, Entry { seq, id, size });
        }
        Ok(Put {
            dropped: dropped.len() as u64,
        })
    }

    fn save_state(&self) -> anyhow::Result<()> {
        let _one_writer = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let dropped_total = self.dropped_total();
        let bytes = serde_json::to_vec(&State { dropped_total }).unwrap_or_default();
        write_atomic(
            &self.dir.join("tmp"),
            &self.dir.join("state.json"),
            &bytes,
            true,
        )
    }

    /// Results waiting.
    pub fn depth(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    /// Results dropped because the spool was full, since the spool was created.
    pub fn dropped_total(&self) -> u64 {
        self.lock().dropped_total
    }

    /// The oldest waiting results, at most `max` of them and about `max_bytes` (at least one).
    pub fn oldest(&self, max: usize, max_bytes: u64) -> Vec<Entry> {
        let ix = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in ix.entries.values() {
            if out.len() >= max || (!out.is_empty() && bytes + e.size > max_bytes) {
                break;
            }
            bytes += e.size;
            out.push(e.clone());
        }
        out
    }

    /// Reads a listed result. An I/O error (too many open files, a failing disk) is an
    /// `Err` and leaves the file in place for the next try.
    pub fn read(&self, e: &Entry) -> anyhow::Result<Read> {
        let path = self.path_of(e.seq, &e.id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                self.forget(e.seq);
                return Ok(Read::Gone);
            }
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(match serde_json::from_slice(&bytes) {
            Ok(r) => Read::Result(Box::new(r)),
            Err(err) => Read::Corrupt(format!("{} does not decode: {err}", path.display())),
        })
    }

    fn forget(&self, seq: u64) -> Option<Entry> {
        let mut ix = self.lock();
        let e = ix.entries.remove(&seq)?;
        ix.bytes -= e.size;
        Some(e)
    }

    /// Removes a result the master acknowledged.
    pub fn remove(&self, e: &Entry) {
        if self.forget(e.seq).is_some() {
            let path = self.path_of(e.seq, &e.id);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                log::error!("cannot remove delivered {}: {err}", path.display());
            }
        } else {
            // The cap dropped it while it was on its way, and the master stored it after all:
            // it is not lost, so it does not count as dropped.
            {
                let mut ix = self.lock();
                ix.dropped_total = ix.dropped_total.saturating_sub(1);
            }
            if let Err(err) = self.save_state() {
                log::error!("cannot save the spool state: {err:#}");
            }
        }
    }

    /// Moves a result the master will never accept to `rejected/`, with the reason beside it.
    pub fn reject(&self, e: &Entry, why: &str) {
        self.forget(e.seq);
        let name = file_name(e.seq, &e.id);
        let to = self.dir.join("rejected").join(&name);
        if let Err(err) = fs::rename(self.path_of(e.seq, &e.id), &to) {
            log::error!("cannot move result {} to {}: {err}", e.id, to.display());
        }
        let _ = fs::write(to.with_extension("why"), format!("{why}\n"));
    }

    /// The last targets document saved, if any.
    pub fn load_config(&self) -> Option<Vec<u8>> {
        fs::read(self.dir.join("config.json")).ok()
    }

    /// Keeps the targets document for a restart while the master is away.
    pub fn save_config(&self, raw: &[u8]) -> anyhow::Result<()> {
        write_atomic(
            &self.dir.join("tmp"),
            &self.dir.join("config.json"),
            raw,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Creds, TargetRef};

    fn result(i: usize) -> TraceResult {
        TraceResult {
            creds: Creds {
                name: "s".into(),
                password: "p".into(),
            },
            id: uuid::Uuid::new_v4().to_string(),
            date_time: "2019-02-07T21:06:10.803086+01:00".into(),
            target: TargetRef {
                name: format!("t{i}"),
                address: "h".into(),
            },
            success: true,
            hop_count: 1,
            hops: Vec::new(),
            target_id: None,
            protocol: None,
            flow: None,
            destination: None,
            queries: None,
            unreachable: None,
            error: None,
            agent: None,
            duration_ns: None,
            source_address: None,
            debug: false,
            measurement: None,
            multipath: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dt-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    const ROOMY: Caps = Caps {
        max_results: 1000,
        max_bytes: 1 << 30,
    };

    #[test]
    fn results_survive_a_reopen_in_order_and_leave_when_removed() {
        let dir = scratch("reopen");
        let ids: Vec<String> = {
            let s = Spool::open(&dir, ROOMY).unwrap();
            (0..5)
                .map(|i| {
                    let r = result(i);
                    s.put(&r).unwrap();
                    r.id
                })
                .collect()
        };
        // A torn write from a crash is cleaned up, not listed.
        fs::write(dir.join("tmp/x.json.1.tmp"), b"{\"Cre").unwrap();
        let s = Spool::open(&dir, ROOMY).unwrap();
        assert_eq!(s.depth(), 5);
        let listed = s.oldest(3, u64::MAX);
        assert_eq!(
            listed.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            ids[..3]
        );
        assert!(matches!(s.read(&listed[0]).unwrap(), Read::Result(r) if r.id == ids[0]));
        s.remove(&listed[0]);
        s.reject(&listed[1], "bad");
        assert_eq!(s.depth(), 3);
        assert!(fs::read_dir(dir.join("tmp")).unwrap().next().is_none());
        assert_eq!(fs::read_dir(dir.join("rejected")).unwrap().count(), 2);
        let r = result(9);
        s.put(&r).unwrap();
        assert_eq!(s.oldest(10, u64::MAX).last().unwrap().id, r.id);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_remembers_how_many() {
        let dir = scratch("full");
        let caps = Caps {
            max_results: 3,
            max_bytes: 1 << 30,
        };
        {
            let s = Spool::open(&dir, caps).unwrap();
            let drops: u64 = (0..5).map(|i| s.put(&result(i)).unwrap().dropped).sum();
            assert_eq!(drops, 2);
            assert_eq!(s.depth(), 3);
            let first = s.read(&s.oldest(1, u64::MAX)[0]).unwrap();
            assert!(matches!(first, Read::Result(r) if r.target.name == "t2"));
        }
        let s = Spool::open(&dir, caps).unwrap();
        assert_eq!(s.dropped_total(), 2);
        s.put(&result(5)).unwrap();
        assert_eq!(s.dropped_total(), 3);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_result_dropped_on_its_way_but_delivered_is_not_counted_as_dropped() {
        let dir = scratch("inflight");
        let s = Spool::open(
            &dir,
            Caps {
                max_results: 2,
                max_bytes: u64::MAX,
            },
        )
        .unwrap();
        s.put(&result(0)).unwrap();
        let on_its_way = s.oldest(1, u64::MAX).remove(0);
        s.put(&result(1)).unwrap();
        assert_eq!(s.put(&result(2)).unwrap().dropped, 1);
        assert_eq!(s.dropped_total(), 1);
        s.remove(&on_its_way);
        assert_eq!(s.dropped_total(), 0);
        assert_eq!(s.depth(), 2);
        drop(s);
        let again = Spool::open(
            &dir,
            Caps {
                max_results: 2,
                max_bytes: u64::MAX,
            },
        )
        .unwrap();
        assert_eq!(again.dropped_total(), 0, "the correction is saved");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_is_reported_as_such() {
        let dir = scratch("corrupt");
        let s = Spool::open(&dir, ROOMY).unwrap();
        s.put(&result(0)).unwrap();
        let e = s.oldest(1, u64::MAX).remove(0);
        fs::write(dir.join("results").join(file_name(e.seq, &e.id)), b"{\"Cre").unwrap();
        assert!(matches!(s.read(&e).unwrap(), Read::Corrupt(_)));
        s.remove(&e);
        assert!(matches!(s.read(&e).unwrap(), Read::Gone));
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_user_of_one_folder_is_refused() {
        let dir = scratch("lock");
        let _s = Spool::open(&dir, ROOMY).unwrap();
        let e = Spool::open(&dir, ROOMY).unwrap_err();
        assert!(
            format!("{e:#}").contains("in use by another slave"),
            "{e:#}"
        );
    }

    #[test]
    fn batches_respect_the_byte_budget_but_hold_at_least_one() {
        let dir = scratch("budget");
        let s = Spool::open(&dir, ROOMY).unwrap();
        for i in 0..4 {
            s.put_unsynced(&result(i)).unwrap();
        }
        let size = s.oldest(1, u64::MAX)[0].size;
        assert_eq!(s.oldest(10, 1).len(), 1);
        assert_eq!(s.oldest(10, size * 2).len(), 2);
        assert_eq!(s.oldest(3, u64::MAX).len(), 3);
        drop(s);
        fs::remove_dir_all(&dir).unwrap();
    }
}
