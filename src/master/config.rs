//! The master's config files (`dt-slaves.json`, `dt-targets.json`): strict parsing with
//! file:line:column errors, the original's validation ranges, and reload on edit.

use anyhow::Context;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::collections::BTreeMap;
use std::collections::HashSet;
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RawSlave {
    name: Alnum,
    #[serde(default)]
    password: Option<Alnum>,
    #[serde(default)]
    password_hash: Option<String>,
}

impl TryFrom<RawSlave> for SlaveConf {
    type Error = String;

    fn try_from(raw: RawSlave) -> Result<Self, String> {
        let name = raw.name;
        let secret = match (raw.password, raw.password_hash) {
            (Some(p), None) => Secret::Plain(p.0),
            (None, Some(h)) => {
                argon2::password_hash::phc::PasswordHash::new(&h).map_err(|e| {
                    format!(
                        "slave '{}': PasswordHash is not a PHC hash string ({e}); make one with `dist-traceroute hash-password`",
                        name.0
                    )
                })?;
                Secret::Hash(h)
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "slave '{}': give Password or PasswordHash, not both",
                    name.0
                ));
            }
            (None, None) => {
                return Err(format!(
                    "slave '{}': missing field `Password` (or `PasswordHash`)",
                    name.0
                ));
            }
        };
        Ok(SlaveConf { name, secret })
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    parse_json(file, text)
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
}

impl Config {
    /// True when `name`/`password` is an allowed pair.
    ///
    /// Plain passwords are compared in constant time; hashes are checked with Argon2, and a
    /// pair that checked out once is remembered (by a digest) so a slave's every request does
    /// not pay for the slow hash again.
    pub fn check_password(&self, name: &str, password: &str) -> bool {
        let mut ok = false;
        for s in &self.slaves.slaves {
            let name_matches = constant_time_eq(s.name.0.as_bytes(), name.as_bytes());
            match &s.secret {
                Secret::Plain(p) => {
                    ok |= name_matches & constant_time_eq(p.as_bytes(), password.as_bytes())
                }
                Secret::Hash(h) if name_matches => ok |= self.check_hash(name, h, password),
                Secret::Hash(_) => {}
            }
        }
        ok
    }

    fn check_hash(&self, name: &str, hash: &str, password: &str) -> bool {
        use argon2::password_hash::PasswordVerifier;
        use sha2::Digest;
        let mut d = sha2::Sha256::new();
        for part in [name, hash, password] {
            d.update(part.as_bytes());
            d.update([0u8]);
        }
        let key: [u8; 32] = d.finalize().into();
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.contains(&key) {
            return true;
        }
        drop(cache);
        let Ok(parsed) = argon2::password_hash::phc::PasswordHash::new(hash) else {
            return false;
        };
        let good = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        if good {
            cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key);
        }
        good
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
}

/// An Argon2id PHC string for `password`, for `PasswordHash` in `dt-slaves.json`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

/// Watches both files and swaps in each edit that parses; a broken edit is logged once and
/// the last good config stays. Runs until the process ends.
pub fn watch(live: Live, slaves: PathBuf, targets: PathBuf, every: Duration) -> anyhow::Result<()> {
    let mut last = (stamp(&slaves), stamp(&targets));
    let mut last_error: Option<String> = None;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let now = (stamp(&slaves), stamp(&targets));
                if now == last {
                    continue;
                }
                last = now;
                match load(&slaves, &targets) {
                    Ok(config) => {
                        let old = live.get();
                        if old.slaves != config.slaves || *old.targets_raw != *config.targets_raw {
                            log::info!(
                                "config reloaded: {} slaves, {} targets",
                                config.slaves.slaves.len(),
                                config.targets.targets.len()
                            );
                            live.set(config);
                        }
                        last_error = None;
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if last_error.as_ref() != Some(&text) {
                            log::warn!(
                                "config edit rejected, keeping the last good config: {text}"
                            );
                            last_error = Some(text);
                        }
                    }
                }
            }
        })
        .context("cannot start the config watcher thread")?;
    Ok(())
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
}
