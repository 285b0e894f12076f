//! Enrolment: slaves that join with a one-time token instead of a hand-edited password.
//!
//! `dist-traceroute enroll-token NAME` writes a token's SHA-256 (never the token) into the
//! managed file beside `dt-slaves.json` (`dt-slaves.managed.json`) and prints the token. A new
//! slave run with `-enroll TOKEN` makes a random secret, sends it with the token to
//! `POST /api/v1/enroll`, and keeps it in its spool folder; the master keeps only the
//! secret's Argon2 hash, in the same file. A token works once and until it expires;
//! `dist-traceroute revoke NAME` takes a slave out, and the master sees that at the slave's
//! next request (it looks at the file's time and size before each check of an enrolled slave).
//!
//! The operator's own `dt-slaves.json` is never written: the managed file is the master's, and
//! the two may not name the same slave.

use super::config::{Alnum, Tag};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// The managed file's name, in the folder of the slaves file.
pub const MANAGED_FILE: &str = "dt-slaves.managed.json";

/// The managed file beside `slaves_file`.
pub fn managed_path(slaves_file: &Path) -> PathBuf {
    slaves_file
        .parent()
        .map_or_else(|| PathBuf::from(MANAGED_FILE), |d| d.join(MANAGED_FILE))
}

/// What the managed file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Managed {
    /// Enrolled slaves.
    #[serde(default)]
    pub slaves: Vec<Enrolled>,
    /// Tokens issued, unused or used (kept a day past their expiry, to say why one fails).
    #[serde(default)]
    pub tokens: Vec<Token>,
}

/// One enrolled slave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Enrolled {
    /// Its name.
    pub name: Alnum,
    /// The Argon2 PHC string of its secret.
    pub password_hash: String,
    /// Its tags, from its token.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// When it enrolled, RFC 3339.
    pub enrolled_at: String,
}

/// One token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Token {
    /// `sha256:` and the SHA-256 of the token in hex.
    pub digest: String,
    /// The slave it enrols.
    pub name: Alnum,
    /// The tags that slave gets.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// When it stops working, RFC 3339.
    pub expires: String,
    /// When it was used, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
}

impl Managed {
    /// Reads `file`; a file that is not there is an empty one.
    pub fn read(file: &Path) -> anyhow::Result<Managed> {
        match std::fs::read(file) {
            Ok(text) => super::config::parse_json(file, &text).map_err(anyhow::Error::from),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Managed::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
        }
    }

    /// Writes `file` whole (a temporary file renamed over it, so a reader never sees half).
    fn write(&self, file: &Path) -> anyhow::Result<()> {
        let tmp = file.with_extension("json.tmp");
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Hashes and token digests: for the master's user only.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)
            .with_context(|| format!("cannot replace {}", file.display()))?;
        Ok(())
    }

    /// Changes `file` under its lock (held against other commands and the master).
    pub fn update<T>(
        file: &Path,
        f: impl FnOnce(&mut Managed) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let lock_path = file.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let mut m = Managed::read(file)?;
        let before = m.clone();
        let out = f(&mut m)?;
        if m != before {
            m.write(file)?;
        }
        Ok(out)
    }

    /// The enrolled slave `name`.
    pub fn slave(&self, name: &str) -> Option<&Enrolled> {
        self.slaves.iter().find(|s| s.name.0 == name)
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Issues a token for slave `name` with `tags`, valid for `valid`: writes its digest to the
/// managed file `file` and gives the token. A name the slaves file or the
/// managed file already has, or one with a token still unused, is refused.
pub fn issue(
    slaves_file: &Path,
    file: &Path,
    name: &str,
    tags: Vec<Tag>,
    valid: std::time::Duration,
) -> anyhow::Result<String> {
    let name: Alnum = serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|e| anyhow::anyhow!("NAME: {e}"))?;
    let text = std::fs::read(slaves_file)
        .with_context(|| format!("cannot read {}", slaves_file.display()))?;
    let listed = super::config::parse_slaves(slaves_file, &text)?;
    if listed.slaves.iter().any(|s| s.name == name) {
        bail!(
            "slave '{}' is in {}: the operator's file keeps it (pick another name)",
            name.0,
            slaves_file.display()
        );
    }
    let token = super::config::new_token()?;
    let digest = super::config::token_digest(&token);
    Managed::update(file, |m| {
        prune(m);
        if m.slave(&name.0).is_some() {
            bail!(
                "slave '{}' is enrolled already: revoke it first (dist-traceroute revoke {})",
                name.0,
                name.0
            );
        }
        let t = now();
        if m.tokens
            .iter()
            .any(|k| k.name == name && k.used.is_none() && !expired(k, t))
        {
            bail!("slave '{}' has a token that is still unused", name.0);
        }
        let expires = t + chrono::Duration::from_std(valid)?;
        m.tokens.push(Token {
            digest,
            name,
            tags,
            expires: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            used: None,
        });
        Ok(())
    })?;
    Ok(token)
}

/// Takes slave `name` out of the managed file `file` (and any token for it); false when it
/// was in neither.
pub fn revoke(file: &Path, name: &str) -> anyhow::Result<bool> {
    Managed::update(file, |m| {
        let before = (m.slaves.len(), m.tokens.len());
        m.slaves.retain(|s| s.name.0 != name);
        m.tokens.retain(|t| t.name.0 != name || t.used.is_some());
        Ok((m.slaves.len(), m.tokens.len()) != before)
    })
}

fn expired(t: &Token, at: chrono::DateTime<chrono::Utc>) -> bool {
    chrono::DateTime::parse_from_rfc3339(&t.expires).map_or(true, |e| e <= at)
}

/// Drops tokens a day past their expiry.
fn prune(m: &mut Managed) {
    let day_ago = now() - chrono::Duration::days(1);
    m.tokens.retain(|t| !expired(t, day_ago));
}

/// Why an enrolment was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token of this master (or a wrong one): counts as a failed login.
    Unknown,
    /// Used before, at this time.
    Used(String),
    /// Expired at this time.
    Expired(String),
    /// The name was taken since the token was issued.
    Taken(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unknown => f.write_str("not a token this master issued"),
            Refusal::Used(at) => write!(f, "this token was used at {at}: a token works once"),
            Refusal::Expired(at) => write!(f, "this token expired at {at}: issue a new one"),
            Refusal::Taken(name) => write!(f, "slave '{name}' is listed or enrolled already"),
        }
    }
}

/// The enrolled slaves as the master sees them, read again when the file changes.
pub struct Live {
    file: PathBuf,
    state: RwLock<(Stamp, Arc<Managed>)>,
    /// Digests of name/hash/secret triples that passed Argon2.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// A file's modification time and size, `None` while it is not there.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(file: &Path) -> Stamp {
    let m = std::fs::metadata(file).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Live {
    /// The managed file `file`, read now (an error when it does not parse).
    pub fn open(file: &Path) -> anyhow::Result<Live> {
        let file = file.to_owned();
        let at = stamp(&file);
        let m = Managed::read(&file)?;
        Ok(Live {
            file,
            state: RwLock::new((at, Arc::new(m))),
            verified: Mutex::default(),
        })
    }

    /// A file that is not there, for tests and tools.
    pub fn none() -> Live {
        Live {
            file: PathBuf::from("/nonexistent").join(MANAGED_FILE),
            state: RwLock::new((None, Arc::default())),
            verified: Mutex::default(),
        }
    }

    /// The managed file's path.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// What the file holds now: read again when its time or size changed (an edit that does
    /// not parse is logged and the last good read kept).
    pub fn get(&self) -> Arc<Managed> {
        let now = stamp(&self.file);
        {
            let s = self.state.read().unwrap_or_else(|p| p.into_inner());
            if s.0 == now {
                return s.1.clone();
            }
        }
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        if s.0 != now {
            match Managed::read(&self.file) {
                Ok(m) => {
                    log::info!(
                        "{}: {} enrolled slaves",
                        self.file.display(),
                        m.slaves.len()
                    );
                    *s = (now, Arc::new(m));
                }
                Err(e) => {
                    log::error!("{e:#}; keeping the enrolled slaves read before");
                    s.0 = now;
                }
            }
        }
        s.1.clone()
    }

    /// True when `name`/`secret` is an enrolled slave's.
    pub fn check(&self, name: &str, secret: &str) -> bool {
        let m = self.get();
        m.slave(name).is_some_and(|s| {
            super::config::verify_cached(&self.verified, name, &s.password_hash, secret)
        })
    }

    /// Enrols with `token` and `secret`: the slave's name and tags, or why not. `listed`
    /// says whether the operator's file has a name.
    pub fn enrol(
        &self,
        token: &str,
        secret: &str,
        listed: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Result<(String, Vec<Tag>), Refusal>> {
        let digest = super::config::token_digest(token);
        let matches =
            |t: &Token| super::config::constant_time_eq(t.digest.as_bytes(), digest.as_bytes());
        // The slow hash only for a token that is there: a stranger's guesses cost no Argon2
        // and no write.
        if !self.get().tokens.iter().any(matches) {
            return Ok(Err(Refusal::Unknown));
        }
        let hash = super::config::hash_password(secret)?;
        Managed::update(&self.file, |m| {
            let at = now();
            let Some(t) = m.tokens.iter_mut().find(|t| matches(t)) else {
                return Ok(Err(Refusal::Unknown));
            };
            if let Some(used) = &t.used {
                return Ok(Err(Refusal::Used(used.clone())));
            }
            if expired(t, at) {
                return Ok(Err(Refusal::Expired(t.expires.clone())));
            }
            let name = t.name.clone();
            let tags = t.tags.clone();
            if listed(&name.0) || m.slaves.iter().any(|s| s.name == name) {
                return Ok(Err(Refusal::Taken(name.0)));
            }
            t.used = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            m.slaves.push(Enrolled {
                name: name.clone(),
                password_hash: hash,
                tags: tags.clone(),
                enrolled_at: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            Ok(Ok((name.0, tags)))
        })
    }
}
