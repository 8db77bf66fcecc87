//! One run database: open (pragmas, schema, migrations, file mode) in one place, and the
//! batched, idempotent writes.
//!
//! Schema (version 3; 1 had derived keys without the day, 2 no summaries):
//! - `runs`: one row per run; `data` is the merge of the run records in stream order,
//!   recomputed from `run_records` whenever a record arrives out of order, so replays and
//!   parallel backfills never roll a run back.
//! - `events`: one row per distinct `event_key`; a repeated key replaces the row only when it
//!   comes later in stream order (`pos`, then the line's bytes: two files of one day share
//!   positions), so a replayed older line never overwrites a newer one and the winner of a
//!   tie does not depend on which file was read first.
//! - `run_records`: every distinct run record, keyed by its line identity (for the refold).
//! - `runs.commits`: transactions that wrote the run, so a stored summary can tell whether it
//!   is current (`summary`).
//! - `summary`: the run's summary metrics (`summary::store`), one row per metric.
//!
//! Beyond the migrations, `events` gets the configured typed columns and indexes
//! (`[columns]`, `[[indexes]]`) at every open (`sink::columns`): in the migration's
//! transaction for a new DB, otherwise only what is missing.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use crate::config::{Mapping, SqliteConfig};
use crate::flow::Batch;
use crate::parse::Kind;
use crate::schema::Schema;
use crate::sink::columns;
use crate::sink::merge::fold_run_record;
use crate::sqlite::{apply_pragmas, create_private_file, is_corrupt, migrate_and, quarantine};

#[cfg(test)]
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// Migrations by version; entry N brings a DB from version N to N+1. Never edit or remove one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        status,
        started_at,
        ended_at,
        data TEXT NOT NULL DEFAULT '{}',
        merged_pos INTEGER NOT NULL DEFAULT -1,
        updated_at INTEGER
    );
    CREATE TABLE events (
        event_key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        event_type,
        ts,
        data TEXT NOT NULL,
        source TEXT NOT NULL,
        line_no INTEGER NOT NULL,
        pos INTEGER NOT NULL
    );
    CREATE TABLE run_records (
        record_key TEXT PRIMARY KEY,
        pos INTEGER NOT NULL,
        data TEXT NOT NULL,
        source TEXT NOT NULL,
        line_no INTEGER NOT NULL
    );",
    // 1 → 2: derived keys carry the producer's date (`parse::line_key`), and the day in
    // `pos` is the one of `events_YYYYMMDD` (not the last date in the name). Both are
    // recomputed from what every row keeps (its source, line number and bytes), so re-reading
    // an old file after the upgrade still finds its rows. (Functions: `register_migration_fns`.)
    "UPDATE events SET pos = jss_stream_pos(source, line_no);
    UPDATE events SET event_key = jss_line_key(source, line_no, data)
        WHERE typeof(event_key) = 'blob';
    UPDATE run_records SET pos = jss_stream_pos(source, line_no),
        record_key = jss_line_key(source, line_no, data);
    UPDATE runs SET merged_pos = (SELECT coalesce(max(pos), -1) FROM run_records);",
    // 2 → 3: summaries. `commits` counts the transactions that wrote the run (bumped by
    // `write_run`); a summary row keeps the count it was computed at and the metric's
    // definition, so a reader tells a current summary from a stale one without recomputing.
    "ALTER TABLE runs ADD COLUMN commits INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE summary (
        name TEXT PRIMARY KEY,
        value TEXT,
        definition TEXT NOT NULL,
        run_commits INTEGER NOT NULL,
        computed_at INTEGER NOT NULL
    );",
];

/// The SQL functions the migrations call (registered on every connection that may migrate).
fn register_migration_fns(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("jss_line_key", 3, flags, |ctx| {
        let source: String = ctx.get(0)?;
        let line_no: i64 = ctx.get(1)?;
        let data: String = ctx.get(2)?;
        let digest = crate::parse::digest(data.as_bytes());
        let day = crate::parse::source_day(&source);
        Ok(crate::parse::line_key(day, line_no as u64, &digest).to_vec())
    })?;
    conn.create_scalar_function("jss_stream_pos", 2, flags, |ctx| {
        let source: String = ctx.get(0)?;
        let line_no: i64 = ctx.get(1)?;
        Ok(crate::parse::stream_pos(crate::parse::source_day(&source), line_no as u64))
    })
}

/// Opens (creating if needed) a run DB, with `schema`'s typed columns and indexes.
///
/// Closing it does not checkpoint: with thousands of runs the pool closes and reopens DBs
/// often, and a checkpoint plus WAL delete/recreate on every close cost more than the writes.
/// The writer checkpoints explicitly instead (`sink::wal::checkpoint_wal_and_close`).
///
/// A DB that SQLite reports corrupt (`SQLITE_CORRUPT`, `SQLITE_NOTADB`) while opening is moved
/// aside (see [`quarantine`]) and a fresh one takes its place: the run keeps flowing, and the
/// old file is kept for an operator. A DB unlinked while we opened it (retention deletes under
/// an exclusive lock, which we waited for) is opened again, so no write lands in a deleted file.
pub(crate) fn open(
    path: &Path,
    sqlite: &SqliteConfig,
    schema: &Schema,
) -> rusqlite::Result<Connection> {
    let mut quarantined = false;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let inode_before = inode(path);
        match open_once(path, sqlite, schema) {
            Ok((conn, unmoved)) if unmoved || attempts >= 3 => return Ok(conn),
            Ok(_) => continue,
            Err(e) if is_corrupt(&e) && !quarantined => {
                // Only move the file we found corrupt: another process may have replaced it
                // with a fresh DB meanwhile.
                if inode(path) == inode_before {
                    quarantine_corrupt(path, &e, "opening")
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                }
                quarantined = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens once; the flag says whether `path` still names the file opened (checked after the
/// first lock was taken, which waits out a deleting retention).
fn open_once(
    path: &Path,
    sqlite: &SqliteConfig,
    schema: &Schema,
) -> rusqlite::Result<(Connection, bool)> {
    create_private_file(path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let before = inode(path);
    let mut conn = Connection::open(path)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    apply_pragmas(&conn, sqlite)?;
    register_migration_fns(&conn)?;
    if !migrate_and(&mut conn, MIGRATIONS, |tx| columns::apply_in(tx, schema, path))? {
        columns::apply(&mut conn, schema, path)?;
    }
    conn.set_prepared_statement_cache_capacity(16);
    let unmoved = before.is_some() && inode(path) == before;
    Ok((conn, unmoved))
}

/// Opens an existing run DB for a short job beside the writers (storing a summary): never
/// creates one, so a run DB retention just deleted stays deleted; migrates it as `open` does.
/// No pragmas beyond the busy timeout: the caller's job decides them.
pub(crate) fn open_existing(path: &Path, sqlite: &SqliteConfig) -> rusqlite::Result<Connection> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(sqlite.busy_timeout)?;
    register_migration_fns(&conn)?;
    crate::sqlite::migrate(&mut conn, MIGRATIONS)?;
    Ok(conn)
}

/// An in-memory DB with the run-DB schema, the configured typed columns and no rows:
/// `check-config` prepares the configured SQL fragments against it (`summary::check_sql`), so
/// a fragment naming a typed column prepares.
pub(crate) fn empty_schema(schema: &Schema) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    register_migration_fns(&conn)?;
    migrate_and(&mut conn, MIGRATIONS, |tx| columns::apply_in(tx, schema, Path::new(":memory:")))?;
    Ok(conn)
}

/// Moves a run DB SQLite found corrupt aside (see [`quarantine`]: kept, never deleted) and logs
/// the one ERROR saying where it went; `when` is what found it ("opening", "writing"). The
/// caller opens a fresh DB in its place.
pub(crate) fn quarantine_corrupt(
    path: &Path,
    error: &rusqlite::Error,
    when: &str,
) -> std::io::Result<std::path::PathBuf> {
    let target = quarantine(path)?;
    tracing::error!(
        path = %path.display(),
        moved_to = %target.display(),
        %error,
        found_while = when,
        "run DB is corrupt; moved it aside (kept) and started a fresh DB for this run; `jsonl-shipper backfill --from-start --run RUN_ID` rebuilds it from the sources"
    );
    Ok(target)
}

/// The file's `(dev, inode)`, if it exists.
pub(crate) fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What writing one run's records produced.
#[derive(Debug, Default)]
pub(crate) struct WriteOutcome {
    /// Rows inserted or replaced.
    pub written: u64,
    /// Records already stored (replays, re-reads).
    pub unchanged: u64,
    /// Records that failed on their own (e.g. too big): `(record index, error)`.
    pub failed: Vec<(usize, rusqlite::Error)>,
    /// The run's status is terminal (anything but "running") after this write: its summary
    /// is due (`summary`'s worker, told by the writer after the commit).
    pub terminal: bool,
}

/// Whether an error belongs to one record (dead-letter it) rather than to the database
/// (retry the whole transaction).
fn is_record_error(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::TooBig) | Some(rusqlite::ErrorCode::ConstraintViolation)
    )
}

/// Writes `batch`, the buffered records of `run_id`, in the caller's transaction.
pub(crate) fn write_run(
    tx: &Transaction<'_>,
    run_id: &str,
    batch: &Batch,
    mapping: &Mapping,
) -> rusqlite::Result<WriteOutcome> {
    let mut out = WriteOutcome::default();
    tx.prepare_cached(
        "INSERT INTO runs (run_id, commits) VALUES (?1, 1)
         ON CONFLICT (run_id) DO UPDATE SET commits = commits + 1",
    )?
    .execute([run_id])?;
    // (pos, data, record index) of the run records this batch adds.
    let mut new_run_records: Vec<(i64, &str, usize)> = Vec::new();
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO events (event_key, run_id, event_type, ts, data, source, line_no, pos)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (event_key) DO UPDATE SET
                run_id = excluded.run_id, event_type = excluded.event_type, ts = excluded.ts,
                data = excluded.data, source = excluded.source, line_no = excluded.line_no,
                pos = excluded.pos
             WHERE excluded.pos > events.pos
                OR (excluded.pos = events.pos AND excluded.data > events.data)",
        )?;
        let mut insert_run_record = tx.prepare_cached(
            "INSERT INTO run_records (record_key, pos, data, source, line_no)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (record_key) DO NOTHING",
        )?;
        for (i, rec) in batch.recs.iter().enumerate() {
            let data = batch.text(rec.data);
            let result = match rec.kind {
                Kind::Event => upsert.execute(params![
                    batch.key(&rec.key),
                    run_id,
                    batch.value(rec.event_type),
                    batch.value(rec.ts),
                    data,
                    batch.source(rec),
                    rec.line_no as i64,
                    rec.pos
                ]),
                Kind::Run => insert_run_record
                    .execute(params![
                        batch.key(&rec.key),
                        rec.pos,
                        data,
                        batch.source(rec),
                        rec.line_no as i64
                    ])
                    .inspect(|&n| {
                        if n > 0 {
                            new_run_records.push((rec.pos, data, i));
                        }
                    }),
            };
            match result {
                Ok(0) => out.unchanged += 1,
                Ok(_) => out.written += 1,
                Err(e) if is_record_error(&e) => out.failed.push((i, e)),
                Err(e) => return Err(e),
            }
        }
    }
    if !new_run_records.is_empty() {
        tx.execute_batch("SAVEPOINT merge_all")?;
        match merge_run(tx, run_id, &mut new_run_records, mapping) {
            Ok(()) => tx.execute_batch("RELEASE merge_all")?,
            Err(e) if is_too_big(&e) => {
                tx.execute_batch("ROLLBACK TO merge_all; RELEASE merge_all")?;
                merge_one_by_one(tx, run_id, batch, &new_run_records, mapping, &mut out)?;
            }
            Err(e) => return Err(e),
        }
    }
    // One primary-key lookup on a page this transaction just wrote.
    let status: rusqlite::types::Value = tx
        .prepare_cached("SELECT status FROM runs WHERE run_id = ?1")?
        .query_row([run_id], |r| r.get(0))?;
    out.terminal = is_terminal(&status);
    Ok(out)
}

/// The contract's terminal status: anything but "running" (and not absent).
pub(crate) fn is_terminal(status: &rusqlite::types::Value) -> bool {
    use rusqlite::types::Value;
    match status {
        Value::Null => false,
        Value::Text(s) => s != "running",
        _ => true,
    }
}

fn is_too_big(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig)
}

/// The run's merged `data` grew past SQLite's length limit (`SQLITE_TOOBIG`) with this
/// batch's run records: they are taken back and merged one at a time, in stream order, and
/// each one whose merge is too big is left out (its `run_records` row removed, so no later
/// refold meets it) and reported as failed, a `write_failed` dead letter, never a retry.
fn merge_one_by_one(
    tx: &Transaction<'_>,
    run_id: &str,
    batch: &Batch,
    new: &[(i64, &str, usize)],
    mapping: &Mapping,
    out: &mut WriteOutcome,
) -> rusqlite::Result<()> {
    let mut delete = tx.prepare_cached("DELETE FROM run_records WHERE record_key = ?1")?;
    for &(_, _, i) in new {
        delete.execute([batch.key(&batch.recs[i].key)])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO run_records (record_key, pos, data, source, line_no)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (record_key) DO NOTHING",
    )?;
    let mut in_order = new.to_vec();
    in_order.sort_by_key(|&(pos, data, i)| (pos, data, i));
    for (pos, data, i) in in_order {
        let rec = &batch.recs[i];
        tx.execute_batch("SAVEPOINT merge_one")?;
        insert.execute(params![
            batch.key(&rec.key),
            pos,
            data,
            batch.source(rec),
            rec.line_no as i64
        ])?;
        match merge_run(tx, run_id, &mut [(pos, data, i)], mapping) {
            Ok(()) => tx.execute_batch("RELEASE merge_one")?,
            Err(e) if is_too_big(&e) => {
                tx.execute_batch("ROLLBACK TO merge_one; RELEASE merge_one")?;
                out.written -= 1;
                out.failed.push((i, e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Folds new run records into `runs`: incrementally when they all come after what is merged,
/// otherwise by refolding every record of the run in stream order.
fn merge_run(
    tx: &Transaction<'_>,
    run_id: &str,
    new: &mut [(i64, &str, usize)],
    mapping: &Mapping,
) -> rusqlite::Result<()> {
    // Ties (one position in two files of a day) fold in byte order of the line, as the
    // refold below does, so the outcome never depends on which file was read first.
    new.sort_by_key(|&(pos, data, _)| (pos, data));
    let (data, merged_pos): (String, i64) = tx
        .prepare_cached("SELECT data, merged_pos FROM runs WHERE run_id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_else(|| ("{}".into(), -1));
    let mut state: Value;
    let max_pos;
    if new[0].0 > merged_pos {
        state = serde_json::from_str(&data).unwrap_or_else(|_| Value::Object(Default::default()));
        for (_, record, _) in new.iter() {
            fold(&mut state, record, mapping);
        }
        max_pos = new[new.len() - 1].0;
    } else {
        state = Value::Object(Default::default());
        let mut stmt = tx.prepare_cached("SELECT pos, data FROM run_records ORDER BY pos, data")?;
        let mut rows = stmt.query([])?;
        let mut last = -1;
        while let Some(row) = rows.next()? {
            last = row.get(0)?;
            fold(&mut state, row.get_ref(1)?.as_str()?, mapping);
        }
        max_pos = last;
    }
    let column = |key: &str| json_to_sql(state.get(key));
    tx.prepare_cached(
        "UPDATE runs SET data = ?2, status = ?3, started_at = ?4, ended_at = ?5,
            merged_pos = ?6, updated_at = ?7
         WHERE run_id = ?1",
    )?
    .execute(params![
        run_id,
        state.to_string(),
        column(&mapping.status),
        column(&mapping.start_time),
        column(&mapping.end_time),
        max_pos,
        crate::sqlite::unix_millis()
    ])?;
    Ok(())
}

fn fold(state: &mut Value, record: &str, mapping: &Mapping) {
    // Run records were validated as JSON objects by the parser.
    if let Ok(record) = serde_json::from_str::<Value>(record) {
        fold_run_record(state, &record, &mapping.status);
    }
}

/// A JSON value as an SQLite column value, "as given": strings as TEXT, numbers as numbers,
/// anything else as its JSON text.
fn json_to_sql(v: Option<&Value>) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match v {
        None | Some(Value::Null) => Sql::Null,
        Some(Value::String(s)) => Sql::Text(s.clone()),
        Some(Value::Bool(b)) => Sql::Integer(*b as i64),
        Some(Value::Number(n)) => {
            n.as_i64().map(Sql::Integer).or_else(|| n.as_f64().map(Sql::Real)).unwrap_or(Sql::Null)
        }
        Some(other) => Sql::Text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::migrate;
    use std::time::Instant;

    #[test]
    fn migrate_is_idempotent_and_sets_user_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        drop(open(&path, &sqlite, &Schema::default()).unwrap());
        let conn = open(&path, &sqlite, &Schema::default()).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    /// The version-1 schema exactly as `MIGRATIONS[0]` shipped it, built by hand so the test
    /// does not depend on the code under test to make its fixture.
    fn v1_fixture(path: &Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE runs (run_id TEXT PRIMARY KEY, status, started_at, ended_at,
                data TEXT NOT NULL DEFAULT '{}', merged_pos INTEGER NOT NULL DEFAULT -1,
                updated_at INTEGER);
             CREATE TABLE events (event_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, event_type,
                ts, data TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER NOT NULL,
                pos INTEGER NOT NULL);
             CREATE TABLE run_records (record_key TEXT PRIMARY KEY, pos INTEGER NOT NULL,
                data TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER NOT NULL);
             INSERT INTO runs (run_id, status) VALUES ('r', 'finished');
             INSERT INTO events VALUES ('e1', 'r', 't', 1, '{}', '/src', 1, 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }

    fn schema(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    fn columns(conn: &Connection) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
                 WHERE m.type = 'table' ORDER BY 1, p.cid",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Schema 1 keyed id-less lines without their day: the migration rekeys them (and the
    /// day in `pos` is the producer's), so a line read again after the upgrade finds its row,
    /// while the same bytes at the same line of another day's file are another row.
    #[test]
    fn v1_keys_gain_the_day_and_a_reread_finds_them() {
        use crate::parse::{digest, legacy_line_key, line_key, stream_pos};
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let path = dir.path().join("v1.sqlite");
        v1_fixture(&path);
        let (line, source) =
            (r#"{"run_id":"r","type":"started"}"#, "/raw/events_20240301.ndjson.20240305.gz");
        let old_key = legacy_line_key(3, &digest(line.as_bytes())).to_vec();
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO events VALUES (?1, 'r', 'started', NULL, ?2, ?3, 3, ?4)",
            params![old_key, line, source, stream_pos(20240305, 3)],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO run_records VALUES (?1, ?2, ?3, ?4, 3)",
            params![old_key, stream_pos(20240305, 3), line, source],
        )
        .unwrap();
        drop(conn);
        let conn = open(&path, &sqlite, &Schema::default()).unwrap();
        let new_key = line_key(20240301, 3, &digest(line.as_bytes())).to_vec();
        let row = |sql: &str| -> (Vec<u8>, i64) {
            conn.query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
        };
        let want = (new_key.clone(), stream_pos(20240301, 3));
        assert_eq!(row("SELECT event_key, pos FROM events WHERE line_no = 3"), want);
        assert_eq!(row("SELECT record_key, pos FROM run_records"), want);
        let merged: i64 = conn.query_row("SELECT merged_pos FROM runs", [], |r| r.get(0)).unwrap();
        assert_eq!(merged, stream_pos(20240301, 3));
        // A producer event_id (TEXT) is left as it was.
        let id: String = conn
            .query_row("SELECT event_key FROM events WHERE line_no = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(id, "e1");
    }

    #[test]
    fn v0_and_v1_dbs_open_and_migrate_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        // v0: an empty file (as `create_private_file` leaves it) and a DB with user_version 0.
        let v0 = dir.path().join("v0.sqlite");
        std::fs::write(&v0, b"").unwrap();
        let v1 = dir.path().join("v1.sqlite");
        v1_fixture(&v1);
        for path in [&v0, &v1] {
            let mut conn = open(path, &sqlite, &Schema::default()).unwrap();
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
            assert_eq!(version, SCHEMA_VERSION, "{}", path.display());
            let before = schema(&conn);
            let rows: i64 =
                conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
            migrate(&mut conn, MIGRATIONS).unwrap();
            migrate(&mut conn, MIGRATIONS).unwrap();
            assert_eq!(schema(&conn), before, "{}", path.display());
            let after: i64 =
                conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
            assert_eq!(after, rows);
            drop(conn);
            // Reopening (which migrates again) keeps the data too.
            let conn = open(path, &sqlite, &Schema::default()).unwrap();
            assert_eq!(schema(&conn), before);
        }
        // The v1 fixture's rows survive untouched.
        let conn = open(&v1, &sqlite, &Schema::default()).unwrap();
        let status: String =
            conn.query_row("SELECT status FROM runs WHERE run_id = 'r'", [], |r| r.get(0)).unwrap();
        assert_eq!(status, "finished");
        // Same tables and columns whichever version it started from.
        assert_eq!(columns(&conn), columns(&open(&v0, &sqlite, &Schema::default()).unwrap()));
    }

    /// `schema::BUILTIN_COLUMNS` (what config validation and the scratch schema use) is what
    /// the migrations make.
    #[test]
    fn builtin_columns_are_the_migrated_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let conn = open(&dir.path().join("r.sqlite"), &sqlite, &Schema::default()).unwrap();
        let events: Vec<String> = columns(&conn)
            .into_iter()
            .filter(|(table, _)| table == "events")
            .map(|(_, column)| column)
            .collect();
        assert_eq!(events, crate::schema::BUILTIN_COLUMNS);
    }

    /// A new DB gets its typed columns and indexes in the migration's transaction, and an old
    /// (version 1) DB in the transaction that migrates it.
    #[test]
    fn new_and_migrated_dbs_get_the_typed_columns() {
        use crate::schema::{ColumnType, Index, TypedColumn};
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let schema = Schema {
            columns: vec![TypedColumn {
                name: "n".into(),
                path: "$.n".into(),
                ty: ColumnType::Integer,
            }],
            indexes: vec![Index { columns: vec!["n".into()], condition: None }],
        };
        let v1 = dir.path().join("v1.sqlite");
        v1_fixture(&v1);
        Connection::open(&v1)
            .unwrap()
            .execute("UPDATE events SET data = '{\"n\": 7}'", [])
            .unwrap();
        for path in [dir.path().join("new.sqlite"), v1] {
            let conn = open(&path, &sqlite, &schema).unwrap();
            let typed: Vec<(String, String, i64)> = conn
                .prepare(
                    "SELECT name, type, hidden FROM pragma_table_xinfo('events') WHERE hidden <> 0",
                )
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(typed, [("n".to_string(), "INTEGER".to_string(), 2)]);
            let index: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                    [schema.indexes[0].name()],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(index, 1, "{}", path.display());
        }
        let conn = open(&dir.path().join("v1.sqlite"), &sqlite, &schema).unwrap();
        let n: i64 = conn.query_row("SELECT n FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 7);
    }

    /// Schema 2 (the v1 tables, rekeyed): opening adds `runs.commits` (0 for the old run,
    /// counted from the next write) and the empty `summary` table; rows are kept.
    #[test]
    fn a_v2_db_gains_commits_and_the_summary_table() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::for_base(dir.path());
        let path = dir.path().join("r.sqlite");
        v1_fixture(&path);
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 2").unwrap();
        let mut conn = open(&path, &config.sqlite, &Default::default()).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 3);
        let (status, commits): (String, i64) = conn
            .query_row("SELECT status, commits FROM runs", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((status.as_str(), commits), ("finished", 0));
        let rows: i64 = conn.query_row("SELECT count(*) FROM summary", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 0);
        // Each write counts, and says whether the run is terminal.
        let batch = batch_of(&[r#"{"run_id":"r","event_id":"e9"}"#.to_string()], &config.mapping);
        for want in [1, 2] {
            let tx = conn.transaction().unwrap();
            let out = write_run(&tx, "r", &batch, &config.mapping).unwrap();
            tx.commit().unwrap();
            assert!(out.terminal);
            let commits: i64 =
                conn.query_row("SELECT commits FROM runs", [], |r| r.get(0)).unwrap();
            assert_eq!(commits, want);
        }
        let fresh =
            open(&dir.path().join("new.sqlite"), &config.sqlite, &Default::default()).unwrap();
        assert_eq!(columns(&conn), columns(&fresh));
    }

    #[test]
    fn terminal_is_anything_but_running() {
        use rusqlite::types::Value;
        assert!(!is_terminal(&Value::Null));
        assert!(!is_terminal(&Value::Text("running".into())));
        assert!(is_terminal(&Value::Text("finished".into())));
        assert!(is_terminal(&Value::Text("".into())));
        assert!(is_terminal(&Value::Integer(0)));
    }

    #[test]
    fn a_corrupt_db_is_moved_aside_and_a_fresh_one_opens() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let path = dir.path().join("r.sqlite");
        let garbage = vec![0xA5u8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        std::fs::write(dir.path().join("r.sqlite-wal"), b"old wal").unwrap();
        let conn = open(&path, &sqlite, &Schema::default()).unwrap();
        conn.execute_batch("INSERT INTO runs (run_id) VALUES ('r')").unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".corrupt-"))
            .collect();
        names.sort();
        // The DB and its WAL (SQLite may also have made a `-shm` while failing).
        assert!(names.len() >= 2, "{names:?}");
        assert!(names[0].starts_with("r.sqlite.corrupt-") && !names[0].contains("-wal"));
        assert!(names.contains(&format!("{}-wal", names[0])), "{names:?}");
        // Kept byte for byte.
        assert_eq!(std::fs::read(dir.path().join(&names[0])).unwrap(), garbage);
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// A batch of `lines` of one file, as the reader builds it.
    fn batch_of(lines: &[String], mapping: &Mapping) -> Batch {
        use crate::flow::{BatchBuilder, FileEntry, Span};
        let source = "/raw/events_20240301.ndjson";
        let mut builder = BatchBuilder::default();
        for (i, line) in lines.iter().enumerate() {
            let crate::parse::Outcome::Record(record) =
                crate::parse::parse_line(line.as_bytes(), mapping)
            else {
                panic!("not a record: {line}");
            };
            let meta = crate::tail::LineMeta { offset: 0, line_no: i as u64 + 1, end_offset: 0 };
            builder.push(&record, meta, line.as_bytes(), 20240301);
        }
        let file = std::sync::Arc::new(FileEntry {
            path: source.into(),
            source: std::sync::Arc::from(source),
            id: crate::identity::FileId { dev: 0, ino: 0 },
            gzip: false,
            day: 20240301,
        });
        let span = Span::new(file, 0, 0, lines.len(), Default::default(), None, Instant::now());
        builder.into_batch(std::sync::Arc::new(span))
    }

    /// Issue 10 #9: a run record whose merge makes the run's `data` longer than SQLite takes
    /// (`SQLITE_TOOBIG`) fails on its own (a `write_failed` dead letter), the rest of the
    /// batch is written, and writing the batch again (a replay) gives the same outcome.
    #[test]
    fn a_run_record_whose_merge_is_too_big_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::for_base(dir.path());
        let mut conn =
            open(&dir.path().join("r.sqlite"), &config.sqlite, &Schema::default()).unwrap();
        // SQLite's longest string (and row) for this connection: each line fits, not all
        // of their merge.
        let limit = 400;
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, limit).unwrap();
        let run = |field: &str, value: &str| {
            format!(r#"{{"run_id":"r","record_type":"run","{field}":"{value}"}}"#)
        };
        let lines = vec![
            run("a", &"a".repeat(60)),
            r#"{"run_id":"r","event_id":"e1","event_type":"step"}"#.to_string(),
            run("b", &"b".repeat(60)),
            run("c", &"c".repeat(250)),
            run("status", "done"),
        ];
        let batch = batch_of(&lines, &config.mapping);
        for pass in 0..2 {
            let tx = conn.transaction().unwrap();
            let out = write_run(&tx, "r", &batch, &config.mapping).unwrap();
            tx.commit().unwrap();
            let failed: Vec<usize> = out.failed.iter().map(|(i, _)| *i).collect();
            assert_eq!(failed, vec![3], "pass {pass}");
            assert!(is_too_big(&out.failed[0].1), "{:?}", out.failed[0].1);
            match pass {
                0 => assert_eq!((out.written, out.unchanged), (4, 0)),
                _ => assert_eq!((out.written, out.unchanged), (0, 4)),
            }
        }
        let (data, status): (String, String) = conn
            .query_row("SELECT data, status FROM runs WHERE run_id = 'r'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(status, "done");
        assert_eq!(data["a"], "a".repeat(60));
        assert_eq!(data["b"], "b".repeat(60));
        assert_eq!(data.get("c"), None);
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
        };
        assert_eq!((count("run_records"), count("events")), (3, 1));
    }
}
