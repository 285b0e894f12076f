//! The PostgreSQL schema: the same ideas as SQLite's (each path and route stored once,
//! results packed by `codec` under the same ordering keys, series and events), created and
//! moved forward by whichever master starts first while the others wait.

use anyhow::Context;

/// The versions this program writes; a newer database is refused.
pub const VERSION: i32 = 8;

/// Advisory lock keys (one namespace of `pg_advisory_lock`, "dt" in the high bytes).
pub mod locks {
    /// Held while the schema is created or migrated.
    pub const MIGRATE: i64 = 0x6474_0001;
    /// Held by the master running a retention step.
    pub const RETENTION: i64 = 0x6474_0002;
    /// Held by `db copy` while it copies into this database.
    pub const COPY: i64 = 0x6474_0003;
}

/// The migrations, in order; `dt_schema.version` counts how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: everything. Times are Unix ms, RTTs ns, as in SQLite.
    "CREATE TABLE slaves (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        last_config BIGINT,
        remote_addr TEXT,
        agent TEXT,
        spool_depth BIGINT,
        dropped_total BIGINT NOT NULL DEFAULT 0,
        -- When the spool figures were reported: the newest report wins across masters.
        status_at BIGINT,
        results_stored BIGINT NOT NULL DEFAULT 0,
        clock_skew_ms BIGINT
     );
     CREATE TABLE targets (
        id BIGSERIAL PRIMARY KEY,
        uuid TEXT NOT NULL,
        name TEXT NOT NULL,
        address TEXT NOT NULL,
        UNIQUE (uuid, name, address)
     );
     CREATE TABLE paths (
        id BIGSERIAL PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        canonical TEXT NOT NULL,
        hop_count BIGINT NOT NULL,
        terminal TEXT NOT NULL,
        first_seen BIGINT NOT NULL
     );
     -- last_used: refreshed at most every few minutes by each master that stores results on
     -- the route, so retention can tell a route nobody uses from one a master still caches.
     CREATE TABLE routes (
        id BIGSERIAL PRIMARY KEY,
        hash BYTEA NOT NULL UNIQUE,
        path_id BIGINT NOT NULL REFERENCES paths(id),
        body BYTEA NOT NULL,
        last_used BIGINT NOT NULL
     );
     CREATE INDEX routes_by_path ON routes (path_id);
     CREATE TABLE series (
        id BIGSERIAL PRIMARY KEY,
        slave_id BIGINT NOT NULL REFERENCES slaves(id),
        target_id BIGINT NOT NULL REFERENCES targets(id),
        flow BIGINT NOT NULL,
        current_path BIGINT REFERENCES paths(id),
        current_since BIGINT,
        candidate_path BIGINT REFERENCES paths(id),
        candidate_count BIGINT NOT NULL DEFAULT 0,
        candidate_since BIGINT,
        last_measured BIGINT,
        last_result BIGINT,
        unreached_streak BIGINT NOT NULL DEFAULT 0,
        ever_reached BOOLEAN NOT NULL DEFAULT false,
        unreachable_alerted BOOLEAN NOT NULL DEFAULT false,
        rtt_high_streak BIGINT NOT NULL DEFAULT 0,
        rtt_alerted BOOLEAN NOT NULL DEFAULT false,
        changes_total BIGINT NOT NULL DEFAULT 0,
        last_success BOOLEAN,
        last_rtt_ns BIGINT,
        UNIQUE (slave_id, target_id, flow)
     );
     -- id: the ordering key (codec::key); data: codec::pack_row. No foreign keys, as in
     -- SQLite: the writers keep series_id and route_id right.
     CREATE TABLE results (
        id BIGINT PRIMARY KEY,
        series_id BIGINT NOT NULL,
        route_id BIGINT NOT NULL,
        data BYTEA NOT NULL
     );
     CREATE INDEX results_by_series ON results (series_id, id);
     CREATE TABLE aside (uid BYTEA NOT NULL, series_id BIGINT NOT NULL, result BIGINT NOT NULL,
                         PRIMARY KEY (uid, series_id));
     CREATE INDEX aside_by_result ON aside (result);
     CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        series_id BIGINT NOT NULL REFERENCES series(id),
        from_path BIGINT REFERENCES paths(id),
        to_path BIGINT REFERENCES paths(id),
        first_diff_ttl BIGINT,
        detail TEXT NOT NULL
     );
     CREATE INDEX events_by_time ON events (at);
     CREATE INDEX events_by_series ON events (series_id, at);
     -- Each master's config files as it last loaded them (a digest per file), so every master
     -- can show where they differ.
     CREATE TABLE masters (
        name TEXT PRIMARY KEY,
        config JSONB NOT NULL,
        seen_at BIGINT NOT NULL
     );
     -- How far a `db copy` from an SQLite file got, so a second run goes on from there.
     CREATE TABLE copies (
        source TEXT PRIMARY KEY,
        last_key BIGINT NOT NULL,
        copied BIGINT NOT NULL,
        done BOOLEAN NOT NULL DEFAULT false
     );",
    // 2: where a result goes within its millisecond: the next value of this sequence (mod
    // 64), so masters writing the same milliseconds rarely pick the same key (a sequence
    // never waits for another transaction; a taken key would).
    "CREATE SEQUENCE result_keys CYCLE;",
    // 3: secrets the masters share, such as the key that signs the dashboard's sessions (so
    // a session one master opened holds on every other).
    "CREATE TABLE secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);",
    // 4: a result ID is one slave's: results kept aside are found by ID and series, so two
    // slaves that send one ID (the Go slave's debug result) do not take each other's.
    // (A database made at version 1 by this program already has the column.)
    "ALTER TABLE aside ADD COLUMN IF NOT EXISTS series_id BIGINT;
     UPDATE aside SET series_id = r.series_id FROM results r
        WHERE r.id = aside.result AND aside.series_id IS NULL;
     DELETE FROM aside WHERE series_id IS NULL;
     ALTER TABLE aside ALTER COLUMN series_id SET NOT NULL;
     ALTER TABLE aside DROP CONSTRAINT aside_pkey;
     ALTER TABLE aside ADD PRIMARY KEY (uid, series_id);",
    // 5: on-demand measurements: what was asked, each slave's run, and which stored results
    // belong to which measurement.
    "CREATE TABLE measurements (
        id TEXT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        deadline BIGINT NOT NULL,
        requested_by TEXT NOT NULL,
        spec TEXT NOT NULL,
        flows INTEGER NOT NULL
     );
     CREATE TABLE measurement_runs (
        measurement TEXT NOT NULL REFERENCES measurements(id),
        slave TEXT NOT NULL,
        state TEXT NOT NULL,
        updated_at BIGINT NOT NULL,
        results INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        PRIMARY KEY (measurement, slave)
     );
     CREATE INDEX runs_by_slave ON measurement_runs (slave, state);
     CREATE INDEX runs_by_time ON measurement_runs (updated_at);
     CREATE TABLE measurement_results (
        measurement TEXT NOT NULL,
        result BIGINT NOT NULL,
        PRIMARY KEY (measurement, result)
     );",
    // 6: the follow-up measurement a change event started.
    "CREATE TABLE follow_ups (
        event_id BIGINT PRIMARY KEY,
        measurement TEXT NOT NULL
     );
     CREATE INDEX follow_ups_by_measurement ON follow_ups (measurement);",
    // 7: multipath graphs: each distinct shape once (with when a master last used it, as
    // for routes), each result's numbers by the result's key, and a series' set of branches.
    "CREATE TABLE graphs (
        id BIGSERIAL PRIMARY KEY,
        hash BYTEA NOT NULL UNIQUE,
        body BYTEA NOT NULL,
        last_used BIGINT NOT NULL
     );
     CREATE TABLE result_graphs (
        result BIGINT PRIMARY KEY,
        graph_id BIGINT NOT NULL,
        data BYTEA NOT NULL
     );
     CREATE INDEX result_graphs_by_graph ON result_graphs (graph_id);
     ALTER TABLE series ADD COLUMN branches TEXT;",
    // 8: a series' AS-path detector (with an AS table).
    "ALTER TABLE series ADD COLUMN as_track TEXT;",
];

/// Creates or upgrades the schema. The first master to start does it under an advisory
/// lock; the others wait for it and find the work done.
pub fn migrate(client: &mut postgres::Client) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&locks::MIGRATE])
        .context("cannot take the migration lock")?;
    let done = run(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&locks::MIGRATE]);
    done
}

fn run(client: &mut postgres::Client) -> anyhow::Result<()> {
    client.batch_execute("CREATE TABLE IF NOT EXISTS dt_schema (version INTEGER NOT NULL)")?;
    let version: i32 = match client.query_opt("SELECT version FROM dt_schema", &[])? {
        Some(row) => row.get(0),
        None => {
            client.execute("INSERT INTO dt_schema (version) VALUES (0)", &[])?;
            0
        }
    };
    if version > VERSION {
        anyhow::bail!(
            "schema version {version} is newer than this program knows ({VERSION}): use a newer dist-traceroute"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)
            .with_context(|| format!("migration {} failed", i + 1))?;
        tx.execute("UPDATE dt_schema SET version = $1", &[&(i as i32 + 1)])?;
        tx.commit()?;
        log::info!("database: schema {} created", i + 1);
    }
    Ok(())
}
