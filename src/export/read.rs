//! Reading one run DB for export: opened `SQLITE_OPEN_READ_ONLY` (never created, never
//! migrated) with `query_only`, as a WAL reader, so a running daemon's writers are never
//! blocked. Its columns (the built-in ones and the typed ones `[columns]` added as generated
//! columns, found with `PRAGMA table_xinfo`) and its events are read in one read transaction:
//! the file written is one consistent state of the run. The cost of that: while it lasts, a
//! WAL checkpoint cannot go past it (the WAL grows by what is written meanwhile; about 3 s per
//! million events).

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::write::{Column, Kind};

/// The built-in columns of `events` that are exported, in order, with their kinds (`ts` is
/// text whatever the producer wrote: one type for every run's file; typed columns give
/// numbers).
pub(crate) const EVENT_COLUMNS: &[(&str, Kind)] = &[
    ("run_id", Kind::Text),
    ("event_key", Kind::Text),
    ("event_type", Kind::Text),
    ("ts", Kind::Text),
    ("source", Kind::Text),
    ("line_no", Kind::Integer),
    ("data", Kind::Json),
];

/// How long a read waits for a lock (only a writer's WAL recovery or an exclusive `VACUUM`
/// take one a reader must wait for).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("it has no events table (not a run DB, or one being created)")]
    NoEventsTable,
}

/// A run DB open for export, inside its read transaction.
pub(crate) struct RunReader {
    conn: Connection,
    columns: Vec<Column>,
}

impl RunReader {
    pub(crate) fn open(path: &Path) -> Result<RunReader, ReadError> {
        let conn = open_read_only(path)?;
        // One snapshot from the schema to the last row.
        conn.execute_batch("BEGIN")?;
        let columns = event_columns(&conn)?;
        Ok(RunReader { conn, columns })
    }

    /// The exported columns: [`EVENT_COLUMNS`], then the typed columns in table order.
    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Calls `row` with each event's values (in [`RunReader::columns`] order), in rowid order,
    /// until it returns false.
    pub(crate) fn for_each_event(
        &mut self,
        row: &mut dyn FnMut(&[ValueRef<'_>]) -> bool,
    ) -> Result<(), ReadError> {
        let names: Vec<String> = self.columns.iter().map(|c| quoted(&c.name)).collect();
        let sql = format!("SELECT {} FROM events ORDER BY rowid", names.join(", "));
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query([])?;
        while let Some(next) = rows.next()? {
            let cells =
                (0..names.len()).map(|idx| next.get_ref(idx)).collect::<Result<Vec<_>, _>>()?;
            if !row(&cells) {
                break;
            }
        }
        Ok(())
    }

    /// The `runs.<ext>` row of a run the catalog does not list, from the DB itself (same
    /// snapshot): `status`, `started_at`, `ended_at` from its `runs` row, `events` (the rows
    /// exported), `first_ts`/`last_ts` (min/max of `ts`), `db_bytes` (the DB file and its
    /// WAL); `last_write_at` and `summary` NULL (the catalog's to compute).
    pub(crate) fn runs_row(
        &self,
        run_id: &str,
        db_path: &Path,
        events: u64,
    ) -> Result<Vec<Value>, ReadError> {
        let (status, started_at, ended_at) = self
            .conn
            .query_row("SELECT status, started_at, ended_at FROM runs LIMIT 1", [], |r| {
                Ok((r.get::<_, Value>(0)?, r.get::<_, Value>(1)?, r.get::<_, Value>(2)?))
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok((Value::Null, Value::Null, Value::Null)),
                e => Err(e),
            })?;
        let (first_ts, last_ts) =
            self.conn.query_row("SELECT min(ts), max(ts) FROM events", [], |r| {
                Ok((r.get::<_, Value>(0)?, r.get::<_, Value>(1)?))
            })?;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let db_bytes = size(db_path) + size(&crate::sqlite::sibling(db_path, "-wal"));
        Ok(vec![
            Value::Text(run_id.to_string()),
            Value::Text(db_path.display().to_string()),
            status,
            started_at,
            ended_at,
            Value::Integer(events as i64),
            first_ts,
            last_ts,
            Value::Integer(db_bytes as i64),
            Value::Null,
            Value::Null,
        ])
    }
}

/// Opens a SQLite file for reading only: never creates it (a missing file is an error), never
/// writes it (`query_only`). In WAL mode a reader still maps the `-shm`, creating it (and an
/// empty `-wal`) if no other connection has, which needs write access to the directory.
pub(crate) fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA query_only = 1")?;
    Ok(conn)
}

/// [`EVENT_COLUMNS`] and the generated columns of `events` (hidden 2: VIRTUAL, 3: STORED) with
/// the kind of their declared type (TEXT when it names none of INTEGER, REAL, TEXT).
fn event_columns(conn: &Connection) -> Result<Vec<Column>, ReadError> {
    let mut statement =
        conn.prepare("SELECT name, type, hidden FROM pragma_table_xinfo('events')")?;
    let table: Vec<(String, String, i64)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    if table.is_empty() {
        return Err(ReadError::NoEventsTable);
    }
    let mut columns: Vec<Column> =
        EVENT_COLUMNS.iter().map(|&(name, kind)| Column::new(name, kind)).collect();
    for (name, declared, hidden) in table {
        if matches!(hidden, 2 | 3) && !columns.iter().any(|c| c.name == name) {
            let kind = Kind::of_declared(&declared).unwrap_or(Kind::Text);
            columns.push(Column { name, kind });
        }
    }
    Ok(columns)
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run DB with two typed columns (VIRTUAL, as `[columns]` adds them) and an internal
    /// column (`pos`) that is not exported.
    #[test]
    fn typed_columns_are_found_with_their_kinds_and_rows_stream_in_rowid_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE runs (run_id TEXT PRIMARY KEY, status, started_at, ended_at, data);
             CREATE TABLE events (event_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, event_type,
                 ts, data TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER NOT NULL,
                 pos INTEGER NOT NULL);
             ALTER TABLE events ADD COLUMN http_status INTEGER AS (
                 CASE WHEN json_type(data, '$.status') = 'integer'
                 THEN json_extract(data, '$.status') END) VIRTUAL;
             ALTER TABLE events ADD COLUMN ttfp_ms REAL AS (json_extract(data, '$.t')) VIRTUAL;
             INSERT INTO runs VALUES ('r', 'finished', '2024-03-01T00:00:00Z', NULL, '{}');
             INSERT INTO events VALUES ('b', 'r', 'x', 't2', '{\"status\":\"oops\",\"t\":1.5}',
                 '/s', 2, 2);
             INSERT INTO events VALUES ('a', 'r', NULL, 't1', '{\"status\":404}', '/s', 1, 1);",
        )
        .unwrap();
        let mut reader = RunReader::open(&path).unwrap();
        let kinds: Vec<(&str, Kind)> =
            reader.columns().iter().map(|c| (c.name.as_str(), c.kind)).collect();
        let mut expected = EVENT_COLUMNS.to_vec();
        expected.extend([("http_status", Kind::Integer), ("ttfp_ms", Kind::Real)]);
        assert_eq!(kinds, expected);
        let mut rows = Vec::new();
        reader
            .for_each_event(&mut |cells| {
                rows.push(cells.iter().map(|&c| Value::from(c)).collect::<Vec<_>>());
                true
            })
            .unwrap();
        let text = |s: &str| Value::Text(s.to_string());
        assert_eq!(
            rows,
            [
                vec![
                    text("r"),
                    text("b"),
                    text("x"),
                    text("t2"),
                    text("/s"),
                    Value::Integer(2),
                    text(r#"{"status":"oops","t":1.5}"#),
                    Value::Null,
                    Value::Real(1.5),
                ],
                vec![
                    text("r"),
                    text("a"),
                    Value::Null,
                    text("t1"),
                    text("/s"),
                    Value::Integer(1),
                    text(r#"{"status":404}"#),
                    Value::Integer(404),
                    Value::Null,
                ],
            ]
        );
        let runs_row = reader.runs_row("r", &path, 2).unwrap();
        assert_eq!(
            runs_row[2..8],
            [
                text("finished"),
                text("2024-03-01T00:00:00Z"),
                Value::Null,
                Value::Integer(2),
                text("t1"),
                text("t2"),
            ]
        );
        assert_eq!(runs_row[9..], [Value::Null, Value::Null]);
    }

    #[test]
    fn a_missing_db_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sqlite");
        assert!(RunReader::open(&path).is_err());
        assert!(!path.exists());
    }
}
