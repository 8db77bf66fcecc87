//! Reading a run DB's committed state for the catalog: cheaply on a writer's own connection
//! right after its commit ([`read_committed`]), and from a read-only connection of our own
//! when reconciling or rebuilding ([`read_run_db`]).

use std::cmp::Ordering;
use std::path::Path;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension};

/// What the catalog copies from a run DB's committed state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Committed {
    /// Rows of `events` (`max(rowid)`; see the module docs of `catalog`).
    pub events: i64,
    pub status: SqlValue,
    pub started_at: SqlValue,
    pub ended_at: SqlValue,
}

impl Default for Committed {
    fn default() -> Committed {
        Committed {
            events: 0,
            status: SqlValue::Null,
            started_at: SqlValue::Null,
            ended_at: SqlValue::Null,
        }
    }
}

/// Reads a run's committed state on a connection to its DB (a writer's, just after its commit:
/// two lookups, O(log n), on pages the commit left in its cache).
pub(crate) fn read_committed(conn: &Connection, run_id: &str) -> rusqlite::Result<Committed> {
    let events: Option<i64> =
        conn.prepare_cached("SELECT max(rowid) FROM events")?.query_row([], |r| r.get(0))?;
    let (status, started_at, ended_at) = conn
        .prepare_cached("SELECT status, started_at, ended_at FROM runs WHERE run_id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .unwrap_or((SqlValue::Null, SqlValue::Null, SqlValue::Null));
    Ok(Committed { events: events.unwrap_or(0), status, started_at, ended_at })
}

/// The least and greatest `ts` seen, in SQLite's ordering (numbers before text, text by
/// bytes; NULL ignored, as `min()`/`max()` do), so that a range built here from a writer's
/// batch equals `SELECT min(ts), max(ts)` over the same rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TsRange {
    pub min: Option<SqlValue>,
    pub max: Option<SqlValue>,
}

impl TsRange {
    /// Widens the range to `value`.
    pub(crate) fn note(&mut self, value: ValueRef<'_>) {
        if matches!(value, ValueRef::Null) {
            return;
        }
        if self.min.as_ref().is_none_or(|min| sqlite_cmp(value, min.into()) == Ordering::Less) {
            self.min = Some(value.into());
        }
        if self.max.as_ref().is_none_or(|max| sqlite_cmp(value, max.into()) == Ordering::Greater) {
            self.max = Some(value.into());
        }
    }

    /// Widens the range to another.
    pub(crate) fn merge(&mut self, other: &TsRange) {
        for value in [&other.min, &other.max].into_iter().flatten() {
            self.note(value.into());
        }
    }
}

/// SQLite's ordering of two non-NULL values with the BINARY collation.
fn sqlite_cmp(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    fn class(v: ValueRef<'_>) -> u8 {
        match v {
            ValueRef::Null => 0,
            ValueRef::Integer(_) | ValueRef::Real(_) => 1,
            ValueRef::Text(_) => 2,
            ValueRef::Blob(_) => 3,
        }
    }
    match (a, b) {
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        (ValueRef::Integer(x), ValueRef::Real(y)) => (x as f64).total_cmp(&y),
        (ValueRef::Real(x), ValueRef::Integer(y)) => x.total_cmp(&(y as f64)),
        (ValueRef::Real(x), ValueRef::Real(y)) => x.total_cmp(&y),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

/// A run DB read in full by the catalog (reconciliation, rebuild).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunDbState {
    pub run_id: String,
    pub committed: Committed,
    pub ts: TsRange,
    /// The summary stored in the run DB, if any (see [`stored_summary`]).
    pub summary: Option<String>,
}

/// Reads a run DB, read-only. `after_rowid`: only `events` rows past it are scanned for the
/// `ts` range (the catalog already has the range of the rows before); None = every row (a
/// pass over the table: about 1 µs a row). `Ok(None)`: not a run DB yet (no `runs` row, or
/// created and never migrated).
pub(crate) fn read_run_db(
    path: &Path,
    after_rowid: Option<i64>,
) -> rusqlite::Result<Option<RunDbState>> {
    let conn = super::open_existing_read_only(path)?;
    // One read transaction, so the count, the runs row and the range agree.
    conn.execute_batch("BEGIN")?;
    let has_tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('runs', 'events')",
        [],
        |r| r.get(0),
    )?;
    if has_tables < 2 {
        return Ok(None);
    }
    let run_id: Option<String> = conn
        .query_row("SELECT run_id FROM runs ORDER BY rowid LIMIT 1", [], |r| r.get(0))
        .optional()?;
    let Some(run_id) = run_id else { return Ok(None) };
    let committed = read_committed(&conn, &run_id)?;
    // min()/max() of an indexed column is a lookup; without an index, a pass over the rows
    // (by rowid range when only the newest are wanted).
    let (min, max): (SqlValue, SqlValue) = conn.query_row(
        "SELECT min(ts), max(ts) FROM events WHERE rowid > ?1",
        [after_rowid.unwrap_or(0)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let present = |v: SqlValue| (v != SqlValue::Null).then_some(v);
    let ts = TsRange { min: present(min), max: present(max) };
    let summary = stored_summary(&conn)?;
    conn.execute_batch("COMMIT")?;
    Ok(Some(RunDbState { run_id, committed, ts, summary }))
}

/// The run's summary as stored in its run DB (`summary` table, schema 3): a JSON object of
/// its metrics, or None for an older DB (this connection never migrates) or none stored.
fn stored_summary(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'summary'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    let mut metrics = serde_json::Map::new();
    let mut stmt = conn.prepare("SELECT name, value FROM summary ORDER BY name")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let value: String = row.get(1)?;
        let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
        metrics.insert(row.get(0)?, value);
    }
    Ok((!metrics.is_empty()).then(|| serde_json::Value::Object(metrics).to_string()))
}
