//! A slave's enrolment (`-enroll TOKEN`): it makes a random secret, exchanges the master's
//! one-time token and that secret for its place at the master, and keeps its name and secret
//! in `credentials.json` in its spool folder (mode 0600), which later starts read instead of
//! `-name`/`-passwd`. The secret is never logged and never on a command line.

use super::client::Client;
use super::shutdown::Stop;
use crate::proto::Creds;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The credentials file in the spool folder.
pub const CREDENTIALS: &str = "credentials.json";

/// Where the credentials are kept for the spool `spool`.
pub fn file(spool: &Path) -> PathBuf {
    spool.join(CREDENTIALS)
}

/// The credentials an enrolment saved in `spool`, if any.
pub fn saved(spool: &Path) -> anyhow::Result<Option<Creds>> {
    let f = file(spool);
    match std::fs::read(&f) {
        Ok(text) => {
            let c: Creds = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a slave's credentials", f.display()))?;
            if c.name.is_empty() || c.password.is_empty() {
                bail!("{} has an empty Name or Password", f.display());
            }
            Ok(Some(c))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", f.display())),
    }
}

/// Writes the credentials into `spool`, readable by this user only, whole or not at all.
pub fn save(spool: &Path, creds: &Creds) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let f = file(spool);
    let tmp = spool.join(format!("{CREDENTIALS}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    out.write_all(&serde_json::to_vec_pretty(creds)?)?;
    out.sync_all()?;
    std::fs::rename(&tmp, &f).with_context(|| format!("cannot write {}", f.display()))?;
    Ok(())
}

/// A new random secret: 32 bytes from the operating system, as 64 hex digits (letters and
/// digits, as the original protocol's passwords are).
pub fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random bytes from the system: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Enrols at the master of `client` with `token`, trying again (up to `retry_max` apart)
/// while the master cannot be reached or answers anything but a refusal, until `stop`; saves
/// the credentials in `spool` and gives them.
pub fn enrol(
    client: &Client,
    token: &str,
    spool: &Path,
    retry_max: Duration,
    stop: &Stop,
) -> anyhow::Result<Creds> {
    let secret = new_secret()?;
    let mut wait = Duration::from_millis(500);
    loop {
        match client.enroll(token, &secret) {
            Ok(Ok((name, tags))) => {
                let creds = Creds {
                    name,
                    password: secret,
                };
                save(spool, &creds)?;
                log::info!(
                    "enrolled at {} as slave '{}'{}; credentials kept in {}",
                    client.base(),
                    creds.name,
                    if tags.is_empty() {
                        String::new()
                    } else {
                        format!(" with tags {}", tags.join(","))
                    },
                    file(spool).display()
                );
                return Ok(creds);
            }
            Ok(Err(refused)) => bail!("the master refused the enrolment: {refused}"),
            Err(e) => log::warn!(
                "cannot enrol yet: {e}; trying again in {}",
                humantime::format_duration(wait)
            ),
        }
        if stop.sleep(wait) {
            bail!("stopped before the enrolment was done");
        }
        wait = (wait * 2).min(retry_max.max(Duration::from_millis(500)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_kept_for_this_user_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("slave-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(saved(&dir).unwrap().is_none());
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(secret, new_secret().unwrap());
        let c = Creds {
            name: "fra1".into(),
            password: secret,
        };
        save(&dir, &c).unwrap();
        let mode = std::fs::metadata(file(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(saved(&dir).unwrap(), Some(c));
        std::fs::write(file(&dir), b"{").unwrap();
        assert!(saved(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
