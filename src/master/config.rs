//! The master's config files (`dt-slaves.json`, `dt-targets.json`, and `dt-users.json` of the
//! users who may read): strict parsing with file:line:column errors, the original's validation
//! ranges, and reload on edit.

use anyhow::Context;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// A config file that failed to load: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when the file could not be read at all.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong, naming the field and the rule.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// An alphanumeric, non-empty string (the original's rule for names and passwords).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Alnum(pub String);

impl<'de> Deserialize<'de> for Alnum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_alphanumeric()) {
            return Err(de::Error::custom(format!(
                "'{s}' must be letters and digits only (found {c:?})"
            )));
        }
        Ok(Alnum(s))
    }
}

/// How a slave's secret is kept in the file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// `Password`: the secret itself (the original's way).
    Plain(String),
    /// `PasswordHash`: an Argon2 PHC string, e.g. from `dist-traceroute hash-password`.
    Hash(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Hash(_) => f.write_str("Hash(<redacted>)"),
        }
    }
}

/// One allowed slave.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSlave")]
pub struct SlaveConf {
    /// Unique slave name.
    pub name: Alnum,
    /// Its secret.
    pub secret: Secret,
    /// Extension: its tags (`eu`, `fra1`, `backbone`), which target selectors name.
    pub tags: Vec<Tag>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawSlave {
    name: Alnum,
    #[serde(default)]
    password: Option<Alnum>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

/// A tag of slaves: 1 to 64 letters, digits, `-`, `_`, `.` or `:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(pub String);

impl Tag {
    /// `s` as a tag, or why it is not one.
    pub fn parse(s: &str) -> Result<Tag, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!("tag '{s}' must be 1 to 64 characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
        {
            return Err(format!(
                "tag '{s}' may hold letters, digits, '-', '_', '.' and ':' only (found {c:?})"
            ));
        }
        Ok(Tag(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Tag::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A target's `Slaves`: which slaves trace it. One selector object picks the slaves that have
/// every tag of its `Tags` and the slaves its `Names` names; a list of them picks what any
/// of them picks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(pub Vec<Pick>);

/// One selector object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Pick {
    /// The slaves with all of these tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// And these slaves by name.
    #[serde(default)]
    pub names: Vec<Alnum>,
}

impl Selector {
    /// True when the slave `name` with `tags` is selected.
    pub fn selects(&self, name: &str, tags: &[Tag]) -> bool {
        self.0.iter().any(|p| {
            p.names.iter().any(|n| n.0 == name)
                || (!p.tags.is_empty() && p.tags.iter().all(|t| tags.contains(t)))
        })
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(Pick),
            Many(Vec<Pick>),
        }
        let v = serde_json::Value::deserialize(d)?;
        let picks = match v {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                let as_any = |e: serde_json::Error| {
                    de::Error::custom(format!(
                        "Slaves: {e} (a selector is {{\"Tags\": [...], \"Names\": [...]}} or a list of them)"
                    ))
                };
                match serde_json::from_value::<OneOrMany>(v.clone()) {
                    Ok(OneOrMany::One(p)) => vec![p],
                    Ok(OneOrMany::Many(ps)) => ps,
                    // Say what is wrong with the object itself, not that no variant matched.
                    Err(_) if v.is_object() => vec![serde_json::from_value(v).map_err(as_any)?],
                    Err(_) => serde_json::from_value(v).map_err(as_any)?,
                }
            }
            other => {
                return Err(de::Error::custom(format!(
                    "Slaves: must be a selector object {{\"Tags\": [...], \"Names\": [...]}} or a list of them, not {other}"
                )));
            }
        };
        if picks.is_empty()
            || picks
                .iter()
                .any(|p| p.tags.is_empty() && p.names.is_empty())
        {
            return Err(de::Error::custom(
                "Slaves: a selector with no Tags and no Names selects no slave",
            ));
        }
        Ok(Selector(picks))
    }
}

impl TryFrom<RawSlave> for SlaveConf {
    type Error = String;

    fn try_from(raw: RawSlave) -> Result<Self, String> {
        let who = format!("slave '{}'", raw.name.0);
        let secret = one_secret(&who, raw.password.map(|p| p.0), raw.password_hash)?;
        Ok(SlaveConf {
            name: raw.name,
            secret,
            tags: raw.tags,
        })
    }
}

/// Exactly one of `Password` and `PasswordHash`, the hash a PHC string: the rule of slaves and
/// users alike; `who` names the entry in the message.
fn one_secret(who: &str, password: Option<String>, hash: Option<String>) -> Result<Secret, String> {
    match (password, hash) {
        (Some(p), None) => Ok(Secret::Plain(p)),
        (None, Some(h)) => {
            phc_string(who, &h)?;
            Ok(Secret::Hash(h))
        }
        (Some(_), Some(_)) => Err(format!("{who}: give Password or PasswordHash, not both")),
        (None, None) => Err(format!(
            "{who}: missing field `Password` (or `PasswordHash`)"
        )),
    }
}

fn phc_string(who: &str, hash: &str) -> Result<(), String> {
    argon2::password_hash::phc::PasswordHash::new(hash)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{who}: PasswordHash is not a PHC hash string ({e}); make one with `dist-traceroute hash-password`"
            )
        })
}

/// `dt-slaves.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct SlavesFile {
    /// The allowed slaves.
    pub slaves: Vec<SlaveConf>,
}

/// A target UUID used as a key of `Targets`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TargetId(pub String);

impl<'de> Deserialize<'de> for TargetId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        uuid::Uuid::parse_str(&s)
            .map_err(|_| de::Error::custom(format!("Targets: key '{s}' is not a UUID")))?;
        Ok(TargetId(s))
    }
}

/// A host name or IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr(pub String);

impl<'de> Deserialize<'de> for HostAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if is_host_or_ip(&s) {
            Ok(HostAddr(s))
        } else {
            Err(de::Error::custom(format!(
                "Address: '{s}' is not a host name or IP address"
            )))
        }
    }
}

/// True for an IP literal or an RFC 1123 host name.
pub fn is_host_or_ip(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// One target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TargetConf {
    /// Display name.
    pub name: Alnum,
    /// Host name or IP.
    pub address: HostAddr,
    /// Extension: `udp` (default), `icmp` or `tcp`.
    #[serde(default, deserialize_with = "protocol")]
    pub protocol: Option<String>,
    /// Extension: destination port for UDP/TCP probes.
    #[serde(default)]
    pub port: Option<u16>,
    /// Extension: alert when the destination RTT stays above this many ms (1..600000).
    #[serde(default, rename = "RttAlertMs", deserialize_with = "rtt_alert_ms")]
    pub rtt_alert_ms: Option<u32>,
    /// Extension: trace this target this often (`30s`, `5m`; 1s..1d) instead of every minute.
    #[serde(default, deserialize_with = "interval")]
    pub interval: Option<String>,
    /// Extension: trace this many flows (ECMP branches) each round, 1..16 (default 1).
    #[serde(default, deserialize_with = "flows")]
    pub flows: Option<u16>,
    /// Extension: `"mda"` discovers every load-balanced branch each round (not with `Flows`).
    #[serde(default, deserialize_with = "multipath")]
    pub multipath: Option<String>,
    /// Extension: the confidence of that discovery, percent (50..99.9, default 95).
    #[serde(default, deserialize_with = "confidence")]
    pub confidence: Option<f64>,
    /// Extension: only the slaves this selects trace it (none: every slave).
    #[serde(default)]
    pub slaves: Option<Selector>,
}

fn multipath<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "mda" {
        Ok(Some(s))
    } else {
        Err(de::Error::custom(format!(
            "Multipath: '{s}' is not \"mda\" (for a fixed number of flows use Flows)"
        )))
    }
}

fn confidence<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = f64::deserialize(d)
        .map_err(|e| de::Error::custom(format!("Confidence: must be a number ({e})")))?;
    if (50.0..=99.9).contains(&v) {
        Ok(Some(v))
    } else {
        Err(de::Error::custom(format!(
            "Confidence: {v} is out of range 50..99.9 (percent)"
        )))
    }
}

fn flows<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    ranged(d, "Flows", 1, 16).map(|v| Some(v as u16))
}

fn rtt_alert_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, "RttAlertMs", 1, 600_000).map(|v| Some(v as u32))
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match humantime::parse_duration(&s) {
        Ok(i) if (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&i) => Ok(Some(s)),
        Ok(_) => Err(de::Error::custom(format!(
            "Interval: '{s}' is out of range 1s..1d"
        ))),
        Err(e) => Err(de::Error::custom(format!(
            "Interval: '{s}' is not a duration like 30s or 5m ({e})"
        ))),
    }
}

fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    match crate::trace::Protocol::parse(&s) {
        Some(p) => Ok(Some(p.name().to_owned())),
        None => Err(de::Error::custom(format!(
            "Protocol: '{s}' is not one of udp, icmp, tcp"
        ))),
    }
}

fn ranged<'de, D: Deserializer<'de>>(d: D, field: &str, lo: i64, hi: i64) -> Result<i64, D::Error> {
    let v = i64::deserialize(d)
        .map_err(|e| de::Error::custom(format!("{field}: must be a whole number ({e})")))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(de::Error::custom(format!(
            "{field}: {v} is out of range {lo}..{hi}"
        )))
    }
}

fn retries<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, "Retries", 0, 10).map(|v| v as u8)
}
fn max_hops<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    ranged(d, "MaxHops", 1, 100).map(|v| v as u8)
}
fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    ranged(d, "TimeoutMs", 1, 10_000).map(|v| v as u32)
}

/// `dt-targets.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TargetsFile {
    /// Kept for the original slave; ours posts to the master it was given.
    #[serde(rename = "ReportURL", default)]
    pub report_url: String,
    /// Target UUID to target.
    pub targets: BTreeMap<TargetId, TargetConf>,
    /// Extra rounds for unanswered hops (0..10).
    #[serde(deserialize_with = "retries")]
    pub retries: u8,
    /// Highest TTL probed (1..100).
    #[serde(deserialize_with = "max_hops")]
    pub max_hops: u8,
    /// Per-probe timeout in ms (1..10000).
    #[serde(deserialize_with = "timeout_ms")]
    pub timeout_ms: u32,
}

/// Parses JSON text into `T`, turning a failure into a `ConfigError` for `file`.
pub fn parse_json<T: for<'de> Deserialize<'de>>(
    file: &Path,
    text: &[u8],
) -> Result<T, ConfigError> {
    serde_json::from_slice(text).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        let (line, column) = back_over_space(text, e.line(), e.column());
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    })
}

/// serde_json reports a bad value where it stopped reading, often past the line break that
/// followed it; step back over white space so the position is on the value's own line.
fn back_over_space(text: &[u8], line: usize, column: usize) -> (usize, usize) {
    if line == 0 {
        return (line, column);
    }
    let mut starts = vec![0usize];
    starts.extend(
        text.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1),
    );
    let Some(start) = starts.get(line - 1) else {
        return (line, column);
    };
    let mut at = (start + column.saturating_sub(1)).min(text.len());
    while at > 0 && text[at - 1].is_ascii_whitespace() {
        at -= 1;
    }
    let line_index = starts
        .partition_point(|s| *s <= at.saturating_sub(1))
        .max(1);
    let col = at - starts[line_index - 1];
    (line_index, col.max(1))
}

/// Parses and checks a slaves file's text (also for names listed twice).
pub fn parse_slaves(file: &Path, text: &[u8]) -> Result<SlavesFile, ConfigError> {
    let parsed: SlavesFile = parse_json(file, text)?;
    let mut seen = std::collections::HashSet::new();
    for s in &parsed.slaves {
        if !seen.insert(&s.name.0) {
            return Err(ConfigError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: format!("Slaves: Name '{}' is listed twice", s.name.0),
            });
        }
    }
    Ok(parsed)
}

/// Parses and checks a targets file's text.
pub fn parse_targets(file: &Path, text: &[u8]) -> Result<TargetsFile, ConfigError> {
    let parsed: TargetsFile = parse_json(file, text)?;
    for (id, t) in &parsed.targets {
        let why = match (&t.multipath, t.flows, t.confidence) {
            (Some(_), Some(_), _) => {
                "Multipath and Flows exclude each other: MDA picks its own flows"
            }
            (None, _, Some(_)) => "Confidence needs \"Multipath\": \"mda\"",
            _ => continue,
        };
        // Point at the target's key, where its fields begin.
        let at = find(text, format!("\"{}\"", id.0).as_bytes()).unwrap_or(0);
        let line = 1 + text[..at].iter().filter(|&&b| b == b'\n').count();
        let column = 1 + at
            - text[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
        return Err(ConfigError {
            file: file.to_owned(),
            line,
            column,
            message: format!("Targets: {}: {why}", id.0),
        });
    }
    Ok(parsed)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Everything the master serves and checks against, from one good read of both files.
#[derive(Debug, Clone)]
pub struct Config {
    /// The allowed slaves.
    pub slaves: SlavesFile,
    /// The targets.
    pub targets: TargetsFile,
    /// The targets file's bytes, served as they are to the slaves (as the original does).
    pub targets_raw: Arc<[u8]>,
    /// Digests of name/hash/password triples that passed the slow hash check.
    pub verified: Arc<Mutex<HashSet<[u8; 32]>>>,
    /// The targets documents of slaves whose selection is not every target, by what they
    /// hold and by slave: made at a slave's first request, kept until the config changes.
    pub selections: Arc<Mutex<Selections>>,
    /// Lookups made once from the files.
    pub derived: Arc<std::sync::OnceLock<Derived>>,
}

/// What a config's lookups need, made at its first use.
#[derive(Debug)]
pub struct Derived {
    /// Slave name to its index in the slaves file.
    names: HashMap<String, usize>,
    /// Some target selects its slaves.
    selective: bool,
}

/// The per-slave targets documents made so far.
#[derive(Debug, Default)]
pub struct Selections {
    /// By the indexes of the targets a document holds: slaves selecting the same targets
    /// share one.
    docs: HashMap<Vec<u32>, Arc<[u8]>>,
    /// By slave, with the tags it was made for.
    by_slave: HashMap<String, (Vec<Tag>, Arc<[u8]>)>,
}

impl Config {
    /// True when `name`/`password` is an allowed pair.
    ///
    /// Plain passwords are compared in constant time; hashes are checked with Argon2, and a
    /// pair that checked out once is remembered (by a digest) so a slave's every request does
    /// not pay for the slow hash again.
    pub fn check_password(&self, name: &str, password: &str) -> bool {
        // Found by name (names are no secret: the API lists them); the secret compared in
        // constant time.
        let Some(s) = self.slave(name) else {
            return false;
        };
        match &s.secret {
            Secret::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
            Secret::Hash(h) => self.check_hash(name, h, password),
        }
    }

    fn derived(&self) -> &Derived {
        self.derived.get_or_init(|| Derived {
            names: self
                .slaves
                .slaves
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.0.clone(), i))
                .collect(),
            selective: self.targets.targets.values().any(|t| t.slaves.is_some()),
        })
    }

    /// The entry of slave `name` in the slaves file.
    pub fn slave(&self, name: &str) -> Option<&SlaveConf> {
        let i = *self.derived().names.get(name)?;
        self.slaves.slaves.get(i)
    }

    fn check_hash(&self, name: &str, hash: &str, password: &str) -> bool {
        verify_cached(&self.verified, name, hash, password)
    }

    /// A digest of each file as loaded, for masters sharing a database to compare: the
    /// targets file's bytes, and the slaves' names (never their passwords).
    pub fn digests(&self) -> serde_json::Value {
        use sha2::Digest;
        let short = |d: &[u8]| {
            d[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let mut names: Vec<&str> = self
            .slaves
            .slaves
            .iter()
            .map(|s| s.name.0.as_str())
            .collect();
        names.sort_unstable();
        serde_json::json!({
            "targets": short(&sha2::Sha256::digest(&self.targets_raw)),
            "slaves": short(&sha2::Sha256::digest(names.join("\n").as_bytes())),
        })
    }

    /// The UUID of the configured target with this name and address, if any.
    pub fn target_uuid(&self, name: &str, address: &str) -> Option<&str> {
        self.targets
            .targets
            .iter()
            .find(|(_, t)| t.name.0 == name && t.address.0 == address)
            .map(|(id, _)| id.0.as_str())
    }

    /// True when `uuid` is a configured target.
    pub fn has_target(&self, uuid: &str) -> bool {
        self.targets
            .targets
            .contains_key(&TargetId(uuid.to_owned()))
    }

    /// The configured target `uuid`.
    pub fn target(&self, uuid: &str) -> Option<&TargetConf> {
        self.targets.targets.get(&TargetId(uuid.to_owned()))
    }

    /// The tags of slave `name` in the slaves file (none for a slave not in it).
    pub fn tags_of(&self, name: &str) -> &[Tag] {
        self.slave(name).map_or(&[], |s| &s.tags)
    }

    /// The names of the slaves with tag `tag`.
    pub fn tagged(&self, tag: &Tag) -> Vec<String> {
        self.slaves
            .slaves
            .iter()
            .filter(|s| s.tags.contains(tag))
            .map(|s| s.name.0.clone())
            .collect()
    }

    /// True when some target selects its slaves: then slaves get documents of their own.
    pub fn selective(&self) -> bool {
        self.derived().selective
    }

    /// True when the slave `name` with `tags` is to trace target `uuid` (every slave traces a
    /// target without `Slaves`, and a target the config does not have is nobody's).
    pub fn selects(&self, uuid: &str, name: &str, tags: &[Tag]) -> bool {
        self.target(uuid)
            .is_some_and(|t| t.slaves.as_ref().is_none_or(|s| s.selects(name, tags)))
    }

    /// The targets document for slave `name` with `tags`: the file as it is when no target
    /// selects, otherwise the file with only the targets selected for this slave (and
    /// without their `Slaves`), a valid document for the original Go slave too.
    pub fn targets_for(&self, name: &str, tags: &[Tag]) -> anyhow::Result<Arc<[u8]>> {
        if !self.selective() {
            return Ok(self.targets_raw.clone());
        }
        let mut sel = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, doc)) = sel.by_slave.get(name)
            && t == tags
        {
            return Ok(doc.clone());
        }
        let picked: Vec<u32> = self
            .targets
            .targets
            .values()
            .enumerate()
            .filter(|(_, t)| t.slaves.as_ref().is_none_or(|s| s.selects(name, tags)))
            .map(|(i, _)| i as u32)
            .collect();
        let doc = match sel.docs.get(&picked) {
            Some(doc) => doc.clone(),
            None => {
                let doc = self.document(&picked)?;
                sel.docs.insert(picked, doc.clone());
                doc
            }
        };
        sel.by_slave
            .insert(name.to_owned(), (tags.to_vec(), doc.clone()));
        Ok(doc)
    }

    /// The targets file with only the targets at `picked` (indexes in key order).
    fn document(&self, picked: &[u32]) -> anyhow::Result<Arc<[u8]>> {
        let mut doc: serde_json::Value = serde_json::from_slice(&self.targets_raw)?;
        let keep: HashSet<&str> = self
            .targets
            .targets
            .keys()
            .enumerate()
            .filter(|(i, _)| picked.binary_search(&(*i as u32)).is_ok())
            .map(|(_, id)| id.0.as_str())
            .collect();
        if let Some(targets) = doc.get_mut("Targets").and_then(|t| t.as_object_mut()) {
            targets.retain(|id, _| keep.contains(id.as_str()));
            for t in targets.values_mut() {
                if let Some(t) = t.as_object_mut() {
                    t.remove("Slaves");
                }
            }
        }
        let mut text = serde_json::to_vec_pretty(&doc)?;
        text.push(b'\n');
        Ok(text.into())
    }
}

/// An Argon2id PHC string for `password`, for `PasswordHash` in `dt-slaves.json`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// Checks `password` against an Argon2 `hash`, remembering a pair that checked out (by a
/// digest of name, hash and password) so the next request of the same login costs no slow hash.
pub(crate) fn verify_cached(
    cache: &Mutex<HashSet<[u8; 32]>>,
    name: &str,
    hash: &str,
    password: &str,
) -> bool {
    use argon2::password_hash::PasswordVerifier;
    use sha2::Digest;
    let mut d = sha2::Sha256::new();
    for part in [name, hash, password] {
        d.update(part.as_bytes());
        d.update([0u8]);
    }
    let key: [u8; 32] = d.finalize().into();
    if cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&key)
    {
        return true;
    }
    let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(hash) else {
        return false;
    };
    let good = argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    if good {
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key);
    }
    good
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

fn read(file: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|e| ConfigError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read: {e}"),
    })
}

/// Reads and checks both files.
pub fn load(slaves: &Path, targets: &Path) -> Result<Config, ConfigError> {
    let slaves_file = parse_slaves(slaves, &read(slaves)?)?;
    let raw = read(targets)?;
    let targets_file = parse_targets(targets, &raw)?;
    Ok(Config {
        slaves: slaves_file,
        targets: targets_file,
        targets_raw: raw.into(),
        verified: Arc::default(),
        selections: Arc::default(),
        derived: Arc::default(),
    })
}

/// The live config: the last good read, swapped when an edit parses.
#[derive(Debug, Clone)]
pub struct Live(Arc<RwLock<Arc<Config>>>);

impl Live {
    /// Wraps a first good config.
    pub fn new(config: Config) -> Live {
        Live(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, config: Config) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Calls `changed` on a thread of its own whenever one of `files` changes (is written,
/// appears or goes), checking every `every`. Runs until the process ends.
fn on_change(
    thread: &str,
    files: Vec<PathBuf>,
    every: Duration,
    mut changed: impl FnMut() + Send + 'static,
) -> anyhow::Result<()> {
    let stamps = move || files.iter().map(|f| stamp(f)).collect::<Vec<_>>();
    let mut last = stamps();
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let now = stamps();
                if now != last {
                    last = now;
                    changed();
                }
            }
        })
        .with_context(|| format!("cannot start the {thread} thread"))?;
    Ok(())
}

/// What the watchers did with one group of files (the config pair, or the users file), for
/// the dashboard's config page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileGroup {
    /// The files.
    pub files: Vec<PathBuf>,
    /// When what is in force was read, Unix ms.
    pub loaded_at: i64,
    /// When an edit last changed what is in force, Unix ms (`None`: never since the start).
    pub reloaded_at: Option<i64>,
    /// The last rejected edit: when, and why.
    pub rejected: Option<(i64, String)>,
    /// The files on disk are still that rejected edit (the last good read is in force).
    pub rejected_now: bool,
}

/// What the config and users watchers did, shared with the dashboard.
#[derive(Debug, Clone, Default)]
pub struct Reloads(Arc<RwLock<(FileGroup, FileGroup)>>);

impl Reloads {
    /// A record that starts with `config` and `users` read now.
    pub fn new(config: Vec<PathBuf>, users: PathBuf) -> Reloads {
        let now = chrono::Utc::now().timestamp_millis();
        let group = |files| FileGroup {
            files,
            loaded_at: now,
            ..FileGroup::default()
        };
        Reloads(Arc::new(RwLock::new((group(config), group(vec![users])))))
    }

    /// The config pair's record and the users file's.
    pub fn get(&self) -> (FileGroup, FileGroup) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, users: bool, f: impl FnOnce(&mut FileGroup)) {
        let mut both = self.0.write().unwrap_or_else(|p| p.into_inner());
        f(if users { &mut both.1 } else { &mut both.0 });
    }

    fn loaded(&self, users: bool, changed: bool) {
        let now = chrono::Utc::now().timestamp_millis();
        self.update(users, |g| {
            if changed {
                g.loaded_at = now;
                g.reloaded_at = Some(now);
            }
            g.rejected_now = false;
        });
    }

    fn rejected(&self, users: bool, why: &str) {
        let now = chrono::Utc::now().timestamp_millis();
        self.update(users, |g| {
            if !(g.rejected_now && g.rejected.as_ref().is_some_and(|(_, w)| w == why)) {
                g.rejected = Some((now, why.to_owned()));
            }
            g.rejected_now = true;
        });
    }
}

/// Watches both files and swaps in each edit that parses; a broken edit is logged once and
/// the last good config stays. Both go on record in `reloads`. Runs until the process ends.
pub fn watch(
    live: Live,
    slaves: PathBuf,
    targets: PathBuf,
    every: Duration,
    reloads: Reloads,
) -> anyhow::Result<()> {
    let mut last_error: Option<String> = None;
    let files = vec![slaves.clone(), targets.clone()];
    on_change("config-watch", files, every, move || {
        match load(&slaves, &targets) {
            Ok(config) => {
                let old = live.get();
                let changed =
                    old.slaves != config.slaves || *old.targets_raw != *config.targets_raw;
                if changed || last_error.is_some() {
                    log::info!(
                        "config {}: {} slaves, {} targets",
                        if changed {
                            "reloaded"
                        } else {
                            "files are good again, unchanged from the config in force"
                        },
                        config.slaves.slaves.len(),
                        config.targets.targets.len()
                    );
                }
                if changed {
                    live.set(config);
                }
                reloads.loaded(false, changed);
                last_error = None;
            }
            Err(e) => {
                let text = format!("{e:#}");
                reloads.rejected(false, &text);
                if last_error.as_ref() != Some(&text) {
                    log::warn!("config edit rejected, keeping the last good config: {text}");
                    last_error = Some(text);
                }
            }
        }
    })
}

// ---- dt-users.json: who may read ----------------------------------------------------------

/// What a user may do; each role may do all that the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads the API, the exports and the metrics.
    Viewer,
    /// Reads; later also starts measurements.
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The name in the users file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        role_rule(&string_field(d, "Role")?).map_err(de::Error::custom)
    }
}

/// The text of a string field; any other JSON value is an error naming `field` that does not
/// echo the value (it may be a secret put in the wrong place).
fn string_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        _ => Err(de::Error::custom(format!("{field}: must be a string"))),
    }
}

/// At most `max` characters of a value quoted in a message.
fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn role_rule(s: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.name() == s)
        .ok_or_else(|| {
            format!(
                "Role: '{}' is not one of viewer, operator, admin",
                clip(s, 32).escape_debug()
            )
        })
}

/// A user's name: letters, digits, `.`, `_` and `-`, 1 to 64 bytes (so never a `:`, which
/// ends the name in HTTP Basic).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(pub String);

impl<'de> Deserialize<'de> for UserName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = string_field(d, "Name")?;
        user_name_rule(&s).map_err(de::Error::custom)?;
        Ok(UserName(s))
    }
}

/// Longest user name, in bytes.
pub const MAX_USER_NAME: usize = 64;

fn user_name_rule(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("Name: must not be empty".into());
    }
    if s.len() > MAX_USER_NAME {
        return Err(format!(
            "Name: '{}' is {} bytes long, more than {MAX_USER_NAME}",
            clip(s, 32).escape_debug(),
            s.len()
        ));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "Name: '{}' may hold letters, digits, '.', '_' and '-' only (found {c:?})",
            s.escape_debug()
        )),
        None => Ok(()),
    }
}

/// Longest plain `Password` of a user, in bytes.
const MAX_USER_PASSWORD: usize = 1024;

fn user_password<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = string_field(d, "Password")?;
    user_password_rule(&s).map_err(de::Error::custom)?;
    Ok(Some(s))
}

/// The rules of a plain `Password`; no message quotes it.
fn user_password_rule(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("Password: must not be empty".into());
    }
    if s.len() > MAX_USER_PASSWORD {
        return Err(format!(
            "Password: is longer than {MAX_USER_PASSWORD} bytes"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err("Password: must not hold control characters".into());
    }
    Ok(())
}

fn password_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_field(d, "PasswordHash").map(Some)
}

/// A user's `PasswordHash` must be an Argon2 one: another algorithm would load and then never
/// let anyone in.
fn argon2_rule(who: &str, hash: &str) -> Result<(), String> {
    let parsed = argon2::password_hash::phc::PasswordHash::new(hash)
        .map_err(|e| format!("{who}: PasswordHash is not a PHC hash string ({e})"))?;
    let algorithm = parsed.algorithm.as_str();
    if ["argon2id", "argon2i", "argon2d"].contains(&algorithm) {
        Ok(())
    } else {
        Err(format!(
            "{who}: PasswordHash is a '{}' hash, not Argon2; make one with `dist-traceroute hash-password`",
            clip(algorithm, 32).escape_debug()
        ))
    }
}

/// What the users file keeps of a bearer token: its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// `Tokens`: a list of `sha256:HEX`. Read as any JSON first, so that no error message quotes
/// an entry: a token pasted here by mistake must not reach the log.
fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenDigest>, D::Error> {
    let serde_json::Value::Array(items) = serde_json::Value::deserialize(d)? else {
        return Err(de::Error::custom(
            "Tokens: must be a list of \"sha256:…\" strings",
        ));
    };
    items
        .iter()
        .map(|item| token_digest_rule(item.as_str().unwrap_or("")).map(TokenDigest))
        .collect::<Result<_, _>>()
        .map_err(de::Error::custom)
}

fn token_digest_rule(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            "Tokens: an entry is not \"sha256:\" and 64 hex digits; put there what \
             `dist-traceroute new-token` prints for the file, never the token itself"
                .to_owned()
        })?;
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    Ok(out)
}

/// One user of `dt-users.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawUser")]
pub struct UserConf {
    /// Unique name.
    pub name: UserName,
    /// The password (plain or an Argon2 hash).
    pub secret: Secret,
    /// What the user may do.
    pub role: Role,
    /// SHA-256 digests of the user's bearer tokens.
    pub tokens: Vec<TokenDigest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawUser {
    name: UserName,
    #[serde(default, deserialize_with = "user_password")]
    password: Option<String>,
    #[serde(default, deserialize_with = "password_hash")]
    password_hash: Option<String>,
    role: Role,
    #[serde(default, deserialize_with = "tokens")]
    tokens: Vec<TokenDigest>,
}

impl TryFrom<RawUser> for UserConf {
    type Error = String;

    fn try_from(raw: RawUser) -> Result<Self, String> {
        let who = format!("user '{}'", raw.name.0);
        let secret = one_secret(&who, raw.password, raw.password_hash)?;
        if let Secret::Hash(h) = &secret {
            argon2_rule(&who, h)?;
        }
        Ok(UserConf {
            name: raw.name,
            secret,
            role: raw.role,
            tokens: raw.tokens,
        })
    }
}

/// `dt-users.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct UsersFile {
    /// The users, each name once, each token digest once.
    #[serde(deserialize_with = "users_list")]
    pub users: Vec<UserConf>,
}

/// The `Users` list, checked entry by entry so that an error points at the entry at fault.
fn users_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<UserConf>, D::Error> {
    struct List;
    impl<'de> de::Visitor<'de> for List {
        type Value = Vec<UserConf>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of users")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut users: Vec<UserConf> = Vec::new();
            while let Some(user) = seq.next_element::<UserConf>()? {
                unique_name_rule(&users, &user).map_err(de::Error::custom)?;
                unique_tokens_rule(&users, &user).map_err(de::Error::custom)?;
                users.push(user);
            }
            Ok(users)
        }
    }
    d.deserialize_seq(List)
}

fn unique_name_rule(before: &[UserConf], user: &UserConf) -> Result<(), String> {
    if before.iter().any(|u| u.name == user.name) {
        return Err(format!("Users: Name '{}' is listed twice", user.name.0));
    }
    Ok(())
}

/// A token belongs to one user: otherwise who it logs in would depend on the order.
fn unique_tokens_rule(before: &[UserConf], user: &UserConf) -> Result<(), String> {
    for (i, t) in user.tokens.iter().enumerate() {
        if user.tokens[..i].contains(t) {
            return Err(format!(
                "user '{}': Tokens: an entry is listed twice",
                user.name.0
            ));
        }
        if let Some(other) = before.iter().find(|u| u.tokens.contains(t)) {
            return Err(format!(
                "user '{}': Tokens: an entry is also a token of user '{}'",
                user.name.0, other.name.0
            ));
        }
    }
    Ok(())
}

/// Parses and checks a users file's text.
pub fn parse_users(file: &Path, text: &[u8]) -> Result<UsersFile, ConfigError> {
    parse_json(file, text)
}

/// The users in force, from one good read of the users file.
#[derive(Debug)]
pub struct Users {
    /// What the file says.
    pub file: UsersFile,
    /// Digests of name/hash/password triples that passed the slow hash check.
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Users {
    /// The users of a parsed file, with nothing verified yet.
    pub fn new(file: UsersFile) -> Users {
        Users {
            file,
            verified: Mutex::default(),
        }
    }

    /// The role of user `name` when `password` is theirs.
    ///
    /// As for slaves: a plain password is compared in constant time, a hash checked with Argon2
    /// and a pair that checked out remembered, so a dashboard polling with HTTP Basic pays for
    /// one slow hash, not one per request.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Role> {
        let mut found = None;
        for u in &self.file.users {
            if !constant_time_eq(u.name.0.as_bytes(), name.as_bytes()) {
                continue;
            }
            let good = match &u.secret {
                Secret::Plain(p) => constant_time_eq(p.as_bytes(), password.as_bytes()),
                Secret::Hash(h) => verify_cached(&self.verified, name, h, password),
            };
            if good {
                found = Some(u.role);
            }
        }
        found
    }

    /// The role of user `name` and a digest of their password as the file has it now: a
    /// session is bound to it, so a new password (or none) ends the user's sessions.
    pub fn session_binding(&self, name: &str) -> Option<(Role, [u8; 32])> {
        use sha2::Digest;
        let u = self.file.users.iter().find(|u| u.name.0 == name)?;
        let (kind, text) = match &u.secret {
            Secret::Plain(p) => ("plain", p),
            Secret::Hash(h) => ("hash", h),
        };
        let mut d = sha2::Sha256::new();
        for part in ["dt-session", name, kind, text.as_str(), u.role.name()] {
            d.update((part.len() as u64).to_le_bytes());
            d.update(part.as_bytes());
        }
        Some((u.role, d.finalize().into()))
    }

    /// The user whose `Tokens` hold the digest of `token`. Every digest is compared, in
    /// constant time, whichever matches.
    pub fn check_token(&self, token: &str) -> Option<(&str, Role)> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for u in &self.file.users {
            for t in &u.tokens {
                if constant_time_eq(&t.0, &digest) {
                    found = Some((u.name.0.as_str(), u.role));
                }
            }
        }
        found
    }
}

/// Reads the users file: `None` when there is none (no file is not an error).
pub fn load_users(file: &Path) -> Result<Option<Users>, ConfigError> {
    match std::fs::read(file) {
        Ok(text) => parse_users(file, &text).map(|f| Some(Users::new(f))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        }),
    }
}

/// The users in force (or none: no users file), swapped when an edit parses.
#[derive(Debug, Clone)]
pub struct LiveUsers {
    file: Arc<PathBuf>,
    users: Arc<RwLock<Option<Arc<Users>>>>,
}

impl Default for LiveUsers {
    /// No users, from the default file name.
    fn default() -> Self {
        LiveUsers::new(PathBuf::from(DEFAULT_USERS_FILE), None)
    }
}

/// The users file the master reads unless told otherwise.
pub const DEFAULT_USERS_FILE: &str = "./dt-users.json";

impl LiveUsers {
    /// Users read from `file` (`None`: it does not exist).
    pub fn new(file: PathBuf, users: Option<Users>) -> LiveUsers {
        LiveUsers {
            file: Arc::new(file),
            users: Arc::new(RwLock::new(users.map(Arc::new))),
        }
    }

    /// The users in force; `None` when there is no users file.
    pub fn get(&self) -> Option<Arc<Users>> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The users file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn set(&self, users: Option<Users>) {
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = users.map(Arc::new);
    }
}

/// Watches the users file: an edit that parses is in force from the next request, a broken
/// one is logged once and the last good users stay; a file that goes away means no users
/// file again (loopback reads only), one that appears is read. Runs until the process ends.
pub fn watch_users(live: LiveUsers, every: Duration, reloads: Reloads) -> anyhow::Result<()> {
    let file = live.file().to_owned();
    let mut last_error: Option<String> = None;
    on_change(
        "users-watch",
        vec![file.clone()],
        every,
        move || match load_users(&file) {
            Ok(Some(users)) => {
                let changed = live.get().is_none_or(|old| old.file != users.file);
                if changed || last_error.is_some() {
                    log::info!(
                        "users {}: {} users from {}",
                        if changed {
                            "reloaded"
                        } else {
                            "file is good again, unchanged from the users in force"
                        },
                        users.file.users.len(),
                        file.display()
                    );
                }
                if changed {
                    live.set(Some(users));
                }
                reloads.loaded(true, changed);
                last_error = None;
            }
            Ok(None) => {
                let changed = live.get().is_some();
                if changed {
                    log::warn!(
                        "users file {} is gone: reads now answer clients on loopback only",
                        file.display()
                    );
                    live.set(None);
                }
                reloads.loaded(true, changed);
                last_error = None;
            }
            Err(e) => {
                let text = e.to_string();
                reloads.rejected(true, &text);
                if last_error.as_ref() != Some(&text) {
                    log::warn!("users file edit rejected, keeping the last good users: {text}");
                    last_error = Some(text);
                }
            }
        },
    )
}

/// A new bearer token: 32 bytes from the operating system's CSPRNG, URL-safe base64 (43
/// characters).
pub fn new_token() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random bytes from the system: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What a user's `Tokens` keeps of `token`: `sha256:` and its SHA-256 in hex.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest.iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: &str = r#"{
        "ReportURL": "http://localhost:8990/results/post",
        "Targets": {
                "76d96640-d357-47b3-ba50-5248a7604bc9": {"Name": "Google", "Address": "www.google.at"},
                "fc06ab7c-ad6f-4837-b2f8-96ef95c4acee": {"Name": "LKML", "Address": "lkml.org"}
        },
        "Retries": 1,
        "MaxHops": 30,
        "TimeoutMs": 500
}"#;

    fn targets_err(text: &str) -> ConfigError {
        parse_targets(Path::new("t.json"), text.as_bytes()).unwrap_err()
    }

    fn slaves_err(text: &str) -> ConfigError {
        parse_slaves(Path::new("s.json"), text.as_bytes()).unwrap_err()
    }

    #[test]
    fn seed_files_load() {
        let t = parse_targets(Path::new("t"), TARGETS.as_bytes()).unwrap();
        assert_eq!(t.targets.len(), 2);
        assert_eq!((t.retries, t.max_hops, t.timeout_ms), (1, 30, 500));
        let s = parse_slaves(
            Path::new("s"),
            br#"{"Slaves":[{"Name":"slave1","Password":"1234"},{"Name":"slave2","Password":"123"}]}"#,
        )
        .unwrap();
        assert_eq!(s.slaves[1].name.0, "slave2");
    }

    #[test]
    fn range_errors_name_field_line_and_column() {
        let e = targets_err(&TARGETS.replace("\"Retries\": 1", "\"Retries\": 11"));
        assert_eq!(e.line, 7);
        assert!(
            e.message.contains("Retries: 11 is out of range 0..10"),
            "{e}"
        );
        let e = targets_err(&TARGETS.replace("\"MaxHops\": 30", "\"MaxHops\": 0"));
        assert!(
            e.message.contains("MaxHops: 0 is out of range 1..100"),
            "{e}"
        );
        let e = targets_err(&TARGETS.replace("500", "10001"));
        assert!(
            e.message
                .contains("TimeoutMs: 10001 is out of range 1..10000"),
            "{e}"
        );
        assert!(e.to_string().starts_with("t.json:9:"), "{e}");
        let e = targets_err(&TARGETS.replace("\"Retries\": 1", "\"Retries\": 11"));
        assert_eq!((e.line, e.column), (7, 20), "{e}");
        let flows =
            |n: &str| TARGETS.replace("\"lkml.org\"", &format!("\"lkml.org\", \"Flows\": {n}"));
        let e = targets_err(&flows("17"));
        assert!(e.message.contains("Flows: 17 is out of range 1..16"), "{e}");
        let t = parse_targets(Path::new("t"), flows("4").as_bytes()).unwrap();
        assert!(t.targets.values().any(|t| t.flows == Some(4)));
    }

    #[test]
    fn multipath_takes_mda_and_a_confidence_and_excludes_flows() {
        let with = |extra: &str| TARGETS.replace("\"lkml.org\"", &format!("\"lkml.org\", {extra}"));
        let t = parse_targets(
            Path::new("t"),
            with(r#""Multipath": "mda", "Confidence": 99"#).as_bytes(),
        )
        .unwrap();
        let lkml = t.targets.values().find(|t| t.name.0 == "LKML").unwrap();
        assert_eq!(
            (lkml.multipath.as_deref(), lkml.confidence),
            (Some("mda"), Some(99.0))
        );
        let e = targets_err(&with(r#""Multipath": "paris""#));
        assert!(
            e.message.contains("Multipath: 'paris' is not \"mda\""),
            "{e}"
        );
        let e = targets_err(&with(r#""Multipath": "mda", "Confidence": 100"#));
        assert!(e.message.contains("Confidence: 100 is out of range"), "{e}");
        let e = targets_err(&with(r#""Multipath": "mda", "Flows": 4"#));
        assert!(
            e.message.contains("Multipath and Flows exclude each other"),
            "{e}"
        );
        // The error points at the target's key.
        assert_eq!((e.line, e.column), (5, 17), "{e}");
        let e = targets_err(&with(r#""Confidence": 90"#));
        assert!(e.message.contains("Confidence needs"), "{e}");
    }

    #[test]
    fn each_rule_has_its_message() {
        let cases = [
            (
                TARGETS.replace("\"Google\"", "\"Goo gle\""),
                "must be letters and digits only",
            ),
            (
                TARGETS.replace("www.google.at", "www..google"),
                "not a host name or IP",
            ),
            (
                TARGETS.replace("76d96640-d357", "not-a-uuid"),
                "is not a UUID",
            ),
            (
                TARGETS.replace("\"Retries\"", "\"Retrys\""),
                "unknown field `Retrys`",
            ),
            (
                TARGETS.replace("\"Retries\": 1,", ""),
                "missing field `Retries`",
            ),
            (
                TARGETS.replace("\"MaxHops\": 30", "\"MaxHops\": \"30\""),
                "MaxHops: must be a whole number",
            ),
            (TARGETS.replace("}\n        },", "}"), "expected"),
        ];
        for (text, want) in cases {
            let e = targets_err(&text);
            assert!(e.message.contains(want), "want {want:?}, got {e}");
            assert!(e.line > 0);
        }
        assert!(
            slaves_err(r#"{"Slaves":[{"Name":"","Password":"1"}]}"#)
                .message
                .contains("must not be empty")
        );
        assert!(
            slaves_err(r#"{"Slaves":[{"Name":"a","Password":"p w"}]}"#)
                .message
                .contains("letters and digits")
        );
        assert!(
            slaves_err(r#"{"Slaves":[{"Name":"a","Password":"1"},{"Name":"a","Password":"2"}]}"#)
                .message
                .contains("listed twice")
        );
    }

    #[test]
    fn extension_fields_are_checked() {
        let t = TARGETS.replace(
            "\"Address\": \"lkml.org\"",
            "\"Address\": \"lkml.org\", \"Protocol\": \"ICMP\", \"Port\": 443",
        );
        let parsed = parse_targets(Path::new("t"), t.as_bytes()).unwrap();
        let lkml = parsed
            .targets
            .values()
            .find(|t| t.name.0 == "LKML")
            .unwrap();
        assert_eq!(lkml.protocol.as_deref(), Some("icmp"));
        let e =
            targets_err(&TARGETS.replace("\"lkml.org\"", "\"lkml.org\", \"Protocol\": \"sctp\""));
        assert!(e.message.contains("not one of udp, icmp, tcp"), "{e}");
    }

    #[test]
    fn password_hashes_are_checked_and_rules_enforced() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let text = format!(
            r#"{{"Slaves":[{{"Name":"h","PasswordHash":"{hash}"}},{{"Name":"p","Password":"1"}}]}}"#
        );
        let config = Config {
            slaves: parse_slaves(Path::new("s"), text.as_bytes()).unwrap(),
            targets: parse_targets(Path::new("t"), TARGETS.as_bytes()).unwrap(),
            targets_raw: Arc::from(&b""[..]),
            verified: Arc::default(),
            selections: Arc::default(),
            derived: Arc::default(),
        };
        assert!(config.check_password("h", "s3cret"));
        assert!(config.check_password("h", "s3cret"), "cached");
        assert!(!config.check_password("h", "s3cret2"));
        assert!(!config.check_password("p", "s3cret"));
        assert!(config.check_password("p", "1"));
        assert!(
            slaves_err(r#"{"Slaves":[{"Name":"a","PasswordHash":"nope"}]}"#)
                .message
                .contains("not a PHC hash string")
        );
        assert!(
            slaves_err(&format!(
                r#"{{"Slaves":[{{"Name":"a","Password":"1","PasswordHash":"{hash}"}}]}}"#
            ))
            .message
            .contains("not both")
        );
        assert!(
            slaves_err(r#"{"Slaves":[{"Name":"a"}]}"#)
                .message
                .contains("missing field `Password`")
        );
        assert!(!format!("{:?}", config.slaves).contains("s3cret"));
        assert!(!format!("{:?}", config.slaves).contains("\"1\""));
    }

    #[test]
    fn passwords_checked_per_pair() {
        let config = Config {
            slaves: parse_slaves(
                Path::new("s"),
                br#"{"Slaves":[{"Name":"a","Password":"1"},{"Name":"b","Password":"2"}]}"#,
            )
            .unwrap(),
            targets: parse_targets(Path::new("t"), TARGETS.as_bytes()).unwrap(),
            targets_raw: Arc::from(&b""[..]),
            verified: Arc::default(),
            selections: Arc::default(),
            derived: Arc::default(),
        };
        assert!(config.check_password("a", "1"));
        assert!(config.check_password("b", "2"));
        assert!(!config.check_password("a", "2"));
        assert!(!config.check_password("a", "11"));
        assert!(!config.check_password("", ""));
        assert_eq!(
            config.target_uuid("LKML", "lkml.org"),
            Some("fc06ab7c-ad6f-4837-b2f8-96ef95c4acee")
        );
        assert_eq!(config.target_uuid("LKML", "other.org"), None);
    }

    // ---- dt-users.json ---------------------------------------------------------------------

    const USERS: &str = r#"{
    "Users": [
        {"Name": "alice", "Password": "wonder land", "Role": "viewer"},
        {"Name": "bob.smith_2-x", "Password": "pw", "Role": "admin"}
    ]
}"#;

    fn users_err(text: &str) -> ConfigError {
        parse_users(Path::new("u.json"), text.as_bytes()).unwrap_err()
    }

    /// `USERS` with bob's entry replaced by `entry`.
    fn with_bob(entry: &str) -> String {
        USERS.replace(
            r#"{"Name": "bob.smith_2-x", "Password": "pw", "Role": "admin"}"#,
            entry,
        )
    }

    #[test]
    fn users_file_loads() {
        let u = parse_users(Path::new("u"), USERS.as_bytes()).unwrap();
        assert_eq!(u.users.len(), 2);
        assert_eq!(u.users[1].name.0, "bob.smith_2-x");
        assert_eq!(u.users[1].role, Role::Admin);
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        let example = include_str!("../../config/dt-users.json");
        let u = parse_users(Path::new("config/dt-users.json"), example.as_bytes()).unwrap();
        assert!(
            u.users.iter().any(|u| !u.tokens.is_empty()),
            "a token example"
        );
        assert!(u.users.iter().any(|u| matches!(u.secret, Secret::Hash(_))));
    }

    #[test]
    fn each_users_file_rule_has_its_message() {
        let digest = token_digest("t");
        let cases: Vec<(String, &str)> = vec![
            (
                USERS.replace("\"Users\"", "\"Userz\""),
                "unknown field `Userz`",
            ),
            (
                r#"{"Users": []} "#.replace("[]", "[], \"Admins\": []"),
                "unknown field `Admins`",
            ),
            (r#"{}"#.into(), "missing field `Users`"),
            (r#"{"Users": {}}"#.into(), "expected a list of users"),
            (
                with_bob(r#"{"Name": "b", "Passwd": "x", "Role": "viewer"}"#),
                "unknown field `Passwd`",
            ),
            (
                with_bob(r#"{"Name": "", "Password": "x", "Role": "viewer"}"#),
                "Name: must not be empty",
            ),
            (
                with_bob(&format!(
                    r#"{{"Name": "{}", "Password": "x", "Role": "viewer"}}"#,
                    "n".repeat(65)
                )),
                "is 65 bytes long, more than 64",
            ),
            (
                with_bob(r#"{"Name": "bob smith", "Password": "x", "Role": "viewer"}"#),
                "Name: 'bob smith' may hold letters, digits, '.', '_' and '-' only (found ' ')",
            ),
            (
                with_bob(r#"{"Name": "bob:x", "Password": "x", "Role": "viewer"}"#),
                "(found ':')",
            ),
            (
                with_bob(r#"{"Name": 7, "Password": "x", "Role": "viewer"}"#),
                "Name: must be a string",
            ),
            (
                with_bob(r#"{"Name": "alice", "Password": "x", "Role": "viewer"}"#),
                "Users: Name 'alice' is listed twice",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": "", "Role": "viewer"}"#),
                "Password: must not be empty",
            ),
            (
                with_bob(&format!(
                    r#"{{"Name": "b", "Password": "{}", "Role": "viewer"}}"#,
                    "p".repeat(1025)
                )),
                "Password: is longer than 1024 bytes",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": "a\tb", "Role": "viewer"}"#),
                "Password: must not hold control characters",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": 123456, "Role": "viewer"}"#),
                "Password: must be a string",
            ),
            (
                with_bob(r#"{"Name": "b", "PasswordHash": 5, "Role": "viewer"}"#),
                "PasswordHash: must be a string",
            ),
            (
                with_bob(
                    r#"{"Name": "b", "Password": "x", "PasswordHash": "$argon2id$v=19$m=19456,t=2,p=1$bTWiEsYl2t9r6IGoC1W4gQ$SIrHCB4cbwzoKfmIgXefY2l19zb0e7bFRj2pTDECCb8", "Role": "viewer"}"#,
                ),
                "user 'b': give Password or PasswordHash, not both",
            ),
            (
                with_bob(r#"{"Name": "b", "Role": "viewer"}"#),
                "user 'b': missing field `Password` (or `PasswordHash`)",
            ),
            (
                with_bob(r#"{"Name": "b", "PasswordHash": "nope", "Role": "viewer"}"#),
                "user 'b': PasswordHash is not a PHC hash string",
            ),
            (
                with_bob(
                    r#"{"Name": "b", "PasswordHash": "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E", "Role": "viewer"}"#,
                ),
                "user 'b': PasswordHash is a 'scrypt' hash, not Argon2",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": "x"}"#),
                "missing field `Role`",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": "x", "Role": "root"}"#),
                "Role: 'root' is not one of viewer, operator, admin",
            ),
            (
                with_bob(r#"{"Name": "b", "Password": "x", "Role": 1}"#),
                "Role: must be a string",
            ),
            (
                with_bob(
                    r#"{"Name": "b", "Password": "x", "Role": "viewer", "Tokens": "sha256:00"}"#,
                ),
                "Tokens: must be a list of \"sha256:…\" strings",
            ),
            (
                with_bob(
                    r#"{"Name": "b", "Password": "x", "Role": "viewer", "Tokens": ["sha256:abc"]}"#,
                ),
                "Tokens: an entry is not \"sha256:\" and 64 hex digits",
            ),
            (
                with_bob(&format!(
                    r#"{{"Name": "b", "Password": "x", "Role": "viewer", "Tokens": ["{digest}", "{}"]}}"#,
                    digest.to_uppercase().replace("SHA256", "sha256")
                )),
                "user 'b': Tokens: an entry is listed twice",
            ),
            (
                USERS
                    .replace(
                        r#""Role": "viewer"}"#,
                        &format!(r#""Role": "viewer", "Tokens": ["{digest}"]}}"#),
                    )
                    .replace(
                        r#""Role": "admin"}"#,
                        &format!(r#""Role": "admin", "Tokens": ["{digest}"]}}"#),
                    ),
                "user 'bob.smith_2-x': Tokens: an entry is also a token of user 'alice'",
            ),
            (USERS.replace("}\n    ]", "}\n    "), "expected"),
        ];
        for (text, want) in &cases {
            let e = users_err(text);
            assert!(e.message.contains(want), "want {want:?}, got {e}");
            assert!(e.line > 0 && e.column > 0, "{e}");
            assert!(
                e.to_string().starts_with(&format!("u.json:{}:", e.line)),
                "{e}"
            );
        }
    }

    #[test]
    fn a_users_file_error_points_at_the_entry_at_fault() {
        let e = users_err(&with_bob(
            r#"{"Name": "b", "Password": "x", "Role": "root"}"#,
        ));
        assert_eq!(e.line, 4, "{e}");
        let e = users_err(&with_bob(
            r#"{"Name": "alice", "Password": "x", "Role": "viewer"}"#,
        ));
        assert_eq!(e.line, 4, "{e}");
        let e = users_err(&USERS.replace("\"Role\": \"viewer\"", "\"Role\": \"viewer\", \"X\": 1"));
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn no_users_file_message_quotes_a_secret() {
        let token = "Zq9-raw-token-pasted-by-mistake";
        for text in [
            with_bob(&format!(
                r#"{{"Name": "b", "Password": "x", "Role": "viewer", "Tokens": ["{token}"]}}"#
            )),
            with_bob(&format!(
                r#"{{"Name": "b", "Password": "x", "Role": "viewer", "Tokens": "{token}"}}"#
            )),
            with_bob(&format!(
                r#"{{"Name": "b", "Password": "{token}\u0007", "Role": "viewer"}}"#
            )),
            with_bob(r#"{"Name": "b", "Password": 987654321, "Role": "viewer"}"#),
        ] {
            let e = users_err(&text).to_string();
            assert!(!e.contains(token) && !e.contains("987654321"), "{e}");
        }
        let u = parse_users(Path::new("u"), USERS.as_bytes()).unwrap();
        assert!(!format!("{u:?}").contains("wonder land"));
    }

    #[test]
    fn users_log_in_with_passwords_hashes_and_tokens() {
        let hash = hash_password("s3cret").unwrap();
        let token = new_token().unwrap();
        assert_eq!(token.len(), 43, "{token}");
        assert_ne!(token, new_token().unwrap());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let text = with_bob(&format!(
            r#"{{"Name": "h", "PasswordHash": "{hash}", "Role": "operator", "Tokens": ["{}"]}}"#,
            token_digest(&token)
        ));
        let users = Users::new(parse_users(Path::new("u"), text.as_bytes()).unwrap());
        assert_eq!(users.check_password("h", "s3cret"), Some(Role::Operator));
        assert_eq!(users.verified.lock().unwrap().len(), 1, "remembered");
        assert_eq!(users.check_password("h", "s3cret"), Some(Role::Operator));
        assert_eq!(users.check_password("h", "s3cret2"), None);
        assert_eq!(
            users.check_password("alice", "wonder land"),
            Some(Role::Viewer)
        );
        assert_eq!(users.check_password("alice", "wonder lan"), None);
        assert_eq!(users.check_password("h", "wonder land"), None);
        assert_eq!(users.check_password("nobody", "s3cret"), None);
        assert_eq!(users.check_token(&token), Some(("h", Role::Operator)));
        assert_eq!(users.check_token(&token[1..]), None);
        assert_eq!(users.check_token(""), None);
    }

    #[test]
    fn token_digests_are_sha256_in_hex() {
        assert_eq!(
            token_digest("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_missing_users_file_is_no_users_file() {
        let dir = std::env::temp_dir().join(format!("dt-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dt-users.json");
        let _ = std::fs::remove_file(&file);
        assert!(load_users(&file).unwrap().is_none());
        std::fs::write(&file, USERS).unwrap();
        assert_eq!(load_users(&file).unwrap().unwrap().file.users.len(), 2);
        std::fs::write(&file, "{").unwrap();
        assert!(load_users(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
