//! The SQLite engine: one file in WAL mode, synchronous commits (a result answered is on
//! disk), one writer thread and a pool of readers. The file is locked while a master uses
//! it: two masters on one file would each think they own the series.

use super::ingest::{self, Caches, Job};
use super::measurements;
use super::query::{self, Pool};
use super::retention;
use super::{
    Cursor, EventQuery, EventView, NewHop, NewResult, PathSeen, ResultQuery, SeriesFilter,
    SeriesRow, SlaveRecord, Store, StoredResult, StoredTarget, Ticket, schema,
};
use anyhow::Context;
use rusqlite::Connection;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};

/// The SQLite store.
pub struct Sqlite {
    jobs: Mutex<Sender<Job>>,
    queue: std::sync::Arc<ingest::Queue>,
    readers: Pool,
    /// Held (flock) while this master uses the file.
    _lock: File,
    /// A file to delete on drop (the temporary stores of tests).
    temp: Option<PathBuf>,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`, upgrades its schema, and starts the
    /// writer. Fails when another master has the file open.
    pub fn open(path: &Path, confirm: u32) -> anyhow::Result<Sqlite> {
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        // SQLite locks with fcntl, never flock, so this lock is ours alone.
        if lock.try_lock().is_err() {
            anyhow::bail!(
                "database {} is in use by another master: only one master may use an SQLite file (give this one its own -db)",
                path.display()
            );
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        prepare(&mut conn)
            .with_context(|| format!("cannot prepare database {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let confirm = confirm.max(1);
        let queue = std::sync::Arc::new(ingest::Queue::default());
        let writer_queue = queue.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let run =
                    std::panic::AssertUnwindSafe(|| ingest::run(conn, rx, confirm, writer_queue));
                if std::panic::catch_unwind(run).is_err() {
                    // Without its writer the master would answer every result with an error
                    // and hold every submitter: better to stop and be restarted clean.
                    log::error!("the store's writer failed: the master stops");
                    std::process::exit(70);
                }
            })
            .context("cannot start the store's writer")?;
        Ok(Sqlite {
            jobs: Mutex::new(tx),
            queue,
            readers: Pool::new(path.to_owned()),
            _lock: lock,
            temp: None,
        })
    }

    /// A store in a fresh temporary file, deleted when dropped (for tests and benchmarks).
    pub fn open_temp(confirm: u32) -> anyhow::Result<Sqlite> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "dt-store-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut s = Sqlite::open(&path, confirm)?;
        s.temp = Some(path);
        Ok(s)
    }

    /// Hands a job to the writer; false (and logged) when the writer has stopped, in which
    /// case the job's answer is an error.
    fn send(&self, job: Job) -> bool {
        let tx = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        match tx.send(job) {
            Ok(()) => true,
            Err(_) => {
                log::error!("store: the writer has stopped");
                false
            }
        }
    }

    /// Runs `f` on the writer, inside its next transaction, and gives its answer once that
    /// transaction is committed.
    fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut Caches) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let slot = std::sync::Arc::new(Mutex::new(None));
        let out = slot.clone();
        let (tx, ticket) = Ticket::channel();
        let _ = self.send(Job::Exec(
            Box::new(move |conn, caches| {
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(f(conn, caches));
            }),
            tx,
        ));
        ticket.wait()?;
        let answer = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        answer.ok_or_else(|| anyhow::anyhow!("the store's writer gave no answer"))
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        if let Some(p) = &self.temp {
            for suffix in ["", "-wal", "-shm"] {
                let mut f = p.clone().into_os_string();
                f.push(suffix);
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// Pragmas and migrations for the write connection.
fn prepare(conn: &mut Connection) -> anyhow::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a result the master answered 200 for survives power loss; the slave deletes its
    // copy on that answer.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints keep the WAL near this size instead of letting it stay at its peak.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    schema::migrate(conn)
}

impl Store for Sqlite {
    fn submit(&self, results: Vec<NewResult>) -> Ticket {
        ingest::submit(&self.queue, results, |p, tx| self.send(Job::Insert(p, tx)))
    }

    fn touch_slave(&self, name: &str, remote: &str, agent: Option<&str>, config: bool) {
        let _ = self.send(Job::Touch(ingest::Touch::now(name, remote, agent, config)));
    }

    fn slave_status(&self, name: &str, spool_depth: Option<u64>, dropped_total: Option<u64>) {
        let _ = self.send(Job::Status(ingest::Status::now(
            name,
            spool_depth,
            dropped_total,
        )));
    }

    fn results(&self, q: &ResultQuery) -> anyhow::Result<(Vec<StoredResult>, Option<Cursor>)> {
        let conn = self.readers.get()?;
        query::results(&conn, &self.readers.caches, q)
    }

    fn count_results(&self) -> anyhow::Result<i64> {
        let conn = self.readers.get()?;
        Ok(conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0))?)
    }

    fn slaves(&self) -> anyhow::Result<Vec<SlaveRecord>> {
        Ok(query::slaves(&*self.readers.get()?)?)
    }

    fn targets(&self) -> anyhow::Result<Vec<StoredTarget>> {
        Ok(query::targets(&*self.readers.get()?)?)
    }

    fn series(&self, f: &SeriesFilter) -> anyhow::Result<Vec<SeriesRow>> {
        Ok(query::series(&*self.readers.get()?, f)?)
    }

    fn series_hops(&self, series: i64, since: i64) -> anyhow::Result<Vec<Vec<NewHop>>> {
        let conn = self.readers.get()?;
        query::series_hops(&conn, &self.readers.caches, series, since)
    }

    fn path_history(&self, series: i64, from: i64, to: i64) -> anyhow::Result<Vec<PathSeen>> {
        let conn = self.readers.get()?;
        query::path_history(&conn, &self.readers.caches, series, from, to)
    }

    fn events(&self, q: &EventQuery) -> anyhow::Result<Vec<EventView>> {
        Ok(query::events(&*self.readers.get()?, q)?)
    }

    fn storage_bytes(&self) -> anyhow::Result<i64> {
        Ok(query::storage_bytes(&*self.readers.get()?)?)
    }

    fn delete_results_before(&self, cutoff: i64) -> anyhow::Result<usize> {
        Ok(self.on_writer(move |conn, _| retention::delete_results(conn, cutoff))??)
    }

    fn secret(&self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (name, fresh) = (name.to_owned(), fresh.to_vec());
        Ok(self.on_writer(move |conn, _| -> rusqlite::Result<Vec<u8>> {
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                rusqlite::params![name, fresh],
            )?;
            conn.query_row("SELECT value FROM secrets WHERE name = ?1", [&name], |r| {
                r.get(0)
            })
        })??)
    }

    fn create_measurement(&self, m: &super::MeasurementRecord) -> anyhow::Result<()> {
        let m = m.clone();
        Ok(self.on_writer(move |conn, _| measurements::create(conn, &m))??)
    }

    fn measurement(&self, id: &str) -> anyhow::Result<Option<super::MeasurementRecord>> {
        measurements::get(&*self.readers.get()?, id)
    }

    fn attach_follow_up(&self, event: i64, measurement: &str) -> anyhow::Result<()> {
        let m = measurement.to_owned();
        Ok(self.on_writer(move |conn, _| measurements::attach(conn, event, &m))??)
    }

    fn follow_ups(&self, events: &[i64]) -> anyhow::Result<std::collections::HashMap<i64, String>> {
        Ok(measurements::follow_ups(&*self.readers.get()?, events)?)
    }

    fn measurement_results(&self, id: &str) -> anyhow::Result<Vec<StoredResult>> {
        let conn = self.readers.get()?;
        measurements::results(&conn, &self.readers.caches, id)
    }

    fn take_jobs(
        &self,
        slave: &str,
        redeliver_before: i64,
        now: i64,
    ) -> anyhow::Result<Vec<crate::proto::JobSpec>> {
        let slave = slave.to_owned();
        self.on_writer(move |conn, _| measurements::take(conn, &slave, redeliver_before, now))?
    }

    fn runs_started(&self, slave: &str, ids: &[String], now: i64) -> anyhow::Result<()> {
        let (slave, ids) = (slave.to_owned(), ids.to_vec());
        Ok(self.on_writer(move |conn, _| measurements::started(conn, &slave, &ids, now))??)
    }

    fn queued_since(&self, since: i64) -> anyhow::Result<Vec<String>> {
        Ok(measurements::queued_since(&*self.readers.get()?, since)?)
    }

    fn delete_history_before(&self, cutoff: i64) -> anyhow::Result<(usize, usize)> {
        self.on_writer(|_, caches| {
            caches.routes_used = Some(Default::default());
        })?;
        let (used, top) = retention::routes_in_use(&*self.readers.get()?)?;
        Ok(self.on_writer(move |conn, caches| {
            retention::delete_history(conn, caches, cutoff, used, top)
        })??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::path::{Path as NetPath, Terminal};

    /// Test times count from here (2025-11-24).
    const T0: i64 = 1_764_000_000_000;

    fn result(id: u32, at: i64) -> NewResult {
        let at = T0 + at;
        NewResult {
            result_id: format!("00000000-0000-4000-8000-{id:012}"),
            slave: "slave1".into(),
            target_uuid: "76d96640-d357-47b3-ba50-5248a7604bc9".into(),
            target_name: "Google".into(),
            target_address: "www.google.at".into(),
            target_known: true,
            target_selected: true,
            measured_at: at,
            date_time: chrono::DateTime::from_timestamp_millis(at)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
            success: true,
            hop_count: 3,
            path: NetPath::from_hops(
                [
                    (1, "10.0.0.1".parse().unwrap()),
                    (3, "10.0.0.3".parse().unwrap()),
                ],
                Terminal::Reached,
            ),
            protocol: Some("udp".into()),
            flow: Some(0),
            destination: None,
            unreachable: None,
            error: None,
            agent: None,
            duration_ns: None,
            rtt_alert_ns: None,
            origin: Default::default(),
            hops: vec![
                NewHop {
                    ttl: 1,
                    address: "10.0.0.1".into(),
                    host: String::new(),
                    rtt_ns: 1000,
                    size: 56,
                    kind: None,
                    replies: Some(vec![Some(1000), None]),
                    reply_ttl: None,
                    mpls: None,
                },
                NewHop {
                    ttl: 3,
                    address: "10.0.0.3".into(),
                    host: "c.example.".into(),
                    rtt_ns: 3_000_123,
                    size: 56,
                    kind: Some("reached".into()),
                    replies: None,
                    reply_ttl: Some(61),
                    mpls: None,
                },
            ],
            multipath: None,
            as_hops: None,
        }
    }

    fn count(store: &Sqlite, table: &str) -> i64 {
        store
            .readers
            .get()
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    // The engine-neutral behaviour is in tests/store_suite.rs, run on both engines; these
    // look at SQLite's own tables.
    fn a_result_id_is_stored_once_and_shapes_are_shared() {
        let store = Sqlite::open_temp(2).unwrap();
        assert!(matches!(
            store.insert(&result(1, 1_000)).unwrap().0,
            super::super::Stored::New(_)
        ));
        assert_eq!(
            store.insert(&result(1, 1_000)).unwrap().0,
            super::super::Stored::Duplicate
        );
        store.insert(&result(2, 2_000)).unwrap();
        assert_eq!(store.count_results().unwrap(), 2);
        assert_eq!(count(&store, "paths"), 1);
        assert_eq!(count(&store, "routes"), 1);
        let (got, next) = store
            .results(&ResultQuery {
                slave: Some("slave1".into()),
                target: Some("Google".into()),
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].measured_at, T0 + 2_000);
        assert_eq!(got[0].path, "10.0.0.1 * 10.0.0.3 | reached");
        assert_eq!(got[0].hops, result(2, 2_000).hops);
        let older = store
            .results(&ResultQuery {
                before: next,
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .0;
        assert_eq!(older.len(), 1);
        assert_eq!(older[0].id, "00000000-0000-4000-8000-000000000001");
        let none = store
            .results(&ResultQuery {
                slave: Some("other".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .0;
        assert!(none.is_empty());
    }

    #[test]
    fn retention_keeps_the_newest_of_a_series_and_unused_shapes_go() {
        let store = Sqlite::open_temp(2).unwrap();
        for (i, at) in [1_000, 2_000, 3_000].into_iter().enumerate() {
            let mut r = result(i as u32, at);
            if i < 2 {
                // The two oldest took another route.
                r.hops[1].host = "old.example.".into();
            }
            store.insert(&r).unwrap();
        }
        assert_eq!(count(&store, "routes"), 2);
        assert_eq!(store.delete_results_before(T0 + 10_000).unwrap(), 2);
        assert_eq!(store.delete_results_before(T0 + 10_000).unwrap(), 0);
        assert_eq!(store.count_results().unwrap(), 1);
        // The remaining result still uses its route and path; the other route goes.
        assert_eq!(store.delete_history_before(i64::MAX).unwrap().1, 0);
        assert_eq!(count(&store, "routes"), 1);
        assert_eq!(
            store
                .results(&ResultQuery {
                    limit: 5,
                    ..Default::default()
                })
                .unwrap()
                .0
                .len(),
            1
        );
        // A result after the sweep gets its route back.
        store.insert(&result(9, 4_000)).unwrap();
        assert_eq!(store.count_results().unwrap(), 2);
    }

    #[test]
    fn reopening_keeps_results_and_a_second_opener_is_refused() {
        let dir = std::env::temp_dir().join(format!("dt-store-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.db");
        let _ = std::fs::remove_file(&file);
        {
            let first = Sqlite::open(&file, 2).unwrap();
            first.insert(&result(1, 1_000)).unwrap();
            let second = Sqlite::open(&file, 2).err().expect("refused");
            assert!(
                format!("{second:#}").contains("another master"),
                "{second:#}"
            );
        }
        // The writer thread lets go of the file when its store is dropped.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let again = Sqlite::open(&file, 2).unwrap();
        assert_eq!(again.count_results().unwrap(), 1);
        assert_eq!(
            again.insert(&result(1, 1_000)).unwrap().0,
            super::super::Stored::Duplicate
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
