//! HTTPS for the master (rustls with ring, no OpenSSL): the certificate and key come from PEM
//! files and are reloaded when the files change, so a renewal needs no restart; handshakes
//! after a reload use the new pair.

use anyhow::{Context, anyhow};
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Reads a certificate chain and its private key into a signing pair.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("certificate {} is not PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("certificate {} holds no CERTIFICATE block", cert.display());
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("cannot read private key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| anyhow!("private key {} is not usable: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        anyhow!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(pair)
}

/// Serves the current pair to every handshake.
#[derive(Debug)]
pub struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A rustls server config whose pair is reloaded from `cert` and `key` when they change
/// (checked every `every`); a pair that fails to load is logged and the old one stays.
pub fn server_config(
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let resolver = Arc::new(Reloading {
        current: RwLock::new(Arc::new(load_pair(&cert, &key)?)),
    });
    let watched = resolver.clone();
    std::thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || {
            let mut last = (stamp(&cert), stamp(&key));
            let mut last_error = String::new();
            loop {
                std::thread::sleep(every);
                let now = (stamp(&cert), stamp(&key));
                if now == last {
                    continue;
                }
                match load_pair(&cert, &key) {
                    Ok(pair) => {
                        *watched.current.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(pair);
                        log::info!("TLS certificate reloaded from {}", cert.display());
                        last = now;
                        last_error.clear();
                    }
                    // Keep `last` so the next look tries again: a renewal may write the two
                    // files one after the other.
                    Err(e) => {
                        let text = format!("{e:#}");
                        if text != last_error {
                            log::warn!("TLS certificate not reloaded, keeping the old one: {text}");
                            last_error = text;
                        }
                    }
                }
            }
        })
        .context("cannot start the certificate watcher")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
