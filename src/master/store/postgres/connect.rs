//! Where a PostgreSQL database is and how to reach it: the `postgres://` URL, its password
//! (from a file, `PGPASSWORD` or the URL) and TLS as its `sslmode` asks.

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// True when `db` names a PostgreSQL database rather than an SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// A database to connect to.
pub struct Target {
    /// Everything the client needs but TLS.
    pub config: postgres::Config,
    /// TLS, used when `config`'s ssl mode asks for it.
    pub tls: MakeRustlsConnect,
    /// The URL without its password, for messages.
    pub shown: String,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Not at all (`prefer`, and `require` without `sslrootcert`: encryption only, as libpq).
    None,
    /// Signed by a trusted CA (`verify-ca`, and `require` with `sslrootcert`).
    Ca,
    /// Signed by a trusted CA and naming the host (`verify-full`).
    Full,
}

/// Reads `url`; the password comes from `passwd_file` when given, else from the URL, else
/// from `PGPASSWORD`.
pub fn target(url: &str, passwd_file: Option<&Path>) -> anyhow::Result<Target> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = String::from("prefer");
    let mut rootcert: Option<String> = None;
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "sslmode" => mode = v.into_owned(),
            "sslrootcert" => rootcert = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    let (client_mode, check) = match mode.as_str() {
        "disable" => ("disable", Check::None),
        "allow" | "prefer" => ("prefer", Check::None),
        "require" if rootcert.is_some() => ("require", Check::Ca),
        "require" => ("require", Check::None),
        "verify-ca" => ("require", Check::Ca),
        "verify-full" => ("require", Check::Full),
        other => anyhow::bail!(
            "-db: sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("sslmode", client_mode);
    for (k, v) in &rest {
        query.append_pair(k, v);
    }
    let mut config: postgres::Config =
        format!("{base}?{}", query.finish()).parse().map_err(|e| {
            anyhow::anyhow!("-db: not a PostgreSQL URL ({e}): postgres://USER@HOST[:PORT]/DBNAME")
        })?;
    if config.get_user().is_none() {
        anyhow::bail!("-db: the URL names no user: postgres://USER@HOST[:PORT]/DBNAME");
    }
    if config.get_dbname().is_none() {
        anyhow::bail!("-db: the URL names no database: postgres://USER@HOST[:PORT]/DBNAME");
    }
    let in_url = config.get_password().is_some();
    match passwd_file {
        Some(file) => {
            if in_url {
                anyhow::bail!(
                    "-db: the URL has a password and -db-passwd-file gives one: keep only the file"
                );
            }
            config.password(crate::secret_from_file(file, "-db-passwd-file")?);
        }
        None if in_url => log::warn!(
            "-db: the password is in the URL, where other users of this machine can see it (ps); use PGPASSWORD or -db-passwd-file"
        ),
        None => {
            if let Ok(pw) = std::env::var("PGPASSWORD")
                && !pw.is_empty()
            {
                config.password(pw);
            }
        }
    }
    config.application_name("dist-traceroute");
    config.connect_timeout(std::time::Duration::from_secs(10));
    // A database host that vanishes without closing the connection (power, network) is
    // noticed in about a minute, not after the kernel's two hours.
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(30));
    config.tcp_user_timeout(std::time::Duration::from_secs(60));
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(dir) => dir.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .first()
        .map_or(String::new(), |p| format!(":{p}"));
    let shown = format!(
        "postgres://{}@{host}{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    );
    let tls = tls(check, rootcert.as_deref().map(Path::new))?;
    Ok(Target { config, tls, shown })
}

fn tls(check: Check, rootcert: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS to the database")?;
    let config = match check {
        Check::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        Check::Ca | Check::Full => {
            let roots = Arc::new(roots(rootcert)?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .context("TLS to the database")?;
            if check == Check::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The CAs a database certificate may chain to: `sslrootcert`, else the system's.
fn roots(rootcert: Option<&Path>) -> anyhow::Result<rustls::RootCertStore> {
    use pki_types::pem::PemObject;
    let file = rootcert.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .with_context(|| format!("-db: cannot read the CA certificates in {}", file.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("-db: {} is not PEM", file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("-db: a certificate in {}", file.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("-db: {} holds no certificate", file.display());
    }
    Ok(roots)
}

/// Accepts any certificate (libpq's `require` without a root certificate: the connection is
/// encrypted, the server not authenticated), checking only that the handshake is signed by
/// the certificate's key.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the name (`verify-ca`).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_with_their_password_source_and_ssl_mode() {
        assert!(is_url("postgres://a@b/c") && is_url("postgresql://a@b/c"));
        assert!(!is_url("./dt-results.db"));
        let t = target("postgres://dt:secret@db.example:5433/results", None).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(t.shown, "postgres://dt@db.example:5433/results");
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Prefer);
        let t = target(
            "postgresql://dt@db/results?sslmode=verify-ca&sslrootcert=/etc/ssl/certs/ca-certificates.crt",
            None,
        );
        // The system CA file may be absent on a minimal machine; the mode still maps.
        if let Ok(t) = t {
            assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Require);
        }
        let t = target("postgres://dt@db/results?sslmode=disable", None).unwrap();
        assert_eq!(t.config.get_ssl_mode(), postgres::config::SslMode::Disable);
        for bad in [
            "postgres://db/results",
            "postgres://dt@db",
            "postgres://dt@db/r?sslmode=sometimes",
        ] {
            assert!(target(bad, None).is_err(), "{bad} accepted");
        }
        let dir = std::env::temp_dir().join(format!("dt-pw-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let t = target("postgres://dt@db/results", Some(&dir)).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"from-file"[..]));
        let both = target("postgres://dt:x@db/results", Some(&dir));
        std::fs::remove_file(&dir).unwrap();
        let e = both.err().unwrap().to_string();
        assert!(e.contains("keep only the file"), "{e}");
    }
}
