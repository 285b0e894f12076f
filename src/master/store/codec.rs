//! How a result is packed: its shape (a [`Route`]: hops, names, kinds, sizes and the fields
//! that rarely change) is stored once and shared, and each result keeps only its times and
//! RTTs in a few varints. Pure code: every rule is unit-tested without a database.

use super::{NewHop, NewResult};
use crate::trace::wire::mpls::Label;
use sha2::{Digest, Sha256};

/// Everything of a result but its ID, times and RTTs: results that look alike share one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The target was in the config when the result arrived.
    pub target_known: bool,
    /// False when the config did not select the slave for the target.
    pub target_selected: bool,
    /// Destination answered.
    pub success: bool,
    /// The slave's hop count.
    pub hop_count: i64,
    /// The slave sent a flow number (the series holds its value).
    pub has_flow: bool,
    /// Probe protocol.
    pub protocol: Option<String>,
    /// Resolved destination.
    pub destination: Option<String>,
    /// Unreachable annotation.
    pub unreachable: Option<String>,
    /// Why the trace could not run.
    pub error: Option<String>,
    /// Sending program.
    pub agent: Option<String>,
    /// The probes' source address, as the slave reported it.
    pub source: Option<String>,
    /// The address the master received the result from.
    pub seen_from: Option<String>,
    /// A fake result (`-zDebugResults`).
    pub debug: bool,
    /// The on-demand measurement it belongs to.
    pub measurement: Option<String>,
    /// A multipath result: its graph is in `result_graphs`.
    pub multipath: bool,
    /// Answering hops, in the order the slave sent them.
    pub hops: Vec<RouteHop>,
}

/// The fixed part of one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHop {
    /// TTL.
    pub ttl: i64,
    /// Address as text.
    pub address: String,
    /// Reverse name or "".
    pub host: String,
    /// Reply size.
    pub size: i64,
    /// Reply kind, when the slave said.
    pub kind: Option<String>,
    /// TTL of the reply packet, when the slave said.
    pub reply_ttl: Option<i64>,
    /// How many probes the slave listed (`None`: it sent no `Replies`, only one RTT).
    pub replies: Option<usize>,
    /// The MPLS label stack the hop's reply reported.
    pub mpls: Option<Vec<Label>>,
}

impl Route {
    /// The shape of `r`.
    pub fn of(r: &NewResult) -> Route {
        Route {
            target_known: r.target_known,
            target_selected: r.target_selected,
            success: r.success,
            hop_count: r.hop_count,
            has_flow: r.flow.is_some(),
            protocol: r.protocol.clone(),
            destination: r.destination.clone(),
            unreachable: r.unreachable.clone(),
            error: r.error.clone(),
            agent: r.agent.clone(),
            source: r.origin.source.clone(),
            seen_from: r.origin.seen_from.clone(),
            debug: r.origin.debug,
            measurement: r.origin.measurement.clone(),
            multipath: r.multipath.is_some(),
            hops: r
                .hops
                .iter()
                .map(|h| RouteHop {
                    ttl: h.ttl,
                    address: h.address.clone(),
                    host: h.host.clone(),
                    size: h.size,
                    kind: h.kind.clone(),
                    reply_ttl: h.reply_ttl,
                    replies: h.replies.as_ref().map(Vec::len),
                    mpls: h.mpls.clone(),
                })
                .collect(),
        }
    }

    /// The stored form: varints and length-prefixed text, addresses as their bytes.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 12 * self.hops.len());
        out.push(ROUTE_FORMAT);
        let texts = [
            &self.protocol,
            &self.destination,
            &self.unreachable,
            &self.error,
            &self.agent,
            &self.source,
            &self.seen_from,
        ];
        // Bits 0-2, then one per text (3-9), then `debug`: a route of an older version,
        // which had five texts and no `debug`, reads back unchanged.
        let mut flags = u64::from(self.target_known)
            | u64::from(self.success) << 1
            | u64::from(self.has_flow) << 2
            | u64::from(self.debug) << DEBUG_BIT
            | u64::from(self.measurement.is_some()) << MEASUREMENT_BIT
            | u64::from(self.multipath) << MULTIPATH_BIT
            | u64::from(self.hops.iter().any(|h| h.mpls.is_some())) << MPLS_BIT
            | u64::from(!self.target_selected) << UNSELECTED_BIT;
        for (i, t) in texts.iter().enumerate() {
            if t.is_some() {
                flags |= 1 << (3 + i);
            }
        }
        put(&mut out, flags);
        put_signed(&mut out, self.hop_count);
        for t in texts.into_iter().flatten() {
            put_text(&mut out, t);
        }
        if let Some(m) = &self.measurement {
            put_text(&mut out, m);
        }
        put(&mut out, self.hops.len() as u64);
        for h in &self.hops {
            put_signed(&mut out, h.ttl);
            match h.address.parse::<std::net::IpAddr>() {
                // Only the spelling the address would get back is packed, so text that
                // differs from it survives as text. Every IPv4 text that parses is that
                // spelling (the parser takes no leading zeros); IPv6 has several.
                Ok(std::net::IpAddr::V4(a)) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                Ok(std::net::IpAddr::V6(a)) if a.to_string() == h.address => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
                _ => {
                    out.push(0);
                    put_text(&mut out, &h.address);
                }
            }
            put_text(&mut out, &h.host);
            put_signed(&mut out, h.size);
            match h.kind.as_deref() {
                None => out.push(0),
                Some("time-exceeded") => out.push(1),
                Some("reached") => out.push(2),
                Some(k) => {
                    out.push(3);
                    put_text(&mut out, k);
                }
            }
            put(&mut out, h.reply_ttl.map_or(0, |t| zigzag(t) + 1));
            put(&mut out, h.replies.map_or(0, |n| n as u64 + 1));
        }
        if self.hops.iter().any(|h| h.mpls.is_some()) {
            for h in &self.hops {
                match &h.mpls {
                    None => put(&mut out, 0),
                    Some(labels) => {
                        put(&mut out, labels.len() as u64 + 1);
                        for l in labels {
                            put(&mut out, label_code(l));
                        }
                    }
                }
            }
        }
        out
    }

    /// Reads back [`Route::body`]; `None` for bytes it did not write.
    pub fn parse(body: &[u8]) -> Option<Route> {
        let (&format, rest) = body.split_first()?;
        if format != ROUTE_FORMAT {
            return None;
        }
        let mut r = Reader(rest);
        let flags = r.get()?;
        let hop_count = r.signed()?;
        let mut texts: [Option<String>; 7] = Default::default();
        for (i, t) in texts.iter_mut().enumerate() {
            if flags & (1 << (3 + i)) != 0 {
                *t = Some(r.text()?);
            }
        }
        let measurement = match flags & (1 << MEASUREMENT_BIT) {
            0 => None,
            _ => Some(r.text()?),
        };
        let n = usize::try_from(r.get()?).ok()?;
        let mut hops = Vec::with_capacity(n.min(255));
        for _ in 0..n {
            let ttl = r.signed()?;
            let address = match r.byte()? {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(r.bytes(4)?).ok()?).to_string(),
                6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(r.bytes(16)?).ok()?).to_string(),
                0 => r.text()?,
                _ => return None,
            };
            let host = r.text()?;
            let size = r.signed()?;
            let kind = match r.byte()? {
                0 => None,
                1 => Some("time-exceeded".to_owned()),
                2 => Some("reached".to_owned()),
                3 => Some(r.text()?),
                _ => return None,
            };
            let reply_ttl = match r.get()? {
                0 => None,
                v => Some(unzigzag(v - 1)),
            };
            let replies = match r.get()? {
                0 => None,
                v => Some(usize::try_from(v - 1).ok()?),
            };
            hops.push(RouteHop {
                ttl,
                address,
                host,
                size,
                kind,
                reply_ttl,
                replies,
                mpls: None,
            });
        }
        if flags & (1 << MPLS_BIT) != 0 {
            for h in &mut hops {
                let n = usize::try_from(r.get()?).ok()?;
                if n > 0 {
                    let labels = (1..n)
                        .map(|_| code_label(r.get()?))
                        .collect::<Option<Vec<Label>>>()?;
                    h.mpls = Some(labels);
                }
            }
        }
        if !r.0.is_empty() {
            return None;
        }
        let [
            protocol,
            destination,
            unreachable,
            error,
            agent,
            source,
            seen_from,
        ] = texts;
        Some(Route {
            target_known: flags & 1 != 0,
            target_selected: flags & (1 << UNSELECTED_BIT) == 0,
            success: flags & 2 != 0,
            hop_count,
            has_flow: flags & 4 != 0,
            protocol,
            destination,
            unreachable,
            error,
            agent,
            source,
            seen_from,
            debug: flags & (1 << DEBUG_BIT) != 0,
            measurement,
            multipath: flags & (1 << MULTIPATH_BIT) != 0,
            hops,
        })
    }

    /// The identity of a stored form: 16 bytes of its SHA-256.
    pub fn hash(body: &[u8]) -> [u8; 16] {
        let d = Sha256::digest(body);
        let mut out = [0; 16];
        out.copy_from_slice(&d[..16]);
        out
    }
}

/// The slave's `DateTime`, taken apart so that the text is rebuilt exactly from a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveTime {
    /// Unix ms (floor).
    pub ms: i64,
    /// Nanoseconds below the millisecond.
    pub sub_ms_ns: u32,
    /// Offset from UTC, seconds.
    pub offset_s: i32,
    /// How the text was spelled: fraction digits 0..=9, or [`TRIMMED`]; plus [`ZULU`].
    pub style: u8,
}

/// Style: fraction with trailing zeros trimmed (Go's RFC3339Nano).
const TRIMMED: u8 = 10;
/// Style: the text is stored as it is (none of the spellings rebuilds it).
pub const VERBATIM: u8 = 15;
/// Style flag: a zero offset written `Z`.
const ZULU: u8 = 16;

impl SlaveTime {
    /// Parses RFC 3339 text and finds a spelling that rebuilds it; `style` is [`VERBATIM`]
    /// when none does (then the text must be kept).
    pub fn parse(text: &str) -> Option<SlaveTime> {
        let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        let ms = t.timestamp_millis();
        let mut st = SlaveTime {
            ms,
            sub_ms_ns: t.timestamp_subsec_nanos() % 1_000_000,
            offset_s: t.offset().local_minus_utc(),
            style: VERBATIM,
        };
        // Ours first (6 digits, +00:00), then Go's (trimmed, Z), then the rest.
        for digits in [6, TRIMMED, 3, 9, 0, 1, 2, 4, 5, 7, 8] {
            for zulu in [0, ZULU] {
                st.style = digits | zulu;
                if st.text().as_deref() == Some(text) {
                    return Some(st);
                }
            }
        }
        st.style = VERBATIM;
        Some(st)
    }

    /// The text this time was sent as (`None` for [`VERBATIM`]).
    pub fn text(&self) -> Option<String> {
        use std::fmt::Write as _;
        let digits = self.style & 15;
        if digits == VERBATIM {
            return None;
        }
        let offset = chrono::FixedOffset::east_opt(self.offset_s)?;
        let utc = chrono::DateTime::from_timestamp_millis(self.ms)?;
        let local = utc.with_timezone(&offset);
        let nanos = self.ms.rem_euclid(1000) as u32 * 1_000_000 + self.sub_ms_ns;
        let mut s = local.format("%Y-%m-%dT%H:%M:%S").to_string();
        if digits == TRIMMED {
            if nanos != 0 {
                let f = format!("{nanos:09}");
                s.push('.');
                s.push_str(f.trim_end_matches('0'));
            }
        } else if digits > 0 {
            let f = format!("{nanos:09}");
            s.push('.');
            s.push_str(&f[..digits as usize]);
        }
        if self.offset_s == 0 && self.style & ZULU != 0 {
            s.push('Z');
        } else {
            let sign = if self.offset_s < 0 { '-' } else { '+' };
            let a = self.offset_s.unsigned_abs();
            let _ = write!(s, "{sign}{:02}:{:02}", a / 3600, a % 3600 / 60);
            if !a.is_multiple_of(60) {
                return None;
            }
        }
        Some(s)
    }
}

/// A result's own numbers: what is not in its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measures {
    /// The slave's time.
    pub time: SlaveTime,
    /// Where the result is ordered, Unix ms (its key's time).
    pub ordered_ms: i64,
    /// When the master received it, Unix ms.
    pub received_at: i64,
    /// How long the trace took, ns.
    pub duration_ns: Option<i64>,
    /// Per hop (in route order): its RTT and its replies.
    pub hops: Vec<(i64, Option<Vec<Option<i64>>>)>,
}

pub(super) fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put(out, zigzag(v));
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The first byte of a route's stored form.
const ROUTE_FORMAT: u8 = 1;

/// The flag bit of [`Route::debug`], after the seven texts'.
const DEBUG_BIT: u32 = 10;
/// The flag bit of [`Route::measurement`] (its text follows the seven others).
const MEASUREMENT_BIT: u32 = 11;
/// The flag bit of [`Route::multipath`].
const MULTIPATH_BIT: u32 = 12;
/// The flag bit of hops with MPLS labels: a label list per hop follows the hops.
const MPLS_BIT: u32 = 13;
/// The flag bit of a result for a target its slave was not selected for (unset in routes
/// stored before selectors, which every slave traced).
const UNSELECTED_BIT: u32 = 14;

/// A label stack entry as one number: label, TC, S and TTL as in the packet.
fn label_code(l: &Label) -> u64 {
    u64::from(
        (l.label & 0xf_ffff) << 12
            | u32::from(l.tc & 7) << 9
            | u32::from(l.s) << 8
            | u32::from(l.ttl),
    )
}

fn code_label(v: u64) -> Option<Label> {
    let v = u32::try_from(v).ok()?;
    Some(Label {
        label: v >> 12,
        tc: ((v >> 9) & 7) as u8,
        s: (v >> 8) & 1 == 1,
        ttl: (v & 0xff) as u8,
    })
}

/// A duration in ns: whole microseconds (what a measurement is worth, and what our slave
/// sends) take a varint of the µs; anything else keeps its nanoseconds behind a flag bit.
fn ns_code(ns: i64) -> u64 {
    let ns = ns.max(0) as u64;
    if ns.is_multiple_of(1000) {
        (ns / 1000) << 1
    } else {
        (ns << 1) | 1
    }
}

fn code_ns(code: u64) -> Option<i64> {
    let ns = if code & 1 == 0 {
        (code >> 1).checked_mul(1000)?
    } else {
        code >> 1
    };
    i64::try_from(ns).ok()
}

fn put_ns(out: &mut Vec<u8>, ns: i64) {
    put(out, ns_code(ns));
}

/// An RTT: whole microseconds as the difference from the RTT before it (`last_us`: RTTs of
/// one path rise slowly and the replies of one hop lie close, so most take one or two
/// bytes); anything else as its nanoseconds behind a flag bit.
pub(super) fn rtt_code(ns: i64, last_us: &mut i64) -> u64 {
    let ns = ns.max(0);
    if ns % 1000 == 0 {
        let us = ns / 1000;
        let code = zigzag(us - *last_us) << 1;
        *last_us = us;
        code
    } else {
        *last_us = ns / 1000;
        ((ns as u64) << 1) | 1
    }
}

pub(super) fn code_rtt(code: u64, last_us: &mut i64) -> Option<i64> {
    if code & 1 == 0 {
        let us = last_us.checked_add(unzigzag(code >> 1))?;
        *last_us = us;
        us.checked_mul(1000)
    } else {
        let ns = i64::try_from(code >> 1).ok()?;
        *last_us = ns / 1000;
        Some(ns)
    }
}

pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl Reader<'_> {
    pub(super) fn get(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn signed(&mut self) -> Option<i64> {
        self.get().map(unzigzag)
    }

    pub(super) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let n = usize::try_from(self.get()?).ok()?;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }

    fn ns(&mut self) -> Option<i64> {
        code_ns(self.get()?)
    }
}

const HAS_DURATION: u64 = 1;
const RTT_GIVEN: u64 = 2;
const SHIFTED: u64 = 4;

impl Measures {
    /// Packs the numbers; the route says how many replies each hop has.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 3 * self.hops.len());
        // A hop's RTT is its first answered reply (our slave's rule); only when one differs
        // are the RTTs stored as well.
        let rtt_given = self
            .hops
            .iter()
            .any(|(rtt, replies)| replies.as_ref().is_some_and(|v| first(v) != *rtt));
        let mut head = 0;
        if self.duration_ns.is_some() {
            head |= HAS_DURATION;
        }
        if rtt_given {
            head |= RTT_GIVEN;
        }
        if self.ordered_ms != self.time.ms {
            head |= SHIFTED;
        }
        put(&mut out, head);
        if self.ordered_ms != self.time.ms {
            put_signed(&mut out, self.time.ms - self.ordered_ms);
        }
        put_signed(&mut out, self.received_at - self.time.ms);
        put(
            &mut out,
            (((self.time.offset_s as i64) << 1 ^ (self.time.offset_s as i64) >> 63) as u64) << 5
                | u64::from(self.time.style),
        );
        put_ns(&mut out, i64::from(self.time.sub_ms_ns));
        if let Some(d) = self.duration_ns {
            put_ns(&mut out, d);
        }
        let mut last_us = 0;
        for (rtt, replies) in &self.hops {
            match replies {
                Some(v) => {
                    for reply in v {
                        match reply {
                            // 0 is a lost reply; an answer is its code plus one.
                            None => put(&mut out, 0),
                            Some(ns) => put(&mut out, rtt_code(*ns, &mut last_us) + 1),
                        }
                    }
                    if rtt_given {
                        put(&mut out, rtt_code(*rtt, &mut last_us));
                    }
                }
                None => put(&mut out, rtt_code(*rtt, &mut last_us)),
            }
        }
        out
    }

    /// Unpacks what [`Measures::encode`] wrote for a result of `route` ordered at
    /// `ordered_ms`.
    pub fn decode(data: &[u8], route: &Route, ordered_ms: i64) -> Option<Measures> {
        match Measures::decode_front(data, route, ordered_ms)? {
            (m, []) => Some(m),
            _ => None,
        }
    }

    /// [`Measures::decode`] of the front of `data`; also gives the bytes after it.
    fn decode_front<'d>(
        data: &'d [u8],
        route: &Route,
        ordered_ms: i64,
    ) -> Option<(Measures, &'d [u8])> {
        let mut r = Reader(data);
        let head = r.get()?;
        let ms = if head & SHIFTED != 0 {
            ordered_ms.checked_add(r.signed()?)?
        } else {
            ordered_ms
        };
        let received_at = ms + r.signed()?;
        let style = r.get()?;
        let z = style >> 5;
        let offset_s = i32::try_from(((z >> 1) as i64) ^ -((z & 1) as i64)).ok()?;
        let sub_ms_ns = u32::try_from(r.ns()?).ok()?;
        let duration_ns = if head & HAS_DURATION != 0 {
            Some(r.ns()?)
        } else {
            None
        };
        let mut hops = Vec::with_capacity(route.hops.len());
        let mut last_us = 0;
        for h in &route.hops {
            match h.replies {
                Some(n) => {
                    let mut v = Vec::with_capacity(n.min(32));
                    for _ in 0..n {
                        let code = r.get()?;
                        v.push(match code {
                            0 => None,
                            c => Some(code_rtt(c - 1, &mut last_us)?),
                        });
                    }
                    let rtt = if head & RTT_GIVEN != 0 {
                        code_rtt(r.get()?, &mut last_us)?
                    } else {
                        first(&v)
                    };
                    hops.push((rtt, Some(v)));
                }
                None => hops.push((code_rtt(r.get()?, &mut last_us)?, None)),
            }
        }
        let m = Measures {
            time: SlaveTime {
                ms,
                sub_ms_ns,
                offset_s,
                style: (style & 31) as u8,
            },
            ordered_ms,
            received_at,
            duration_ns,
            hops,
        };
        Some((m, r.0))
    }

    /// The hops of a result: the route's fixed part with these numbers.
    pub fn hops(&self, route: &Route) -> Vec<NewHop> {
        route
            .hops
            .iter()
            .zip(&self.hops)
            .map(|(h, (rtt, replies))| NewHop {
                ttl: h.ttl,
                address: h.address.clone(),
                host: h.host.clone(),
                rtt_ns: *rtt,
                size: h.size,
                kind: h.kind.clone(),
                reply_ttl: h.reply_ttl,
                replies: replies.clone(),
                mpls: h.mpls.clone(),
            })
            .collect()
    }
}

/// A result row's blob: the 16-byte ID, the numbers, then the slave's `DateTime` text when
/// no spelling of ours rebuilds it.
pub fn pack_row(uid: &[u8; 16], m: &Measures, verbatim: Option<&str>) -> Vec<u8> {
    let mut out = uid.to_vec();
    out.extend(m.encode());
    if m.time.style == VERBATIM {
        out.extend_from_slice(verbatim.unwrap_or_default().as_bytes());
    }
    out
}

/// Reads back [`pack_row`]: the ID, the numbers and the `DateTime` text.
pub fn unpack_row(
    data: &[u8],
    route: &Route,
    ordered_ms: i64,
) -> Option<([u8; 16], Measures, String)> {
    let (uid, rest) = data.split_first_chunk::<16>()?;
    let (m, rest) = Measures::decode_front(rest, route, ordered_ms)?;
    let text = if m.time.style == VERBATIM {
        String::from_utf8(rest.to_vec()).ok()?
    } else if rest.is_empty() {
        m.time.text()?
    } else {
        return None;
    };
    Some((*uid, m, text))
}

/// The first answered reply, or 0 when none answered.
fn first(replies: &[Option<i64>]) -> i64 {
    replies.iter().flatten().next().copied().unwrap_or(0)
}

/// Results ordered in the same millisecond: the ordering key keeps this many apart (more
/// move on to the next millisecond, their own time kept aside).
pub const PER_MS: i64 = 64;

/// How far results of a full millisecond may move on and still be found by their own time
/// (beyond, their ID is kept aside).
pub const SPILL_MS: i64 = 1000;

/// The earliest time a key holds, Unix ms (2000-01-01): results dated before are ordered
/// there. Counting from it keeps keys under 2^47 until 2069, so a key takes 7 bytes in a
/// row and 6 in the series index.
pub const EPOCH_MS: i64 = 946_684_800_000;

/// The latest time a key holds, Unix ms.
pub const LAST_MS: i64 = EPOCH_MS + i64::MAX / PER_MS - 1;

/// The ordering key of the `n`th result at `at_ms` (clamped to [`EPOCH_MS`]..[`LAST_MS`]):
/// keys sort by time, then by arrival within a millisecond.
pub fn key(at_ms: i64, n: i64) -> i64 {
    (at_ms.clamp(EPOCH_MS, LAST_MS) - EPOCH_MS) * PER_MS + n.clamp(0, PER_MS - 1)
}

/// The time (Unix ms) of an ordering key.
pub fn key_ms(key: i64) -> i64 {
    key.div_euclid(PER_MS) + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(replies: &[Option<usize>]) -> Route {
        Route {
            target_known: true,
            target_selected: true,
            success: true,
            hop_count: 3,
            has_flow: true,
            protocol: Some("udp".into()),
            destination: None,
            unreachable: None,
            error: None,
            agent: None,
            source: None,
            seen_from: None,
            debug: false,
            measurement: None,
            multipath: false,
            hops: replies
                .iter()
                .enumerate()
                .map(|(i, n)| RouteHop {
                    ttl: i as i64 + 1,
                    address: format!("10.0.0.{}", i + 1),
                    host: String::new(),
                    size: 56,
                    kind: None,
                    reply_ttl: None,
                    replies: *n,
                    mpls: None,
                })
                .collect(),
        }
    }

    #[test]
    fn slave_times_are_rebuilt_exactly() {
        for text in [
            "2019-02-07T21:06:10.803086+01:00",
            "2026-11-20T10:00:00.123456789Z",
            "2026-11-20T10:01:00Z",
            "2026-11-20T10:02:00.5+02:00",
            "2026-11-20T10:02:00.500-05:30",
            "2026-11-20T10:02:00+00:00",
            "2026-11-20T10:02:00.000000+00:00",
            "1969-12-31T23:59:59.999Z",
        ] {
            let t = SlaveTime::parse(text).unwrap();
            assert_ne!(t.style, VERBATIM, "{text}");
            assert_eq!(t.text().as_deref(), Some(text));
        }
        // Lower-case separators are RFC 3339 too, but no spelling of ours rebuilds them.
        let odd = SlaveTime::parse("2026-11-20t10:02:00z").unwrap();
        assert_eq!(odd.style, VERBATIM);
        assert_eq!(odd.text(), None);
        assert!(SlaveTime::parse("yesterday").is_none());
    }

    #[test]
    fn measures_round_trip_with_lost_replies_nanoseconds_and_given_rtts() {
        let time = SlaveTime::parse("2026-11-20T10:02:00.123456789+01:00").unwrap();
        let cases = [
            (
                route(&[Some(3), Some(1), None]),
                vec![
                    (
                        1_200_000,
                        Some(vec![Some(1_200_000), None, Some(1_300_000)]),
                    ),
                    (2_000_001, Some(vec![Some(2_000_001)])),
                    (3_000_000, None),
                ],
            ),
            // A hop whose RTT is not its first reply, and one with every reply lost.
            (
                route(&[Some(2), Some(2)]),
                vec![
                    (999, Some(vec![Some(1_000_000), Some(2_000_000)])),
                    (0, Some(vec![None, None])),
                ],
            ),
        ];
        for (route, hops) in cases {
            let m = Measures {
                time,
                ordered_ms: time.ms - 5,
                received_at: time.ms + 1234,
                duration_ns: Some(12_345_678),
                hops,
            };
            let back = Measures::decode(&m.encode(), &route, time.ms - 5).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn whole_microsecond_rtts_take_two_bytes_after_the_first() {
        let time = SlaveTime::parse("2026-11-20T10:02:00.123456+00:00").unwrap();
        let with = |hops: Vec<(i64, Option<Vec<Option<i64>>>)>| {
            Measures {
                time,
                ordered_ms: time.ms,
                received_at: time.ms,
                duration_ns: None,
                hops,
            }
            .encode()
            .len()
        };
        let base = with(vec![]);
        let one = |rtt: i64| with(vec![(rtt, Some(vec![Some(rtt)]))]) - base;
        assert_eq!(one(5_000_000), 3, "5 ms from nothing");
        assert_eq!(one(5_000_123), 4, "nanosecond digits cost more");
        // A hop 1.5 ms beyond the one before, and a second reply 0.2 ms after the first.
        let two = with(vec![
            (5_000_000, Some(vec![Some(5_000_000)])),
            (6_500_000, Some(vec![Some(6_500_000), Some(6_700_000)])),
        ]) - base;
        assert_eq!(two, 3 + 2 + 2);
    }

    #[test]
    fn routes_round_trip_and_pack_addresses() {
        let mut r = route(&[Some(3), None, Some(1)]);
        r.hops[0].address = "2001:db8::1".into();
        r.hops[1].address = "::ffff:10.0.0.1".into();
        r.hops[1].host = "h.example.".into();
        r.hops[1].kind = Some("!H".into());
        r.hops[1].reply_ttl = Some(250);
        r.hops[2].kind = Some("reached".into());
        r.unreachable = Some("!H".into());
        r.agent = Some("dist-traceroute/0.1.0".into());
        let body = r.body();
        assert_eq!(Route::parse(&body), Some(r.clone()));
        for cut in 0..body.len() {
            assert_eq!(Route::parse(&body[..cut]), None);
        }
        // Four bytes for an IPv4 address, not its text.
        let v4 = route(&[Some(1)]).body().len();
        let mut text = route(&[Some(1)]);
        text.hops[0].address = "010.0.0.1".into();
        assert_eq!(Route::parse(&text.body()), Some(text.clone()));
        assert!(v4 < text.body().len());
    }

    #[test]
    fn mpls_labels_round_trip_per_hop_and_cost_nothing_without() {
        let plain = route(&[Some(1), Some(1), Some(1)]);
        let mut r = plain.clone();
        r.hops[1].mpls = Some(vec![
            Label {
                label: 24001,
                tc: 5,
                s: false,
                ttl: 1,
            },
            Label {
                label: 0xf_ffff,
                tc: 0,
                s: true,
                ttl: 255,
            },
        ]);
        r.hops[2].mpls = Some(Vec::new());
        let body = r.body();
        assert_eq!(Route::parse(&body), Some(r.clone()));
        for cut in 0..body.len() {
            assert_eq!(Route::parse(&body[..cut]), None);
        }
        // A route with no labels is stored as before: no flag, not one byte more.
        let mut flagless = plain.clone();
        flagless.hops[0].mpls = None;
        assert_eq!(flagless.body(), plain.body());
        assert_eq!(Route::parse(&plain.body()).unwrap().hops[1].mpls, None);
        assert!(body.len() > plain.body().len());
    }

    #[test]
    fn origin_and_debug_round_trip_and_older_routes_read_the_same() {
        let plain = route(&[Some(1)]);
        // The bytes of a route as the version before `source`, `seen_from` and `debug` wrote
        // it: format 1, flags (known, success, flow, protocol), hop count, "udp", one hop.
        let older = [
            1, 0b1111, 6, 3, b'u', b'd', b'p', 1, 2, 4, 10, 0, 0, 1, 0, 112, 0, 0, 2,
        ];
        assert_eq!(Route::parse(&older), Some(plain.clone()));
        assert_eq!(plain.body(), older);
        let mut r = plain;
        r.source = Some("192.0.2.10".into());
        r.seen_from = Some("198.51.100.7".into());
        r.debug = true;
        assert_eq!(Route::parse(&r.body()), Some(r.clone()));
        r.source = None;
        assert_eq!(Route::parse(&r.body()), Some(r));
    }

    #[test]
    fn rows_carry_the_id_and_any_text_no_spelling_rebuilds() {
        let route = route(&[Some(1)]);
        let uid = [7; 16];
        for text in ["2026-11-20T10:02:00.123456+00:00", "2026-11-20t10:02:00z"] {
            let time = SlaveTime::parse(text).unwrap();
            let m = Measures {
                time,
                ordered_ms: time.ms,
                received_at: time.ms,
                duration_ns: None,
                hops: vec![(1_000_000, Some(vec![Some(1_000_000)]))],
            };
            let row = pack_row(&uid, &m, Some(text));
            assert_eq!(
                unpack_row(&row, &route, time.ms),
                Some((uid, m, text.to_owned()))
            );
        }
    }

    #[test]
    fn truncated_data_is_refused() {
        let time = SlaveTime::parse("2026-11-20T10:02:00Z").unwrap();
        let route = route(&[Some(3)]);
        let m = Measures {
            time,
            ordered_ms: time.ms,
            received_at: time.ms,
            duration_ns: None,
            hops: vec![(1_000_000, Some(vec![Some(1_000_000); 3]))],
        };
        let data = m.encode();
        for cut in 0..data.len() {
            assert!(Measures::decode(&data[..cut], &route, time.ms).is_none());
        }
    }

    #[test]
    fn keys_sort_by_time_and_give_the_time_back() {
        let a = key(1_764_000_000_123, 0);
        let b = key(1_764_000_000_123, 5);
        let c = key(1_764_000_000_124, 0);
        let d = key(1_764_000_001_000, 0);
        assert!(a < b && b < c && c < d);
        assert_eq!(key_ms(b), 1_764_000_000_123);
        assert_eq!(key_ms(d), 1_764_000_001_000);
        // 2069-01-01 still fits the six bytes of a 48-bit integer.
        assert!(key(3_124_137_600_000, PER_MS - 1) < 1 << 47);
        assert_eq!(key(-5, 0), 0);
        assert_eq!(key_ms(key(i64::MAX, 0)), LAST_MS);
        assert!(key(i64::MAX, PER_MS - 1) > key(LAST_MS - 1, 0));
    }
}
