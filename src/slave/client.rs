//! The slave's side of the HTTP protocol (ureq, blocking): fetch the targets, post results
//! one by one (any master) or in batches (ours).

use crate::proto::{
    BatchAnswer, BatchRequest, ConfigRequest, Creds, ResultAnswer, TargetsDoc, TraceResult,
};
use std::time::Duration;

/// Largest answer body read from a master.
const MAX_ANSWER: u64 = 4 << 20;

/// What became of a request to the master.
#[derive(Debug)]
pub enum Outcome<T> {
    /// It worked.
    Ok(T),
    /// The master refused the credentials (401): wrong name or password.
    Unauthorized,
    /// The master will never accept this (400, or 200 with `RetryPossible: false`).
    Rejected(String),
    /// Try again later: network error, 5xx, an answer that makes no sense.
    Retry(String),
}

/// A connection to one master.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    creds: Creds,
    /// The slave's own tags, sent with each config request.
    tags: Vec<String>,
}

/// `http://host:port` for a `-master` value: a host name, an IP (v6 gets brackets), or a
/// full `http://…` / `https://…` URL, which is taken as it is (its own port, or the scheme's).
/// `tls` picks `https` for a bare host.
pub fn base_url(master: &str, port: u16, tls: bool) -> String {
    if let Some((scheme, rest)) = master.split_once("://")
        && (scheme == "http" || scheme == "https")
    {
        // A URL without a port means the master's port (-master-port, 8990), not the
        // scheme's: the master serves HTTPS on the port it served HTTP on.
        // Only scheme://host[:port] counts: the protocol's paths are absolute.
        let host = rest.split('/').next().unwrap_or_default();
        let has_port = match host.rsplit_once(']') {
            Some((_, after)) => after.starts_with(':'),
            None => host.contains(':'),
        };
        return if has_port {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        };
    }
    let scheme = if tls { "https" } else { "http" };
    if let Ok(v6) = master.parse::<std::net::Ipv6Addr>() {
        return format!("{scheme}://[{v6}]:{port}");
    }
    // HOST:PORT and [V6]:PORT carry their own port, as the master's -listen takes them.
    let with_port = master
        .rsplit_once(':')
        .filter(|(host, p)| !host.is_empty() && !host.ends_with(':') && p.parse::<u16>().is_ok());
    match with_port {
        Some((host, p)) if !host.contains(':') || host.starts_with('[') => {
            format!("{scheme}://{host}:{p}")
        }
        _ => format!("{scheme}://{master}:{port}"),
    }
}

/// The CA certificates in a PEM file, for `-ca`.
pub fn load_ca(file: &std::path::Path) -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
    use anyhow::Context;
    let pem = std::fs::read(file).with_context(|| format!("cannot read -ca {}", file.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => anyhow::bail!("-ca {} is not PEM: {e}", file.display()),
        }
    }
    anyhow::ensure!(
        !certs.is_empty(),
        "-ca {} holds no certificate",
        file.display()
    );
    Ok(certs)
}

impl Client {
    /// A client for the master at `base` (see [`base_url`]); `ca` replaces the public roots.
    /// A request that takes longer than `timeout` in all is abandoned (a master that hangs
    /// must not stop the slave).
    pub fn new(
        base: String,
        creds: Creds,
        ca: Option<Vec<ureq::tls::Certificate<'static>>>,
        timeout: Duration,
    ) -> Client {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(certs) = ca {
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .user_agent(crate::slave::report::agent())
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base,
            creds,
            tags: Vec::new(),
        }
    }

    /// The client with the slave's own tags (`-tags`), sent with each config request.
    pub fn with_tags(self, tags: Vec<String>) -> Client {
        Client { tags, ..self }
    }

    /// The master's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        Ok((status, body))
    }

    /// The credentials this client sends.
    pub fn creds(&self) -> &Creds {
        &self.creds
    }

    /// The client with other credentials (those an enrolment gave).
    pub fn with_creds(self, creds: Creds) -> Client {
        Client { creds, ..self }
    }

    /// `POST /api/v1/enroll`: the name and tags the master gave, its refusal (`Ok(Err)`, for
    /// good), or why it could not be asked (`Err`: try again).
    pub fn enroll(
        &self,
        token: &str,
        secret: &str,
    ) -> Result<Result<(String, Vec<String>), String>, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Enrolled {
            name: String,
            #[serde(default)]
            tags: Vec<String>,
        }
        let body = serde_json::json!({"Token": token, "Password": secret}).to_string();
        let (status, answer) = self.post("/api/v1/enroll", body.into_bytes())?;
        let error = || {
            serde_json::from_slice::<serde_json::Value>(&answer)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer).chars().take(200).collect())
        };
        match status {
            200 => serde_json::from_slice::<Enrolled>(&answer)
                .map(|e| Ok((e.name, e.tags)))
                .map_err(|e| format!("the master's answer is not an enrolment: {e}")),
            400 | 403 | 404 => Ok(Err(format!("{status}: {}", error()))),
            _ => Err(format!("the master answered {status}: {}", error())),
        }
    }

    /// `POST /config/`: the targets document. `status` adds the slave's version, spool depth
    /// and dropped total in fields an original master ignores.
    pub fn fetch_config(&self, status: Status) -> Outcome<(TargetsDoc, Vec<u8>)> {
        let request = ConfigRequest {
            name: self.creds.name.clone(),
            password: self.creds.password.clone(),
            agent: Some(crate::slave::report::agent()),
            spool_depth: Some(status.spool_depth),
            dropped_total: Some(status.dropped_total),
            tags: self.tags.clone(),
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        match self.post("/config/", body) {
            Err(e) => Outcome::Retry(e),
            Ok((200, body)) => match serde_json::from_slice::<TargetsDoc>(&body) {
                Ok(doc) => Outcome::Ok((doc, body)),
                Err(e) => Outcome::Retry(format!(
                    "the master sent a targets document that does not decode: {e}"
                )),
            },
            Ok((401, _)) => Outcome::Unauthorized,
            Ok((status, body)) => Outcome::Retry(format!(
                "config request answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
        }
    }

    /// `POST /results/`: one result, understood by our master and by the original.
    pub fn post_result(&self, result: &TraceResult) -> Outcome<()> {
        let body = match serde_json::to_vec(result) {
            Ok(b) => b,
            Err(e) => return Outcome::Rejected(format!("cannot encode the result: {e}")),
        };
        match self.post("/results/", body) {
            Err(e) => Outcome::Retry(e),
            Ok((401, _)) => Outcome::Unauthorized,
            Ok((200, body)) => match serde_json::from_slice::<ResultAnswer>(&body) {
                Ok(a) if a.success => Outcome::Ok(()),
                Ok(a) if !a.retry_possible => Outcome::Rejected(a.error),
                Ok(a) => Outcome::Retry(format!("the master did not store it: {}", a.error)),
                Err(e) => Outcome::Retry(format!("the master's answer does not decode: {e}")),
            },
            // Only a verdict on the body is final; 404 and the like say more about the server
            // (wrong port, a proxy) than about the result, which is kept and sent again.
            Ok((status @ (400 | 413 | 422), body)) => Outcome::Rejected(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
            Ok((status, _)) => Outcome::Retry(format!("answered {status}")),
        }
    }
}

impl Client {
    /// `POST /api/v1/jobs`: on-demand jobs, held by the master up to `ask.wait` seconds.
    /// `Rejected` when the master has no such endpoint (an original or older master).
    pub fn poll_jobs(
        &self,
        ask: &crate::proto::JobsRequest,
    ) -> Outcome<Vec<crate::proto::JobSpec>> {
        let body = serde_json::to_vec(ask).unwrap_or_default();
        match self.post("/api/v1/jobs", body) {
            Err(e) => Outcome::Retry(e),
            Ok((200, body)) => match serde_json::from_slice::<crate::proto::JobsAnswer>(&body) {
                Ok(a) => Outcome::Ok(a.jobs),
                // An original master answers unknown paths with a 200 HTML page.
                Err(e) => Outcome::Rejected(format!("the answer is no job list: {e}")),
            },
            Ok((401, _)) => Outcome::Unauthorized,
            Ok((status @ (404 | 405 | 501), _)) => Outcome::Rejected(format!("answered {status}")),
            Ok((status, body)) => Outcome::Retry(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
        }
    }
}

/// What the slave tells the master about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Results waiting in the spool.
    pub spool_depth: u64,
    /// Results dropped because the spool was full, ever.
    pub dropped_total: u64,
}

/// What became of a batch.
#[derive(Debug)]
pub enum BatchOutcome {
    /// The master answered per result.
    Answered(BatchAnswer),
    /// This master has no batch endpoint (an original one): send one result per request.
    Unsupported(String),
    /// The batch is larger than the master takes (413): send fewer at once.
    TooLarge,
    /// Wrong name or password.
    Unauthorized,
    /// Try again later.
    Retry(String),
}

impl Client {
    /// `POST /api/v1/results:batch`: many results at once, each keeping its ID.
    pub fn post_batch(&self, results: Vec<TraceResult>, status: Status) -> BatchOutcome {
        let count = results.len();
        let request = BatchRequest {
            creds: self.creds.clone(),
            results,
            spool_depth: Some(status.spool_depth),
            dropped_total: Some(status.dropped_total),
        };
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => return BatchOutcome::Retry(format!("cannot encode a batch: {e}")),
        };
        match self.post("/api/v1/results:batch", body) {
            Err(e) => BatchOutcome::Retry(e),
            Ok((200, body)) => match serde_json::from_slice::<BatchAnswer>(&body) {
                Ok(a) if a.results.len() == count => BatchOutcome::Answered(a),
                Ok(a) => BatchOutcome::Retry(format!(
                    "the master answered {} items for a batch of {count}",
                    a.results.len()
                )),
                // An original master answers unknown paths with a 200 HTML page.
                Err(e) => BatchOutcome::Unsupported(format!("answer is not a batch answer: {e}")),
            },
            Ok((401, _)) => BatchOutcome::Unauthorized,
            Ok((413, _)) => BatchOutcome::TooLarge,
            Ok((status @ (400 | 404 | 405 | 501), body)) => BatchOutcome::Unsupported(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
            Ok((status, body)) => BatchOutcome::Retry(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_forms() {
        assert_eq!(base_url("localhost", 8990, false), "http://localhost:8990");
        assert_eq!(base_url("::1", 80, false), "http://[::1]:80");
        assert_eq!(
            base_url("http://m.example:81/", 8990, true),
            "http://m.example:81"
        );
        assert_eq!(base_url("m.example", 8990, true), "https://m.example:8990");
        assert_eq!(
            base_url("127.0.0.1:18990", 8990, false),
            "http://127.0.0.1:18990"
        );
        assert_eq!(base_url("m.example:81", 8990, false), "http://m.example:81");
        assert_eq!(base_url("[::1]:81", 8990, false), "http://[::1]:81");
        assert_eq!(base_url("fe80::1", 8990, false), "http://[fe80::1]:8990");
    }
}
