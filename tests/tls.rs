//! HTTPS: a master with a certificate from a private CA, a slave that trusts that CA, and a
//! certificate renewal picked up without a restart.

mod util;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::sync::Arc;
use std::time::Duration;
use util::*;

/// A CA, and a certificate for localhost/127.0.0.1 signed by it: (ca pem, cert pem, key pem).
fn pki() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn agent_trusting(ca_pem: &str) -> ureq::Agent {
    let certs = vec![ureq::tls::Certificate::from_pem(ca_pem.as_bytes()).unwrap()];
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    )
}

fn config_status(agent: &ureq::Agent, port: u16) -> Result<u16, String> {
    agent
        .post(format!("https://localhost:{port}/config/"))
        .send(&br#"{"Name":"slave1","Password":"1234"}"#[..])
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[test]
fn slave_delivers_over_https_and_renewed_certificates_apply_live() {
    let dir = Scratch::with_seed_config("tls");
    let (ca1, cert1, key1) = pki();
    dir.write("ca.pem", &ca1);
    dir.write("cert.pem", &cert1);
    dir.write("key.pem", &key1);
    let master = Proc::master(
        &dir.0,
        &[
            "-tls-cert=cert.pem",
            "-tls-key=key.pem",
            "-reload-interval=200ms",
        ],
    );
    let port = master.addr().port();
    let master_url = format!("-master=https://localhost:{port}");
    let _slave = Proc::spawn(
        &dir.0,
        &[
            "slave",
            &master_url,
            "-ca=ca.pem",
            "-name=slave1",
            "-passwd=1234",
            "-zDebugResults",
            "-interval=1s",
        ],
    );
    let one = agent_trusting(&ca1);
    let stored = wait_for(Duration::from_secs(20), || {
        let r = one
            .get(format!("https://localhost:{port}/api/v1/results?limit=10"))
            .call()
            .ok()?
            .body_mut()
            .read_json::<serde_json::Value>()
            .ok()?;
        let n = r["results"].as_array()?.len();
        (n >= 2).then_some(n)
    });
    assert!(stored.is_some(), "results delivered over HTTPS");

    // Plain HTTP to the TLS port gets no answer, and the master keeps serving.
    assert!(
        raw(master.addr(), &request("POST", "/config/", b"{}")).is_none_or(|a| a.status >= 400)
    );

    // Renewal: a certificate from another CA replaces the files.
    let (ca2, cert2, key2) = pki();
    dir.write("key.pem", &key2);
    dir.write("cert.pem", &cert2);
    let two = agent_trusting(&ca2);
    wait_for(Duration::from_secs(10), || {
        (config_status(&two, port) == Ok(200)).then_some(())
    })
    .expect("the new certificate is served without a restart");
    // A fresh client (no pooled connection from before) sees the new certificate.
    let old = config_status(&agent_trusting(&ca1), port);
    assert!(old.is_err(), "the old CA no longer matches: {old:?}");

    // A broken renewal keeps the last good pair.
    dir.write("cert.pem", "not a certificate");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(config_status(&two, port), Ok(200));
    let log = std::fs::read_to_string(dir.path("dt-master.log")).unwrap();
    assert!(
        log.contains("TLS certificate not reloaded, keeping the old one"),
        "{log}"
    );
}

#[test]
fn bad_certificate_files_are_startup_errors() {
    let dir = Scratch::with_seed_config("tlsbad");
    dir.write("cert.pem", "nothing here");
    dir.write("key.pem", "nothing here");
    let (code, _, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &[
            "master",
            "-listen=127.0.0.1:0",
            "-tls-cert=cert.pem",
            "-tls-key=key.pem",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cert.pem holds no CERTIFICATE block"), "{err}");
    let (code, _, err) = run(
        &dir.0,
        std::path::Path::new(BIN),
        &["master", "-listen=127.0.0.1:0", "-tls-cert=cert.pem"],
    );
    assert_eq!(code, 2, "{err}");
}
