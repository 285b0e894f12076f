//! Path-change detection per (slave, target, flow): pure logic over a small state, so every
//! rule is unit-tested without a database. A new path must be seen `confirm` times in a row
//! before it replaces the current one (one lost reply raises no alert), and differences in
//! silent hops alone are not a change.
//!
//! One incident gives one alert: a destination that stops answering is told by `unreachable`
//! and its return by `reachable`, never also by path changes. While it does not answer, the
//! confirmed path stays the route it took before the break, and the route after the recovery
//! is compared with that one.

use super::path::{Path, Terminal};
use super::store::graph::Branches;
use serde::{Deserialize, Serialize};

/// What the detector remembers of one series between results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The confirmed path: its row id and hops.
    pub current: Option<(i64, Path)>,
    /// A different path seen lately: row id, hops, times in a row, when first seen (ms).
    pub candidate: Option<Candidate>,
    /// Results in a row that did not reach the destination.
    pub unreached_streak: u32,
    /// The destination was reached at least once.
    pub ever_reached: bool,
    /// An "unreachable" alert is standing.
    pub unreachable_alerted: bool,
    /// Results in a row whose destination RTT was over the target's threshold.
    pub rtt_high_streak: u32,
    /// An "rtt-high" alert is standing.
    pub rtt_alerted: bool,
    /// The set of branches of a multipath target.
    pub branches: Branches,
    /// The AS path, when the master has an AS table.
    pub as_path: AsTrack,
}

/// An AS path as the change detection sees it: the ASes in order, each once per run, with a
/// gap (`None`) where hops between two different ASes were silent or not in the table, so an
/// AS may hide there. Special-use addresses (private, CGNAT, …) are left out: no AS owns them,
/// and a carrier numbers its inside with them.
pub type AsHops = Vec<Option<u32>>;

/// What the AS-path detector remembers of one series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsTrack {
    /// The confirmed AS path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<AsHops>,
    /// A different AS path seen lately: its hops, times in a row, when first seen (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<(AsHops, u32, i64)>,
}

/// A path waiting for confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Path row id.
    pub path_id: i64,
    /// Its hops.
    pub path: Path,
    /// Times seen in a row.
    pub count: u32,
    /// When first seen, Unix ms.
    pub since: i64,
}

/// One result as the detector sees it.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Path row id.
    pub path_id: i64,
    /// Its hops.
    pub path: Path,
    /// Measurement time, Unix ms.
    pub at: i64,
    /// Destination RTT, when it answered.
    pub rtt_ns: Option<i64>,
    /// The target's RTT alert threshold, if it has one.
    pub rtt_alert_ns: Option<i64>,
}

/// Something worth telling an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// The confirmed path changed.
    PathChange {
        /// Old path row id.
        from_path: i64,
        /// New path row id.
        to_path: i64,
        /// First TTL where the two differ.
        first_diff_ttl: u32,
        /// When the new path was first seen, Unix ms.
        since: i64,
    },
    /// The destination stopped answering.
    Unreachable {
        /// Results in a row without an answer.
        results: u32,
    },
    /// The destination answers again.
    Reachable,
    /// The destination RTT rose over the threshold.
    RttHigh {
        /// The RTT that confirmed it, ns.
        rtt_ns: i64,
        /// The threshold, ns.
        threshold_ns: i64,
    },
    /// The destination RTT is back under the threshold.
    RttNormal {
        /// The RTT, ns.
        rtt_ns: i64,
    },
    /// The target's address (or name) in the config changed, so its results now form a new
    /// series; that series takes over the old one's state (its confirmed path too), so the
    /// route to the new address is compared with the old one like any other path change.
    TargetChange {
        /// The name before.
        from_name: String,
        /// The address before.
        from_address: String,
        /// The name now.
        to_name: String,
        /// The address now.
        to_address: String,
    },
    /// Branches of a multipath target are gone (or silent): missing from every flow of
    /// `confirm` complete discoveries in a row.
    BranchLost {
        /// The nodes (`"TTL address"`) and links (`"TTL from>to"`) gone.
        branches: Vec<String>,
    },
    /// A multipath target has new branches, seen in `confirm` discoveries in a row.
    BranchNew {
        /// The nodes and links that are new.
        branches: Vec<String>,
    },
    /// The AS path changed, seen in `confirm` reached results in a row.
    AsPathChange {
        /// The AS path before.
        from: Vec<u32>,
        /// The AS path now.
        to: Vec<u32>,
        /// When the new AS path was first seen, Unix ms.
        since: i64,
    },
}

impl Event {
    /// The event kind as stored and filtered on.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::PathChange { .. } => "path-change",
            Event::Unreachable { .. } => "unreachable",
            Event::Reachable => "reachable",
            Event::RttHigh { .. } => "rtt-high",
            Event::RttNormal { .. } => "rtt-normal",
            Event::TargetChange { .. } => "target-change",
            Event::BranchLost { .. } => "branch-lost",
            Event::BranchNew { .. } => "branch-new",
            Event::AsPathChange { .. } => "as-path-change",
        }
    }
}

/// Hops of `p` that answered.
fn answering(p: &Path) -> usize {
    p.hops.iter().filter(|h| h.is_some()).count()
}

/// A reached path without the silent hops right before its destination. A slave that does
/// not place the destination by its reply (the original Go slave) reports `… r5 * dest` when
/// the destination's answer at 6 was lost and the probe with TTL 7 reached it: that is the
/// route `… r5 dest`, not a longer one.
fn without_lost_end(p: &Path) -> std::borrow::Cow<'_, Path> {
    let n = p.hops.len();
    if p.terminal != Terminal::Reached
        || n < 2
        || p.hops[n - 1].is_none()
        || p.hops[n - 2].is_some()
    {
        return std::borrow::Cow::Borrowed(p);
    }
    let mut hops = p.hops.clone();
    let dest = hops.pop().flatten();
    while hops.last() == Some(&None) {
        hops.pop();
    }
    hops.push(dest);
    std::borrow::Cow::Owned(Path {
        hops,
        terminal: p.terminal.clone(),
    })
}

/// True when the two paths differ at most where one of them has a silent hop.
pub fn same_route(a: &Path, b: &Path) -> bool {
    a.terminal == b.terminal && first_difference(a, b).is_none()
}

/// The first TTL where both paths have an answering hop and the addresses differ, or where
/// one path answers beyond the other's end.
pub fn first_difference(a: &Path, b: &Path) -> Option<u32> {
    let first = compare(a, b)?;
    // The silent hops before a destination may be routers that did not answer or a lost
    // answer of the destination itself: either reading that makes the two alike will do.
    let (sa, sb) = (without_lost_end(a), without_lost_end(b));
    if compare(&sa, b).is_none() || compare(a, &sb).is_none() || compare(&sa, &sb).is_none() {
        return None;
    }
    Some(first)
}

fn compare(a: &Path, b: &Path) -> Option<u32> {
    let len = a.hops.len().max(b.hops.len());
    for i in 0..len {
        let x = a.hops.get(i).copied().flatten();
        let y = b.hops.get(i).copied().flatten();
        let beyond_a = i >= a.hops.len();
        let beyond_b = i >= b.hops.len();
        let differs = match (x, y) {
            (Some(x), Some(y)) => x != y,
            // One path ended (reached or gave up) and the other still answers here: the route
            // is longer or shorter.
            (Some(_), None) => beyond_b && b.terminal == Terminal::Reached,
            (None, Some(_)) => beyond_a && a.terminal == Terminal::Reached,
            (None, None) => false,
        };
        if differs {
            return Some(i as u32 + 1);
        }
    }
    // Only how the path ends differs: at its last hop.
    (a.terminal != b.terminal).then_some(len.max(1) as u32)
}

/// Feeds one result to a series; returns the events it caused.
pub fn observe(state: &mut State, obs: &Observation, confirm: u32) -> Vec<Event> {
    let mut events = Vec::new();
    let confirm = confirm.max(1);
    let reached = obs.path.terminal == Terminal::Reached;
    match &state.current {
        None => state.current = Some((obs.path_id, obs.path.clone())),
        // The same route: silent-only differences are no change, and a variant where more
        // of its hops answered becomes the current one (the best-known picture of the route,
        // not the first one seen, which a lost reply may have left with a hole).
        Some((_, current)) if same_route(current, &obs.path) => {
            let (new, old) = (answering(&obs.path), answering(current));
            // More hops answering, or as many on a shorter path (the other one's destination
            // answer was lost and a later TTL's stood in).
            if new > old || (new == old && obs.path.hops.len() < current.hops.len()) {
                state.current = Some((obs.path_id, obs.path.clone()));
            }
            state.candidate = None;
        }
        // A break in reachability is not a new route: the reachability events tell it, and
        // the route before the break stays the one the next reached result is compared with.
        Some((_, current)) if current.terminal == Terminal::Reached && !reached => {}
        // The first time a destination that never answered here answers: the route it
        // reaches it by becomes the current one (told by `reachable` if it was alerted).
        Some((_, current)) if current.terminal != Terminal::Reached && reached => {
            state.current = Some((obs.path_id, obs.path.clone()));
            state.candidate = None;
        }
        Some((current_id, current)) => {
            let count = match &state.candidate {
                Some(c) if same_route(&c.path, &obs.path) => c.count + 1,
                _ => 1,
            };
            let since = match &state.candidate {
                Some(c) if count > 1 => c.since,
                _ => obs.at,
            };
            let (cand_id, cand_path) = match &state.candidate {
                Some(c) if count > 1 => (c.path_id, c.path.clone()),
                _ => (obs.path_id, obs.path.clone()),
            };
            if count >= confirm {
                events.push(Event::PathChange {
                    from_path: *current_id,
                    to_path: cand_id,
                    first_diff_ttl: first_difference(current, &cand_path).unwrap_or(1),
                    since,
                });
                state.current = Some((cand_id, cand_path));
                state.candidate = None;
            } else {
                state.candidate = Some(Candidate {
                    path_id: cand_id,
                    path: cand_path,
                    count,
                    since,
                });
            }
        }
    }

    if reached {
        state.unreached_streak = 0;
        state.ever_reached = true;
        if state.unreachable_alerted {
            state.unreachable_alerted = false;
            events.push(Event::Reachable);
        }
    } else {
        state.unreached_streak += 1;
        if state.ever_reached && !state.unreachable_alerted && state.unreached_streak >= confirm {
            state.unreachable_alerted = true;
            events.push(Event::Unreachable {
                results: state.unreached_streak,
            });
        }
    }

    match (obs.rtt_ns, obs.rtt_alert_ns) {
        (Some(rtt), Some(threshold)) if rtt > threshold => {
            state.rtt_high_streak += 1;
            if !state.rtt_alerted && state.rtt_high_streak >= confirm {
                state.rtt_alerted = true;
                events.push(Event::RttHigh {
                    rtt_ns: rtt,
                    threshold_ns: threshold,
                });
            }
        }
        (Some(rtt), _) => {
            state.rtt_high_streak = 0;
            if state.rtt_alerted {
                state.rtt_alerted = false;
                events.push(Event::RttNormal { rtt_ns: rtt });
            }
        }
        (None, _) => {}
    }
    events
}

/// The ASes of `p` without its gaps.
pub fn as_numbers(p: &[Option<u32>]) -> Vec<u32> {
    p.iter().flatten().copied().collect()
}

/// True when `pattern`, each gap standing for any ASes or none, can be `plain`.
fn as_fits(pattern: &[Option<u32>], plain: &[u32]) -> bool {
    // fit[j]: the pattern so far can be plain[..j].
    let mut fit = vec![false; plain.len() + 1];
    fit[0] = true;
    for token in pattern {
        match token {
            None => {
                for j in 1..fit.len() {
                    fit[j] = fit[j] || fit[j - 1];
                }
            }
            Some(asn) => {
                for j in (1..fit.len()).rev() {
                    fit[j] = fit[j - 1] && plain[j - 1] == *asn;
                }
                fit[0] = false;
            }
        }
    }
    fit[plain.len()]
}

/// True when the two AS paths may be the same: equal but where one has a gap.
pub fn same_as_path(a: &[Option<u32>], b: &[Option<u32>]) -> bool {
    as_fits(a, &as_numbers(b)) || as_fits(b, &as_numbers(a))
}

fn gaps(p: &[Option<u32>]) -> usize {
    p.iter().filter(|t| t.is_none()).count()
}

/// Feeds the AS path of one reached result to a series' AS-path detector, as `observe` does
/// with its path: a new AS path must be seen `confirm` times in a row, and one that differs
/// only where a gap is, is the same (the one with fewer gaps is kept, the better picture).
pub fn observe_as(track: &mut AsTrack, hops: &AsHops, at: i64, confirm: u32) -> Option<Event> {
    if hops.iter().all(Option::is_none) {
        return None;
    }
    let Some(current) = &track.current else {
        track.current = Some(hops.clone());
        return None;
    };
    if same_as_path(current, hops) {
        if gaps(hops) < gaps(current) && as_numbers(hops).len() >= as_numbers(current).len() {
            track.current = Some(hops.clone());
        }
        track.candidate = None;
        return None;
    }
    let (path, count, since) = match track.candidate.take() {
        Some((c, n, since)) if same_as_path(&c, hops) => {
            let better = if gaps(hops) < gaps(&c) {
                hops.clone()
            } else {
                c
            };
            (better, n + 1, since)
        }
        _ => (hops.clone(), 1, at),
    };
    if count >= confirm.max(1) {
        let event = Event::AsPathChange {
            from: as_numbers(current),
            to: as_numbers(&path),
            since,
        };
        track.current = Some(path);
        return Some(event);
    }
    track.candidate = Some((path, count, since));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str, terminal: Terminal) -> Path {
        Path {
            hops: text
                .split_whitespace()
                .map(|h| {
                    if h == "*" {
                        None
                    } else {
                        Some(format!("10.0.0.{h}").parse().unwrap())
                    }
                })
                .collect(),
            terminal,
        }
    }

    fn obs(id: i64, p: &Path, at: i64) -> Observation {
        Observation {
            path_id: id,
            path: p.clone(),
            at,
            rtt_ns: None,
            rtt_alert_ns: None,
        }
    }

    #[test]
    fn a_destination_placed_too_far_after_a_lost_answer_is_the_same_route() {
        let real = path("1 2 3", Terminal::Reached);
        let long = path("1 2 * 3", Terminal::Reached);
        let longer = path("1 2 * * 3", Terminal::Reached);
        assert!(same_route(&real, &long));
        assert!(same_route(&long, &longer));
        // A router really between them is still a different route.
        assert_eq!(
            first_difference(&real, &path("1 2 4 3", Terminal::Reached)),
            Some(3)
        );
        // Fed one after another: no event, and the current path is the real one, whichever
        // came first.
        let mut s = State::default();
        let mut events = Vec::new();
        for (i, p) in [&long, &real, &longer, &long, &long]
            .into_iter()
            .enumerate()
        {
            events.extend(observe(&mut s, &obs(i as i64, p, i as i64), 2));
        }
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(s.current.as_ref().map(|c| &c.1), Some(&real));
    }

    #[test]
    fn silent_hops_do_not_make_a_different_route() {
        let a = path("1 2 3", Terminal::Reached);
        assert!(same_route(&a, &path("1 * 3", Terminal::Reached)));
        assert!(same_route(&a, &path("* * 3", Terminal::Reached)));
        assert!(!same_route(&a, &path("1 4 3", Terminal::Reached)));
        assert_eq!(
            first_difference(&a, &path("1 4 3", Terminal::Reached)),
            Some(2)
        );
        assert_eq!(
            first_difference(&a, &path("1 2 5 3", Terminal::Reached)),
            Some(3)
        );
        assert_eq!(
            first_difference(&a, &path("1 2 3 9", Terminal::Reached)),
            Some(4)
        );
        assert!(!same_route(&a, &path("1 2 3", Terminal::GaveUp)));
        // A gave-up trace whose tail is silent matches the same prefix.
        assert!(same_route(
            &path("1 2", Terminal::GaveUp),
            &path("1 2 * *", Terminal::GaveUp)
        ));
    }

    #[test]
    fn a_new_path_counts_only_when_confirmed() {
        let a = path("1 2 3", Terminal::Reached);
        let b = path("1 7 3", Terminal::Reached);
        let mut s = State::default();
        let mut events = Vec::new();
        for t in 0..5 {
            events.extend(observe(&mut s, &obs(1, &a, t), 2));
        }
        events.extend(observe(&mut s, &obs(2, &b, 5), 2));
        assert!(events.is_empty(), "one B is not yet a change");
        events.extend(observe(&mut s, &obs(1, &a, 6), 2));
        events.extend(observe(&mut s, &obs(2, &b, 7), 2));
        assert!(events.is_empty(), "an A in between resets the count");
        for t in 8..11 {
            events.extend(observe(&mut s, &obs(2, &b, t), 2));
        }
        assert_eq!(
            events,
            vec![Event::PathChange {
                from_path: 1,
                to_path: 2,
                first_diff_ttl: 2,
                since: 7
            }]
        );
        assert_eq!(s.current.as_ref().unwrap().0, 2);
    }

    #[test]
    fn silent_hop_variants_raise_nothing() {
        let a = path("1 2 3 4", Terminal::Reached);
        let mut s = State::default();
        let mut events = observe(&mut s, &obs(1, &a, 0), 2);
        for (i, v) in ["1 * 3 4", "* 2 3 4", "1 2 * *", "1 * * 4"]
            .iter()
            .enumerate()
        {
            events.extend(observe(
                &mut s,
                &obs(10 + i as i64, &path(v, Terminal::Reached), 1),
                2,
            ));
            events.extend(observe(
                &mut s,
                &obs(10 + i as i64, &path(v, Terminal::Reached), 2),
                2,
            ));
        }
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn the_current_path_becomes_the_variant_with_most_answers() {
        // The first result lost hop 2's reply; later ones of the same route have it.
        let mut s = State::default();
        let holed = path("1 * 3 4", Terminal::Reached);
        let mut events = observe(&mut s, &obs(1, &holed, 0), 2);
        events.extend(observe(
            &mut s,
            &obs(2, &path("1 2 * 4", Terminal::Reached), 1),
            2,
        ));
        assert_eq!(s.current.as_ref().unwrap().0, 1, "as many answers: no swap");
        events.extend(observe(
            &mut s,
            &obs(3, &path("1 2 3 4", Terminal::Reached), 2),
            2,
        ));
        assert_eq!(s.current.as_ref().unwrap().0, 3);
        events.extend(observe(&mut s, &obs(1, &holed, 3), 2));
        assert_eq!(
            s.current.as_ref().unwrap().0,
            3,
            "a hole again keeps the full one"
        );
        assert!(events.is_empty(), "{events:?}");
        // A change is still judged against it.
        for at in 4..6 {
            events.extend(observe(
                &mut s,
                &obs(4, &path("1 9 3 4", Terminal::Reached), at),
                2,
            ));
        }
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0],
            Event::PathChange {
                from_path: 3,
                to_path: 4,
                first_diff_ttl: 2,
                ..
            }
        ));
    }

    #[test]
    fn unreachable_and_back() {
        let up = path("1 2", Terminal::Reached);
        let down = path("1", Terminal::GaveUp);
        let mut s = State::default();
        let mut kinds = Vec::new();
        for (p, id) in [
            (&up, 1),
            (&down, 2),
            (&down, 2),
            (&down, 2),
            (&up, 1),
            (&up, 1),
        ] {
            kinds.extend(observe(&mut s, &obs(id, p, 0), 2).iter().map(Event::kind));
        }
        // One incident, one alert each way: no path change to the broken route and back.
        assert_eq!(kinds, vec!["unreachable", "reachable"]);
    }

    #[test]
    fn a_route_that_changed_during_an_outage_is_one_change_after_it() {
        let before = path("1 2 3 4 5 6", Terminal::Reached);
        let broken = path("1 2 3 4 5 6", Terminal::Unreachable("!H".into()));
        let after = path("1 2 3 9 5 6", Terminal::Reached);
        let mut s = State::default();
        let mut events = Vec::new();
        let feed = [
            (&before, 1),
            (&before, 1),
            (&broken, 2),
            (&broken, 2),
            (&broken, 2),
            (&after, 3),
            (&after, 3),
        ];
        for (t, (p, id)) in feed.into_iter().enumerate() {
            events.extend(observe(&mut s, &obs(id, p, t as i64), 2));
        }
        let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds, vec!["unreachable", "reachable", "path-change"]);
        assert!(matches!(
            events[2],
            Event::PathChange {
                from_path: 1,
                to_path: 3,
                first_diff_ttl: 4,
                ..
            }
        ));
        // Where only the end differs, the first difference is the last hop, not beyond it.
        assert_eq!(first_difference(&before, &broken), Some(6));
    }

    #[test]
    fn rtt_over_the_threshold_alerts_once_and_clears() {
        let a = path("1", Terminal::Reached);
        let mut s = State::default();
        let mut kinds = Vec::new();
        for rtt in [5, 50, 60, 70, 6] {
            let o = Observation {
                rtt_ns: Some(rtt),
                rtt_alert_ns: Some(40),
                ..obs(1, &a, 0)
            };
            kinds.extend(observe(&mut s, &o, 2).iter().map(Event::kind));
        }
        assert_eq!(kinds, vec!["rtt-high", "rtt-normal"]);
    }

    /// `"1 2 ? 3"`: ASes 1, 2, a gap, 3.
    fn asp(text: &str) -> AsHops {
        text.split_whitespace()
            .map(|t| {
                if t == "?" {
                    None
                } else {
                    Some(t.parse().unwrap())
                }
            })
            .collect()
    }

    #[test]
    fn a_gap_may_hide_any_ases_or_none() {
        assert!(same_as_path(&asp("1 2 3"), &asp("1 2 3")));
        assert!(same_as_path(&asp("1 ? 3"), &asp("1 2 3")));
        assert!(same_as_path(&asp("1 2 3"), &asp("1 ? 3")));
        assert!(same_as_path(&asp("1 ? 3"), &asp("1 3")));
        assert!(same_as_path(&asp("1 ? 4"), &asp("1 2 3 4")));
        assert!(same_as_path(&asp("1 ? 3"), &asp("1 ? 3")));
        assert!(!same_as_path(&asp("1 2 3"), &asp("1 4 3")));
        assert!(!same_as_path(&asp("1 ? 3"), &asp("1 2 4")));
        assert!(!same_as_path(&asp("1 2"), &asp("1 2 3")));
        assert!(!same_as_path(&asp("2 ? 3"), &asp("1 2 3")));
    }

    #[test]
    fn an_as_path_change_is_told_once_confirmed_and_gaps_are_no_change() {
        let mut t = AsTrack::default();
        let mut events = Vec::new();
        let rounds = [
            "64500 13335 15169",
            // A silent transit hop, then the known path: no change.
            "64500 ? 15169",
            "64500 13335 15169",
            // Nothing but special-use and silent hops: not an AS path.
            "",
            // A new transit AS, once: not yet.
            "64500 3356 15169",
            "64500 13335 15169",
            // Now twice in a row (the second with a gap it fits).
            "64500 3356 15169",
            "64500 3356 ? 15169",
            "64500 3356 15169",
        ];
        for (i, r) in rounds.iter().enumerate() {
            events.extend(observe_as(&mut t, &asp(r), i as i64, 2));
        }
        assert_eq!(
            events,
            vec![Event::AsPathChange {
                from: vec![64500, 13335, 15169],
                to: vec![64500, 3356, 15169],
                since: 6,
            }]
        );
        assert_eq!(t.current, Some(asp("64500 3356 15169")));
        assert_eq!(t.candidate, None);
    }

    #[test]
    fn the_as_path_with_fewer_gaps_is_kept() {
        let mut t = AsTrack::default();
        assert_eq!(observe_as(&mut t, &asp("1 ? 3"), 0, 2), None);
        assert_eq!(observe_as(&mut t, &asp("1 2 3"), 1, 2), None);
        assert_eq!(t.current, Some(asp("1 2 3")));
        // Which now tells a different AS in the gap.
        assert_eq!(
            observe_as(&mut t, &asp("1 4 3"), 2, 1).map(|e| e.kind()),
            Some("as-path-change")
        );
    }
}
