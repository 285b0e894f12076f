//! The probe-rate cap: one token bucket shared by every trace of a [`super::Tracer`], so
//! a thousand concurrent traces cannot flood the local link or the routers' ICMP budgets.
//!
//! A probe that finds the bucket empty reserves the next free slot (the balance goes
//! negative) and sleeps until then, so waiting probes leave in the order they asked and
//! the rate holds however many threads send.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Probes per second a new tracer sends at most, all traces together.
pub const DEFAULT_PROBE_RATE: u32 = 1000;

/// Probes that may leave at once after a quiet spell, for a rate of `per_second`: a tenth
/// of a second's worth, at least 32 (one trace's first window of TTLs with 3 queries each
/// fits without waiting).
pub fn burst_for(per_second: u32) -> u32 {
    (per_second / 10).max(32)
}

/// A token bucket on a caller-supplied clock (so it is tested without sleeping).
#[derive(Debug)]
pub struct Bucket {
    /// Tokens per second; 0 means no cap.
    rate: u32,
    burst: f64,
    /// Tokens at `at`; negative while probes wait for slots already handed out.
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// A full bucket refilling at `per_second` (0: unlimited) holding at most `burst`.
    pub fn new(per_second: u32, burst: u32) -> Bucket {
        Bucket {
            rate: per_second,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            at: None,
        }
    }

    /// Takes one token at `now`; returns how long the caller must wait before sending.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = f64::from(self.rate);
        let now = self.at.map_or(now, |at| now.max(at));
        if let Some(at) = self.at {
            let refill = now.duration_since(at).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.at = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// The bucket behind a lock, as the tracer shares it between threads.
#[derive(Debug)]
pub struct Pacer {
    bucket: Mutex<Bucket>,
}

impl Pacer {
    /// A pacer at `per_second` probes (0: unlimited) with the default burst.
    pub fn new(per_second: u32) -> Pacer {
        Pacer {
            bucket: Mutex::new(Bucket::new(per_second, burst_for(per_second))),
        }
    }

    /// Replaces the cap; probes already waiting keep their slots.
    pub fn set(&self, per_second: u32) {
        *self.lock() = Bucket::new(per_second, burst_for(per_second));
    }

    /// The cap in probes per second (0: unlimited).
    pub fn rate(&self) -> u32 {
        self.lock().rate
    }

    /// Blocks until the next probe may leave.
    pub fn wait(&self) {
        let wait = self.lock().reserve(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // The bucket is plain numbers: still usable after a panic elsewhere.
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_leaves_at_once_then_slots_are_spaced_by_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 10);
        for _ in 0..10 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // The 11th..15th probe asked at the same instant wait 10, 20, ... 50 ms.
        for k in 1..=5u32 {
            let w = b.reserve(t0);
            let want = Duration::from_millis(10) * k;
            assert!(
                w.abs_diff(want) < Duration::from_micros(1),
                "{w:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn many_senders_average_the_rate() {
        // 1000 probes asked as fast as possible at 200/s (burst 32): the last leaves
        // after (1000 - 32) / 200 s.
        let t0 = Instant::now();
        let mut b = Bucket::new(200, burst_for(200));
        let last = (0..1000).map(|_| b.reserve(t0)).max().unwrap();
        let want = Duration::from_secs_f64(968.0 / 200.0);
        assert!(last.abs_diff(want) < Duration::from_millis(1), "{last:?}");
    }

    #[test]
    fn refills_while_idle_but_not_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 32);
        for _ in 0..32 {
            b.reserve(t0);
        }
        assert!(!b.reserve(t0).is_zero(), "empty");
        // An hour later the bucket holds 32 tokens again, not 3.6 million.
        let later = t0 + Duration::from_secs(3600);
        let free = (0..100).take_while(|_| b.reserve(later).is_zero()).count();
        assert_eq!(free, 32);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = Bucket::new(0, 1);
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| b.reserve(t0).is_zero()));
    }

    #[test]
    fn a_clock_going_backwards_does_not_refill() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = Bucket::new(10, 1);
        assert!(b.reserve(t0).is_zero());
        let w = b.reserve(t0 - Duration::from_millis(500));
        assert!(w.abs_diff(Duration::from_millis(100)) < Duration::from_micros(1));
    }
}
