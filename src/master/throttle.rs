//! Failed-login throttling per remote address (IPv6 by /64) and per login name (a slave's or a
//! reading user's): after a burst of failures the key is blocked for a while, doubling on
//! repeat; a blocked request is answered 429 at once, without checking the password, so it
//! costs the server almost nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a key gets blocked and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures within `window` that block.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// The first block's length; each further block doubles it.
    pub block: Duration,
    /// The longest block.
    pub max_block: Duration,
}

/// Address policy: 5 failures a minute block for 30 s, up to 15 min.
pub const BY_ADDRESS: Policy = Policy {
    max_failures: 5,
    window: Duration::from_secs(60),
    block: Duration::from_secs(30),
    max_block: Duration::from_secs(900),
};

/// Name policy (slave or user), looser since many addresses may try one name: 20 a minute,
/// 10 s up to 5 min.
pub const BY_NAME: Policy = Policy {
    max_failures: 20,
    window: Duration::from_secs(60),
    block: Duration::from_secs(10),
    max_block: Duration::from_secs(300),
};

/// Most keys remembered; beyond it the stale ones are pruned, then the oldest.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Name(String),
    User(String),
}

/// Who a login claims to be: its name is throttled besides its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// A slave name (`/config/`, results).
    Slave(&'a str),
    /// A user of the users file (HTTP Basic on a read).
    User(&'a str),
    /// A bearer token: no name, so only the address counts (a name key shared by every
    /// token would let anyone lock every script out).
    Token,
}

impl Who<'_> {
    fn keys(self, addr: IpAddr) -> Vec<Key> {
        let mut keys = vec![addr_key(addr)];
        match self {
            Who::Slave(name) => keys.push(Key::Name(name.to_owned())),
            Who::User(name) => keys.push(Key::User(name.to_owned())),
            Who::Token => {}
        }
        keys
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    next_block: Duration,
    refused: u64,
}

/// A failure that started a block: say it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStarted {
    /// What is blocked (address, slave name or user).
    pub what: String,
    /// For how long.
    pub duration: Duration,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct Throttle {
    keys: Mutex<HashMap<Key, Entry>>,
}

fn addr_key(addr: IpAddr) -> Key {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            Key::Addr(IpAddr::from(o))
        }
        v4 => Key::Addr(v4),
    }
}

fn policy_of(key: &Key) -> Policy {
    match key {
        Key::Addr(_) => BY_ADDRESS,
        Key::Name(_) | Key::User(_) => BY_NAME,
    }
}

impl Throttle {
    /// A throttle with no history.
    pub fn new() -> Throttle {
        Throttle::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long until `addr` or `who` may try again, if either is blocked now.
    pub fn blocked(&self, addr: IpAddr, who: Who<'_>, now: Instant) -> Option<Duration> {
        let mut keys = self.lock();
        let mut wait: Option<Duration> = None;
        for key in who.keys(addr) {
            if let Some(e) = keys.get_mut(&key)
                && let Some(until) = e.blocked_until
                && until > now
            {
                e.refused += 1;
                let left = until - now;
                wait = Some(wait.map_or(left, |w| w.max(left)));
            }
        }
        wait
    }

    /// Records a failed login; returns the blocks it started.
    pub fn failure(&self, addr: IpAddr, who: Who<'_>, now: Instant) -> Vec<BlockStarted> {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS {
            prune(&mut keys, now);
        }
        let mut started = Vec::new();
        for key in who.keys(addr) {
            let policy = policy_of(&key);
            let e = keys.entry(key.clone()).or_insert(Entry {
                failures: 0,
                window_start: now,
                blocked_until: None,
                next_block: policy.block,
                refused: 0,
            });
            if now.duration_since(e.window_start) > policy.window {
                e.failures = 0;
                e.window_start = now;
            }
            e.failures += 1;
            if e.failures >= policy.max_failures && e.blocked_until.is_none_or(|u| u <= now) {
                e.blocked_until = Some(now + e.next_block);
                started.push(BlockStarted {
                    what: match &key {
                        Key::Addr(a) => format!("address {a}"),
                        Key::Name(n) => format!("slave name '{}'", n.escape_debug()),
                        Key::User(n) => format!("user '{}'", n.escape_debug()),
                    },
                    duration: e.next_block,
                });
                e.next_block = (e.next_block * 2).min(policy.max_block);
                e.failures = 0;
                e.window_start = now;
            }
        }
        started
    }

    /// A good login from `addr` clears that address's history (not the name's).
    pub fn success(&self, addr: IpAddr) {
        self.lock().remove(&addr_key(addr));
    }
}

fn prune(keys: &mut HashMap<Key, Entry>, now: Instant) {
    keys.retain(|k, e| {
        let p = policy_of(k);
        e.blocked_until.is_some_and(|u| u > now) || now.duration_since(e.window_start) <= p.window
    });
    if keys.len() >= MAX_KEYS {
        // Still full of fresh keys: forget the oldest half.
        let mut starts: Vec<Instant> = keys.values().map(|e| e.window_start).collect();
        starts.sort();
        let cut = starts[starts.len() / 2];
        keys.retain(|_, e| e.window_start > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_blocked_after_a_burst_and_longer_next_time() {
        let t = Throttle::new();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(t.failure(ip("192.0.2.1"), Who::Slave("a"), now).is_empty());
        }
        assert_eq!(t.blocked(ip("192.0.2.1"), Who::Slave("a"), now), None);
        let started = t.failure(ip("192.0.2.1"), Who::Slave("a"), now);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].duration, Duration::from_secs(30));
        assert_eq!(
            t.blocked(ip("192.0.2.1"), Who::Slave("b"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            t.blocked(ip("192.0.2.2"), Who::Slave("b"), now),
            None,
            "other addresses are free"
        );
        let later = now + Duration::from_secs(31);
        assert_eq!(t.blocked(ip("192.0.2.1"), Who::Slave("a"), later), None);
        for _ in 0..5 {
            t.failure(ip("192.0.2.1"), Who::Slave("a"), later);
        }
        assert_eq!(
            t.blocked(ip("192.0.2.1"), Who::Slave("a"), later),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn ipv6_addresses_count_by_slash_64() {
        let t = Throttle::new();
        let now = Instant::now();
        for i in 0..5 {
            t.failure(ip(&format!("2001:db8::{i}")), Who::Slave("a"), now);
        }
        assert!(
            t.blocked(ip("2001:db8::ffff"), Who::Slave("a"), now)
                .is_some()
        );
        assert!(
            t.blocked(ip("2001:db8:0:1::1"), Who::Slave("zz"), now)
                .is_none()
        );
    }

    #[test]
    fn a_name_is_blocked_when_many_addresses_try_it() {
        let t = Throttle::new();
        let now = Instant::now();
        for i in 0..20 {
            t.failure(ip(&format!("198.51.100.{i}")), Who::Slave("slave1"), now);
        }
        assert_eq!(
            t.blocked(ip("203.0.113.9"), Who::Slave("slave1"), now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            t.blocked(ip("203.0.113.9"), Who::Slave("slave2"), now),
            None
        );
    }

    #[test]
    fn users_slaves_and_tokens_are_counted_apart() {
        let t = Throttle::new();
        let now = Instant::now();
        for i in 0..20 {
            t.failure(ip(&format!("198.51.100.{i}")), Who::User("alice"), now);
        }
        let elsewhere = ip("203.0.113.9");
        assert!(t.blocked(elsewhere, Who::User("alice"), now).is_some());
        assert_eq!(t.blocked(elsewhere, Who::Slave("alice"), now), None);
        // Wrong tokens from many addresses block no one else: a token has no name.
        for i in 0..40 {
            t.failure(ip(&format!("198.51.101.{i}")), Who::Token, now);
        }
        assert_eq!(t.blocked(elsewhere, Who::Token, now), None);
        for _ in 0..5 {
            t.failure(elsewhere, Who::Token, now);
        }
        assert!(t.blocked(elsewhere, Who::Token, now).is_some());
        assert!(
            t.blocked(elsewhere, Who::Slave("slave1"), now).is_some(),
            "the address is blocked for every kind of login"
        );
    }

    #[test]
    fn success_clears_the_address_and_old_failures_expire() {
        let t = Throttle::new();
        let now = Instant::now();
        for _ in 0..4 {
            t.failure(ip("192.0.2.1"), Who::Slave("a"), now);
        }
        t.success(ip("192.0.2.1"));
        assert!(t.failure(ip("192.0.2.1"), Who::Slave("a"), now).is_empty());
        let much_later = now + Duration::from_secs(120);
        for _ in 0..4 {
            assert!(
                t.failure(ip("192.0.2.1"), Who::Slave("a"), much_later)
                    .is_empty()
            );
        }
    }
}
