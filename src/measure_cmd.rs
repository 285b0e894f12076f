//! `dist-traceroute measure HOST --from …`: an on-demand measurement through a master's API,
//! each slave's path printed as it arrives (like traceroute), then one merged view.

use crate::trace_cmd::emit;
use anyhow::{Context, bail};
use base64::Engine as _;
use dist_traceroute::cli::MeasureArgs;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How often the status is asked for while slaves work.
const POLL: Duration = Duration::from_millis(250);
/// How long past the measurement's own timeout the command keeps asking before it gives up
/// (the master says timed-out itself at its deadline; this covers a master that went away).
const GRACE: Duration = Duration::from_secs(15);

pub fn run(a: &MeasureArgs) -> anyhow::Result<()> {
    let base = dist_traceroute::slave::client::base_url(&a.master, 8990, false);
    let authorization = authorization(a)?;
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(file) = &a.ca {
        let certs = dist_traceroute::slave::client::load_ca(file)?;
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .user_agent(dist_traceroute::slave::report::agent())
            .build(),
    );
    let ask = request_body(a)?;
    let url = format!("{base}/api/v1/measurements");
    let mut req = agent.post(&url).header("Content-Type", "application/json");
    if let Some(h) = &authorization {
        req = req.header("Authorization", h);
    }
    let mut resp = req
        .send(ask.to_string().as_bytes())
        .with_context(|| format!("cannot reach the master at {base}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if status != 202 {
        bail!(
            "the master refused the measurement ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    let id = body["id"]
        .as_str()
        .context("the master's answer has no measurement id")?
        .to_owned();
    if !a.json {
        let names: Vec<&str> = body["slaves"]
            .as_array()
            .map(|s| s.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        emit(&format!(
            "measurement {id}: {} from {} slave{} ({})\n",
            a.host,
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        ))?;
    }
    let status_url = format!("{base}/api/v1/measurements/{id}");
    let give_up = Instant::now() + a.timeout + GRACE;
    let mut shown = Shown::default();
    let last = loop {
        let mut req = agent.get(&status_url);
        if let Some(h) = &authorization {
            req = req.header("Authorization", h);
        }
        let view = match req.call() {
            Ok(mut r) if r.status() == 200 => r.body_mut().read_json::<Value>().ok(),
            Ok(r) => bail!("the master answered {} for {status_url}", r.status()),
            // A master that restarts or blips: ask again until the time is up.
            Err(_) => None,
        };
        if let Some(v) = view {
            if !a.json {
                emit(&shown.news(&v))?;
            }
            if v["status"] == "done" {
                break v;
            }
        }
        if Instant::now() > give_up {
            bail!("measurement {id} was still running when the time was up: see {status_url}");
        }
        std::thread::sleep(POLL);
    };
    let results = all_results(&last);
    if a.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&last)?))?;
    } else if !results.is_empty() {
        emit(&merged(&results, a.flows > 1))?;
    }
    if results.is_empty() {
        bail!("no slave delivered a result for measurement {id}");
    }
    Ok(())
}

/// The `Authorization` header: a bearer token from --token-file or DT_TOKEN, or Basic for
/// --user with its password from --passwd-file, DT_PASSWORD or a prompt on a terminal.
fn authorization(a: &MeasureArgs) -> anyhow::Result<Option<String>> {
    if let Some(user) = &a.user {
        let password = match &a.passwd_file {
            Some(f) => dist_traceroute::secret_from_file(f, "--passwd-file")?,
            None => match std::env::var("DT_PASSWORD") {
                Ok(p) if !p.is_empty() => p,
                _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                    rpassword::prompt_password(format!("password of {user}: "))?
                }
                _ => bail!("--user {user} needs its password: --passwd-file FILE or DT_PASSWORD"),
            },
        };
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        return Ok(Some(format!("Basic {pair}")));
    }
    let token = match &a.token_file {
        Some(f) => Some(dist_traceroute::secret_from_file(f, "--token-file")?),
        None => std::env::var("DT_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    Ok(token.map(|t| format!("Bearer {t}")))
}

/// The JSON body of `POST /api/v1/measurements` for the command line.
fn request_body(a: &MeasureArgs) -> anyhow::Result<Value> {
    let names: Vec<&str> = a
        .from
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let slaves = match (names.as_slice(), a.limit) {
        ([], _) => bail!("--from needs 'all' or slave names and tags separated by commas"),
        (["all"], None) => json!("all"),
        (["all"], Some(n)) => json!(n),
        (names, limit) => {
            let n = limit.map_or(names.len(), |l| (l as usize).min(names.len()));
            json!(names[..n])
        }
    };
    let mut ask = json!({
        "target": a.host,
        "slaves": slaves,
        "flows": a.flows,
        "timeout_s": a.timeout.as_secs_f64().ceil() as u64,
    });
    if let Some(p) = a.protocol {
        ask["protocol"] = json!(p.to_string());
    }
    if let Some(p) = a.port {
        ask["port"] = json!(p);
    }
    if let Some(q) = a.queries {
        ask["queries"] = json!(q);
    }
    if let Some(m) = a.max_hops {
        ask["max_hops"] = json!(m);
    }
    Ok(ask)
}

/// What has been printed of a measurement so far.
#[derive(Default)]
struct Shown {
    results: HashSet<String>,
    ended: HashSet<String>,
}

impl Shown {
    /// The text for what is new in `view`: each result not printed yet, and each slave that
    /// ended without one (offline, timed out, failed).
    fn news(&mut self, view: &Value) -> String {
        let mut out = String::new();
        for s in view["slaves"].as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("?");
            for r in s["results"].as_array().into_iter().flatten() {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                if self.results.insert(id) {
                    out.push_str(&path_text(r));
                }
            }
            let state = s["state"].as_str().unwrap_or_default();
            if matches!(state, "offline" | "timed-out" | "failed")
                && self.ended.insert(name.to_owned())
            {
                let _ = write!(out, "\n{name}: {state}");
                if let Some(why) = s["reason"].as_str() {
                    let _ = write!(out, " ({why})");
                }
                out.push('\n');
            }
        }
        out
    }
}

/// Every result of a measurement's status.
fn all_results(view: &Value) -> Vec<Value> {
    view["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["results"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// An answering address at one TTL: (address, host, per-probe RTTs in ms, `None` = lost).
type Answer = (String, String, Vec<Option<f64>>);

/// The hops of a stored result by TTL.
fn hops_by_ttl(r: &Value) -> BTreeMap<u64, Vec<Answer>> {
    let mut by_ttl: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for h in r["hops"].as_array().into_iter().flatten() {
        let Some(ttl) = h["ttl"].as_u64() else {
            continue;
        };
        let rtts: Vec<Option<f64>> = match h["replies"].as_array() {
            Some(rs) => rs
                .iter()
                .map(|x| x.as_i64().map(|ns| ns as f64 / 1e6))
                .collect(),
            None => vec![h["rtt_ns"].as_i64().map(|ns| ns as f64 / 1e6)],
        };
        by_ttl.entry(ttl).or_default().push((
            h["address"].as_str().unwrap_or_default().to_owned(),
            h["host"].as_str().unwrap_or_default().to_owned(),
            rtts,
        ));
    }
    by_ttl
}

/// One result as traceroute prints a path: a heading with the slave, then a line per TTL.
fn path_text(r: &Value) -> String {
    let slave = r["slave"].as_str().unwrap_or("?");
    let dest = r["destination"]
        .as_str()
        .or(r["target_address"].as_str())
        .unwrap_or("?");
    let mut out = format!(
        "\n{slave}: traceroute to {} ({dest}), {} probes, flow {}\n",
        r["target_address"].as_str().unwrap_or("?"),
        r["protocol"].as_str().unwrap_or("udp"),
        r["flow"].as_i64().unwrap_or(0)
    );
    if let Some(e) = r["error"].as_str() {
        let _ = writeln!(out, "   could not trace: {e}");
        return out;
    }
    let by_ttl = hops_by_ttl(r);
    let last = by_ttl.keys().next_back().copied().unwrap_or(0);
    for ttl in 1..=last {
        let _ = write!(out, "{ttl:2} ");
        match by_ttl.get(&ttl) {
            None => out.push_str(" *"),
            Some(hops) => {
                for (address, host, rtts) in hops {
                    if host.is_empty() {
                        let _ = write!(out, " {address}");
                    } else {
                        let _ = write!(out, " {host} ({address})");
                    }
                    for rtt in rtts {
                        match rtt {
                            Some(ms) => {
                                let _ = write!(out, "  {ms:.3} ms");
                            }
                            None => out.push_str(" *"),
                        }
                    }
                }
            }
        }
        out.push('\n');
    }
    if r["success"] != true {
        match r["unreachable"].as_str() {
            Some(u) => {
                let _ = writeln!(out, "   destination unreachable ({u})");
            }
            None => out.push_str("   the destination did not answer\n"),
        }
    }
    out
}

/// The merged view: per TTL, each address seen there and the slaves (with the flow when
/// there are several) that saw it; `*` for those whose path reached past that TTL without
/// an answer at it.
fn merged(results: &[Value], with_flow: bool) -> String {
    let label = |r: &Value| {
        let slave = r["slave"].as_str().unwrap_or("?");
        if with_flow {
            format!("{slave}/{}", r["flow"].as_i64().unwrap_or(0))
        } else {
            slave.to_owned()
        }
    };
    let traced: Vec<(String, BTreeMap<u64, Vec<_>>)> = results
        .iter()
        .filter(|r| r["error"].is_null())
        .map(|r| (label(r), hops_by_ttl(r)))
        .collect();
    let slaves: HashSet<&str> = results.iter().filter_map(|r| r["slave"].as_str()).collect();
    let mut out = format!(
        "\nmerged: {} result{} from {} slave{}\n",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        slaves.len(),
        if slaves.len() == 1 { "" } else { "s" },
    );
    let last = traced
        .iter()
        .filter_map(|(_, h)| h.keys().next_back().copied())
        .max()
        .unwrap_or(0);
    for ttl in 1..=last {
        // Address → who saw it, in order of first sight; then who was silent there.
        let mut seen: Vec<(String, Vec<String>)> = Vec::new();
        let mut silent: Vec<String> = Vec::new();
        for (who, hops) in &traced {
            match hops.get(&ttl) {
                Some(hs) => {
                    for (address, _, _) in hs {
                        match seen.iter_mut().find(|(a, _)| a == address) {
                            Some((_, w)) => w.push(who.clone()),
                            None => seen.push((address.clone(), vec![who.clone()])),
                        }
                    }
                }
                None if hops.keys().next_back().is_some_and(|&l| l > ttl) => {
                    silent.push(who.clone())
                }
                None => {}
            }
        }
        let width = seen.iter().map(|(a, _)| a.len()).max().unwrap_or(1).max(15);
        let mut first = true;
        for (address, who) in seen
            .into_iter()
            .chain((!silent.is_empty()).then(|| ("*".to_owned(), silent)))
        {
            let head = if first {
                format!("{ttl:2}")
            } else {
                "  ".into()
            };
            first = false;
            let _ = writeln!(out, "{head}  {address:width$}  {}", who.join(" "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(slave: &str, flow: i64, hops: &[(u64, &str)], success: bool) -> Value {
        let hops: Vec<Value> = hops
            .iter()
            .map(|(ttl, a)| json!({"ttl": ttl, "address": a, "host": "", "rtt_ns": 1_500_000, "replies": [1_500_000, null]}))
            .collect();
        json!({"id": format!("{slave}-{flow}"), "slave": slave, "flow": flow, "protocol": "icmp",
               "target_address": "192.0.2.9", "destination": "192.0.2.9", "success": success,
               "error": null, "hops": hops})
    }

    #[test]
    fn the_merged_view_says_who_saw_which_address_and_who_was_silent() {
        let rs = [
            result(
                "s1",
                0,
                &[(1, "10.0.0.1"), (2, "10.1.0.1"), (3, "192.0.2.9")],
                true,
            ),
            result("s2", 0, &[(1, "10.0.0.1"), (3, "192.0.2.9")], true),
            result("s3", 0, &[(1, "10.0.0.1"), (2, "10.2.0.1")], false),
        ];
        let text = merged(&rs, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "merged: 3 results from 3 slaves");
        assert!(lines[2].starts_with(" 1  10.0.0.1") && lines[2].ends_with("  s1 s2 s3"));
        assert!(lines[3].starts_with(" 2  10.1.0.1") && lines[3].ends_with("  s1"));
        assert!(lines[4].starts_with("    10.2.0.1") && lines[4].ends_with("  s3"));
        // s2 went on past TTL 2 without an answer there; s3's path ended at 2.
        assert!(lines[5].trim_start().starts_with('*') && lines[5].ends_with("  s2"));
        assert!(lines[6].starts_with(" 3  192.0.2.9") && lines[6].ends_with("  s1 s2"));
        assert_eq!(lines.len(), 7);
        let flows = merged(
            &[
                result("s1", 0, &[(1, "a")], true),
                result("s1", 1, &[(1, "b")], true),
            ],
            true,
        );
        assert!(flows.contains("results from 1 slave\n"));
        assert!(flows.contains("a                s1/0") && flows.contains("b                s1/1"));
    }

    #[test]
    fn a_path_prints_like_traceroute_and_each_result_once() {
        let r = result("s2", 0, &[(1, "10.0.0.1"), (3, "192.0.2.9")], false);
        let text = path_text(&r);
        assert!(text.contains("s2: traceroute to 192.0.2.9 (192.0.2.9), icmp probes, flow 0\n"));
        assert!(text.contains("\n 1  10.0.0.1  1.500 ms *\n 2  *\n 3  192.0.2.9  1.500 ms *\n"));
        assert!(text.ends_with("the destination did not answer\n"));
        let view = json!({"slaves": [
            {"name": "s2", "state": "done", "results": [r]},
            {"name": "go1", "state": "offline", "reason": "not ours", "results": []},
        ]});
        let mut shown = Shown::default();
        let first = shown.news(&view);
        assert!(first.contains("s2: traceroute") && first.contains("\ngo1: offline (not ours)\n"));
        assert_eq!(shown.news(&view), "");
    }
}
