//! The master's IP-to-AS table (`-asn-db`), reloaded when the file changes, and what it adds
//! to the results and paths the API shows: each hop's owner and the AS path.

use crate::asn::{AsnDb, Owner};
use crate::master::analysis::AsHops;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// The table in use, when the master has one.
#[derive(Default)]
pub struct Owners {
    file: Option<PathBuf>,
    db: RwLock<Arc<AsnDb>>,
    stamp: Mutex<Option<SystemTime>>,
}

fn stamp(file: &Path) -> Option<SystemTime> {
    std::fs::metadata(file).and_then(|m| m.modified()).ok()
}

impl Owners {
    /// Loads `file` (an error when it does not read: the master does not start without it).
    pub fn open(file: &Path) -> anyhow::Result<Owners> {
        let at = stamp(file);
        let db = AsnDb::load(file)?;
        log::info!("AS table {}: {}", file.display(), db.describe());
        Ok(Owners {
            file: Some(file.to_owned()),
            db: RwLock::new(Arc::new(db)),
            stamp: Mutex::new(at),
        })
    }

    /// True when the master was given a table.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// The table now.
    pub fn get(&self) -> Arc<AsnDb> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the file again when it changed; a table that does not read is logged and the
    /// one before kept.
    pub fn reload_if_changed(&self) {
        let Some(file) = &self.file else { return };
        let now = stamp(file);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if now == *last {
            return;
        }
        *last = now;
        match AsnDb::load(file) {
            Ok(db) => {
                log::info!("AS table {} reloaded: {}", file.display(), db.describe());
                *self.db.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(db);
            }
            Err(e) => log::error!("{e:#}; keeping the table loaded before"),
        }
    }

    /// Checks the file for edits every `every`, for as long as the owner lives.
    pub fn watch(owners: std::sync::Weak<Owners>, every: Duration) {
        while let Some(o) = owners.upgrade() {
            o.reload_if_changed();
            drop(o);
            std::thread::sleep(every);
        }
    }
}

/// An owner as the API shows it.
pub fn owner_json(o: &Owner) -> Value {
    match o {
        Owner::As { asn, name, country } => json!({"asn": asn, "name": name, "country": country}),
        Owner::Special(what) => json!({"special": what}),
    }
}

/// The AS path of a path's hops for the change detection ([`AsHops`]): each AS once per
/// run; silent hops and addresses not in the table between two different ASes leave a gap;
/// special-use addresses, and whatever comes before the first AS or after the last, nothing.
pub fn as_hops(db: &AsnDb, hops: &[Option<IpAddr>]) -> AsHops {
    collapse(hops.iter().map(|h| h.and_then(|ip| db.lookup(ip))))
}

/// [`as_hops`] of the owners of the hops, in order (`None`: silent or not in the table).
fn collapse(owners: impl IntoIterator<Item = Option<Owner>>) -> AsHops {
    let mut out: AsHops = Vec::new();
    let mut unknown = false;
    for o in owners {
        match o {
            Some(Owner::As { asn, .. }) => {
                match out.last() {
                    Some(Some(last)) if *last == asn => {}
                    Some(_) if unknown => out.extend([None, Some(asn)]),
                    _ => out.push(Some(asn)),
                }
                unknown = false;
            }
            Some(Owner::Special(_)) => {}
            None => unknown = !out.is_empty(),
        }
    }
    out
}

/// Adds `owner` to each hop (under `hops[].address`) and `as_path` (the ASes in order, each
/// once per run) to an object of the API (a result, or a current path); each hop is looked
/// up once.
pub fn enrich(v: &mut Value, db: &AsnDb) {
    let Some(hops) = v.get_mut("hops").and_then(Value::as_array_mut) else {
        return;
    };
    let mut owners = Vec::with_capacity(hops.len());
    for h in hops.iter_mut() {
        let owner = h
            .get("address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok())
            .and_then(|ip| db.lookup(ip));
        if let Some(o) = &owner {
            h["owner"] = owner_json(o);
        }
        owners.push(owner);
    }
    v["as_path"] = json!(crate::master::analysis::as_numbers(&collapse(owners)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_get_owners_and_the_result_its_as_path() {
        let db = AsnDb::parse(
            "8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n\
             1.1.1.0\t1.1.1.255\t13335\tUS\tCLOUDFLARENET\n\
             1.1.2.0\t1.1.2.255\t13335\tUS\tCLOUDFLARENET\n",
        )
        .unwrap();
        let mut r = json!({"hops": [
            {"ttl": 1, "address": "192.168.1.1"},
            {"ttl": 2, "address": "1.1.1.1"},
            {"ttl": 3, "address": "1.1.2.1"},
            {"ttl": 4, "address": "9.9.9.9"},
            {"ttl": 5, "address": "8.8.8.8"},
            {"ttl": 6, "address": null},
        ]});
        enrich(&mut r, &db);
        assert_eq!(
            r["hops"][0]["owner"],
            json!({"special": "private (RFC 1918)"})
        );
        assert_eq!(
            r["hops"][1]["owner"],
            json!({"asn": 13335, "name": "CLOUDFLARENET", "country": "US"})
        );
        assert!(r["hops"][3].get("owner").is_none(), "not in the table");
        assert_eq!(r["as_path"], json!([13335, 15169]));
    }

    #[test]
    fn the_as_path_for_change_detection_marks_where_an_as_may_hide() {
        let db =
            AsnDb::parse("1.1.1.0\t1.1.1.255\t13335\tUS\tC\n8.8.8.0\t8.8.8.255\t15169\tUS\tG\n")
                .unwrap();
        let hops = |t: &str| -> Vec<Option<IpAddr>> {
            t.split_whitespace().map(|h| h.parse().ok()).collect()
        };
        let asp = |t: &str| as_hops(&db, &hops(t));
        // Private and unknown hops before the first AS, and runs of one AS, collapse.
        assert_eq!(
            asp("192.168.1.1 9.9.9.9 1.1.1.1 1.1.1.2 8.8.8.8"),
            [Some(13335), Some(15169)]
        );
        // A silent or unknown hop between two ASes is a gap; inside one AS it is not.
        assert_eq!(asp("1.1.1.1 * 8.8.8.8"), [Some(13335), None, Some(15169)]);
        assert_eq!(
            asp("1.1.1.1 9.9.9.9 8.8.8.8"),
            [Some(13335), None, Some(15169)]
        );
        assert_eq!(asp("1.1.1.1 * 1.1.1.9 8.8.8.8"), [Some(13335), Some(15169)]);
        // A private hop between two ASes hides none; what follows the last AS is nothing.
        assert_eq!(
            asp("1.1.1.1 10.0.0.1 8.8.8.8 * 9.9.9.9"),
            [Some(13335), Some(15169)]
        );
        assert_eq!(asp("10.0.0.1 * 192.168.0.1"), []);
    }

    #[test]
    fn an_edited_table_is_taken_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("owners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.tsv");
        std::fs::write(&file, "8.8.8.0\t8.8.8.255\t15169\tUS\tGOOGLE\n").unwrap();
        let o = Owners::open(&file).unwrap();
        let asn = |o: &Owners| match o.get().lookup("8.8.8.8".parse().unwrap()) {
            Some(Owner::As { asn, .. }) => asn,
            _ => 0,
        };
        assert_eq!(asn(&o), 15169);
        // A different mtime is what tells an edit.
        let later = |f: &Path, s: u64| {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(s);
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        std::fs::write(&file, "8.8.8.0\t8.8.8.255\t64500\tUS\tEXAMPLE\n").unwrap();
        later(&file, 1_000_000);
        o.reload_if_changed();
        assert_eq!(asn(&o), 64500);
        std::fs::write(&file, "8.8.8.0\tnot an address\t1\tUS\tX\n").unwrap();
        later(&file, 2_000_000);
        o.reload_if_changed();
        assert_eq!(asn(&o), 64500, "the broken table is not taken");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Owners::open(&file).is_err());
    }
}
