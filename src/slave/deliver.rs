//! Delivery: sends what waits in the spool, oldest first, in batches to our master or one by
//! one to an original one, and removes a result only once the master answered for it.

use super::Backoff;
use super::client::{BatchOutcome, Client, Outcome, Status};
use super::shutdown::Stop;
use super::spool::{Entry, Read, Spool};
use crate::proto::{ItemStatus, TraceResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most results in one batch (the master takes up to 1000).
pub const MAX_BATCH: usize = 500;
/// Bytes of results in one batch at first; halved on 413 (the master's default body limit
/// is 1 MiB).
pub const BATCH_BYTES: u64 = 768 << 10;
/// How long an original master is talked to one result at a time before the batch endpoint
/// is tried again (it may have been upgraded).
const LEGACY_FOR: Duration = Duration::from_secs(600);

/// Counts since the start, for the status line and the benchmark.
#[derive(Debug, Default)]
pub struct Stats {
    /// Traces finished.
    pub traced: AtomicU64,
    /// Results written to the spool.
    pub spooled: AtomicU64,
    /// Results the master stored (or had stored before).
    pub delivered: AtomicU64,
    /// Results the master refused for good (moved to `rejected/`).
    pub rejected: AtomicU64,
    /// Results dropped because the spool was full.
    pub dropped: AtomicU64,
    /// Requests that carried results.
    pub requests: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What one round of delivery did.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    /// Nothing waits.
    Idle,
    /// Results left the spool (or the way of sending changed): go on at once.
    Progress,
    /// The master did not take them: wait before the next round.
    Failed,
}

/// The delivery state of one slave.
pub struct Deliverer<'a> {
    client: &'a Client,
    spool: &'a Spool,
    stats: &'a Stats,
    backoff: Backoff,
    legacy_until: Option<Instant>,
    batch_bytes: u64,
}

impl<'a> Deliverer<'a> {
    /// Delivers from `spool` through `client`; waits after failures grow up to `retry_max`.
    pub fn new(
        client: &'a Client,
        spool: &'a Spool,
        stats: &'a Stats,
        retry_max: Duration,
    ) -> Self {
        Deliverer {
            client,
            spool,
            stats,
            backoff: Backoff::new(Duration::from_millis(500).min(retry_max), retry_max),
            legacy_until: None,
            batch_bytes: BATCH_BYTES,
        }
    }

    /// Sends one result per request from now on, as to an original master (for comparisons).
    pub fn one_result_per_request(&mut self) {
        self.legacy_until = Some(Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    }

    fn status(&self, in_flight: usize) -> Status {
        Status {
            spool_depth: self.spool.depth().saturating_sub(in_flight as u64),
            dropped_total: self.spool.dropped_total(),
        }
    }

    /// Reads the listed results; a file that does not decode is moved aside, one that
    /// cannot be read now stays for the next round.
    /// True in the second place when a read failed.
    fn load(&self, entries: Vec<Entry>) -> (Vec<(Entry, TraceResult)>, bool) {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match self.spool.read(&e) {
                Ok(Read::Result(mut r)) => {
                    // The credentials of now: the spool keeps no password, and a result
                    // measured before a fixed -passwd must not carry the wrong one.
                    r.creds = self.client.creds().clone();
                    out.push((e, *r));
                }
                Ok(Read::Gone) => {}
                Ok(Read::Corrupt(why)) => {
                    log::error!("corrupt spool entry {}: {why}; moved to rejected/", e.id);
                    self.spool.reject(&e, &why);
                    add(&self.stats.rejected, 1);
                }
                Err(err) => {
                    log::error!("{err:#}; will try again");
                    return (out, true);
                }
            }
        }
        (out, false)
    }

    fn rejected(&self, e: &Entry, why: &str) {
        log::warn!(
            "the master refused result {} for good: {why}; moved to {}",
            e.id,
            self.spool.dir().join("rejected").display()
        );
        self.spool.reject(e, why);
        add(&self.stats.rejected, 1);
    }

    fn delivered(&self, e: &Entry) {
        self.spool.remove(e);
        add(&self.stats.delivered, 1);
        log::debug!("delivered {}", e.id);
    }

    fn unauthorized(&self) {
        log::error!(
            "the master {} refused this slave's name or password (401): check -name and -passwd against its dt-slaves.json; results stay in the spool ({} waiting)",
            self.client.base(),
            self.spool.depth()
        );
    }

    /// Sends the oldest waiting results once.
    pub fn round(&mut self) -> Round {
        let legacy = self.legacy_until.is_some_and(|t| Instant::now() < t);
        let entries = if legacy {
            self.spool.oldest(50, u64::MAX)
        } else {
            self.spool.oldest(MAX_BATCH, self.batch_bytes)
        };
        if entries.is_empty() {
            return Round::Idle;
        }
        let (loaded, stalled) = self.load(entries);
        if loaded.is_empty() {
            return if stalled {
                Round::Failed
            } else {
                Round::Progress
            };
        }
        if legacy {
            self.one_by_one(loaded)
        } else {
            self.batch(loaded)
        }
    }

    fn batch(&mut self, loaded: Vec<(Entry, TraceResult)>) -> Round {
        let (entries, results): (Vec<Entry>, Vec<TraceResult>) = loaded.into_iter().unzip();
        let status = self.status(entries.len());
        add(&self.stats.requests, 1);
        match self.client.post_batch(results, status) {
            BatchOutcome::Answered(answer) => {
                let mut progress = false;
                for (e, item) in entries.iter().zip(&answer.results) {
                    if item.id != e.id {
                        log::warn!(
                            "the master answered for {} where {} was sent; will resend",
                            item.id,
                            e.id
                        );
                        continue;
                    }
                    match item.status {
                        ItemStatus::Stored | ItemStatus::Duplicate => {
                            self.delivered(e);
                            progress = true;
                        }
                        ItemStatus::Rejected => {
                            self.rejected(e, &item.error);
                            progress = true;
                        }
                        ItemStatus::Retry => {}
                    }
                }
                if progress {
                    self.backoff.reset();
                    Round::Progress
                } else {
                    log::warn!(
                        "the master stored none of {} results ({}); will retry",
                        entries.len(),
                        answer.results.first().map_or("", |i| i.error.as_str())
                    );
                    Round::Failed
                }
            }
            BatchOutcome::Unsupported(why) => {
                log::info!(
                    "the master {} has no batch endpoint ({why}): sending one result per request",
                    self.client.base()
                );
                self.legacy_until = Some(Instant::now() + LEGACY_FOR);
                Round::Progress
            }
            BatchOutcome::TooLarge if entries.len() > 1 => {
                self.batch_bytes = (self.batch_bytes / 2).max(16 << 10);
                log::info!(
                    "the master found a batch of {} too large: batches of {} KiB from now",
                    entries.len(),
                    self.batch_bytes >> 10
                );
                Round::Progress
            }
            BatchOutcome::TooLarge => {
                self.rejected(&entries[0], "larger than the master accepts (413)");
                Round::Progress
            }
            BatchOutcome::Unauthorized => {
                self.unauthorized();
                Round::Failed
            }
            BatchOutcome::Retry(e) => {
                log::warn!(
                    "cannot deliver {} results: {e} ({} waiting)",
                    entries.len(),
                    self.spool.depth()
                );
                Round::Failed
            }
        }
    }

    fn one_by_one(&mut self, loaded: Vec<(Entry, TraceResult)>) -> Round {
        for (e, r) in &loaded {
            add(&self.stats.requests, 1);
            match self.client.post_result(r) {
                Outcome::Ok(()) => {
                    self.backoff.reset();
                    self.delivered(e);
                }
                Outcome::Rejected(why) => self.rejected(e, &why),
                Outcome::Unauthorized => {
                    self.unauthorized();
                    return Round::Failed;
                }
                Outcome::Retry(why) => {
                    log::warn!(
                        "cannot deliver result {}: {why} ({} waiting)",
                        e.id,
                        self.spool.depth()
                    );
                    return Round::Failed;
                }
            }
        }
        Round::Progress
    }

    /// The wait after a failed round: exponential with jitter, capped.
    pub fn next_wait(&mut self) -> Duration {
        self.backoff.next_wait()
    }

    /// Delivers until `finish` is raised, then flushes: keeps sending while the master takes
    /// results, and returns when the spool is empty, a round fails, or `flush_until` passes.
    pub fn run(&mut self, finish: &Stop, flush_for: Duration) {
        loop {
            if finish.is_set() {
                return self.flush(Instant::now() + flush_for);
            }
            match self.round() {
                Round::Progress => {}
                Round::Idle => {
                    finish.sleep(Duration::from_millis(100));
                }
                Round::Failed => {
                    let wait = self.next_wait();
                    log::debug!("next delivery attempt in {:.1}s", wait.as_secs_f64());
                    finish.sleep(wait);
                }
            }
        }
    }

    /// Sends what is left until the spool is empty, the master fails, or `until` passes.
    pub fn flush(&mut self, until: Instant) {
        while Instant::now() < until {
            match self.round() {
                Round::Progress => {}
                Round::Idle | Round::Failed => break,
            }
        }
        let left = self.spool.depth();
        if left > 0 {
            log::info!("{left} results stay in the spool for the next start");
        }
    }
}
