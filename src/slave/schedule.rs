//! When each target is traced: once per its interval, first runs spread over the interval,
//! never two runs of one target at once, at most `concurrency` traces and about `max_pps`
//! probes per second.

use crate::proto::{TargetSpec, TargetsDoc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest per-target `Interval` honoured (a typo like "1ms" must not flood the network).
pub const MIN_TARGET_INTERVAL: Duration = Duration::from_secs(1);

/// The `Interval` of a target, if it has one that parses.
pub fn target_interval(spec: &TargetSpec) -> Result<Option<Duration>, String> {
    let Some(text) = spec.interval.as_deref() else {
        return Ok(None);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("Interval {text:?} of {} is not a duration: {e}", spec.name))?;
    if d < MIN_TARGET_INTERVAL {
        return Err(format!(
            "Interval {text:?} of {} is shorter than {}",
            spec.name,
            humantime::format_duration(MIN_TARGET_INTERVAL)
        ));
    }
    Ok(Some(d))
}

/// Probes a trace may send, as far as the scheduler can tell before it runs.
pub fn probe_cost(doc: &TargetsDoc) -> f64 {
    f64::from(doc.max_hops.max(1))
}

/// A token bucket of probes per second.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    capacity: f64,
    at: Instant,
}

impl Bucket {
    /// `rate` probes per second, full at the start.
    pub fn new(rate: u32, now: Instant) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            tokens: rate,
            capacity: rate,
            at: now,
        }
    }

    /// Takes `cost` tokens if there are that many (a cost above one second's worth needs a
    /// full bucket).
    pub fn take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = now;
        let cost = cost.min(self.capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// One target's place in the schedule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    due: Instant,
    every: Duration,
}

/// The schedule of every target of the current document.
#[derive(Debug)]
pub struct Plan {
    default_every: Duration,
    slots: HashMap<String, Slot>,
    doc: Option<Arc<TargetsDoc>>,
}

/// What to do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start a trace of this target.
    Run(String),
    /// Nothing is due before this instant.
    WaitUntil(Instant),
}

impl Plan {
    /// A plan with `default_every` for targets without their own `Interval`.
    pub fn new(default_every: Duration) -> Plan {
        Plan {
            default_every,
            slots: HashMap::new(),
            doc: None,
        }
    }

    /// Follows a (new) document: new targets get start times spread over their interval,
    /// removed ones leave, the others keep their rhythm.
    pub fn update(&mut self, doc: &Arc<TargetsDoc>, now: Instant) {
        if self.doc.as_ref().is_some_and(|d| Arc::ptr_eq(d, doc)) {
            return;
        }
        let n = u32::try_from(doc.targets.len().max(1)).unwrap_or(u32::MAX);
        self.slots.retain(|id, _| doc.targets.contains_key(id));
        for (i, (id, spec)) in doc.targets.iter().enumerate() {
            let every = target_interval(spec)
                .ok()
                .flatten()
                .unwrap_or(self.default_every);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let slot = self.slots.entry(id.clone()).or_insert(Slot {
                due: now + every / n * i,
                every,
            });
            if slot.every != every {
                slot.every = every;
                slot.due = slot.due.min(now + every);
            }
        }
        self.doc = Some(doc.clone());
    }

    /// The next target due at `now` that `runnable` allows (not running already), or when
    /// to look again. A due target that still runs skips this turn.
    pub fn next(&mut self, now: Instant, busy: &HashSet<String>) -> Next {
        let mut soonest = now + self.default_every;
        let mut due: Vec<(Instant, &String)> = Vec::new();
        for (id, slot) in &self.slots {
            if slot.due <= now {
                due.push((slot.due, id));
            } else {
                soonest = soonest.min(slot.due);
            }
        }
        due.sort();
        let due: Vec<String> = due.into_iter().map(|(_, id)| id.clone()).collect();
        for id in due {
            let slot = self.slots.get_mut(&id).expect("listed above");
            // The next turn; after a long stall (suspend), start afresh rather than catch up.
            slot.due += slot.every;
            if slot.due <= now {
                slot.due = now + slot.every;
            }
            let next_due = slot.due;
            if busy.contains(&id) {
                log::warn!(
                    "{}: the previous trace still runs; skipping this turn",
                    self.name_of(&id)
                );
                soonest = soonest.min(next_due);
                continue;
            }
            return Next::Run(id);
        }
        Next::WaitUntil(soonest)
    }

    /// Puts a target back to due now (it was picked but could not start yet).
    pub fn retry_now(&mut self, id: &str, now: Instant) {
        if let Some(slot) = self.slots.get_mut(id) {
            slot.due = now;
        }
    }

    fn name_of(&self, id: &str) -> String {
        self.doc
            .as_ref()
            .and_then(|d| d.targets.get(id))
            .map_or_else(|| id.to_owned(), |t| t.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: usize, interval: Option<&str>) -> Arc<TargetsDoc> {
        let mut d: TargetsDoc = serde_json::from_str(r#"{"Targets":{}}"#).unwrap();
        for i in 0..n {
            d.targets.insert(
                format!("id{i}"),
                TargetSpec {
                    name: format!("T{i}"),
                    address: "h".into(),
                    protocol: None,
                    port: None,
                    interval: interval.map(str::to_owned),
                    flows: None,
                    multipath: None,
                    confidence: None,
                },
            );
        }
        Arc::new(d)
    }

    /// Runs the plan for `span` in steps of `step`; how often each target ran.
    fn simulate(plan: &mut Plan, start: Instant, span: Duration) -> HashMap<String, usize> {
        let mut runs = HashMap::new();
        let mut now = start;
        while now < start + span {
            loop {
                match plan.next(now, &HashSet::new()) {
                    Next::Run(id) => *runs.entry(id).or_insert(0) += 1,
                    Next::WaitUntil(t) => {
                        now = t.max(now + Duration::from_millis(1));
                        break;
                    }
                }
            }
        }
        runs
    }

    #[test]
    fn each_target_runs_once_per_interval_with_starts_spread() {
        let start = Instant::now();
        let mut plan = Plan::new(Duration::from_secs(60));
        plan.update(&doc(4, None), start);
        let firsts: Vec<Instant> = plan.slots.values().map(|s| s.due).collect();
        let distinct: HashSet<_> = firsts.iter().collect();
        assert_eq!(distinct.len(), 4, "start times are spread");
        assert!(firsts.iter().all(|t| *t < start + Duration::from_secs(60)));
        let runs = simulate(&mut plan, start, Duration::from_secs(600));
        assert_eq!(runs.len(), 4);
        assert!(runs.values().all(|n| *n == 10), "{runs:?}");
    }

    #[test]
    fn a_target_interval_overrides_the_default() {
        let start = Instant::now();
        let mut plan = Plan::new(Duration::from_secs(60));
        plan.update(&doc(1, Some("20s")), start);
        let runs = simulate(&mut plan, start, Duration::from_secs(600));
        assert_eq!(runs["id0"], 30);
        assert!(target_interval(&doc(1, Some("often")).targets["id0"]).is_err());
        assert!(target_interval(&doc(1, Some("10ms")).targets["id0"]).is_err());
    }

    #[test]
    fn a_running_target_is_skipped_not_doubled() {
        let start = Instant::now();
        let mut plan = Plan::new(Duration::from_secs(10));
        plan.update(&doc(1, None), start);
        assert_eq!(plan.next(start, &HashSet::new()), Next::Run("id0".into()));
        let busy: HashSet<String> = ["id0".to_owned()].into();
        let later = start + Duration::from_secs(10);
        assert!(matches!(plan.next(later, &busy), Next::WaitUntil(_)));
        let after = start + Duration::from_secs(20);
        assert_eq!(plan.next(after, &HashSet::new()), Next::Run("id0".into()));
    }

    #[test]
    fn the_bucket_limits_probes_per_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert!(b.take(60.0, t0));
        assert!(!b.take(60.0, t0));
        assert!(b.take(60.0, t0 + Duration::from_millis(300)));
        // A trace costlier than a second's worth still runs, on a full bucket.
        assert!(b.take(500.0, t0 + Duration::from_secs(5)));
    }
}
