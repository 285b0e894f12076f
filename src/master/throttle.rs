//! Failed-login throttling that an attacker cannot turn against a good client. Failures count
//! per (address, name) first: a misconfigured slave behind a NAT blocks only itself, not the
//! slaves sharing its address. An address is blocked as a whole when it fails for several
//! names (spraying) or very often; a name when many addresses fail for it. Neither of those
//! two blocks an address that has logged in as that name before (a known-good pair), so
//! anyone who knows a slave's name cannot lock it out, from elsewhere or from its own NAT.
//! IPv6 addresses count by /64. A blocked request is answered 429 without its password being
//! checked, so it costs the server almost nothing.

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

/// One name from one address: 5 failures a minute block that pair for 30 s, up to 15 min.
pub const BY_PAIR: Policy = Policy {
    max_failures: 5,
    window: Duration::from_secs(60),
    block: Duration::from_secs(30),
    max_block: Duration::from_secs(900),
};

/// An address as a whole: 30 failures a minute (or [`SPRAY_NAMES`] names among at least
/// [`SPRAY_FAILURES`] failures) block it for 30 s, up to 15 min, except for its known-good
/// pairs.
pub const BY_ADDRESS: Policy = Policy {
    max_failures: 30,
    window: Duration::from_secs(60),
    block: Duration::from_secs(30),
    max_block: Duration::from_secs(900),
};

/// Distinct names failing from one address within a minute that make it a sprayer.
pub const SPRAY_NAMES: usize = 3;
/// Failures that, with [`SPRAY_NAMES`] names among them, block the address.
pub const SPRAY_FAILURES: u32 = 5;

/// Name policy (slave or user), for many addresses trying one name: 20 a minute, 10 s up to
/// 5 min, except for the name's known-good addresses.
pub const BY_NAME: Policy = Policy {
    max_failures: 20,
    window: Duration::from_secs(60),
    block: Duration::from_secs(10),
    max_block: Duration::from_secs(300),
};

/// Most keys remembered; beyond it the stale ones are pruned, then the oldest.
const MAX_KEYS: usize = 100_000;
/// Most known-good pairs remembered.
const MAX_GOOD: usize = 100_000;
/// How long a good login keeps its pair known-good.
pub const GOOD_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest name kept as it is; a longer one, or one with other characters than the config
/// files allow in names, is kept as one shared "invalid name" key.
const MAX_NAME: usize = 64;

/// What kind of login a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Slave,
    User,
    Token,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pair(IpAddr, Kind, String),
    Addr(IpAddr),
    Name(Kind, String),
}

/// Who a login claims to be: its name is throttled besides its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// A slave name (`/config/`, results).
    Slave(&'a str),
    /// A user of the users file (HTTP Basic on a read, the dashboard's login).
    User(&'a str),
    /// A bearer token: no name, so only the address counts (a name key shared by every
    /// token would let anyone lock every script out).
    Token,
}

/// A name as the throttle keeps it: as it is when it could be a name of the config files,
/// else one marker for all invalid names (so a spray of random names costs one key).
fn kept_name(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        name.to_owned()
    } else {
        "\u{0}invalid".to_owned()
    }
}

impl Who<'_> {
    fn kind_name(self) -> (Kind, String) {
        match self {
            Who::Slave(n) => (Kind::Slave, kept_name(n)),
            Who::User(n) => (Kind::User, kept_name(n)),
            Who::Token => (Kind::Token, String::new()),
        }
    }

    /// The pair key, the address key, and the name key (none for a token).
    fn keys(self, addr: IpAddr) -> (Key, Key, Option<Key>) {
        let a = addr_key(addr);
        let (kind, name) = self.kind_name();
        let name_key = (kind != Kind::Token).then(|| Key::Name(kind, name.clone()));
        (Key::Pair(a, kind, name), Key::Addr(a), name_key)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    next_block: Duration,
    /// For an address: the distinct names that failed in this window (at most a few).
    names: Vec<(Kind, String)>,
}

impl Entry {
    fn new(policy: Policy, now: Instant) -> Entry {
        Entry {
            failures: 0,
            window_start: now,
            blocked_until: None,
            next_block: policy.block,
            names: Vec::new(),
        }
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        self.blocked_until.filter(|u| *u > now).map(|u| u - now)
    }
}

/// A failure that started a block: say it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStarted {
    /// What is blocked (a name from an address, an address, or a name).
    pub what: String,
    /// For how long.
    pub duration: Duration,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<Key, Entry>,
    /// (address, kind, name) pairs that logged in, and when they last did.
    good: HashMap<(IpAddr, Kind, String), Instant>,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct Throttle {
    state: Mutex<State>,
}

fn addr_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

fn policy_of(key: &Key) -> Policy {
    match key {
        Key::Pair(..) => BY_PAIR,
        Key::Addr(_) => BY_ADDRESS,
        Key::Name(..) => BY_NAME,
    }
}

fn describe(key: &Key) -> String {
    let kind = |k: &Kind| match k {
        Kind::Slave => "slave",
        Kind::User => "user",
        Kind::Token => "token",
    };
    let shown = |n: &str| {
        if n.starts_with('\u{0}') {
            "(an invalid name)".to_owned()
        } else {
            format!("'{}'", n.escape_debug())
        }
    };
    match key {
        Key::Pair(a, Kind::Token, _) => format!("bearer tokens from address {a}"),
        Key::Pair(a, k, n) => format!("{} {} from address {a}", kind(k), shown(n)),
        Key::Addr(a) => format!("address {a}"),
        Key::Name(k, n) => format!("{} name {}", kind(k), shown(n)),
    }
}

impl Throttle {
    /// A throttle with no history.
    pub fn new() -> Throttle {
        Throttle::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long until `who` may try again from `addr`, if it is blocked now: its own pair's
    /// block always counts; the address's and the name's only when the pair is not known-good.
    pub fn blocked(&self, addr: IpAddr, who: Who<'_>, now: Instant) -> Option<Duration> {
        let state = self.lock();
        let (pair, address, name) = who.keys(addr);
        let mut wait = state.keys.get(&pair).and_then(|e| e.blocked(now));
        let good = match &pair {
            Key::Pair(a, k, n) => state
                .good
                .get(&(*a, *k, n.clone()))
                .is_some_and(|t| now.saturating_duration_since(*t) < GOOD_FOR),
            _ => false,
        };
        if !good {
            for key in std::iter::once(&address).chain(name.as_ref()) {
                if let Some(left) = state.keys.get(key).and_then(|e| e.blocked(now)) {
                    wait = Some(wait.map_or(left, |w| w.max(left)));
                }
            }
        }
        wait
    }

    /// Records a failed login; returns the blocks it started.
    pub fn failure(&self, addr: IpAddr, who: Who<'_>, now: Instant) -> Vec<BlockStarted> {
        let mut state = self.lock();
        if state.keys.len() >= MAX_KEYS {
            prune(&mut state.keys, now);
        }
        let (pair, address, name) = who.keys(addr);
        let this_name = who.kind_name();
        let mut started = Vec::new();
        for key in [Some(pair), Some(address), name].into_iter().flatten() {
            let policy = policy_of(&key);
            let e = state
                .keys
                .entry(key.clone())
                .or_insert_with(|| Entry::new(policy, now));
            if now.duration_since(e.window_start) > policy.window {
                e.failures = 0;
                e.window_start = now;
                e.names.clear();
            }
            e.failures += 1;
            let mut over = e.failures >= policy.max_failures;
            if let Key::Addr(_) = key {
                if !e.names.contains(&this_name) && e.names.len() < SPRAY_NAMES {
                    e.names.push(this_name.clone());
                }
                over |= e.names.len() >= SPRAY_NAMES && e.failures >= SPRAY_FAILURES;
            }
            if over && e.blocked_until.is_none_or(|u| u <= now) {
                e.blocked_until = Some(now + e.next_block);
                started.push(BlockStarted {
                    what: describe(&key),
                    duration: e.next_block,
                });
                e.next_block = (e.next_block * 2).min(policy.max_block);
                e.failures = 0;
                e.window_start = now;
                e.names.clear();
            }
        }
        started
    }

    /// A good login of `who` from `addr`: the pair's failures are forgotten and the pair is
    /// known-good from now on (the address's and the name's own counts stay, so a good
    /// client cannot wash a sprayer sharing its address clean).
    pub fn success(&self, addr: IpAddr, who: Who<'_>, now: Instant) {
        let mut state = self.lock();
        let (pair, _, _) = who.keys(addr);
        state.keys.remove(&pair);
        if let Key::Pair(a, k, n) = pair {
            if state.good.len() >= MAX_GOOD {
                state
                    .good
                    .retain(|_, t| now.saturating_duration_since(*t) < GOOD_FOR);
                if state.good.len() >= MAX_GOOD {
                    let mut times: Vec<Instant> = state.good.values().copied().collect();
                    times.sort();
                    let cut = times[times.len() / 2];
                    state.good.retain(|_, t| *t > cut);
                }
            }
            state.good.insert((a, k, n), now);
        }
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
    fn one_name_from_one_address_is_blocked_after_a_burst_and_longer_next_time() {
        let t = Throttle::new();
        let now = Instant::now();
        for _ in 0..4 {
            assert!(t.failure(ip("192.0.2.1"), Who::Slave("a"), now).is_empty());
        }
        assert_eq!(t.blocked(ip("192.0.2.1"), Who::Slave("a"), now), None);
        let started = t.failure(ip("192.0.2.1"), Who::Slave("a"), now);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].what, "slave 'a' from address 192.0.2.1");
        assert_eq!(started[0].duration, Duration::from_secs(30));
        assert_eq!(
            t.blocked(ip("192.0.2.1"), Who::Slave("a"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            t.blocked(ip("192.0.2.1"), Who::Slave("b"), now),
            None,
            "another slave behind the same address is not punished"
        );
        assert_eq!(t.blocked(ip("192.0.2.2"), Who::Slave("a"), now), None);
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
    fn an_address_failing_for_several_names_is_blocked_except_for_its_good_pairs() {
        let t = Throttle::new();
        let now = Instant::now();
        let nat = ip("192.0.2.1");
        t.success(nat, Who::Slave("good"), now);
        let mut started = Vec::new();
        for name in ["x", "y", "z", "x", "y"] {
            started.extend(t.failure(nat, Who::Slave(name), now));
        }
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(started[0].what, "address 192.0.2.1");
        assert!(t.blocked(nat, Who::Slave("new"), now).is_some());
        assert!(t.blocked(nat, Who::User("alice"), now).is_some());
        assert_eq!(
            t.blocked(nat, Who::Slave("good"), now),
            None,
            "a slave that logged in from here before goes on"
        );
    }

    #[test]
    fn many_failures_of_one_name_from_one_address_also_block_the_address() {
        let t = Throttle::new();
        let now = Instant::now();
        let a = ip("192.0.2.9");
        // The pair blocks at 5; a client ignoring that keeps failing only while it is not
        // refused (a blocked request is not counted), so feed the address key directly.
        for i in 0..30 {
            t.failure(a, Who::Slave(&format!("n{}", i % 2)), now);
        }
        assert!(t.blocked(a, Who::Slave("other"), now).is_some());
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
            t.blocked(ip("2001:db8:0:1::1"), Who::Slave("a"), now)
                .is_none()
        );
    }

    #[test]
    fn a_name_sprayed_from_many_addresses_is_blocked_but_not_where_it_logged_in() {
        let t = Throttle::new();
        let now = Instant::now();
        let home = ip("203.0.113.1");
        t.success(home, Who::Slave("slave1"), now);
        for i in 0..20 {
            t.failure(ip(&format!("198.51.100.{i}")), Who::Slave("slave1"), now);
        }
        assert_eq!(
            t.blocked(ip("203.0.113.9"), Who::Slave("slave1"), now),
            Some(Duration::from_secs(10)),
            "a new address for the name waits"
        );
        assert_eq!(t.blocked(home, Who::Slave("slave1"), now), None);
        assert_eq!(
            t.blocked(ip("203.0.113.9"), Who::Slave("slave2"), now),
            None
        );
        // Known-good pairs are forgotten after a while.
        let much_later = now + GOOD_FOR + Duration::from_secs(1);
        for i in 0..20 {
            t.failure(
                ip(&format!("198.51.101.{i}")),
                Who::Slave("slave1"),
                much_later,
            );
        }
        assert!(t.blocked(home, Who::Slave("slave1"), much_later).is_some());
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
    }

    #[test]
    fn invalid_names_share_one_key_and_long_ones_are_not_kept() {
        let t = Throttle::new();
        let now = Instant::now();
        let long = "x".repeat(10_000);
        for i in 0..20 {
            let name = format!("{long}{i}");
            t.failure(ip(&format!("198.51.100.{i}")), Who::Slave(&name), now);
        }
        let state = t.lock();
        assert!(state.keys.keys().all(|k| match k {
            Key::Pair(_, _, n) | Key::Name(_, n) => n.len() <= MAX_NAME,
            Key::Addr(_) => true,
        }));
        assert_eq!(
            state
                .keys
                .keys()
                .filter(|k| matches!(k, Key::Name(..)))
                .count(),
            1
        );
    }

    #[test]
    fn success_clears_the_pair_and_old_failures_expire() {
        let t = Throttle::new();
        let now = Instant::now();
        for _ in 0..4 {
            t.failure(ip("192.0.2.1"), Who::Slave("a"), now);
        }
        t.success(ip("192.0.2.1"), Who::Slave("a"), now);
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
