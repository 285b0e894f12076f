//! TLS to PostgreSQL as the URL's `sslmode` asks: what the store accepts and refuses, and
//! what the server saw of the store's connections (PostgreSQL's own `pg_stat_ssl`).

mod util;

use dist_traceroute::master::store::{ResultQuery, Store, postgres::Postgres};
use std::path::Path;
use util::pg;

/// Its database's URL with `host` and the query `params`, as the superuser with the password.
fn url(db: &str, host: &str, params: &[(&str, &str)]) -> String {
    let server = pg::server();
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        query.append_pair(k, v);
    }
    format!(
        "postgres://{}:{}@{host}:{}/{db}?{}",
        pg::USER,
        server.password,
        server.port,
        query.finish()
    )
}

fn path(file: &Path) -> &str {
    file.to_str().expect("the harness's folder is UTF-8")
}

/// Opens the store at `url` in `db`, stores a result and reads it back (so its writer and a
/// reader are certainly connected), and returns, while the store is open, whether each of its
/// connections the server sees is TLS.
fn tls_of_connections(db: &str, url: &str) -> Vec<bool> {
    let store = Postgres::open(url, None, 2).unwrap_or_else(|e| panic!("{url}: {e:#}"));
    store.insert(&util::stored::result(1, 0)).unwrap();
    let (stored, _) = store
        .results(&ResultQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(stored.len(), 1);
    let seen = pg::server().psql(
        db,
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE a.application_name = 'dist-traceroute' AND a.datname = current_database()",
    );
    drop(store);
    let tls: Vec<bool> = seen
        .lines()
        .map(|l| match l {
            "t" => true,
            "f" => false,
            other => panic!("pg_stat_ssl.ssl is {other:?}"),
        })
        .collect();
    // The writer and at least one pooled reader.
    assert!(tls.len() >= 2, "the server saw {tls:?}");
    tls
}

/// Why `Postgres::open` refused `url`, the whole chain.
fn refusal(url: &str) -> String {
    match Postgres::open(url, None, 2) {
        Ok(_) => panic!("{url} accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn verify_full_by_host_name_is_tls_throughout() {
    let server = pg::server();
    let db = server.create_db("tls");
    let ca = server.ca_file();
    let url = url(
        &db,
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", path(&ca))],
    );
    let tls = tls_of_connections(&db, &url);
    assert!(tls.iter().all(|&t| t), "{tls:?}");
}

#[test]
fn verify_full_by_ip_address_matches_the_certificates_ip_name() {
    let server = pg::server();
    let db = server.create_db("tls");
    let ca = server.ca_file();
    let url = url(
        &db,
        "127.0.0.1",
        &[("sslmode", "verify-full"), ("sslrootcert", path(&ca))],
    );
    let tls = tls_of_connections(&db, &url);
    assert!(tls.iter().all(|&t| t), "{tls:?}");
}

#[test]
fn verify_full_refuses_a_server_of_another_ca() {
    let server = pg::server();
    let db = server.create_db("tls");
    let other = server.other_ca_file();
    let url = url(
        &db,
        "localhost",
        &[("sslmode", "verify-full"), ("sslrootcert", path(&other))],
    );
    let e = refusal(&url);
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(!e.contains(&server.password), "the password shown: {e}");
}

#[test]
fn verify_ca_without_a_root_file_trusts_only_the_systems_cas() {
    let server = pg::server();
    let db = server.create_db("tls");
    let url = url(&db, "localhost", &[("sslmode", "verify-ca")]);
    let e = refusal(&url);
    // A machine without the system CA file says so instead.
    assert!(
        e.contains("UnknownIssuer") || e.contains("/etc/ssl/certs/ca-certificates.crt"),
        "{e}"
    );
}

/// `hostaddr` reaches the server while `host`, the name TLS checks, is one the certificate
/// lacks (libpq's meaning of the pair, which tokio-postgres follows).
#[test]
fn verify_ca_accepts_a_host_name_the_certificate_lacks() {
    let server = pg::server();
    let db = server.create_db("tls");
    let ca = server.ca_file();
    let url = url(
        &db,
        "db.invalid",
        &[
            ("hostaddr", "127.0.0.1"),
            ("sslmode", "verify-ca"),
            ("sslrootcert", path(&ca)),
        ],
    );
    let tls = tls_of_connections(&db, &url);
    assert!(tls.iter().all(|&t| t), "{tls:?}");
}

/// A name, or an IP address, that the certificate lacks: IP addresses are checked too, against
/// the certificate's IP names.
#[test]
fn verify_full_refuses_a_host_the_certificate_lacks() {
    let server = pg::server();
    let db = server.create_db("tls");
    let ca = server.ca_file();
    for host in ["db.invalid", "10.9.9.9"] {
        let url = url(
            &db,
            host,
            &[
                ("hostaddr", "127.0.0.1"),
                ("sslmode", "verify-full"),
                ("sslrootcert", path(&ca)),
            ],
        );
        let e = refusal(&url);
        assert!(
            e.contains(&format!("certificate not valid for name \"{host}\"")),
            "{e}"
        );
    }
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let server = pg::server();
    let db = server.create_db("tls");
    let url = url(
        &db,
        "db.invalid",
        &[("hostaddr", "127.0.0.1"), ("sslmode", "require")],
    );
    let tls = tls_of_connections(&db, &url);
    assert!(tls.iter().all(|&t| t), "{tls:?}");
}

/// As libpq: `require` with a root file checks the chain, as `verify-ca`.
#[test]
fn require_with_a_root_file_checks_the_chain() {
    let server = pg::server();
    let db = server.create_db("tls");
    let other = server.other_ca_file();
    let url = url(
        &db,
        "localhost",
        &[("sslmode", "require"), ("sslrootcert", path(&other))],
    );
    let e = refusal(&url);
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn prefer_is_the_default_and_takes_the_offered_tls() {
    let server = pg::server();
    let db = server.create_db("tls");
    let tls = tls_of_connections(&db, &server.url(&db));
    assert!(tls.iter().all(|&t| t), "{tls:?}");
}

#[test]
fn disable_stays_in_plain_tcp() {
    let server = pg::server();
    let db = server.create_db("tls");
    let url = url(&db, "127.0.0.1", &[("sslmode", "disable")]);
    let tls = tls_of_connections(&db, &url);
    assert!(tls.iter().all(|&t| !t), "{tls:?}");
}

#[test]
fn an_unknown_sslmode_names_the_accepted_ones() {
    let server = pg::server();
    let db = server.create_db("tls");
    let url = url(&db, "127.0.0.1", &[("sslmode", "sometimes")]);
    let e = refusal(&url);
    assert!(
        e.contains("sslmode=sometimes")
            && e.contains("disable, allow, prefer, require, verify-ca, verify-full"),
        "{e}"
    );
}
