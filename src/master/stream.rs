//! The live stream (`GET /api/v1/stream`): results and change events as this master stores
//! them, fanned out to Server-Sent-Events subscribers, each with its own filter and a bounded
//! queue, plus a short replay buffer so a client that reconnects with `Last-Event-ID` gets
//! what it missed. Pure synchronous logic: the connection layer drains a [`Subscription`]
//! when its waker fires.

use super::store::{EventRecord, NewResult, StoredResult};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Messages kept for replay.
pub const RING_MESSAGES: usize = 4096;
/// Bytes of messages kept for replay.
pub const RING_BYTES: usize = 8 << 20;
/// Messages waiting for one subscriber; beyond, its stream ends (the client reconnects and
/// resumes from the replay buffer).
pub const QUEUE_MESSAGES: usize = 2048;
/// Subscribers at once; more get 503.
pub const MAX_SUBSCRIBERS: usize = 256;
/// How long after the last subscriber left messages are still kept for a resume.
pub const RESUME_WINDOW: Duration = Duration::from_secs(120);
/// How often an idle stream sends a comment, so proxies and clients see it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// What a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Slave name.
    pub slave: Option<String>,
    /// Target UUID or name.
    pub target: Option<String>,
    /// Message kinds: `result` and the event kinds; empty means every kind.
    pub kinds: Vec<String>,
}

impl Filter {
    fn wants(&self, m: &Msg) -> bool {
        self.slave.as_ref().is_none_or(|s| *s == m.slave)
            && self
                .target
                .as_ref()
                .is_none_or(|t| *t == m.target_id || *t == m.target_name)
            && (self.kinds.is_empty() || self.kinds.contains(&m.kind))
    }
}

/// One message, its SSE frame made once for every subscriber.
#[derive(Debug)]
struct Msg {
    id: u64,
    kind: String,
    slave: String,
    target_id: String,
    target_name: String,
    frame: Vec<u8>,
}

/// The messages of one subscriber, and how to wake its connection.
struct Sub {
    filter: Filter,
    queue: Mutex<SubQueue>,
}

#[derive(Default)]
struct SubQueue {
    items: VecDeque<Arc<Msg>>,
    /// Fell behind: the stream ends after what it holds.
    overflowed: bool,
    /// Frames to send before the queue (a reset, the replay).
    first: Vec<u8>,
    waker: Option<Arc<dyn Fn() + Send + Sync>>,
}

struct Inner {
    next: u64,
    ring: VecDeque<Arc<Msg>>,
    ring_bytes: usize,
    subs: Vec<Arc<Sub>>,
    /// When the last subscriber left; `None` while there are some (or never were).
    idle_since: Option<Instant>,
}

/// Where stored results and events are published and subscribed to.
pub struct Hub {
    /// Tells this run's message IDs from an earlier run's.
    boot: String,
    inner: Mutex<Inner>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// [`MAX_SUBSCRIBERS`] are connected.
    Full,
}

/// What a subscription has for its connection now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Frames to send.
    Frames(Vec<u8>),
    /// Nothing yet: wait for the waker (or send a heartbeat).
    Empty,
    /// The subscriber fell behind: end the stream (the client reconnects and resumes).
    Ended,
}

impl Hub {
    /// An empty hub with a fresh boot ID.
    pub fn new() -> Hub {
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        Hub {
            boot: seed.iter().map(|b| format!("{b:02x}")).collect(),
            inner: Mutex::new(Inner {
                next: 1,
                ring: VecDeque::new(),
                ring_bytes: 0,
                subs: Vec::new(),
                idle_since: None,
            }),
        }
    }

    /// True when a message would reach someone: a subscriber is connected, or one left less
    /// than [`RESUME_WINDOW`] ago and may resume. When false, [`Hub::skip`] instead of
    /// making the message.
    pub fn wanted(&self) -> bool {
        let inner = lock(&self.inner);
        !inner.subs.is_empty()
            || inner
                .idle_since
                .is_some_and(|t| t.elapsed() < RESUME_WINDOW)
    }

    /// Counts a message nobody wanted, so a late resume knows it missed it.
    pub fn skip(&self) {
        let mut inner = lock(&self.inner);
        inner.next += 1;
        inner.ring.clear();
        inner.ring_bytes = 0;
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        lock(&self.inner).subs.len()
    }

    /// Publishes a stored result (at ordering key `key`), as `/api/v1/results` shows it.
    pub fn result(&self, r: &NewResult, key: i64, received_at: i64) {
        if !self.wanted() {
            return self.skip();
        }
        let view = StoredResult::of_new(r, key, received_at);
        let data = serde_json::to_string(&view).unwrap_or_default();
        self.publish(
            "result",
            &r.slave,
            &r.target_uuid,
            &r.target_name,
            "result",
            &data,
        );
    }

    /// Publishes the state of an on-demand measurement (`GET /api/v1/measurements/{id}`'s
    /// JSON), as kind `measurement`.
    pub fn measurement(&self, view: &serde_json::Value) {
        if !self.wanted() {
            return self.skip();
        }
        self.publish(
            "measurement",
            "",
            crate::master::measure::ON_DEMAND,
            view["target"].as_str().unwrap_or_default(),
            "measurement",
            &view.to_string(),
        );
    }

    /// Publishes a change event.
    pub fn event(&self, e: &EventRecord) {
        if !self.wanted() {
            return self.skip();
        }
        let data = event_json(e).to_string();
        self.publish(
            e.event.kind(),
            &e.slave,
            &e.target_id,
            &e.target_name,
            "event",
            &data,
        );
    }

    fn publish(
        &self,
        kind: &str,
        slave: &str,
        target_id: &str,
        target_name: &str,
        sse_event: &str,
        data: &str,
    ) {
        let mut inner = lock(&self.inner);
        let id = inner.next;
        inner.next += 1;
        let frame = format!(
            "id: {}.{id}\nevent: {sse_event}\ndata: {data}\n\n",
            self.boot
        );
        let msg = Arc::new(Msg {
            id,
            kind: kind.to_owned(),
            slave: slave.to_owned(),
            target_id: target_id.to_owned(),
            target_name: target_name.to_owned(),
            frame: frame.into_bytes(),
        });
        inner.ring_bytes += msg.frame.len();
        inner.ring.push_back(msg.clone());
        while inner.ring.len() > RING_MESSAGES || inner.ring_bytes > RING_BYTES {
            if let Some(old) = inner.ring.pop_front() {
                inner.ring_bytes -= old.frame.len();
            }
        }
        for sub in &inner.subs {
            if !sub.filter.wants(&msg) {
                continue;
            }
            let mut q = lock(&sub.queue);
            if q.overflowed {
                continue;
            }
            if q.items.len() >= QUEUE_MESSAGES {
                q.overflowed = true;
            } else {
                q.items.push_back(msg.clone());
            }
            if let Some(w) = &q.waker {
                w();
            }
        }
    }

    /// A new subscriber with `filter`. With `last_id` (a `Last-Event-ID` this hub handed
    /// out) it first gets the messages after that one still in the replay buffer; when some
    /// are no longer there (or the ID is from an earlier run) it gets a `reset` event first,
    /// saying that it missed some and should reload what it shows.
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
        last_id: Option<&str>,
    ) -> Result<Subscription, Refused> {
        let mut inner = lock(&self.inner);
        if inner.subs.len() >= MAX_SUBSCRIBERS {
            return Err(Refused::Full);
        }
        let mut first =
            format!("retry: 2000\n: dist-traceroute stream {}\n\n", self.boot).into_bytes();
        if let Some(last) = last_id {
            let ours = last
                .trim()
                .split_once('.')
                .filter(|(boot, _)| *boot == self.boot)
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .filter(|n| *n < inner.next);
            let oldest = inner.ring.front().map_or(inner.next, |m| m.id);
            match ours {
                Some(n) if n + 1 >= oldest => {
                    for m in inner.ring.iter().filter(|m| m.id > n && filter.wants(m)) {
                        first.extend_from_slice(&m.frame);
                    }
                }
                _ => first.extend_from_slice(
                    format!(
                        "event: reset\ndata: {{\"reason\":\"messages since {} are no longer kept; reload\"}}\n\n",
                        last.chars()
                            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                            .take(40)
                            .collect::<String>()
                    )
                    .as_bytes(),
                ),
            }
        }
        let sub = Arc::new(Sub {
            filter,
            queue: Mutex::new(SubQueue {
                first,
                ..SubQueue::default()
            }),
        });
        inner.subs.push(sub.clone());
        inner.idle_since = None;
        Ok(Subscription {
            hub: self.clone(),
            sub,
        })
    }

    fn leave(&self, sub: &Arc<Sub>) {
        let mut inner = lock(&self.inner);
        inner.subs.retain(|s| !Arc::ptr_eq(s, sub));
        if inner.subs.is_empty() {
            inner.idle_since = Some(Instant::now());
        }
    }
}

/// One subscriber's end: the connection takes frames from it; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    sub: Arc<Sub>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subscription({:?})", self.sub.filter)
    }
}

/// Most bytes handed out by one [`Subscription::next`].
const MAX_TAKE: usize = 256 * 1024;

impl Subscription {
    /// Calls `wake` whenever a message arrives (from the publishing thread: keep it short).
    pub fn on_ready(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        lock(&self.sub.queue).waker = Some(wake);
    }

    /// What to send now.
    pub fn next(&self) -> Next {
        let mut q = lock(&self.sub.queue);
        let mut out = std::mem::take(&mut q.first);
        while out.len() < MAX_TAKE {
            match q.items.pop_front() {
                Some(m) => out.extend_from_slice(&m.frame),
                None => break,
            }
        }
        if !out.is_empty() {
            Next::Frames(out)
        } else if q.overflowed {
            Next::Ended
        } else {
            Next::Empty
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(&self.sub);
    }
}

/// A change event as the stream (and the webhook) tells it.
pub fn event_json(e: &EventRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    v["at"] = serde_json::Value::String(super::api::iso(e.at));
    v["message"] = serde_json::Value::String(super::alert::describe(e));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::analysis::Event;

    fn record(slave: &str, kind: Event) -> EventRecord {
        EventRecord {
            id: 1,
            at: 1_764_000_000_000,
            slave: slave.into(),
            target_id: "t-1".into(),
            target_name: "Google".into(),
            flow: 0,
            event: kind,
            from: None,
            to: None,
        }
    }

    fn frames(s: &Subscription) -> String {
        match s.next() {
            Next::Frames(f) => String::from_utf8(f).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn ids(text: &str) -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|l| l.split_once('.').unwrap().1.parse().unwrap())
            .collect()
    }

    #[test]
    fn subscribers_get_what_their_filter_names() {
        let hub = Arc::new(Hub::new());
        let all = hub.subscribe(Filter::default(), None).unwrap();
        let one = hub
            .subscribe(
                Filter {
                    slave: Some("s2".into()),
                    kinds: vec!["reachable".into()],
                    ..Filter::default()
                },
                None,
            )
            .unwrap();
        let by_name = hub
            .subscribe(
                Filter {
                    target: Some("Google".into()),
                    ..Filter::default()
                },
                None,
            )
            .unwrap();
        frames(&all);
        frames(&one);
        frames(&by_name);
        hub.event(&record("s1", Event::Reachable));
        hub.event(&record("s2", Event::Unreachable { results: 2 }));
        hub.event(&record("s2", Event::Reachable));
        assert_eq!(ids(&frames(&all)), vec![1, 2, 3]);
        let got = frames(&one);
        assert_eq!(ids(&got), vec![3]);
        assert!(got.contains("event: event\n"), "{got}");
        assert!(got.contains("\"kind\":\"reachable\""), "{got}");
        assert_eq!(ids(&frames(&by_name)), vec![1, 2, 3]);
        assert_eq!(all.next(), Next::Empty);
    }

    #[test]
    fn a_resume_replays_what_was_missed_or_says_it_cannot() {
        let hub = Arc::new(Hub::new());
        let first = hub.subscribe(Filter::default(), None).unwrap();
        for _ in 0..5 {
            hub.event(&record("s1", Event::Reachable));
        }
        let seen = frames(&first);
        let third = seen
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .nth(2)
            .unwrap()
            .to_owned();
        drop(first);
        // Gone for a moment, back with the third ID: the fourth and fifth come first.
        let again = hub.subscribe(Filter::default(), Some(&third)).unwrap();
        let replay = frames(&again);
        assert_eq!(ids(&replay), vec![4, 5]);
        assert!(!replay.contains("reset"));
        // An ID of another run, or garbage: a reset, then live messages.
        for bad in ["00000000.3", "nonsense", "1.999999999"] {
            let s = hub.subscribe(Filter::default(), Some(bad)).unwrap();
            let text = frames(&s);
            assert!(text.contains("event: reset\n"), "{bad}: {text}");
            assert!(ids(&text).is_empty());
        }
    }

    #[test]
    fn messages_nobody_could_see_are_counted_so_a_late_resume_resets() {
        let hub = Arc::new(Hub::new());
        let s = hub.subscribe(Filter::default(), None).unwrap();
        hub.event(&record("s1", Event::Reachable));
        let last = frames(&s)
            .lines()
            .find_map(|l| l.strip_prefix("id: "))
            .unwrap()
            .to_owned();
        drop(s);
        // Long after the last subscriber left, messages are skipped, not kept.
        lock(&hub.inner).idle_since = Some(Instant::now() - RESUME_WINDOW * 2);
        assert!(!hub.wanted());
        hub.event(&record("s1", Event::Reachable));
        let back = hub.subscribe(Filter::default(), Some(&last)).unwrap();
        assert!(frames(&back).contains("event: reset\n"));
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_ended_and_others_go_on() {
        let hub = Arc::new(Hub::new());
        let slow = hub.subscribe(Filter::default(), None).unwrap();
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        slow.on_ready(Arc::new(move || {
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        let fast = hub.subscribe(Filter::default(), None).unwrap();
        for _ in 0..QUEUE_MESSAGES + 10 {
            hub.event(&record("s1", Event::Reachable));
            let _ = fast.next();
        }
        assert!(woken.load(std::sync::atomic::Ordering::Relaxed) >= QUEUE_MESSAGES);
        let mut taken = 0;
        loop {
            match slow.next() {
                Next::Frames(f) => taken += ids(&String::from_utf8(f).unwrap()).len(),
                Next::Ended => break,
                Next::Empty => panic!("an overflowed stream ends"),
            }
        }
        assert_eq!(taken, QUEUE_MESSAGES);
        hub.event(&record("s1", Event::Reachable));
        assert!(matches!(fast.next(), Next::Frames(_)));
        assert_eq!(hub.subscribers(), 2);
        drop(slow);
        assert_eq!(hub.subscribers(), 1);
    }

    #[test]
    fn the_replay_buffer_stays_bounded() {
        let hub = Arc::new(Hub::new());
        let _s = hub.subscribe(Filter::default(), None).unwrap();
        for _ in 0..RING_MESSAGES + 100 {
            hub.event(&record("s1", Event::Reachable));
        }
        let inner = lock(&hub.inner);
        assert_eq!(inner.ring.len(), RING_MESSAGES);
        assert_eq!(inner.ring.front().unwrap().id, 101);
    }

    #[test]
    fn subscribers_are_capped() {
        let hub = Arc::new(Hub::new());
        let held: Vec<_> = (0..MAX_SUBSCRIBERS)
            .map(|_| hub.subscribe(Filter::default(), None).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe(Filter::default(), None).unwrap_err(),
            Refused::Full
        );
        drop(held);
        assert!(hub.subscribe(Filter::default(), None).is_ok());
    }
}
