//! Who may read: which requests are reads, the credentials a request carries (HTTP Basic or a
//! bearer token), what counts as loopback, and a log of refused reads that stays quiet while a
//! refused client keeps polling. The decision itself is the router's (`routes::read_gate`),
//! since it needs the throttle and the counters.

use super::config::LiveUsers;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `WWW-Authenticate` challenge of a 401 on a read.
pub const CHALLENGE: &str = "Basic realm=\"dist-traceroute\"";

/// How often a refused read is logged per address while refusals from it go on.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Most addresses whose last logged refusal is remembered.
const MAX_REMEMBERED: usize = 10_000;

/// True for a request that reads results, slaves or metrics: `GET` and `HEAD` of `/api/v1/…`,
/// `/metrics` and the dashboard's pages (`/`, `/ui/…`). The slave endpoints are `POST`s and
/// keep their own credentials; the login form, the assets and `/healthz` show nothing.
pub fn is_read(method: &str, path: &str) -> bool {
    matches!(method, "GET" | "HEAD")
        && (path.starts_with("/api/v1/") || path == "/metrics" || super::ui::is_page(path))
}

/// True for 127.0.0.0/8, `::1` and IPv4-mapped loopback (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A request's `Authorization` header; its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthHeader(pub String);

impl std::fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthHeader(<redacted>)")
    }
}

/// The credentials a request carries.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP Basic: a user's name and password.
    Basic {
        /// The user name (anything before the first `:`).
        name: String,
        /// The password.
        password: String,
    },
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { name, .. } => write!(f, "Basic({name:?}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// The credentials in an `Authorization` header; `None` for another scheme or a malformed
/// value (answered like no login at all).
pub fn credentials(header: &str) -> Option<Credentials> {
    use base64::Engine;
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let bytes = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (name, password) = text.split_once(':')?;
        Some(Credentials::Basic {
            name: name.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Some(Credentials::Bearer(rest.to_owned()))
    } else {
        None
    }
}

/// The 403 for a client off loopback while there is no users file: how to add a user.
pub fn no_users_file(file: &Path) -> String {
    let file = file.display();
    format!(
        "reading needs a login, and this master has no users file ({file}), so only clients \
         on loopback may read. To add a user, run `dist-traceroute hash-password` on the master \
         and put the hash it prints in {file}, e.g. {{\"Users\": [{{\"Name\": \"alice\", \
         \"PasswordHash\": \"$argon2id$v=19$m=19456,t=2,p=1$…\", \"Role\": \"viewer\"}}]}}; the \
         master reads it within its -reload-interval. Then log in with HTTP Basic \
         (curl -u alice:PASSWORD …)."
    )
}

/// Who may read, as the operator set the master up.
#[derive(Debug, Default)]
pub struct ReadAccess {
    /// `-public-read`: anyone reads, without a login.
    pub public: bool,
    /// The users file's users (none: loopback reads only).
    pub users: LiveUsers,
    /// Refused reads, logged once a minute per address.
    pub refusals: Refusals,
}

impl ReadAccess {
    /// Reads checked against `users`, or open to anyone with `public`.
    pub fn new(users: LiveUsers, public: bool) -> ReadAccess {
        ReadAccess {
            public,
            users,
            refusals: Refusals::default(),
        }
    }
}

/// When each address last had a refused read logged, and how many went unlogged since.
#[derive(Debug, Default)]
pub struct Refusals {
    seen: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl Refusals {
    /// Logs a refused read from `ip` at info level, unless one from there was logged less than
    /// [`LOG_EVERY`] ago (then it is counted, and the count goes with the next line). True
    /// when it logged.
    pub fn note(&self, ip: IpAddr, now: Instant, what: impl FnOnce() -> String) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let quiet = match seen.get_mut(&ip) {
            Some((last, quiet)) if now.saturating_duration_since(*last) < LOG_EVERY => {
                *quiet += 1;
                return false;
            }
            Some((_, quiet)) => *quiet,
            None => 0,
        };
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < LOG_EVERY);
            if seen.len() >= MAX_REMEMBERED {
                seen.clear();
            }
        }
        seen.insert(ip, (now, 0));
        drop(seen);
        if quiet > 0 {
            log::info!(
                "{} ({quiet} more refused from this address since the last line)",
                what()
            );
        } else {
            log::info!("{}", what());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> String {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn reads_are_gets_and_heads_of_the_api_the_metrics_and_the_pages() {
        for (method, path) in [
            ("GET", "/api/v1/slaves"),
            ("GET", "/api/v1/results"),
            ("HEAD", "/api/v1/export/results.csv"),
            ("GET", "/metrics"),
            ("HEAD", "/metrics"),
            ("GET", "/api/v1/no-such-thing"),
            ("GET", "/"),
            ("GET", "/ui/series"),
            ("HEAD", "/ui/target"),
        ] {
            assert!(is_read(method, path), "{method} {path}");
        }
        for (method, path) in [
            ("POST", "/api/v1/results"),
            ("POST", "/api/v1/results:batch"),
            ("POST", "/config/"),
            ("POST", "/results/"),
            ("POST", "/"),
            ("GET", "/config/"),
            ("GET", "/metricsx"),
            ("GET", "/healthz"),
            ("GET", "/login"),
            ("GET", "/assets/app.js"),
            ("GET", "/uix"),
        ] {
            assert!(!is_read(method, path), "{method} {path}");
        }
    }

    #[test]
    fn loopback_in_every_spelling() {
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.0.2.1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
            "0.0.0.0",
            "::",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn credentials_from_the_header() {
        assert_eq!(
            credentials(&basic("alice:pa:ss")),
            Some(Credentials::Basic {
                name: "alice".into(),
                password: "pa:ss".into()
            })
        );
        assert_eq!(
            credentials("bearer abc-DEF_1"),
            Some(Credentials::Bearer("abc-DEF_1".into()))
        );
        for bad in [
            "",
            "Basic",
            "Basic !!!",
            &basic("no colon"),
            "Bearer ",
            "Digest x",
        ] {
            assert_eq!(credentials(bad), None, "{bad:?}");
        }
        let shown = format!(
            "{:?} {:?}",
            credentials(&basic("alice:s3cret")),
            AuthHeader("Bearer t0ken".into())
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_address() {
        let r = Refusals::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        assert!(r.note(a, now, || "first".into()));
        assert!(!r.note(a, now + Duration::from_secs(1), || "again".into()));
        assert!(r.note(b, now, || "another address".into()));
        assert!(r.note(a, now + LOG_EVERY, || "a minute on".into()));
    }

    #[test]
    fn the_403_says_how_to_add_a_user() {
        let m = no_users_file(Path::new("/etc/dt/dt-users.json"));
        for want in [
            "/etc/dt/dt-users.json",
            "dist-traceroute hash-password",
            "\"Users\": [{\"Name\": \"alice\"",
            "loopback",
        ] {
            assert!(m.contains(want), "{want}: {m}");
        }
    }
}
