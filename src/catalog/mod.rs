//! The run catalog (`output.catalog`): one small SQLite DB with one row per run DB, so that
//! "which runs, how big, how did they end" needs no pass over hundreds of files (SQLite
//! attaches at most 10).
//!
//! Table `runs` (the contract's names): `run_id` (primary key), `db_path`, `status`,
//! `started_at`, `ended_at` (as in the run DB's `runs` row), `events` (rows of its `events`),
//! `first_ts`, `last_ts` (least and greatest `ts`, SQLite's ordering), `db_bytes` (the DB file
//! plus its `-wal`), `last_write_at` (RFC 3339, UTC, ms: the later mtime of the DB and of a
//! non-empty `-wal`, as retention reads it), `summary` (JSON text, NULL until computed).
//!
//! By job: this file (schema, opening, the queries other parts call), `keeper` (the catalog
//! thread that keeps it current from the writers' commits), `scan` (reading one run DB's
//! committed state, read-only), `rebuild` (`jsonl-shipper catalog rebuild`).
//!
//! **`events` is `max(rowid)` of `events`**, not `count(*)`: O(log n) instead of a pass over
//! the table on every refresh. They are equal because no code deletes a row of `events` (the
//! tidy test `no_code_deletes_events_rows` checks the source), an upsert
//! (`ON CONFLICT DO UPDATE`) keeps the row's rowid, and SQLite gives a new row `max(rowid) + 1`
//! (the table has no AUTOINCREMENT, so a rolled-back insert leaves no gap); VACUUM keeps them
//! dense. `unit: events_is_max_rowid` checks it over upserts, rollbacks and VACUUM.

pub(crate) mod keeper;
pub(crate) mod rebuild;
mod scan;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;

use crate::config::SqliteConfig;
use crate::sqlite::{apply_pragmas, create_private_file, migrate};

pub(crate) use keeper::{Keeper, KeeperThread};
pub(crate) use scan::{read_committed, Committed, TsRange};

/// Migrations by version; entry N brings the catalog from version N to N+1. Never edit or
/// remove one.
const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        db_path TEXT NOT NULL,
        status,
        started_at,
        ended_at,
        events INTEGER NOT NULL DEFAULT 0,
        first_ts,
        last_ts,
        db_bytes INTEGER NOT NULL DEFAULT 0,
        last_write_at TEXT,
        summary TEXT
    );
    CREATE INDEX runs_db_path ON runs (db_path);",
];

/// One row of the catalog. Values stored with another SQLite type than text (a numeric
/// `status` or `ts`) are given in their text form here; the DB keeps them as they are.
// The queries below are the API of `slo --last`, the SLI gauges, `export --since` and
// `summary` (issue 11), which other branches build on; until they land only tests call them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RunRow {
    pub run_id: String,
    pub db_path: String,
    pub status: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub events: u64,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub db_bytes: u64,
    pub last_write_at: Option<String>,
    /// JSON object text, or None until the run's summary is computed.
    pub summary: Option<String>,
}

/// What the catalog adds up to (`status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    pub runs: u64,
    pub events: u64,
    pub bytes: u64,
}

/// An open catalog. Commands open their own; the daemon and backfill write it only from the
/// catalog thread ([`KeeperThread`]).
pub(crate) struct Catalog {
    conn: Connection,
}

const COLUMNS: &str = "run_id, db_path, status, started_at, ended_at, events, first_ts, last_ts,
    db_bytes, last_write_at, summary";

impl Catalog {
    /// Opens the catalog for writing, creating (mode 0640) and migrating it if needed. It is
    /// derived data (rebuildable from the run DBs), so it runs at `synchronous = NORMAL`
    /// whatever `sqlite.synchronous` says: no fsync per commit; a power loss may lose its last
    /// updates, which the next start's reconciliation restores (see `keeper`).
    pub(crate) fn open(path: &Path, sqlite: &SqliteConfig) -> rusqlite::Result<Catalog> {
        create_private_file(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let mut conn = Connection::open(path)?;
        apply_pragmas(&conn, sqlite)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        migrate(&mut conn, MIGRATIONS)?;
        Ok(Catalog { conn })
    }

    /// Opens an existing catalog to read it (`None` if there is none), never creating or
    /// migrating it. Safe while the daemon writes it (WAL).
    pub(crate) fn open_read_only(path: &Path) -> rusqlite::Result<Option<Catalog>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = open_existing_read_only(path)?;
        let version = crate::sqlite::user_version(&conn)?;
        if version == 0 {
            // Created, never migrated (a crash at its first open): as good as missing.
            return Ok(None);
        }
        Ok(Some(Catalog { conn }))
    }

    /// One run's row.
    #[cfg(test)]
    pub(crate) fn run(&self, run_id: &str) -> rusqlite::Result<Option<RunRow>> {
        let sql = format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1");
        rusqlite::OptionalExtension::optional(self.conn.query_row(&sql, [run_id], row_of))
    }

    /// The `n` most recently ended runs, most recent first (`slo --last N`, the SLI gauges).
    /// Ended = a status other than "running" (the contract's terminal status); most recent =
    /// the latest `ended_at` (compared as a time, so time zone offsets are honoured), a run
    /// without a parsable `ended_at` by its `last_write_at`.
    pub(crate) fn last_ended(&self, n: usize) -> rusqlite::Result<Vec<RunRow>> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM runs
                 WHERE status IS NOT NULL AND status <> 'running'
                 ORDER BY coalesce(julianday(ended_at), julianday(last_write_at)) DESC, run_id DESC
                 LIMIT ?1"
            ),
            [n.min(i64::MAX as usize) as i64],
        )
    }

    /// Runs, events and bytes over every row.
    pub(crate) fn totals(&self) -> rusqlite::Result<Totals> {
        self.conn.query_row(
            "SELECT count(*), coalesce(sum(events), 0), coalesce(sum(db_bytes), 0) FROM runs",
            [],
            |r| {
                Ok(Totals {
                    runs: r.get::<_, i64>(0)? as u64,
                    events: r.get::<_, i64>(1)? as u64,
                    bytes: r.get::<_, i64>(2)? as u64,
                })
            },
        )
    }

    /// Sets a run's summary (a JSON object's text) and, given the run DB's file state after
    /// storing it there, its size and last write. Returns false if the catalog has no row for
    /// the run (yet: the catalog thread adds it, and a rebuild copies the stored summary).
    pub(crate) fn set_summary(
        &self,
        run_id: &str,
        summary_json: &str,
        file: Option<&FileState>,
    ) -> rusqlite::Result<bool> {
        let n = self.conn.execute(
            "UPDATE runs SET summary = ?2, db_bytes = coalesce(?3, db_bytes),
                last_write_at = coalesce(?4, last_write_at)
             WHERE run_id = ?1",
            rusqlite::params![
                run_id,
                summary_json,
                file.map(|f| f.bytes as i64),
                file.map(|f| f.last_write_at.as_str())
            ],
        )?;
        Ok(n > 0)
    }

    fn query<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<Vec<RunRow>> {
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map(params, row_of)?;
        rows.collect()
    }
}

/// Removes the rows of run DBs retention deleted (by `db_path`), in one transaction. A
/// missing catalog has nothing to remove (it is not created for this).
pub(crate) fn remove_deleted(
    path: &Path,
    sqlite: &SqliteConfig,
    deleted: &[PathBuf],
) -> rusqlite::Result<usize> {
    if deleted.is_empty() || !path.exists() {
        return Ok(0);
    }
    let mut catalog = Catalog::open(path, sqlite)?;
    let tx = catalog.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut n = 0;
    {
        let mut delete = tx.prepare("DELETE FROM runs WHERE db_path = ?1")?;
        for db_path in deleted {
            n += delete.execute([path_text(db_path)])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Brings the rows of the run DBs at `db_paths` up to their committed state, for a command
/// that wrote them beside the daemon (`dlq replay`): each is read in full and merged into its
/// row (a row never goes back, whoever writes it later). A missing catalog stays missing: the
/// next start of `run` or `backfill` creates it from the run DBs. Returns the rows written.
pub(crate) fn refresh_rows(
    path: &Path,
    sqlite: &SqliteConfig,
    db_paths: &[PathBuf],
) -> rusqlite::Result<usize> {
    if db_paths.is_empty() || !path.exists() {
        return Ok(0);
    }
    // Read before the write lock, which the daemon's catalog thread also takes.
    let mut states = Vec::new();
    for db_path in db_paths {
        if let Some(state) = scan::read_run_db(db_path, None)? {
            states.push((db_path, state));
        }
    }
    let mut catalog = Catalog::open(path, sqlite)?;
    let tx = catalog.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut n = 0;
    for (db_path, state) in &states {
        // Stat'ed under the lock, as the catalog thread does: never a row for a deleted file.
        let Some(file) = FileState::of(db_path) else { continue };
        upsert(&tx, &Refresh::of_state(state, db_path, &file, true))?;
        n += 1;
    }
    tx.commit()?;
    Ok(n)
}

/// A run DB as the catalog records its file: bytes of the DB and its `-wal`, and its last
/// write (the later mtime of the DB and of a non-empty `-wal`: what retention ages by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileState {
    pub bytes: u64,
    pub last_write_at: String,
}

impl FileState {
    /// None if the DB file is gone.
    pub(crate) fn of(path: &Path) -> Option<FileState> {
        let meta = std::fs::metadata(path).ok()?;
        let mut bytes = meta.len();
        let mut last_write = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if let Ok(wal) = std::fs::metadata(crate::sqlite::sibling(path, "-wal")) {
            bytes += wal.len();
            // An empty WAL holds no write (a reader's, or one a TRUNCATE checkpoint left).
            if wal.len() > 0 {
                last_write = last_write.max(wal.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            }
        }
        let last_write_at = humantime::format_rfc3339_millis(last_write).to_string();
        Some(FileState { bytes, last_write_at })
    }
}

/// The run DB files of `dir` (`*.sqlite`; quarantined `*.sqlite.corrupt-*` are not run DBs),
/// sorted. A missing directory has none.
pub(crate) fn run_db_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".sqlite") {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Opens an existing DB for reading only: never creates it, never checkpoints it on close
/// (which would be a write, and move retention's idea of its last write), never migrates.
pub(crate) fn open_existing_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match Connection::open_with_flags(path, read_only) {
        Ok(conn) => conn,
        // A WAL DB whose `-shm` is missing cannot be opened read-only; read-write without
        // CREATE still never creates the DB itself (only its `-shm`).
        Err(_) => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
    };
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.execute_batch("PRAGMA query_only = ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// How the catalog stores a path.
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn text_of(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Some(b.iter().map(|byte| format!("{byte:02x}")).collect()),
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        run_id: r.get(0)?,
        db_path: r.get(1)?,
        status: text_of(r.get_ref(2)?),
        started_at: text_of(r.get_ref(3)?),
        ended_at: text_of(r.get_ref(4)?),
        events: r.get::<_, i64>(5)?.max(0) as u64,
        first_ts: text_of(r.get_ref(6)?),
        last_ts: text_of(r.get_ref(7)?),
        db_bytes: r.get::<_, i64>(8)?.max(0) as u64,
        last_write_at: text_of(r.get_ref(9)?),
        summary: text_of(r.get_ref(10)?),
    })
}

/// How one refresh writes a run's row: `merge` (a writer's commit: `events` never goes down,
/// the `ts` range only widens, a terminal status is never replaced by "running", so updates
/// arriving out of order, or from two processes, never roll the row back) or replace (a
/// complete reading of the run DB).
struct Refresh<'a> {
    run_id: &'a str,
    db_path: &'a Path,
    committed: &'a Committed,
    ts: &'a TsRange,
    file: &'a FileState,
    merge: bool,
}

impl<'a> Refresh<'a> {
    /// The refresh of a run DB as [`scan::read_run_db`] read it, its file as `file`.
    fn of_state(
        state: &'a scan::RunDbState,
        db_path: &'a Path,
        file: &'a FileState,
        merge: bool,
    ) -> Refresh<'a> {
        let (run_id, committed, ts) = (&state.run_id, &state.committed, &state.ts);
        Refresh { run_id, db_path, committed, ts, file, merge }
    }
}

fn upsert(conn: &Connection, refresh: &Refresh<'_>) -> rusqlite::Result<()> {
    let ts_value = |v: &Option<SqlValue>| v.clone().unwrap_or(SqlValue::Null);
    conn.prepare_cached(
        "INSERT INTO runs (run_id, db_path, status, started_at, ended_at, events, first_ts,
            last_ts, db_bytes, last_write_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (run_id) DO UPDATE SET
            db_path = excluded.db_path,
            status = CASE WHEN ?11 AND excluded.status IS 'running'
                AND runs.status IS NOT NULL AND runs.status IS NOT 'running'
                THEN runs.status ELSE excluded.status END,
            started_at = excluded.started_at,
            ended_at = excluded.ended_at,
            events = CASE WHEN ?11 THEN max(runs.events, excluded.events)
                ELSE excluded.events END,
            first_ts = CASE WHEN ?11 THEN min(coalesce(runs.first_ts, excluded.first_ts),
                coalesce(excluded.first_ts, runs.first_ts)) ELSE excluded.first_ts END,
            last_ts = CASE WHEN ?11 THEN max(coalesce(runs.last_ts, excluded.last_ts),
                coalesce(excluded.last_ts, runs.last_ts)) ELSE excluded.last_ts END,
            db_bytes = excluded.db_bytes,
            last_write_at = excluded.last_write_at",
    )?
    .execute(params![
        refresh.run_id,
        path_text(refresh.db_path),
        refresh.committed.status,
        refresh.committed.started_at,
        refresh.committed.ended_at,
        refresh.committed.events,
        ts_value(&refresh.ts.min),
        ts_value(&refresh.ts.max),
        refresh.file.bytes as i64,
        refresh.file.last_write_at,
        refresh.merge,
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests;
