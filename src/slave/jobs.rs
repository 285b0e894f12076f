//! On-demand jobs: the slave holds a long-poll to the master (`POST /api/v1/jobs`, answered
//! as soon as a job is there or after the wait), so a measurement reaches it within a second
//! through NAT and without a port of its own. Each job runs at once, one thread per flow,
//! beside the schedule; its results go through the spool like every other, marked with the
//! measurement. A master without on-demand jobs (an original one, an older one) is asked
//! again every ten minutes.

use super::client::{Client, Outcome};
use super::shutdown::Stop;
use super::{Backoff, Job};
use crate::proto::{JobSpec, JobsRequest, TargetRef};
use crate::trace::{Protocol, TraceOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the master may hold a poll.
pub const WAIT: Duration = Duration::from_secs(25);
/// How long a job's ID is remembered, so a job handed out twice runs once.
const REMEMBER: Duration = Duration::from_secs(3600);
/// How often a master without on-demand jobs is asked again.
const UNSUPPORTED_AGAIN: Duration = Duration::from_secs(600);

/// The trace options of one flow of a job.
pub fn options(spec: &JobSpec, flow: u16) -> TraceOptions {
    TraceOptions {
        protocol: Protocol::parse(&spec.protocol).unwrap_or_default(),
        port: spec.port,
        max_hops: spec.max_hops.clamp(1, 255),
        queries: spec.queries.clamp(1, 10),
        retries: 0,
        timeout: Duration::from_millis(u64::from(spec.timeout_ms.clamp(1, 60_000))),
        flow,
        ..TraceOptions::default()
    }
}

/// The traces a job asks for, one per flow.
pub(super) fn traces(spec: &JobSpec) -> Vec<Job> {
    (0..spec.flows.clamp(1, 16))
        .map(|flow| Job {
            id: format!("{}/{flow}", spec.id),
            target: TargetRef {
                name: spec.target.clone(),
                address: spec.target.clone(),
            },
            options: options(spec, flow),
            measurement: Some(spec.id.clone()),
            flows: 1,
            multipath: None,
        })
        .collect()
}

/// Polls `client` for jobs until `stop`, handing each new one's traces to `run`.
pub(super) fn poll(client: &Client, stop: &Stop, run: impl Fn(Job)) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut running: Vec<String> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut told_unsupported = false;
    while !stop.is_set() {
        let ask = JobsRequest {
            creds: client.creds().clone(),
            wait: WAIT.as_secs() as u32,
            running: std::mem::take(&mut running),
        };
        let pause = match client.poll_jobs(&ask) {
            Outcome::Ok(jobs) => {
                backoff.reset();
                told_unsupported = false;
                let now = Instant::now();
                seen.retain(|_, t| now.duration_since(*t) < REMEMBER);
                for spec in jobs {
                    if seen.insert(spec.id.clone(), now).is_some() {
                        continue;
                    }
                    log::info!(
                        "measurement {}: {} {} flows {}, from the master",
                        spec.id,
                        spec.protocol,
                        spec.target,
                        spec.flows
                    );
                    running.push(spec.id.clone());
                    for job in traces(&spec) {
                        run(job);
                    }
                }
                Duration::ZERO
            }
            Outcome::Rejected(why) => {
                if !told_unsupported {
                    log::info!(
                        "the master takes no on-demand jobs ({why}); asking again every {}",
                        humantime::format_duration(UNSUPPORTED_AGAIN)
                    );
                    told_unsupported = true;
                }
                // The jobs said running are told again with the next poll.
                running = ask.running;
                UNSUPPORTED_AGAIN
            }
            Outcome::Unauthorized => {
                running = ask.running;
                backoff.next_wait().max(Duration::from_secs(10))
            }
            Outcome::Retry(why) => {
                log::debug!("job poll: {why}");
                running = ask.running;
                backoff.next_wait()
            }
        };
        if !pause.is_zero() && stop.sleep(pause) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_one_trace_per_flow_marked_with_its_measurement() {
        let spec = JobSpec {
            id: "m1".into(),
            target: "192.0.2.1".into(),
            protocol: "icmp".into(),
            port: None,
            flows: 3,
            queries: 2,
            max_hops: 12,
            timeout_ms: 800,
        };
        let jobs = traces(&spec);
        assert_eq!(jobs.len(), 3);
        let flows: Vec<u16> = jobs.iter().map(|j| j.options.flow).collect();
        assert_eq!(flows, [0, 1, 2]);
        assert!(jobs.iter().all(|j| j.measurement.as_deref() == Some("m1")));
        assert_eq!(jobs[1].id, "m1/1");
        assert_eq!(jobs[0].options.protocol, Protocol::Icmp);
        assert_eq!((jobs[0].options.queries, jobs[0].options.max_hops), (2, 12));
        assert_eq!(jobs[0].options.timeout, Duration::from_millis(800));
    }
}
