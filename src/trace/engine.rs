//! The TTL logic of one trace: which probes go out, when a hop is finished, when the
//! trace stops. It talks to the network only through [`Network`], so it is tested below
//! with a scripted fake and no root.

use super::{Error, Hop, Probe, ReplyKind, TraceOptions};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A probe's sequence number: what a reply is matched on. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Seq(pub u16);

/// A time-to-live / hop limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(pub u8);

/// A reply, already matched to this trace by its flow identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The probe it answers.
    pub seq: Seq,
    /// Who answered.
    pub from: IpAddr,
    /// What it said.
    pub kind: ReplyKind,
    /// Reply size in bytes.
    pub size: u16,
    /// The TTL (hop limit) the reply arrived with, when known.
    pub ttl: Option<u8>,
    /// The TTL left in the probe as an ICMP error quotes it (not for echo replies or TCP).
    pub quoted_ttl: Option<u8>,
    /// The MPLS labels the error reports (RFC 4950).
    pub mpls: super::wire::mpls::LabelStack,
    /// When it arrived (monotonic clock).
    pub received: Instant,
}

/// What the engine needs from the network: send one probe, wait for one reply.
pub trait Network {
    /// The current time on the clock the other two methods use.
    fn now(&self) -> Instant;
    /// Sends one probe and returns the time read just before it left (a reply can
    /// arrive before the send call returns).
    fn send(&mut self, ttl: Ttl, seq: Seq) -> Result<Instant, Error>;
    /// Waits until `deadline` at most for a reply to one of this trace's probes.
    fn recv(&mut self, deadline: Instant) -> Result<Option<Response>, Error>;
    /// Returns once every reply that reached this host by now can be had from `recv`
    /// without waiting (a receive thread may still hold some); called before the trace
    /// gives up on what is unanswered.
    fn settle(&mut self) {}
}

/// A silent hop is given up once probes beyond it have answered and this many times the
/// slowest of their RTTs has passed (traceroute's `-w MAX,HERE,NEAR` "near" factor).
const NEAR_FACTOR: u32 = 10;
/// A probe whose hop already answered another probe is given up after this many times
/// that hop's RTT (traceroute's "here" factor).
const HERE_FACTOR: u32 = 3;
/// ... but never sooner than this: on a path of microsecond RTTs (a data centre, a lab)
/// a router that answers from its slow path a few hundred microseconds late is still
/// heard.
const NEAR_FLOOR: Duration = Duration::from_micros(500);
/// Each retry round waits this many times longer for a hop than the round before: a
/// router that answers from a slow control plane, much later than the hops beyond it, is
/// given up in the first round but heard in the next, while a silent hop costs little.
const RETRY_PATIENCE: u32 = 10;
/// TTLs in flight beyond the highest router that answered. Sending all `max_hops` at
/// once would also hit the destination (or the router that says "unreachable") with
/// every TTL beyond it: 25 ICMP errors for a 5-hop path, enough to exhaust a Linux
/// router's default ICMP budget (burst 50) in two traces, and then nobody's traces get
/// answers. Probes within the window are still all in flight together.
const WINDOW: u8 = 8;

/// A destination that answered at TTL d while d - 1 stayed silent may be at d - 1, its
/// answer there lost. Without a quoted TTL to tell, d - 1 is probed again: once when
/// nothing else says where the end is, up to this many times while its reply's TTL says it
/// is nearer than d, never when that says it is at d.
const CONFIRM_ROUNDS: usize = 3;

/// What a finished run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Hops from TTL 1 to the destination or to the end of the trailing gap.
    pub hops: Vec<Hop>,
    /// True when the destination itself answered.
    pub reached: bool,
}

struct Sent {
    ttl: u8,
    sent: Instant,
    reply: Option<Response>,
}

/// One trace's state between sending and deciding.
struct Run<'o> {
    opts: &'o TraceOptions,
    sent: Vec<Sent>,
    by_seq: HashMap<u16, usize>,
    next_seq: u16,
    /// Highest TTL probed so far.
    sent_up_to: u8,
    /// How many times the adaptive waits are stretched: 1 in the first round, ten times
    /// more in each retry round (see [`RETRY_PATIENCE`]).
    patience: u32,
}

/// Checks the options the engine depends on; each rule names the field.
pub fn validate(opts: &TraceOptions) -> Result<(), Error> {
    if opts.max_hops == 0 {
        return Err(Error::InvalidOptions(
            "max_hops must be at least 1, got 0".into(),
        ));
    }
    if opts.first_ttl == 0 || opts.first_ttl > opts.max_hops {
        return Err(Error::InvalidOptions(format!(
            "first_ttl must be 1..max_hops ({}), got {}",
            opts.max_hops, opts.first_ttl
        )));
    }
    if opts.queries == 0 {
        return Err(Error::InvalidOptions(
            "queries must be at least 1, got 0".into(),
        ));
    }
    if opts.timeout.is_zero() {
        return Err(Error::InvalidOptions(
            "timeout must be positive, got 0".into(),
        ));
    }
    Ok(())
}

/// Runs one trace over `net`; sequence numbers start at `first_seq`.
pub fn run<N: Network>(net: &mut N, opts: &TraceOptions, first_seq: u16) -> Result<Outcome, Error> {
    validate(opts)?;
    let mut run = Run {
        opts,
        sent: Vec::new(),
        by_seq: HashMap::new(),
        next_seq: first_seq,
        sent_up_to: 0,
        patience: 1,
    };
    // A window of TTLs goes out at once and slides as routers answer (see WINDOW), so
    // the trace takes about one timeout, not one per hop.
    let mut todo: Vec<u8> = (opts.first_ttl..=run.window_end()).collect();
    run.sent_up_to = run.window_end();
    for round in 0..=opts.retries {
        run.patience = RETRY_PATIENCE.saturating_pow(u32::from(round));
        for &ttl in &todo {
            for _ in 0..opts.queries {
                run.send(net, ttl)?;
            }
        }
        run.wait_round(net)?;
        todo = run.unanswered();
        if todo.is_empty() || round == opts.retries {
            break;
        }
    }
    // Loss must not lengthen the path (see CONFIRM_ROUNDS).
    for _ in 0..CONFIRM_ROUNDS {
        let Some(d) = run.terminal_ttl() else { break };
        let tried = run.sent.iter().filter(|s| s.ttl == d - 1).count();
        let by_ttl = run.distance_by_reply_ttl(d);
        if d <= opts.first_ttl
            || run.answered(d - 1)
            || run.end_is_exact(d)
            || by_ttl.is_some_and(|e| e >= d)
            || (by_ttl.is_none() && tried >= 2 * usize::from(opts.queries))
        {
            break;
        }
        for _ in 0..opts.queries {
            run.send(net, d - 1)?;
        }
        run.wait_round(net)?;
    }
    Ok(run.outcome())
}

/// Where a reply puts the end of the path: `None` for a router's time exceeded; else the
/// probe's TTL, or less when the error quotes TTL left over (the probe got to the end with
/// `q` to spare, so the end is `q - 1` hops nearer: a lower TTL's answer was lost).
fn end_at(s: &Sent) -> Option<u8> {
    let r = s.reply?;
    if r.kind == ReplyKind::TimeExceeded {
        return None;
    }
    match r.quoted_ttl {
        Some(q) if q > 1 && q <= s.ttl => Some(s.ttl - q + 1),
        _ => Some(s.ttl),
    }
}

impl Run<'_> {
    fn send<N: Network>(&mut self, net: &mut N, ttl: u8) -> Result<(), Error> {
        if self.sent.len() >= usize::from(u16::MAX) - 1 {
            // Sequence numbers would repeat and replies could not be told apart.
            return Ok(());
        }
        let seq = self.next_seq.max(1);
        self.next_seq = seq.wrapping_add(1);
        let sent = net.send(Ttl(ttl), Seq(seq))?;
        self.by_seq.insert(seq, self.sent.len());
        self.sent.push(Sent {
            ttl,
            sent,
            reply: None,
        });
        Ok(())
    }

    /// Receives until every hop that matters is answered or given up.
    fn wait_round<N: Network>(&mut self, net: &mut N) -> Result<(), Error> {
        loop {
            let now = net.now();
            // With nothing left to wait for, still take the replies already queued: while
            // sends wait for the probe-rate cap, answers that came in time sit unread, and
            // a deadline that passed meanwhile must not turn them into silent hops
            // (`record` judges each by its arrival stamp, not by when it is read).
            let wake = self.pending_until(now);
            if wake.is_none() {
                net.settle();
            }
            match net.recv(wake.unwrap_or(now))? {
                Some(r) => {
                    self.record(r);
                    // Take every reply already waiting before sliding the window: one of
                    // them may be the destination's, and then no TTL beyond it is sent.
                    let now = net.now();
                    while let Some(r) = net.recv(now)? {
                        self.record(r);
                    }
                    self.slide(net)?;
                }
                None if wake.is_none() => return Ok(()),
                None => {}
            }
        }
    }

    /// The highest TTL worth having in flight now.
    fn window_end(&self) -> u8 {
        let window = WINDOW.max(self.opts.gap_limit);
        let routers = self
            .sent
            .iter()
            .filter(|s| s.reply.is_some_and(|r| r.kind == ReplyKind::TimeExceeded))
            .map(|s| s.ttl)
            .max()
            .unwrap_or(self.opts.first_ttl - 1);
        let end = routers.saturating_add(window).min(self.opts.max_hops);
        match self.terminal_ttl() {
            Some(d) => end.min(d),
            None => end,
        }
    }

    /// Sends the TTLs the window has moved over since the last reply.
    fn slide<N: Network>(&mut self, net: &mut N) -> Result<(), Error> {
        let end = self.window_end();
        while self.sent_up_to < end {
            self.sent_up_to += 1;
            for _ in 0..self.opts.queries {
                self.send(net, self.sent_up_to)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, r: Response) {
        let Some(&i) = self.by_seq.get(&r.seq.0) else {
            return;
        };
        let s = &mut self.sent[i];
        // A duplicate changes nothing: the first answer is the one that was timed.
        if s.reply.is_some() {
            return;
        }
        if r.received.saturating_duration_since(s.sent) > self.opts.timeout {
            return;
        }
        s.reply = Some(r);
    }

    fn answered(&self, ttl: u8) -> bool {
        self.sent.iter().any(|s| s.ttl == ttl && s.reply.is_some())
    }

    /// The lowest TTL whose reply ends the path (destination or unreachable), placed by the
    /// quoted TTL where the reply has one.
    fn terminal_ttl(&self) -> Option<u8> {
        self.sent.iter().filter_map(end_at).min()
    }

    /// How far the end is by the TTL its reply at `d` arrived with: the hops it crossed back
    /// (from the nearest usual initial TTL, 64, 128 or 255) plus one. A guess (the way back
    /// may be shorter or longer than the way there), used to tell whether to look again.
    fn distance_by_reply_ttl(&self, d: u8) -> Option<u8> {
        self.sent
            .iter()
            .filter(|s| s.ttl == d && end_at(s) == Some(d))
            .filter_map(|s| s.reply?.ttl)
            .map(|r| {
                let initial: u16 = match r {
                    0..=64 => 64,
                    65..=128 => 128,
                    _ => 255,
                };
                (initial - u16::from(r) + 1).min(255) as u8
            })
            .max()
    }

    /// True when a reply at `d` quotes exactly one TTL left: the end is at `d`, not nearer.
    fn end_is_exact(&self, d: u8) -> bool {
        self.sent.iter().any(|s| {
            s.ttl == d
                && s.reply
                    .is_some_and(|r| r.kind != ReplyKind::TimeExceeded && r.quoted_ttl == Some(1))
        })
    }

    /// The highest TTL that has to be settled before the trace can end.
    fn horizon(&self) -> u8 {
        if let Some(d) = self.terminal_ttl() {
            return d;
        }
        let last = self
            .sent
            .iter()
            .filter(|s| s.reply.is_some())
            .map(|s| s.ttl)
            .max();
        let last = last.unwrap_or(self.opts.first_ttl - 1);
        last.saturating_add(self.opts.gap_limit)
            .min(self.opts.max_hops)
    }

    /// When an unanswered probe stops being worth waiting for: after a small multiple of
    /// the RTT of its own hop's other probes, or of the hops beyond it, whichever is
    /// longer; with neither, after the full timeout.
    fn give_up_at(&self, s: &Sent, limit: u8) -> Instant {
        let slowest = |ttls: &dyn Fn(u8) -> bool| {
            self.sent
                .iter()
                .filter(|o| ttls(o.ttl))
                .filter_map(|o| {
                    o.reply
                        .map(|r| r.received.saturating_duration_since(o.sent))
                })
                .max()
        };
        let here = slowest(&|t| t == s.ttl).map(|rtt| rtt * HERE_FACTOR);
        let near = slowest(&|t| t > s.ttl && t <= limit).map(|rtt| rtt * NEAR_FACTOR);
        let wait = match here.max(near) {
            Some(w) => w
                .max(NEAR_FLOOR)
                .checked_mul(self.patience)
                .unwrap_or(self.opts.timeout)
                .min(self.opts.timeout),
            None => self.opts.timeout,
        };
        s.sent + wait
    }

    /// `None` when every hop up to the horizon is settled, else the next time to look again.
    fn pending_until(&self, now: Instant) -> Option<Instant> {
        let limit = self.horizon();
        self.sent
            .iter()
            .filter(|s| s.ttl <= limit && s.reply.is_none())
            .map(|s| self.give_up_at(s, limit))
            .filter(|&t| t > now)
            .min()
    }

    /// Hops below the end of the path with no answer yet, to probe again.
    fn unanswered(&self) -> Vec<u8> {
        let limit = match self.terminal_ttl() {
            Some(d) => d - 1,
            None => self.horizon(),
        };
        (self.opts.first_ttl..=limit)
            .filter(|&t| !self.answered(t))
            .collect()
    }

    fn outcome(&self) -> Outcome {
        // Where the replies put the end; the end moves down from there while the TTL below
        // is still silent and the end's reply TTL puts it nearer: the end's answers there
        // were lost, or a re-probe's came too late (a router silent just before the
        // destination would have to be on a way back shorter than the way there).
        let upto = self.horizon();
        let mut last = upto;
        if self.terminal_ttl() == Some(upto) && !self.end_is_exact(upto) {
            let by_ttl = self.distance_by_reply_ttl(upto);
            while last > self.opts.first_ttl
                && !self.answered(last - 1)
                && by_ttl.is_some_and(|e| e < last)
            {
                last -= 1;
            }
        }
        let probe = |s: &Sent| match s.reply {
            Some(r) => Probe {
                // On a fast path the reply can be stamped a hair before the send time was
                // read; that is an RTT of zero, not an error.
                rtt: Some(r.received.saturating_duration_since(s.sent)),
                from: Some(r.from),
                size: r.size,
                reply_ttl: r.ttl,
                kind: Some(r.kind),
                mpls: r.mpls.labels().to_vec(),
            },
            None => Probe {
                rtt: None,
                from: None,
                size: 0,
                reply_ttl: None,
                kind: None,
                mpls: Vec::new(),
            },
        };
        // Probes sent with a higher TTL that the quote places at the end: they answer for
        // the end's own lost probes.
        let mut stand_ins = self
            .sent
            .iter()
            .filter(|s| s.ttl > last && end_at(s).is_some_and(|e| e >= last && e <= upto))
            .map(probe);
        let hops: Vec<Hop> = (self.opts.first_ttl..=last)
            .map(|ttl| {
                let mut probes: Vec<Probe> = self
                    .sent
                    .iter()
                    .filter(|s| s.ttl == ttl)
                    .map(probe)
                    .collect();
                if ttl == last {
                    for p in probes.iter_mut().filter(|p| p.from.is_none()) {
                        if let Some(x) = stand_ins.next() {
                            *p = x;
                        }
                    }
                }
                Hop {
                    ttl,
                    addr: probes.iter().find_map(|p| p.from),
                    host: None,
                    probes,
                }
            })
            .collect();
        let reached = hops
            .last()
            .is_some_and(|h| h.probes.iter().any(|p| p.kind == Some(ReplyKind::Reached)));
        Outcome { hops, reached }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;

    /// What the fake network does with the n-th probe at one TTL.
    #[derive(Clone, Copy)]
    enum Answer {
        Silent,
        /// Reply from 10.0.0.x after this many microseconds.
        From(u8, u64, ReplyKind),
    }

    /// A scripted network on a virtual clock: replies are queued when probes are sent.
    struct Fake {
        start: Instant,
        now: Duration,
        script: HashMap<u8, VecDeque<Answer>>,
        default: Answer,
        queue: Vec<(Duration, Response)>,
        sent: Vec<(u8, u16)>,
        /// Extra replies delivered at given times (foreign, duplicate, spoofed).
        injected: Vec<(Duration, Response)>,
        /// Virtual time one send takes (a rate cap makes sends wait).
        send_cost: Duration,
        /// Replies a receive thread still holds: `recv` sees them only after `settle`.
        held: Vec<(Duration, Response)>,
        settled: usize,
        /// How far the destination really is (its replies' TTL is 64 less the routers on
        /// the way back); `None`: as far as each probe's TTL.
        end: Option<u8>,
        /// The destination's errors quote the TTL left, as a real one's do for UDP (not for
        /// ICMP echo or TCP).
        quotes: bool,
        /// Replies carry the TTL they arrived with (not in the error-queue mode).
        reply_ttls: bool,
    }

    impl Fake {
        fn new(script: &[(u8, &[Answer])], default: Answer) -> Fake {
            Fake {
                start: Instant::now(),
                now: Duration::ZERO,
                script: script
                    .iter()
                    .map(|(t, a)| (*t, a.iter().copied().collect()))
                    .collect(),
                default,
                queue: Vec::new(),
                sent: Vec::new(),
                injected: Vec::new(),
                send_cost: Duration::from_micros(1),
                held: Vec::new(),
                settled: 0,
                end: None,
                quotes: false,
                reply_ttls: true,
            }
        }

        /// A path of `n` routers answering after ttl*100µs, then a destination.
        fn chain(n: u8) -> Fake {
            let mut script = Vec::new();
            for t in 1..=n {
                script.push((
                    t,
                    Answer::From(t, 100 * u64::from(t), ReplyKind::TimeExceeded),
                ));
            }
            let dest = Answer::From(100, 100 * u64::from(n + 1), ReplyKind::Reached);
            let mut f = Fake::new(&[], dest);
            for (t, a) in script {
                f.script.insert(t, VecDeque::from(vec![a; 8]));
            }
            f.end = Some(n + 1);
            f
        }

        fn elapsed(&self) -> Duration {
            self.now
        }
    }

    fn addr(x: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, x))
    }

    impl Network for Fake {
        fn now(&self) -> Instant {
            self.start + self.now
        }

        fn send(&mut self, ttl: Ttl, seq: Seq) -> Result<Instant, Error> {
            // Sending takes a microsecond of virtual time so send times differ (or longer,
            // as when waiting for the rate cap); the probe leaves at the end of it.
            self.now += self.send_cost;
            self.sent.push((ttl.0, seq.0));
            let answer = match self.script.get_mut(&ttl.0) {
                Some(q) => q.pop_front().unwrap_or(Answer::Silent),
                None => self.default,
            };
            if let Answer::From(x, us, kind) = answer {
                let at = self.now + Duration::from_micros(us);
                let r = Response {
                    seq,
                    from: addr(x),
                    kind,
                    size: 56,
                    ttl: self.reply_ttls.then(|| match kind {
                        ReplyKind::TimeExceeded => 65 - ttl.0,
                        _ => 65 - self.end.unwrap_or(ttl.0),
                    }),
                    quoted_ttl: match kind {
                        ReplyKind::TimeExceeded => Some(1),
                        _ => self.quotes.then(|| ttl.0 + 1 - self.end.unwrap_or(ttl.0)),
                    },
                    mpls: Default::default(),
                    received: self.start + at,
                };
                self.queue.push((at, r));
            }
            Ok(self.start + self.now)
        }

        fn settle(&mut self) {
            self.settled += 1;
            self.queue.append(&mut self.held);
        }

        fn recv(&mut self, deadline: Instant) -> Result<Option<Response>, Error> {
            self.queue.append(&mut self.injected);
            self.queue.sort_by_key(|(t, _)| *t);
            let limit = deadline - self.start;
            if let Some(&(t, r)) = self.queue.first()
                && t <= limit
            {
                self.queue.remove(0);
                self.now = self.now.max(t);
                return Ok(Some(r));
            }
            self.now = self.now.max(limit);
            Ok(None)
        }
    }

    fn opts() -> TraceOptions {
        TraceOptions {
            max_hops: 30,
            retries: 1,
            gap_limit: 5,
            ..TraceOptions::default()
        }
    }

    /// Asserts that the run took less than `ms` of virtual time.
    fn took_under(net: &Fake, ms: u64) {
        let e = net.elapsed();
        assert!(e < Duration::from_millis(ms), "took {e:?}");
    }

    fn addrs(o: &Outcome) -> Vec<Option<IpAddr>> {
        o.hops.iter().map(|h| h.addr).collect()
    }

    #[test]
    fn reaches_destination_and_trims_beyond() {
        let mut net = Fake::chain(6);
        let o = run(&mut net, &opts(), 1000).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7);
        let want: Vec<_> = (1..=6)
            .map(|t| Some(addr(t)))
            .chain([Some(addr(100))])
            .collect();
        assert_eq!(addrs(&o), want);
        // TTLs went out together, so the trace ends long before one timeout per hop.
        took_under(&net, 5);
        assert_eq!(o.hops[2].probes[0].rtt, Some(Duration::from_micros(300)));
        // Every hop answered: no retry round. The window slid to 6 + WINDOW and no
        // further: not all 30 TTLs were spent on the destination.
        assert_eq!(net.sent.len(), 6 + usize::from(WINDOW));
        let first: Vec<u8> = net.sent[..8].iter().map(|s| s.0).collect();
        assert_eq!(
            first,
            (1..=8).collect::<Vec<u8>>(),
            "the first window goes out at once"
        );
    }

    /// A chain of 6 routers and the destination at 7 whose answer to every TTL-7 probe is
    /// lost; the TTL-8 probes reach it, one TTL to spare.
    fn lossy_end(quoting: bool) -> Fake {
        let mut net = Fake::chain(6);
        let dest = Answer::From(100, 700, ReplyKind::Reached);
        net.script
            .insert(7, VecDeque::from(vec![Answer::Silent, dest, dest]));
        net.quotes = quoting;
        net
    }

    #[test]
    fn a_lost_answer_of_the_destination_does_not_lengthen_the_path() {
        let no_retry = TraceOptions {
            retries: 0,
            ..opts()
        };
        // The quote says where the destination is: its row gets the TTL-8 answer, no more
        // probes go out for it.
        let mut net = lossy_end(true);
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7, "{:?}", addrs(&o));
        assert_eq!(o.hops[6].addr, Some(addr(100)));
        assert_eq!(o.hops[6].probes.len(), 1);
        assert_eq!(o.hops[6].probes[0].kind, Some(ReplyKind::Reached));
        assert_eq!(net.sent.iter().filter(|s| s.0 == 7).count(), 1);
        // Without a quote (ICMP echo, TCP) TTL 7 is probed once more and answers.
        let mut net = lossy_end(false);
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7, "{:?}", addrs(&o));
        assert_eq!(o.hops[6].addr, Some(addr(100)));
        assert_eq!(net.sent.iter().filter(|s| s.0 == 7).count(), 2);
        // Every answer at 7 lost: probed three more times, then placed by its reply's TTL.
        let mut net = lossy_end(false);
        net.script
            .insert(7, VecDeque::from(vec![Answer::Silent; 8]));
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7, "{:?}", addrs(&o));
        assert_eq!(o.hops[6].addr, Some(addr(100)));
        assert_eq!(
            net.sent.iter().filter(|s| s.0 == 7).count(),
            1 + CONFIRM_ROUNDS
        );
        // A router before the destination that never answers, the destination's reply TTL
        // saying it is at 7: no more probes, the silent hop stays.
        let mut net = Fake::chain(6);
        net.script
            .insert(6, VecDeque::from(vec![Answer::Silent; 8]));
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7);
        assert_eq!(o.hops[5].addr, None);
        assert_eq!(net.sent.iter().filter(|s| s.0 == 6).count(), 1);
        // Without reply TTLs (the error-queue mode) it is probed once more, then left silent.
        let mut net = Fake::chain(6);
        net.reply_ttls = false;
        net.script
            .insert(6, VecDeque::from(vec![Answer::Silent; 8]));
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert_eq!(o.hops.len(), 7);
        assert_eq!(o.hops[5].addr, None);
        assert_eq!(net.sent.iter().filter(|s| s.0 == 6).count(), 2);
        took_under(&net, 20);
        // A quote of exactly one TTL left settles it: no second probe for the silent router.
        let mut net = Fake::chain(6);
        net.quotes = true;
        net.script
            .insert(6, VecDeque::from(vec![Answer::Silent; 8]));
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert_eq!(o.hops.len(), 7);
        assert_eq!(net.sent.iter().filter(|s| s.0 == 6).count(), 1);
    }

    /// The destination at 6 whose answers at 6 and 7 are all lost (a re-probe's answer can
    /// come too late to count): its TTL-8 answer's reply TTL puts it back at 6, not at 7.
    #[test]
    fn an_end_two_ttls_too_far_moves_all_the_way_back() {
        let no_retry = TraceOptions {
            retries: 0,
            ..opts()
        };
        let mut net = Fake::chain(5);
        for ttl in [6, 7] {
            net.script
                .insert(ttl, VecDeque::from(vec![Answer::Silent; 8]));
        }
        let o = run(&mut net, &no_retry, 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 6, "{:?}", addrs(&o));
        assert_eq!(o.hops[5].addr, Some(addr(100)));
        assert!(o.hops[..5].iter().all(|h| h.addr.is_some()));
    }

    #[test]
    fn silent_hop_is_none_and_given_up_early_then_retried() {
        let mut net = Fake::chain(6);
        net.script
            .insert(3, VecDeque::from(vec![Answer::Silent; 8]));
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops[2].addr, None);
        assert_eq!(o.hops[2].probes.len(), 2, "one probe per round, two rounds");
        assert!(
            o.hops[2]
                .probes
                .iter()
                .all(|p| p.rtt.is_none() && p.from.is_none())
        );
        // Given up after NEAR_FACTOR x the RTT beyond it (at most 700 us x 10 = 7 ms), then
        // ten times that in the retry round (70 ms), not after two 500 ms timeouts.
        took_under(&net, 90);
        // Only the silent hop was re-probed (in the last send).
        let first_round = 6 + usize::from(WINDOW);
        let retried: Vec<u8> = net.sent[first_round..].iter().map(|s| s.0).collect();
        assert_eq!(retried, vec![3]);
    }

    #[test]
    fn a_slow_router_is_heard_within_ten_times_the_rtt_beyond() {
        // Router 3 answers after 5 ms from its slow path; hops beyond it answer within
        // 0.7 ms, so it is given up at 7 ms and heard at 5 ms.
        let mut net = Fake::chain(6);
        let slow = Answer::From(3, 5_000, ReplyKind::TimeExceeded);
        net.script.insert(3, VecDeque::from(vec![slow; 8]));
        let o = run(&mut net, &opts(), 1).unwrap();
        assert_eq!(o.hops[2].addr, Some(addr(3)));
        assert_eq!(o.hops[2].probes.len(), 1, "heard in the first round");
        assert_eq!(o.hops[2].probes[0].rtt, Some(Duration::from_millis(5)));
    }

    #[test]
    fn a_router_slower_than_that_is_heard_in_the_retry_round() {
        // Router 2 answers after 20 ms; the hops beyond it within 0.7 ms. The first round
        // gives it up at 7 ms, the retry round waits ten times longer and hears it.
        let mut net = Fake::chain(6);
        let slow = Answer::From(2, 20_000, ReplyKind::TimeExceeded);
        net.script.insert(2, VecDeque::from(vec![slow; 8]));
        let o = run(&mut net, &opts(), 1).unwrap();
        assert_eq!(o.hops[1].addr, Some(addr(2)));
        assert_eq!(o.hops[1].probes.len(), 2, "given up once, then retried");
        // The first probe's reply came within the retry round's wait, so it counts too.
        assert!(o.hops[1].probes.iter().all(|p| p.rtt.is_some()));
        took_under(&net, 60);
    }

    #[test]
    fn a_lost_probe_at_an_answered_hop_waits_three_times_its_rtt() {
        // Three queries to the destination, the second lost: the trace ends three times
        // the destination's RTT after that probe left (the floor here), not a timeout later.
        let mut net = Fake::chain(2);
        let dest = Answer::From(100, 300, ReplyKind::Reached);
        net.default = Answer::Silent;
        net.script
            .insert(3, VecDeque::from(vec![dest, Answer::Silent, dest]));
        let o = run(
            &mut net,
            &TraceOptions {
                queries: 3,
                retries: 0,
                ..opts()
            },
            1,
        )
        .unwrap();
        assert!(o.reached);
        let rtts: Vec<bool> = o.hops[2].probes.iter().map(|p| p.rtt.is_some()).collect();
        assert_eq!(rtts, vec![true, false, true]);
        took_under(&net, 2);
    }

    #[test]
    fn a_replys_mpls_labels_reach_its_probe() {
        // Router 3 sits in an MPLS tunnel: its time exceeded carries two labels (the fake
        // network stands in for a router: Linux does not send RFC 4950 objects itself).
        use crate::trace::wire::mpls::{Label, LabelStack};
        let labels = [
            Label {
                label: 24001,
                tc: 0,
                s: false,
                ttl: 1,
            },
            Label {
                label: 16,
                tc: 0,
                s: true,
                ttl: 1,
            },
        ];
        let mut net = Fake::chain(6);
        net.script
            .insert(3, VecDeque::from(vec![Answer::Silent; 8]));
        net.held = vec![(
            Duration::from_millis(1),
            Response {
                seq: Seq(3),
                from: addr(3),
                kind: ReplyKind::TimeExceeded,
                size: 56,
                ttl: None,
                quoted_ttl: Some(1),
                mpls: LabelStack::from_labels(&labels),
                received: net.start + Duration::from_millis(1),
            },
        )];
        let o = run(&mut net, &opts(), 1).unwrap();
        let hop3 = &o.hops[2];
        assert_eq!(hop3.addr, Some(addr(3)));
        let with: Vec<&Probe> = hop3.probes.iter().filter(|p| !p.mpls.is_empty()).collect();
        assert_eq!(with.len(), 1);
        assert_eq!(with[0].mpls, labels);
        assert!(
            o.hops
                .iter()
                .filter(|h| h.ttl != 3)
                .all(|h| h.probes.iter().all(|p| p.mpls.is_empty()))
        );
    }

    #[test]
    fn replies_still_held_by_the_receiver_are_taken_before_giving_up() {
        // Router 3's reply came in at 2 ms, within its wait, but the receive thread had
        // not handed it over yet when the wait ran out: settling first finds it.
        let mut net = Fake::chain(6);
        net.script
            .insert(3, VecDeque::from(vec![Answer::Silent; 8]));
        net.held = vec![(
            Duration::from_millis(2),
            Response {
                seq: Seq(3),
                from: addr(3),
                kind: ReplyKind::TimeExceeded,
                size: 56,
                ttl: None,
                quoted_ttl: None,
                mpls: Default::default(),
                received: net.start + Duration::from_millis(2),
            },
        )];
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(net.settled > 0);
        assert_eq!(o.hops[2].addr, Some(addr(3)));
        assert_eq!(o.hops[2].probes.len(), 1, "no retry was needed");
    }

    #[test]
    fn retry_fills_a_lost_reply() {
        let mut net = Fake::chain(4);
        let a = Answer::From(2, 200, ReplyKind::TimeExceeded);
        net.script
            .insert(2, VecDeque::from(vec![Answer::Silent, a]));
        let o = run(&mut net, &opts(), 1).unwrap();
        assert_eq!(o.hops[1].addr, Some(addr(2)));
        assert_eq!(o.hops[1].probes.len(), 2);
        assert_eq!(o.hops[1].probes[0].rtt, None);
        assert!(o.hops[1].probes[1].rtt.is_some());
    }

    #[test]
    fn silent_destination_stops_after_gap() {
        let mut net = Fake::chain(3);
        net.default = Answer::Silent;
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(!o.reached);
        // Three routers, then gap_limit silent hops, then nothing more.
        assert_eq!(o.hops.len(), 3 + 5);
        assert!(o.hops[3..].iter().all(Hop::is_silent));
        // Two rounds of a full timeout each: silence beyond the last answer can't be proved sooner.
        let e = net.elapsed();
        assert!(
            e >= Duration::from_millis(1000) && e < Duration::from_millis(1010),
            "{e:?}"
        );
    }

    #[test]
    fn replies_read_late_behind_slow_sends_still_count() {
        // Each send waits 300 ms (a busy rate cap) with a 500 ms timeout: by the time the
        // first window is out, TTL 1's deadline is long past, but its reply came in time.
        let mut net = Fake::chain(6);
        net.send_cost = Duration::from_millis(300);
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(o.reached);
        let want: Vec<_> = (1..=6)
            .map(|t| Some(addr(t)))
            .chain([Some(addr(100))])
            .collect();
        assert_eq!(addrs(&o), want);
        assert!(
            o.hops.iter().all(|h| h.probes.len() == 1),
            "nothing retried"
        );
    }

    #[test]
    fn no_ttl_beyond_a_destination_whose_reply_is_already_queued() {
        // Sends are slow (the kernel forwards each one before sendmsg returns), so every
        // reply of the first window is queued by the time the trace reads the first one.
        let mut net = Fake::chain(6);
        net.send_cost = Duration::from_millis(1);
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 7);
        assert!(
            net.sent.iter().all(|s| s.0 <= 8),
            "sent past the window: {:?}",
            net.sent
        );
    }

    #[test]
    fn window_slides_along_a_long_path() {
        let mut net = Fake::chain(20);
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.len(), 21);
        assert!(o.hops.iter().all(|h| h.addr.is_some()));
        assert!(net.sent.iter().all(|s| s.0 <= 20 + WINDOW));
    }

    #[test]
    fn max_hops_bounds_the_trace() {
        let mut net = Fake::chain(10);
        let o = run(
            &mut net,
            &TraceOptions {
                max_hops: 4,
                ..opts()
            },
            1,
        )
        .unwrap();
        assert!(!o.reached);
        assert_eq!(o.hops.len(), 4);
        assert!(net.sent.iter().all(|s| s.0 <= 4));
    }

    #[test]
    fn a_first_ttl_skips_the_hops_before_it() {
        // Destination at 6; TTLs 3..=4 only (a multipath discovery's middle).
        let mut net = Fake::chain(5);
        let o = run(
            &mut net,
            &TraceOptions {
                first_ttl: 3,
                max_hops: 4,
                ..opts()
            },
            1,
        )
        .unwrap();
        assert_eq!(o.hops.iter().map(|h| h.ttl).collect::<Vec<_>>(), [3, 4]);
        assert!(o.hops.iter().all(|h| h.addr.is_some()));
        assert!(
            net.sent.iter().all(|s| (3..=4).contains(&s.0)),
            "{:?}",
            net.sent
        );
        // From 3 to the end: reached at 6, nothing below 3 sent.
        let mut net = Fake::chain(5);
        let o = run(
            &mut net,
            &TraceOptions {
                first_ttl: 3,
                ..opts()
            },
            1,
        )
        .unwrap();
        assert!(o.reached);
        assert_eq!(o.hops.first().map(|h| h.ttl), Some(3));
        assert_eq!(o.hops.last().map(|h| h.ttl), Some(6));
        assert!(net.sent.iter().all(|s| s.0 >= 3));
        let bad = TraceOptions {
            first_ttl: 5,
            max_hops: 4,
            ..opts()
        };
        assert!(matches!(
            run(&mut Fake::chain(5), &bad, 1),
            Err(Error::InvalidOptions(_))
        ));
    }

    #[test]
    fn unreachable_ends_the_path() {
        let mut net = Fake::chain(2);
        let u = ReplyKind::Unreachable(crate::trace::Unreachable::Host);
        net.script
            .insert(3, VecDeque::from(vec![Answer::From(3, 300, u); 8]));
        let o = run(&mut net, &opts(), 1).unwrap();
        assert!(!o.reached);
        assert_eq!(o.hops.len(), 3);
        assert_eq!(o.hops[2].terminal(), Some(u));
    }

    #[test]
    fn queries_per_hop_and_sequences_distinct() {
        let mut net = Fake::chain(2);
        let o = run(
            &mut net,
            &TraceOptions {
                queries: 3,
                ..opts()
            },
            65534,
        )
        .unwrap();
        assert!(o.hops.iter().all(|h| h.probes.len() == 3));
        let mut seqs: Vec<u16> = net.sent.iter().map(|s| s.1).collect();
        assert!(!seqs.contains(&0), "sequence 0 is skipped when wrapping");
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), net.sent.len());
    }

    #[test]
    fn foreign_duplicate_and_early_replies_are_ignored() {
        let mut net = Fake::chain(3);
        let t = net.start;
        let fake = |seq, x, us| Response {
            seq: Seq(seq),
            from: addr(x),
            kind: ReplyKind::Reached,
            size: 1,
            ttl: None,
            quoted_ttl: None,
            mpls: Default::default(),
            received: t + Duration::from_micros(us),
        };
        // A sequence we never sent, and a second answer to TTL 1's probe (seq 1) from
        // somebody else.
        net.injected = vec![
            (Duration::ZERO, fake(5000, 66, 0)),
            (Duration::from_micros(500), fake(1, 77, 500)),
        ];
        let o = run(&mut net, &opts(), 1).unwrap();
        assert_eq!(
            o.hops[0].addr,
            Some(addr(1)),
            "first answer wins, duplicate ignored"
        );
        assert!(o.reached);
        assert_eq!(o.hops.len(), 4);
    }

    #[test]
    fn rejects_bad_options() {
        let mut net = Fake::chain(1);
        for bad in [
            TraceOptions {
                max_hops: 0,
                ..opts()
            },
            TraceOptions {
                queries: 0,
                ..opts()
            },
            TraceOptions {
                timeout: Duration::ZERO,
                ..opts()
            },
        ] {
            assert!(matches!(
                run(&mut net, &bad, 1),
                Err(Error::InvalidOptions(_))
            ));
        }
    }
}
