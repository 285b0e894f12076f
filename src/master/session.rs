//! Browser sessions of the dashboard: after a login the browser holds a cookie that names the
//! user and when the session ends, signed with HMAC-SHA256 under a key the masters keep in
//! their database (so every master sharing it accepts the cookie, and a restart logs nobody
//! out). The signature also covers a digest of the user's password as the users file has it,
//! so a new password, or a user removed from the file, ends every session of that user.
//!
//! The cookie is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page
//! sends it) and `Secure` over HTTPS; forms that change something also check that `Origin`
//! names this master, so no other site can post them.

use super::config::{Role, Users};
use base64::Engine;
use hmac::{KeyInit, Mac};
use std::time::Duration;

/// The cookie's name.
pub const COOKIE: &str = "dt_session";

/// How long a session lasts after its login.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Issues and checks session cookies under one key.
pub struct Sessions {
    key: Vec<u8>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(<key>)")
    }
}

impl Default for Sessions {
    /// Sessions under a fresh random key (valid until the process ends).
    fn default() -> Self {
        Sessions::new(fresh_key().to_vec())
    }
}

/// A new random key.
pub fn fresh_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    // Without the OS's randomness nothing here is safe: better to stop.
    getrandom::fill(&mut key).expect("the operating system gives no random bytes");
    key
}

/// A session that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user: String,
    /// Their role now.
    pub role: Role,
    /// When the session ends, Unix ms.
    pub expires_ms: i64,
}

impl Sessions {
    /// Sessions signed with `key`.
    pub fn new(key: Vec<u8>) -> Sessions {
        Sessions { key }
    }

    fn mac(&self, payload: &str, binding: &[u8; 32]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(payload.as_bytes());
        m.update(binding);
        m.finalize().into_bytes().into()
    }

    /// The cookie value of a new session of `user` (who must be in `users`), from `now_ms`.
    pub fn issue(&self, users: &Users, user: &str, now_ms: i64) -> Option<String> {
        let (_, binding) = users.session_binding(user)?;
        let expires = now_ms + LIFETIME.as_millis() as i64;
        let payload = format!("1:{user}:{now_ms}:{expires}");
        let mac = self.mac(&payload, &binding);
        Some(format!("{}.{}", B64.encode(payload), B64.encode(mac)))
    }

    /// The session a cookie value holds, if it is one of ours, unexpired at `now_ms`, and its
    /// user still has the password it was issued under.
    pub fn check(&self, users: &Users, value: &str, now_ms: i64) -> Option<Session> {
        let (payload, mac) = value.split_once('.')?;
        let payload = String::from_utf8(B64.decode(payload).ok()?).ok()?;
        let mac = B64.decode(mac).ok()?;
        let mut parts = payload.split(':');
        let (version, user, _issued, expires) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "1" || parts.next().is_some() {
            return None;
        }
        let (role, binding) = users.session_binding(user)?;
        let mut m = HmacSha256::new_from_slice(&self.key).ok()?;
        m.update(payload.as_bytes());
        m.update(&binding);
        m.verify_slice(&mac).ok()?;
        let expires_ms: i64 = expires.parse().ok()?;
        (now_ms < expires_ms).then(|| Session {
            user: user.to_owned(),
            role,
            expires_ms,
        })
    }
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then_some(value)
    })
}

/// The `Set-Cookie` value that stores a session (`Secure` when served over HTTPS).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// True when a form post may be taken: its `Origin` names the host it was sent to. Browsers
/// send `Origin` with every form post; one naming another site is a cross-site post.
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    rest.trim_end_matches('/').eq_ignore_ascii_case(host.trim())
}

/// A path to go back to after the login: only a path of this master (`/…`, never `//host`
/// or a scheme), else `/`.
pub fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok { next } else { "/" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::config::{Users, parse_users};
    use std::path::Path;

    fn users(alice_password: &str) -> Users {
        let text = format!(
            r#"{{"Users": [{{"Name": "alice", "Password": "{alice_password}", "Role": "viewer"}},
                          {{"Name": "bob", "Password": "b", "Role": "admin"}}]}}"#
        );
        Users::new(parse_users(Path::new("u.json"), text.as_bytes()).unwrap())
    }

    const NOW: i64 = 1_764_000_000_000;

    #[test]
    fn a_session_checks_out_until_it_ends() {
        let s = Sessions::new(b"k".to_vec());
        let u = users("a");
        let cookie = s.issue(&u, "alice", NOW).unwrap();
        let got = s.check(&u, &cookie, NOW + 1000).unwrap();
        assert_eq!((got.user.as_str(), got.role), ("alice", Role::Viewer));
        let end = NOW + LIFETIME.as_millis() as i64;
        assert_eq!(got.expires_ms, end);
        assert!(s.check(&u, &cookie, end).is_none(), "ended");
        assert!(s.issue(&u, "carol", NOW).is_none(), "no such user");
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_refused() {
        let s = Sessions::new(b"k".to_vec());
        let u = users("a");
        let cookie = s.issue(&u, "alice", NOW).unwrap();
        // Another master's key (not sharing the database).
        assert!(
            Sessions::new(b"other".to_vec())
                .check(&u, &cookie, NOW)
                .is_none()
        );
        // Alice's cookie renamed to bob, the admin, keeps alice's signature.
        let (payload, mac) = cookie.split_once('.').unwrap();
        let text = String::from_utf8(B64.decode(payload).unwrap()).unwrap();
        let forged = format!(
            "{}.{mac}",
            B64.encode(text.replace("alice", "bob").as_bytes())
        );
        assert!(s.check(&u, &forged, NOW).is_none());
        // A later end, same signature.
        let later = format!("{}.{mac}", B64.encode(text.replace(":1764", ":9764")));
        assert!(s.check(&u, &later, NOW).is_none());
        for junk in ["", ".", "x.y", "bm9uZQ.", "MTp4Ojox.AAAA"] {
            assert!(s.check(&u, junk, NOW).is_none(), "{junk}");
        }
    }

    #[test]
    fn a_new_password_ends_the_users_sessions() {
        let s = Sessions::new(b"k".to_vec());
        let cookie = s.issue(&users("a"), "alice", NOW).unwrap();
        assert!(s.check(&users("a"), &cookie, NOW).is_some());
        assert!(s.check(&users("changed"), &cookie, NOW).is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_safely() {
        assert_eq!(
            cookie_value("theme=dark; dt_session=abc.def; x=1"),
            Some("abc.def")
        );
        assert_eq!(cookie_value("dt_session_other=1"), None);
        assert_eq!(cookie_value("dt_session="), None);
        let set = set_cookie("v", true);
        for want in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=43200",
        ] {
            assert!(set.contains(want), "{set}");
        }
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn only_posts_from_this_master_are_taken() {
        assert!(same_origin(
            Some("http://127.0.0.1:8990"),
            Some("127.0.0.1:8990")
        ));
        assert!(same_origin(
            Some("https://Master.example"),
            Some("master.example")
        ));
        assert!(!same_origin(
            Some("https://evil.example"),
            Some("master.example")
        ));
        assert!(!same_origin(None, Some("master.example")));
        assert!(!same_origin(Some("null"), Some("master.example")));
    }

    #[test]
    fn the_way_back_stays_on_this_master() {
        assert_eq!(safe_next("/ui/targets?x=1"), "/ui/targets?x=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "\\\\x",
            "",
            "/\\evil",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }
}
