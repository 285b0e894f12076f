//! The throwaway PostgreSQL harness itself: databases it creates are separate, and its URL
//! works with the `postgres` crate.

mod util;
use util::pg;

#[test]
fn databases_are_separate() {
    let server = pg::server();
    let a = server.create_db("harness");
    let b = server.create_db("harness");
    assert_ne!(a, b);
    server.psql(&a, "CREATE TABLE t (n int); INSERT INTO t VALUES (7)");
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename = 't'";
    assert_eq!(server.psql(&a, tables).trim(), "1");
    assert_eq!(server.psql(&b, tables).trim(), "0");
    assert_eq!(server.psql(&a, "SELECT n FROM t").trim(), "7");
}

#[test]
fn url_works_with_the_postgres_crate() {
    let server = pg::server();
    let db = server.create_db("harness");
    let mut client = postgres::Client::connect(&server.url(&db), postgres::NoTls).unwrap();
    let row = client
        .query_one("SELECT current_database(), current_user, 40 + 2", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), db);
    assert_eq!(row.get::<_, String>(1), pg::USER);
    assert_eq!(row.get::<_, i32>(2), 42);
}
