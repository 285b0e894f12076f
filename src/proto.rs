//! The wire contract between slave and master: JSON bodies of the original protocol plus our
//! additions, which always go in new optional fields so an original Go peer still decodes them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A slave's credentials, the body of `POST /config/` and the `Creds` of a result.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Creds {
    /// Slave name as listed in `dt-slaves.json`.
    pub name: String,
    /// The shared secret.
    pub password: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("Creds")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The body of `POST /config/`: the credentials, plus our slave's status in new fields that
/// an original master ignores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigRequest {
    /// Slave name.
    pub name: String,
    /// The shared secret.
    pub password: String,
    /// Extension: the slave's program and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Extension: results waiting in the slave's spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_depth: Option<u64>,
    /// Extension: results the slave dropped since it was installed (spool full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u64>,
    /// Extension: the tags the slave gives itself (`-tags`): shown by the master, which
    /// selects targets by the tags of its own list only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl std::fmt::Debug for ConfigRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRequest")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("agent", &self.agent)
            .field("spool_depth", &self.spool_depth)
            .field("dropped_total", &self.dropped_total)
            .finish()
    }
}

/// The body of `POST /api/v1/results:batch`: many results of one slave at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchRequest {
    /// Who sends them; each result's own `Creds` must name the same slave.
    pub creds: Creds,
    /// The results, each with its own ID.
    pub results: Vec<TraceResult>,
    /// Results waiting in the slave's spool after this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_depth: Option<u64>,
    /// Results the slave dropped since it was installed (spool full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u64>,
}

/// One on-demand job: a trace (per flow) to `target` that an operator asked for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobSpec {
    /// The measurement's ID; the results carry it as `Measurement`.
    #[serde(rename = "ID")]
    pub id: String,
    /// Host name or address.
    pub target: String,
    /// `udp`, `icmp` or `tcp`.
    pub protocol: String,
    /// Destination port (UDP/TCP), when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Flows to trace (one result each, flows 0..N).
    pub flows: u16,
    /// Probes per hop.
    pub queries: u8,
    /// Highest TTL.
    pub max_hops: u8,
    /// Per-probe timeout, ms.
    pub timeout_ms: u32,
}

/// The body of `POST /api/v1/jobs`: our slave asks for on-demand jobs (a long-poll).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobsRequest {
    /// Who asks.
    pub creds: Creds,
    /// How long the master may hold the request when there is no job, seconds (at most 25).
    #[serde(default)]
    pub wait: u32,
    /// Jobs handed out before that this slave runs now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

/// The answer to `POST /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobsAnswer {
    /// New jobs (none when the wait ran out).
    pub jobs: Vec<JobSpec>,
}

/// What became of one result of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Stored now.
    Stored,
    /// Stored before (same ID).
    Duplicate,
    /// Never acceptable: do not send again.
    Rejected,
    /// Not stored this time: send again later.
    Retry,
}

/// The answer for one result of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchItem {
    /// The result's ID as sent.
    #[serde(rename = "ID")]
    pub id: String,
    /// What became of it.
    pub status: ItemStatus,
    /// Why, for `rejected` and `retry`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// The answer to `POST /api/v1/results:batch`, one item per result in the order sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BatchAnswer {
    /// Per result.
    pub results: Vec<BatchItem>,
}

/// The targets document a slave receives from `POST /config/` (`dt-targets.json`).
///
/// Unknown fields are accepted here: a newer master may send more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetsDoc {
    /// Where the original slave was told to post results (ignored, as the Go slave does).
    #[serde(rename = "ReportURL", default)]
    pub report_url: String,
    /// Target UUID to target.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetSpec>,
    /// Extra rounds for unanswered hops.
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// Highest TTL probed.
    #[serde(default = "default_max_hops")]
    pub max_hops: u8,
    /// Per-probe timeout in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_retries() -> u8 {
    1
}
fn default_max_hops() -> u8 {
    30
}
fn default_timeout_ms() -> u32 {
    500
}

/// One target of the targets document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetSpec {
    /// Display name (alphanumeric in the original).
    pub name: String,
    /// Host name or IP literal.
    pub address: String,
    /// Extension: probe protocol (`udp`, `icmp`, `tcp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Extension: destination port for UDP/TCP probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Extension: how often this target is traced, a duration like `"30s"` or `"5m"`
    /// (humantime); the slave's `-interval` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Extension: how many flows (ECMP branches, flow numbers 0..N) are traced each round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u16>,
    /// Extension: `"mda"` discovers every load-balanced branch each round (one result with
    /// the graph) instead of tracing fixed flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    /// Extension: the confidence of that discovery, percent (default 95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

/// The target a result belongs to, as the original sends it (name and address only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TargetRef {
    /// Target name.
    pub name: String,
    /// Target address as configured.
    pub address: String,
}

/// The ID of the one made-up result the original Go slave sends for every target under
/// `-zDebugResults` (with a fixed 2019 `DateTime` and a made-up 17-hop path). It carries no
/// `Debug` field, so the master knows it by this ID.
pub const GO_DEBUG_RESULT_ID: &str = "d9bbc544-eabe-4536-a9ed-ec6cbdaaedb0";

/// One trace result, the body of `POST /results/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TraceResult {
    /// Who sends it.
    pub creds: Creds,
    /// A fresh UUID per result; repeats of one ID are stored once.
    #[serde(rename = "ID")]
    pub id: String,
    /// RFC 3339 time the trace started, with the slave's local offset.
    pub date_time: String,
    /// The traced target.
    pub target: TargetRef,
    /// True when the destination answered.
    pub success: bool,
    /// Highest TTL that matters (1..100 for the original master).
    pub hop_count: i64,
    /// Hops that answered (the original lists only those; a missing TTL is a silent hop).
    #[serde(default)]
    pub hops: Vec<HopResult>,
    /// Extension: the target's UUID in the targets document.
    #[serde(rename = "TargetID", default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    /// Extension: the probe protocol used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Extension: the flow number of the probes (Paris traceroute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<u16>,
    /// Extension: the resolved destination address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Extension: probes sent per hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queries: Option<u8>,
    /// Extension: the unreachable annotation (`!H`, `!N`, `!X`, …) that ended the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    /// Extension: why the trace could not run (name resolution, socket error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Extension: the sending program and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Extension: how long the trace took, in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<i64>,
    /// Extension: the local address the probes left from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// Extension: true for a made-up result (`-zDebugResults`), which is no measurement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub debug: bool,
    /// Extension: the on-demand measurement this result belongs to (no `TargetID` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Extension: the branches a multipath discovery found this round (the result's own hops
    /// are flow 0's path, which an original master reads as the one path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<Multipath>,
}

/// The graph of one multipath discovery: every address answering at each TTL over the flows
/// traced, and which led to which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Multipath {
    /// The confidence asked for, 0..1.
    pub confidence: f64,
    /// How many flows were traced (flow 0, whose path is the result's, and others whose
    /// numbers change from round to round).
    pub flows: u16,
    /// Probes sent over all of them.
    pub probes: u64,
    /// True when the stopping rule was met at every node (false: the flow budget ran out).
    pub complete: bool,
    /// The nodes, by TTL then address.
    #[serde(default)]
    pub nodes: Vec<MultipathNode>,
    /// The links between nodes at consecutive TTLs.
    #[serde(default)]
    pub links: Vec<MultipathLink>,
}

/// One address answering at one TTL of a multipath graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultipathNode {
    /// The TTL.
    #[serde(rename = "TTL")]
    pub ttl: u8,
    /// The address.
    #[serde(rename = "IP")]
    pub ip: String,
    /// The flows that found it there.
    #[serde(default)]
    pub flows: Vec<u16>,
    /// Its RTTs over those flows, nanoseconds.
    #[serde(rename = "RTTs", default)]
    pub rtts: Vec<i64>,
}

/// Two nodes at consecutive TTLs one or more flows went through one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultipathLink {
    /// The TTL of `From`.
    #[serde(rename = "TTL")]
    pub ttl: u8,
    /// The nearer address.
    pub from: String,
    /// The next one.
    pub to: String,
    /// The flows that took it.
    #[serde(default)]
    pub flows: Vec<u16>,
}

/// One answering hop of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HopResult {
    /// Always true in the original (it lists only hops that answered).
    #[serde(default)]
    pub success: bool,
    /// IPv4 address as four numbers; `[0,0,0,0]` for IPv6 hops, whose address is in `IP`.
    pub address: [u8; 4],
    /// Reverse name or "".
    #[serde(default)]
    pub host: String,
    /// Reply size in bytes.
    #[serde(default)]
    pub n: i64,
    /// RTT in nanoseconds.
    #[serde(default)]
    pub elapsed_time: i64,
    /// TTL of the probe.
    #[serde(rename = "TTL")]
    pub ttl: i64,
    /// Extension: the hop address as text (IPv4 or IPv6).
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Extension: every probe at this TTL, its RTT in nanoseconds or null when lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<Option<i64>>>,
    /// Extension: `reached`, `time-exceeded`, or an unreachable annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Extension: the TTL the reply arrived with.
    #[serde(rename = "ReplyTTL", default, skip_serializing_if = "Option::is_none")]
    pub reply_ttl: Option<u8>,
    /// Extension: the MPLS label stack (RFC 4950) the hop's reply reported, top first.
    #[serde(rename = "MPLS", default, skip_serializing_if = "Option::is_none")]
    pub mpls: Option<Vec<MplsLabel>>,
}

/// One MPLS label stack entry of a hop's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MplsLabel {
    /// The label (20 bits).
    #[serde(rename = "Label")]
    pub label: u32,
    /// Traffic class (3 bits).
    #[serde(rename = "TC")]
    pub tc: u8,
    /// Bottom of stack.
    #[serde(rename = "S")]
    pub s: bool,
    /// The entry's TTL.
    #[serde(rename = "TTL")]
    pub ttl: u8,
}

impl HopResult {
    /// The hop's address: `IP` when present and valid, else the four-number `Address`.
    pub fn addr(&self) -> IpAddr {
        self.ip
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(IpAddr::from(self.address))
    }
}

/// The master's answer to `POST /results/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResultAnswer {
    /// True when stored (or already stored).
    pub success: bool,
    /// Why not, or "".
    pub error: String,
    /// False when sending the same result again can never succeed.
    pub retry_possible: bool,
}

impl ResultAnswer {
    /// The answer for a stored result.
    pub fn stored() -> ResultAnswer {
        ResultAnswer {
            success: true,
            error: String::new(),
            retry_possible: true,
        }
    }

    /// The answer for a result that will never be accepted.
    pub fn rejected(error: impl Into<String>) -> ResultAnswer {
        ResultAnswer {
            success: false,
            error: error.into(),
            retry_possible: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact body of an original Go slave from PROTOCOL.md.
    const GO_RESULT: &str = r#"{"Creds":{"Name":"slave1","Password":"1234"},"ID":"3a1b7c55-eabe-4536-a9ed-ec6cbdaaedb0","DateTime":"2019-02-07T21:06:10.803086+01:00","Target":{"Name":"Google","Address":"www.google.at"},"Success":true,"HopCount":17,"Hops":[{"Success":true,"Address":[192,168,1,1],"Host":"modem.home.","N":52,"ElapsedTime":2040972,"TTL":1}]}"#;

    #[test]
    fn decodes_go_slave_result() {
        let r: TraceResult = serde_json::from_str(GO_RESULT).unwrap();
        assert_eq!(r.creds.name, "slave1");
        assert_eq!(r.hop_count, 17);
        assert_eq!(r.hops[0].addr(), "192.168.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.hops[0].elapsed_time, 2_040_972);
        assert_eq!(r.target_id, None);
    }

    #[test]
    fn extensions_are_left_out_when_empty() {
        let r: TraceResult = serde_json::from_str(GO_RESULT).unwrap();
        let back = serde_json::to_string(&r).unwrap();
        assert_eq!(back, GO_RESULT);
    }

    #[test]
    fn ipv6_hop_keeps_four_number_address() {
        let hop = HopResult {
            success: true,
            address: [0; 4],
            host: String::new(),
            n: 0,
            elapsed_time: 1,
            ttl: 1,
            ip: Some("2001:db8::1".into()),
            replies: None,
            kind: None,
            reply_ttl: None,
            mpls: None,
        };
        let v: serde_json::Value = serde_json::to_value(&hop).unwrap();
        assert_eq!(v["Address"], serde_json::json!([0, 0, 0, 0]));
        assert_eq!(hop.addr(), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn answer_bodies_match_the_original() {
        assert_eq!(
            serde_json::to_string(&ResultAnswer::stored()).unwrap(),
            r#"{"Success":true,"Error":"","RetryPossible":true}"#
        );
    }
}
