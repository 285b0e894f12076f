//! The PostgreSQL engine: several masters may share one database. Each master has one
//! writer connection (group commit, as with SQLite) and a pool of read connections; what
//! keeps concurrent masters correct is in [`ingest`].

pub mod connect;
pub mod copy;
mod ingest;
mod query;
pub mod schema;

use super::ingest::{Queue, Status, Touch};
use super::query::ReadCaches;
use super::{
    Cursor, EventQuery, EventView, MasterConfig, NewHop, NewResult, PathSeen, ResultQuery,
    SeriesFilter, SeriesRow, SlaveRecord, Store, StoredResult, StoredTarget, Ticket, codec,
};
use anyhow::Context;
use ingest::Job;
use r2d2_postgres::PostgresConnectionManager;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use connect::is_url;

/// Read connections kept open at most.
const READERS: u32 = 16;

/// The PostgreSQL store.
pub struct Postgres {
    jobs: Mutex<Sender<Job>>,
    queue: Arc<Queue>,
    readers: r2d2_postgres::r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>,
    caches: ReadCaches,
    shown: String,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Retention deletes a route only when no master has used it for this long (each master
/// refreshes `last_used` of the routes it uses every [`ingest::ROUTE_TOUCH_MS`]).
const ROUTE_IDLE_MS: i64 = 60 * 60 * 1000;

impl Postgres {
    /// Connects to the database at `url` (password from `passwd_file`, the URL or
    /// `PGPASSWORD`), creates or upgrades its schema and starts the writer.
    pub fn open(
        url: &str,
        passwd_file: Option<&std::path::Path>,
        confirm: u32,
    ) -> anyhow::Result<Postgres> {
        let target = connect::target(url, passwd_file)?;
        let shown = target.shown.clone();
        let mut first = target
            .config
            .connect(target.tls.clone())
            .with_context(|| format!("cannot connect to {shown}"))?;
        schema::migrate(&mut first).with_context(|| format!("cannot prepare {shown}"))?;
        drop(first);
        let (config, tls) = (target.config.clone(), target.tls.clone());
        let writer =
            ingest::Writer::new(Box::new(move || Ok(config.connect(tls.clone())?)), confirm)
                .with_context(|| format!("cannot connect to {shown}"))?;
        let readers = r2d2_postgres::r2d2::Pool::builder()
            .max_size(READERS)
            .min_idle(Some(1))
            .connection_timeout(std::time::Duration::from_secs(10))
            .build(PostgresConnectionManager::new(target.config, target.tls))
            .with_context(|| format!("cannot connect to {shown}"))?;
        let (tx, rx) = mpsc::channel();
        let queue = Arc::new(Queue::default());
        let writer_queue = queue.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer.run(rx, writer_queue));
                if std::panic::catch_unwind(run).is_err() {
                    log::error!("the store's writer failed: the master stops");
                    std::process::exit(70);
                }
            })
            .context("cannot start the store's writer")?;
        log::info!("database: {shown}");
        Ok(Postgres {
            jobs: Mutex::new(tx),
            queue,
            readers,
            caches: ReadCaches::default(),
            shown,
        })
    }

    /// The database, without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn reader(
        &self,
    ) -> anyhow::Result<
        r2d2_postgres::r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>,
    > {
        self.readers
            .get()
            .with_context(|| format!("no connection to {}", self.shown))
    }

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
}

impl Store for Postgres {
    fn create_measurement(&self, m: &super::MeasurementRecord) -> anyhow::Result<()> {
        let mut c = self.reader()?;
        let mut tx = c.transaction()?;
        let spec = serde_json::to_string(&m.spec)?;
        tx.execute(
            "INSERT INTO measurements (id, created_at, deadline, requested_by, spec, flows)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &m.id,
                &m.created_at,
                &m.deadline,
                &m.requested_by,
                &spec,
                &i32::from(m.spec.flows),
            ],
        )?;
        for r in &m.runs {
            tx.execute(
                "INSERT INTO measurement_runs (measurement, slave, state, updated_at, reason)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&m.id, &r.slave, &r.state, &r.updated_at, &r.reason],
            )?;
        }
        if let Some(event) = m.event {
            tx.execute(
                "INSERT INTO follow_ups (event_id, measurement) VALUES ($1, $2)
                 ON CONFLICT (event_id) DO UPDATE SET measurement = EXCLUDED.measurement",
                &[&event, &m.id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn measurement(&self, id: &str) -> anyhow::Result<Option<super::MeasurementRecord>> {
        query::measurement(&mut *self.reader()?, id)
    }

    fn attach_follow_up(&self, event: i64, measurement: &str) -> anyhow::Result<()> {
        self.reader()?.execute(
            "INSERT INTO follow_ups (event_id, measurement) VALUES ($1, $2)
             ON CONFLICT (event_id) DO UPDATE SET measurement = EXCLUDED.measurement",
            &[&event, &measurement],
        )?;
        Ok(())
    }

    fn follow_ups(&self, events: &[i64]) -> anyhow::Result<std::collections::HashMap<i64, String>> {
        Ok(self
            .reader()?
            .query(
                "SELECT event_id, measurement FROM follow_ups WHERE event_id = ANY($1)",
                &[&events],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn measurement_results(&self, id: &str) -> anyhow::Result<Vec<StoredResult>> {
        query::measurement_results(&mut *self.reader()?, &self.caches, id)
    }

    fn take_jobs(
        &self,
        slave: &str,
        redeliver_before: i64,
        now: i64,
    ) -> anyhow::Result<Vec<crate::proto::JobSpec>> {
        // One statement: of two masters asked at once, each run goes to one of them.
        let rows = self.reader()?.query(
            "UPDATE measurement_runs r SET state = 'delivered', updated_at = $3
             FROM measurements m
             WHERE m.id = r.measurement AND r.slave = $1 AND m.deadline > $3
               AND (r.state = 'queued' OR (r.state = 'delivered' AND r.updated_at < $2))
             RETURNING m.spec, m.created_at",
            &[&slave, &redeliver_before, &now],
        )?;
        let mut specs: Vec<(i64, crate::proto::JobSpec)> = Vec::with_capacity(rows.len());
        for r in rows {
            specs.push((r.get(1), serde_json::from_str(r.get::<_, &str>(0))?));
        }
        specs.sort_by_key(|s| s.0);
        Ok(specs.into_iter().map(|s| s.1).collect())
    }

    fn runs_started(&self, slave: &str, ids: &[String], now: i64) -> anyhow::Result<()> {
        self.reader()?.execute(
            "UPDATE measurement_runs SET state = 'running', updated_at = $3
             WHERE measurement = ANY($1) AND slave = $2 AND state IN ('queued', 'delivered')",
            &[&ids, &slave, &now],
        )?;
        Ok(())
    }

    fn queued_since(&self, since: i64) -> anyhow::Result<Vec<String>> {
        Ok(self
            .reader()?
            .query(
                "SELECT DISTINCT slave FROM measurement_runs
                 WHERE state = 'queued' AND updated_at >= $1",
                &[&since],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn submit(&self, results: Vec<NewResult>) -> Ticket {
        super::ingest::submit(&self.queue, results, |p, tx| self.send(Job::Insert(p, tx)))
    }

    fn touch_slave(&self, name: &str, remote: &str, agent: Option<&str>, config: bool) {
        let _ = self.send(Job::Touch(Touch::now(name, remote, agent, config)));
    }

    fn slave_status(&self, name: &str, spool_depth: Option<u64>, dropped_total: Option<u64>) {
        let _ = self.send(Job::Status(Status::now(name, spool_depth, dropped_total)));
    }

    fn results(&self, q: &ResultQuery) -> anyhow::Result<(Vec<StoredResult>, Option<Cursor>)> {
        query::results(&mut *self.reader()?, &self.caches, q)
    }

    fn count_results(&self) -> anyhow::Result<i64> {
        Ok(self
            .reader()?
            .query_one("SELECT count(*) FROM results", &[])?
            .get(0))
    }

    fn slaves(&self) -> anyhow::Result<Vec<SlaveRecord>> {
        query::slaves(&mut *self.reader()?)
    }

    fn targets(&self) -> anyhow::Result<Vec<StoredTarget>> {
        query::targets(&mut *self.reader()?)
    }

    fn series(&self, f: &SeriesFilter) -> anyhow::Result<Vec<SeriesRow>> {
        query::series(&mut *self.reader()?, f)
    }

    fn series_hops(&self, series: i64, since: i64) -> anyhow::Result<Vec<Vec<NewHop>>> {
        query::series_hops(&mut *self.reader()?, &self.caches, series, since)
    }

    fn path_history(&self, series: i64, from: i64, to: i64) -> anyhow::Result<Vec<PathSeen>> {
        query::path_history(&mut *self.reader()?, &self.caches, series, from, to)
    }

    fn events(&self, q: &EventQuery) -> anyhow::Result<Vec<EventView>> {
        query::events(&mut *self.reader()?, q)
    }

    fn storage_bytes(&self) -> anyhow::Result<i64> {
        Ok(self
            .reader()?
            .query_one("SELECT pg_database_size(current_database())", &[])?
            .get(0))
    }

    fn publish_config(&self, master: &str, digests: &serde_json::Value) -> anyhow::Result<()> {
        self.reader()?.execute(
            "INSERT INTO masters (name, config, seen_at) VALUES ($1, $2::TEXT::JSONB, $3)
             ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config, seen_at = EXCLUDED.seen_at",
            &[&master, &digests.to_string(), &now_ms()],
        )?;
        Ok(())
    }

    fn secret(&self, name: &str, fresh: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut c = self.reader()?;
        c.execute(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &fresh],
        )?;
        Ok(
            c.query_one("SELECT value FROM secrets WHERE name = $1", &[&name])?
                .get(0),
        )
    }

    fn master_configs(&self) -> anyhow::Result<Vec<MasterConfig>> {
        let rows = self.reader()?.query(
            "SELECT name, config::TEXT, seen_at FROM masters ORDER BY name",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| MasterConfig {
                name: r.get(0),
                digests: serde_json::from_str(r.get(1)).unwrap_or_default(),
                seen_at: r.get(2),
            })
            .collect())
    }

    /// One master at a time: a master that finds another at it deletes nothing this round.
    fn delete_results_before(&self, cutoff: i64) -> anyhow::Result<usize> {
        let mut c = self.reader()?;
        let mut tx = c.transaction()?;
        let mine: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&schema::locks::RETENTION],
            )?
            .get(0);
        if !mine {
            return Ok(0);
        }
        let below = codec::key(cutoff, 0);
        let n = tx.execute(
            "DELETE FROM results WHERE id IN
                (SELECT id FROM results WHERE id < $1 ORDER BY id LIMIT $2)
               AND id NOT IN (SELECT last_result FROM series WHERE last_result IS NOT NULL)",
            &[&below, &super::retention::BATCH],
        )?;
        tx.execute(
            "DELETE FROM aside WHERE result < $1
               AND NOT EXISTS (SELECT 1 FROM results WHERE id = aside.result)",
            &[&below],
        )?;
        tx.execute(super::retention::RESULT_GRAPHS_GONE, &[&below])?;
        tx.commit()?;
        Ok(n as usize)
    }

    fn delete_history_before(&self, cutoff: i64) -> anyhow::Result<(usize, usize)> {
        let mut c = self.reader()?;
        let mut tx = c.transaction()?;
        let mine: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&schema::locks::RETENTION],
            )?
            .get(0);
        if !mine {
            return Ok((0, 0));
        }
        let events = tx.execute("DELETE FROM events WHERE at < $1", &[&cutoff])?;
        tx.batch_execute(
            &super::retention::MEASUREMENTS_BEFORE.replace("$1", &cutoff.to_string()),
        )?;
        // A route no result uses and no master has used for an hour: every master that
        // might still hold its id would have refreshed `last_used` before using it.
        let idle = now_ms() - ROUTE_IDLE_MS;
        tx.execute(
            "DELETE FROM routes r WHERE r.last_used < $1
               AND NOT EXISTS (SELECT 1 FROM results WHERE route_id = r.id)",
            &[&idle],
        )?;
        // Graph shapes likewise: unused by any result, and by any master for an hour.
        tx.execute(
            "DELETE FROM graphs g WHERE g.last_used < $1
               AND NOT EXISTS (SELECT 1 FROM result_graphs WHERE graph_id = g.id)",
            &[&idle],
        )?;
        let paths = tx.execute(
            "DELETE FROM paths WHERE first_seen < $1
               AND NOT EXISTS (SELECT 1 FROM routes WHERE path_id = paths.id)
               AND NOT EXISTS (SELECT 1 FROM series WHERE current_path = paths.id OR candidate_path = paths.id)
               AND NOT EXISTS (SELECT 1 FROM events WHERE from_path = paths.id OR to_path = paths.id)",
            &[&cutoff],
        )?;
        tx.commit()?;
        Ok((events as usize, paths as usize))
    }
}
