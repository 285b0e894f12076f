//! Alerts: every event of the kinds `-alert-kinds` names (all by default), but a
//! `target-change` (the operator's own edit), is logged at warn level and, with
//! `-alert-webhook URL`, POSTed there as JSON by a background thread that retries with
//! backoff; a full queue drops the oldest and says how many. Other events are logged at info.

use super::store::EventRecord;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Most alerts waiting for the webhook.
const MAX_QUEUE: usize = 10_000;

/// Tries per alert before it is given up (logged).
const TRIES: u32 = 8;

#[derive(Default)]
struct Queue {
    items: VecDeque<serde_json::Value>,
    dropped: u64,
}

/// The alert sink.
#[derive(Clone, Default)]
pub struct Alerts {
    queue: Option<Arc<(Mutex<Queue>, Condvar)>>,
    /// Alert on events of made-up results (`-zDebugResults`) too.
    pub debug_too: bool,
    /// The event kinds that alert (`-alert-kinds`); `None` is every kind.
    pub kinds: Option<Vec<&'static str>>,
}

/// A one-line description of an event for the log.
pub fn describe(e: &EventRecord) -> String {
    use super::analysis::Event;
    let what = match &e.event {
        Event::PathChange { first_diff_ttl, .. } => format!(
            "path changed at hop {first_diff_ttl}: {} -> {}",
            e.from.as_deref().unwrap_or("?"),
            e.to.as_deref().unwrap_or("?")
        ),
        Event::Unreachable { results } => {
            format!("destination unreachable ({results} results in a row)")
        }
        Event::Reachable => "destination reachable again".to_owned(),
        Event::RttHigh {
            rtt_ns,
            threshold_ns,
        } => format!(
            "destination RTT {:.1} ms over the threshold {:.1} ms",
            *rtt_ns as f64 / 1e6,
            *threshold_ns as f64 / 1e6
        ),
        Event::RttNormal { rtt_ns } => {
            format!("destination RTT back to {:.1} ms", *rtt_ns as f64 / 1e6)
        }
        Event::TargetChange {
            from_name,
            from_address,
            to_name,
            to_address,
        } => {
            format!("target changed from {from_name} ({from_address}) to {to_name} ({to_address})")
        }
        Event::BranchLost { branches } => {
            format!("branches gone: {}", branches.join(", "))
        }
        Event::BranchNew { branches } => format!("new branches: {}", branches.join(", ")),
        Event::AsPathChange { from, to, .. } => {
            let show = |p: &[u32]| {
                p.iter()
                    .map(|a| format!("AS{a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            format!("AS path changed: {} -> {}", show(from), show(to))
        }
    };
    format!(
        "slave {} target {} flow {}: {what}",
        e.slave, e.target_name, e.flow
    )
}

impl Alerts {
    /// Alerts that go to the log only.
    pub fn log_only() -> Alerts {
        Alerts {
            queue: None,
            debug_too: false,
            kinds: None,
        }
    }

    /// Alerts that also go to `url`.
    pub fn with_webhook(url: String) -> anyhow::Result<Alerts> {
        let queue: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let worker = queue.clone();
        std::thread::Builder::new()
            .name("alert-webhook".into())
            .spawn(move || deliver(&url, &worker))?;
        Ok(Alerts {
            queue: Some(queue),
            debug_too: false,
            kinds: None,
        })
    }

    /// Logs `e` and queues it for the webhook; an event of a made-up result (`debug`) is
    /// only logged, at info and marked, unless `debug_too`.
    pub fn send(&self, e: &EventRecord, debug: bool, follow_up: Option<&str>) {
        if debug && !self.debug_too {
            log::info!("{} (debug result: no alert)", describe(e));
            return;
        }
        // An edit of the targets file is the operator's own doing: told, not alerted.
        if matches!(e.event, super::analysis::Event::TargetChange { .. }) {
            log::info!("{}", describe(e));
            return;
        }
        if let Some(kinds) = &self.kinds
            && !kinds.contains(&e.event.kind())
        {
            log::info!("{} (not in -alert-kinds: no alert)", describe(e));
            return;
        }
        log::warn!("{}", describe(e));
        let Some(queue) = &self.queue else { return };
        let mut body = serde_json::to_value(e).unwrap_or_default();
        body["message"] = serde_json::Value::String(describe(e));
        if let Some(id) = follow_up {
            body["follow_up"] = follow_up_ref(id);
        }
        self.push(queue, body);
    }

    /// Tells the webhook what the follow-up of `events` found: `kind` `follow-up`, the
    /// events' IDs, the summary and the measurement as `GET /api/v1/measurements/{id}`
    /// gives it.
    pub fn follow_up(&self, events: &[EventRecord], measurement: &serde_json::Value) {
        let Some(queue) = &self.queue else { return };
        // Told only where one of the events was alerted.
        if let Some(kinds) = &self.kinds
            && !events.iter().any(|e| kinds.contains(&e.event.kind()))
        {
            return;
        }
        let summary = measurement["summary"].as_str().unwrap_or_default();
        let first = &events[0];
        let body = serde_json::json!({
            "kind": "follow-up",
            "events": events.iter().map(|e| e.id).collect::<Vec<_>>(),
            "target_id": first.target_id,
            "target_name": first.target_name,
            "message": format!("follow-up of {} on {}: {summary}", first.event.kind(), first.target_name),
            "summary": summary,
            "measurement": measurement,
        });
        self.push(queue, body);
    }

    fn push(&self, queue: &Arc<(Mutex<Queue>, Condvar)>, body: serde_json::Value) {
        let (lock, ready) = &**queue;
        let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
        if q.items.len() >= MAX_QUEUE {
            q.items.pop_front();
            q.dropped += 1;
        }
        q.items.push_back(body);
        ready.notify_one();
    }
}

fn deliver(url: &str, queue: &(Mutex<Queue>, Condvar)) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .user_agent(format!("dist-traceroute/{}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let (lock, ready) = queue;
    loop {
        let (body, dropped) = {
            let mut q = lock.lock().unwrap_or_else(|p| p.into_inner());
            while q.items.is_empty() {
                q = ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let dropped = std::mem::take(&mut q.dropped);
            (q.items.pop_front().unwrap_or_default(), dropped)
        };
        if dropped > 0 {
            log::warn!("alert webhook queue full: {dropped} alerts dropped");
        }
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=TRIES {
            let outcome = agent
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes());
            match outcome {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => log::warn!(
                    "alert webhook {url} answered {} (try {attempt}/{TRIES})",
                    r.status()
                ),
                Err(e) => log::warn!("alert webhook {url}: {e} (try {attempt}/{TRIES})"),
            }
            if attempt == TRIES {
                log::error!("alert given up after {TRIES} tries: {}", body["message"]);
            } else {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// How an event names its follow-up measurement.
pub fn follow_up_ref(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "url": format!("/api/v1/measurements/{id}")})
}
