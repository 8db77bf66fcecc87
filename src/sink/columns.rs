//! Applies the configured typed columns and indexes (`crate::schema`) to a run DB, and reads
//! which of them a run DB has (for `check-config`).
//!
//! [`run_db::open`](super::run_db::open) calls [`apply_in`] inside the migration's
//! transaction when it creates or migrates a DB, and [`apply`] otherwise: two reads of the
//! in-memory schema (`sqlite_master`, `table_xinfo`) and string comparisons when nothing is
//! missing, so that the writers' frequent reopens stay cheap. When something is missing, one
//! IMMEDIATE transaction plans again under the write lock (a daemon and a backfill may open
//! the same DB at once) and:
//!
//! - adds a missing column (`ALTER TABLE events ADD COLUMN ... VIRTUAL`: schema only);
//! - redefines a typed column whose definition changed in config: its configured indexes are
//!   dropped, the column dropped and added again (schema only, for a VIRTUAL column), and the
//!   indexes built again. Only a VIRTUAL generated column is ever dropped, and only when no
//!   other index, view or trigger mentions it; otherwise the DB keeps the old definition,
//!   with one WARN per DB and column (and `check-config` says so);
//! - builds a missing index (`CREATE INDEX IF NOT EXISTS`), with a progress line before and
//!   after when the table is big ([`PROGRESS_ROWS`]).
//!
//! Nothing configured once and removed since is ever dropped here: `check-config` reports it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::schema::{mentions, quote, Index, Schema, TypedColumn, INDEX_PREFIX};

/// From about this many rows (`max(rowid)`), building an index takes long enough (≈ 50 ms and
/// up) that an operator sees a line before and after; smaller ones log at debug, so that a
/// config change over thousands of small DBs is not thousands of lines.
pub(crate) const PROGRESS_ROWS: i64 = 10_000;

/// `table_xinfo`'s `hidden` for a VIRTUAL generated column (3 is STORED).
const HIDDEN_VIRTUAL: i64 = 2;

/// What a run DB has: the part of its schema the typed columns and indexes concern.
#[derive(Debug, Clone, Default)]
pub(crate) struct Present {
    /// `events`' `CREATE TABLE` text. `ALTER TABLE ADD COLUMN` appends the column definition
    /// to it verbatim, so a configured column is there exactly when its definition is.
    events_sql: String,
    /// `events`' columns with `table_xinfo`'s `hidden` (2: VIRTUAL generated, 3: STORED).
    columns: Vec<(String, i64)>,
    /// Every index, view and trigger: `(type, name, sql)`; anything that may name a column.
    dependents: Vec<(String, String, Option<String>)>,
}

/// What a DB lacks of the configured schema.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    pub add: Vec<&'a TypedColumn>,
    pub redefine: Vec<&'a TypedColumn>,
    /// Defined differently, and not redefinable: `(column, what keeps it)`.
    pub blocked: Vec<(&'a TypedColumn, String)>,
    /// Missing, or to build again after a redefinition.
    pub build: Vec<&'a Index>,
}

/// One run DB measured against the configured schema (`check-config`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Survey {
    pub missing_columns: Vec<String>,
    pub changed_columns: Vec<String>,
    /// `(column, what keeps it from being redefined)`.
    pub blocked_columns: Vec<(String, String)>,
    pub missing_indexes: Vec<String>,
    /// Generated columns that are not in `[columns]` (any more).
    pub unconfigured_columns: Vec<String>,
    /// Our indexes (`jss_`) that are not in `[[indexes]]` (any more).
    pub unconfigured_indexes: Vec<String>,
}

impl Plan<'_> {
    fn has_work(&self) -> bool {
        !(self.add.is_empty() && self.redefine.is_empty() && self.build.is_empty())
    }
}

/// Brings an open run DB to the configured schema (module docs); a no-op without writes when
/// it is there already.
pub(crate) fn apply(conn: &mut Connection, schema: &Schema, path: &Path) -> rusqlite::Result<()> {
    if schema.is_empty() || up_to_date(conn, schema)? {
        return Ok(());
    }
    let plan = plan(schema, &read(conn)?);
    if !plan.has_work() {
        warn_blocked(&plan, path);
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    apply_in(&tx, schema, path)?;
    tx.commit()
}

/// [`apply`] inside the caller's write transaction.
pub(crate) fn apply_in(tx: &Transaction<'_>, schema: &Schema, path: &Path) -> rusqlite::Result<()> {
    if schema.is_empty() {
        return Ok(());
    }
    // Planned again under the write lock: another process may have applied it meanwhile.
    let mut plan = plan(schema, &read(tx)?);
    if !plan.has_work() {
        warn_blocked(&plan, path);
        return Ok(());
    }
    let mut redefined = Vec::new();
    for column in &plan.redefine {
        tx.execute_batch("SAVEPOINT redefine")?;
        match redefine(tx, schema, column) {
            Ok(()) => {
                tx.execute_batch("RELEASE redefine")?;
                redefined.push(column.name.as_str());
            }
            // SQLite refused the drop (something we did not see depends on the column): the
            // DB keeps the old definition, like a blocked one.
            Err(error) => {
                tx.execute_batch("ROLLBACK TO redefine; RELEASE redefine")?;
                plan.blocked.push((column, error.to_string()));
            }
        }
    }
    for column in &plan.add {
        tx.execute_batch(&format!("ALTER TABLE events ADD COLUMN {}", column.definition()))?;
    }
    if !plan.add.is_empty() || !redefined.is_empty() {
        let added: Vec<&str> = plan.add.iter().map(|c| c.name.as_str()).collect();
        tracing::debug!(path = %path.display(), ?added, ?redefined, "typed columns applied to run DB");
    }
    warn_blocked(&plan, path);
    if !plan.build.is_empty() {
        let rows: i64 =
            tx.query_row("SELECT coalesce(max(rowid), 0) FROM events", [], |r| r.get(0))?;
        for index in &plan.build {
            build_index(tx, index, rows, path)?;
        }
    }
    Ok(())
}

/// Opens a run DB read-only and compares it with the configured schema.
pub(crate) fn survey(path: &Path, schema: &Schema) -> rusqlite::Result<Survey> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    let present = read(&conn)?;
    let plan = plan(schema, &present);
    let names = |columns: &[&TypedColumn]| columns.iter().map(|c| c.name.clone()).collect();
    let configured_indexes: BTreeSet<String> =
        schema.indexes.iter().map(|i| i.name().to_ascii_lowercase()).collect();
    Ok(Survey {
        missing_columns: names(&plan.add),
        changed_columns: names(&plan.redefine),
        blocked_columns: (plan.blocked.iter())
            .map(|(column, why)| (column.name.clone(), why.clone()))
            .collect(),
        missing_indexes: (plan.build.iter())
            .filter(|index| !present.has_index(&index.name()))
            .map(|index| index.name())
            .collect(),
        unconfigured_columns: (present.columns.iter())
            .filter(|(name, hidden)| *hidden >= HIDDEN_VIRTUAL && schema.column(name).is_none())
            .map(|(name, _)| name.clone())
            .collect(),
        unconfigured_indexes: (present.dependents.iter())
            .filter(|(kind, name, _)| kind == "index" && name.starts_with(INDEX_PREFIX))
            .filter(|(_, name, _)| !configured_indexes.contains(&name.to_ascii_lowercase()))
            .map(|(_, name, _)| name.clone())
            .collect(),
    })
}

/// Whether the DB has every configured column, with its definition, and every configured
/// index: one read of `events`' rows of `sqlite_master` (the check at every open; measured
/// with `examples/bench columns`: tens of µs).
fn up_to_date(conn: &Connection, schema: &Schema) -> rusqlite::Result<bool> {
    let mut events_sql = String::new();
    let mut index_names = Vec::new();
    let mut statement =
        conn.prepare("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'events'")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        match row.get_ref(0)?.as_str()? {
            "table" => events_sql = row.get(2)?,
            "index" => index_names.push(row.get::<_, String>(1)?),
            _ => {}
        }
    }
    let has_index = |name: &str| index_names.iter().any(|n| n.eq_ignore_ascii_case(name));
    Ok(schema.columns.iter().all(|c| events_sql.contains(&c.definition()))
        && schema.indexes.iter().all(|i| has_index(&i.name())))
}

/// Reads what [`plan`] needs: from the schema SQLite already holds in memory.
fn read(conn: &Connection) -> rusqlite::Result<Present> {
    let mut present = Present::default();
    let mut statement = conn.prepare_cached(
        "SELECT type, name, sql FROM sqlite_master WHERE type IN ('table', 'index', 'view', 'trigger')",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (kind, name, sql): (String, String, Option<String>) =
            (row.get(0)?, row.get(1)?, row.get(2)?);
        match kind.as_str() {
            "table" if name == "events" => present.events_sql = sql.unwrap_or_default(),
            "table" => {}
            _ => present.dependents.push((kind, name, sql)),
        }
    }
    let mut statement =
        conn.prepare_cached("SELECT name, hidden FROM pragma_table_xinfo('events')")?;
    present.columns = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(present)
}

impl Present {
    fn has_index(&self, name: &str) -> bool {
        self.dependents.iter().any(|(kind, n, _)| kind == "index" && n.eq_ignore_ascii_case(name))
    }
}

/// What `present` lacks of `schema` (module docs).
fn plan<'a>(schema: &'a Schema, present: &Present) -> Plan<'a> {
    let mut plan = Plan::default();
    let configured_indexes: BTreeSet<String> =
        schema.indexes.iter().map(|i| i.name().to_ascii_lowercase()).collect();
    for column in &schema.columns {
        if present.events_sql.contains(&column.definition()) {
            continue;
        }
        let existing =
            present.columns.iter().find(|(name, _)| name.eq_ignore_ascii_case(&column.name));
        match existing {
            None => plan.add.push(column),
            Some((_, hidden)) if *hidden != HIDDEN_VIRTUAL => plan.blocked.push((
                column,
                "a column of that name that is not a typed column (never dropped)".into(),
            )),
            Some(_) => {
                // Our own indexes that use it are dropped and built again; anything else
                // that mentions it would make SQLite refuse the drop (or break).
                let keeper = present.dependents.iter().find(|(_, name, sql)| {
                    !configured_indexes.contains(&name.to_ascii_lowercase())
                        && sql.as_deref().is_some_and(|sql| mentions(sql, &column.name))
                });
                match keeper {
                    Some((kind, name, _)) => {
                        plan.blocked.push((column, format!("{kind} {name} uses it")))
                    }
                    None => plan.redefine.push(column),
                }
            }
        }
    }
    for index in &schema.indexes {
        let rebuild = plan.redefine.iter().any(|column| index.uses(&column.name));
        if rebuild || !present.has_index(&index.name()) {
            plan.build.push(index);
        }
    }
    plan
}

/// Drops the configured indexes that use `column`, then the column, and adds it with its
/// configured definition.
fn redefine(tx: &Transaction<'_>, schema: &Schema, column: &TypedColumn) -> rusqlite::Result<()> {
    for index in schema.indexes.iter().filter(|index| index.uses(&column.name)) {
        tx.execute_batch(&format!("DROP INDEX IF EXISTS {}", quote(&index.name())))?;
    }
    tx.execute_batch(&format!("ALTER TABLE events DROP COLUMN {}", quote(&column.name)))?;
    tx.execute_batch(&format!("ALTER TABLE events ADD COLUMN {}", column.definition()))
}

fn build_index(
    tx: &Transaction<'_>,
    index: &Index,
    rows: i64,
    path: &Path,
) -> rusqlite::Result<()> {
    let name = index.name();
    let started = Instant::now();
    if rows >= PROGRESS_ROWS {
        tracing::info!(path = %path.display(), index = %name, rows, "building index on run DB");
    }
    tx.prepare(&index.create_sql())?.raw_execute()?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if rows >= PROGRESS_ROWS {
        tracing::info!(path = %path.display(), index = %name, rows, elapsed_ms, "index built");
    } else {
        tracing::debug!(path = %path.display(), index = %name, rows, elapsed_ms, "index built");
    }
    Ok(())
}

/// `(DB path, column)` pairs already warned about: the writers reopen DBs often, and a DB
/// that keeps an old definition would repeat its WARN at each open. Bounded: past
/// [`MAX_WARNED`] pairs the WARNs repeat instead of the set growing.
static WARNED: Mutex<BTreeSet<(PathBuf, String)>> = Mutex::new(BTreeSet::new());
const MAX_WARNED: usize = 4096;

fn warn_blocked(plan: &Plan<'_>, path: &Path) {
    for (column, why) in &plan.blocked {
        let key = (path.to_path_buf(), column.name.clone());
        let first = match WARNED.lock() {
            Ok(mut warned) if warned.len() < MAX_WARNED => warned.insert(key),
            Ok(warned) => !warned.contains(&key),
            Err(_) => true,
        };
        if first {
            tracing::warn!(
                path = %path.display(),
                column = %column.name,
                reason = %why,
                "typed column is defined differently in this run DB and keeps its old definition"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    fn schema(columns: &[(&str, &str, ColumnType)], indexes: &[(&[&str], Option<&str>)]) -> Schema {
        Schema {
            columns: (columns.iter())
                .map(|&(name, path, ty)| TypedColumn { name: name.into(), path: path.into(), ty })
                .collect(),
            indexes: (indexes.iter())
                .map(|(columns, condition)| Index {
                    columns: columns.iter().map(|c| c.to_string()).collect(),
                    condition: condition.map(Into::into),
                })
                .collect(),
        }
    }

    /// A run DB as `run_db::open` creates it (no typed columns) in a temp dir, with `n`
    /// events whose `data` is `{"status": n}` (`"oops"` for every tenth).
    fn run_db_with(n: i64) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let conn = super::super::run_db::open(&path, &sqlite, &Schema::default()).unwrap();
        conn.execute(
            "INSERT INTO events (event_key, run_id, event_type, ts, data, source, line_no, pos)
             WITH RECURSIVE i(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM i WHERE n < ?1)
             SELECT 'k' || n, 'r', 't', n,
                 CASE WHEN n % 10 = 0 THEN json_object('status', 'oops')
                      ELSE json_object('status', n) END,
                 'src', n, n FROM i",
            [n],
        )
        .unwrap();
        (dir, path, conn)
    }

    fn statuses() -> Schema {
        schema(
            &[
                ("http_status", "$.status", ColumnType::Integer),
                ("label", "$.status", ColumnType::Text),
            ],
            &[(&["http_status"], Some("http_status >= 5")), (&["event_type", "label"], None)],
        )
    }

    fn master(conn: &Connection) -> Vec<(String, Option<String>)> {
        conn.prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    fn schema_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA schema_version", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn applies_once_and_reopening_changes_nothing() {
        let (_dir, path, mut conn) = run_db_with(20);
        let path = path.as_path();
        let schema = statuses();
        apply(&mut conn, &schema, path).unwrap();
        let values: Vec<(Option<i64>, Option<String>)> = conn
            .prepare("SELECT http_status, label FROM events ORDER BY line_no LIMIT 3 OFFSET 8")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(values, [(Some(9), None), (None, Some("oops".into())), (Some(11), None)]);
        let index = schema.indexes[0].name();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT count(*) FROM events WHERE http_status >= 5 AND http_status < 8",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains(&index), "{plan}");

        let (before, version) = (master(&conn), schema_version(&conn));
        for _ in 0..3 {
            apply(&mut conn, &schema, path).unwrap();
        }
        assert_eq!(master(&conn), before);
        assert_eq!(schema_version(&conn), version, "no DDL ran again");
        assert_eq!(survey(path, &schema).unwrap(), Survey::default());
    }

    /// A changed path redefines the column (values follow the new path) and rebuilds the
    /// indexes that use it; an index that does not use it is left alone.
    #[test]
    fn a_changed_definition_is_redefined_with_its_indexes() {
        let (_dir, path, mut conn) = run_db_with(20);
        let path = path.as_path();
        let old = statuses();
        apply(&mut conn, &old, path).unwrap();
        conn.execute("UPDATE events SET data = json_set(data, '$.code', line_no * 100)", [])
            .unwrap();
        let mut new = old.clone();
        new.columns[0].path = "$.code".into();
        let found = survey(path, &new).unwrap();
        assert_eq!(found.changed_columns, ["http_status"]);
        assert_eq!(found.missing_indexes, Vec::<String>::new());
        let label_index_sql = |conn: &Connection| -> String {
            let name = new.indexes[1].name();
            conn.query_row("SELECT sql FROM sqlite_master WHERE name = ?1", [name], |r| r.get(0))
                .unwrap()
        };
        let label_before = label_index_sql(&conn);
        apply(&mut conn, &new, path).unwrap();
        let (sum, n): (i64, i64) = conn
            .query_row(
                &format!(
                    "SELECT sum(http_status), count(*) FROM events INDEXED BY {} WHERE http_status >= 5",
                    new.indexes[0].name()
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((sum, n), ((1..=20).map(|i| i * 100).sum::<i64>(), 20));
        assert_eq!(label_index_sql(&conn), label_before);
        assert_eq!(survey(path, &new).unwrap(), Survey::default());
        // The old definition is gone from the table's SQL.
        let sql: String = conn
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'events'", [], |r| r.get(0))
            .unwrap();
        assert!(!sql.contains(&old.columns[0].definition()), "{sql}");
        assert!(sql.contains(&new.columns[0].definition()), "{sql}");
    }

    /// Something that is not ours keeps a column from being redefined: an analyst's index, a
    /// removed config index, a plain column of that name. The DB keeps what it has.
    #[test]
    fn a_column_something_else_uses_keeps_its_old_definition() {
        let old = statuses();
        let mut new = old.clone();
        new.columns[0].path = "$.code".into();
        for keeper in [
            "CREATE INDEX mine ON events (http_status)",
            "CREATE VIEW errors AS SELECT * FROM events WHERE HTTP_STATUS >= 500",
        ] {
            let (_dir, path, mut conn) = run_db_with(5);
            let path = path.as_path();
            apply(&mut conn, &old, path).unwrap();
            conn.execute_batch(keeper).unwrap();
            let before = master(&conn);
            apply(&mut conn, &new, path).unwrap();
            assert_eq!(master(&conn), before, "{keeper}");
            let found = survey(path, &new).unwrap();
            assert_eq!(found.blocked_columns.len(), 1, "{found:?}");
            assert_eq!(found.blocked_columns[0].0, "http_status");
        }
        // A plain column of a configured name is never dropped.
        let (_dir, path, mut conn) = run_db_with(5);
        let path = path.as_path();
        conn.execute_batch("ALTER TABLE events ADD COLUMN http_status INTEGER DEFAULT 7").unwrap();
        let only_column = schema(&[("http_status", "$.status", ColumnType::Integer)], &[]);
        apply(&mut conn, &only_column, path).unwrap();
        let sum: i64 =
            conn.query_row("SELECT sum(http_status) FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(sum, 35);
        let found = survey(path, &only_column).unwrap();
        assert_eq!(
            found.blocked_columns[0].1,
            "a column of that name that is not a typed column (never dropped)"
        );
    }

    /// Removing a column or index from the config leaves it in the DB, and `survey` names it.
    #[test]
    fn removed_columns_and_indexes_stay_and_are_surveyed() {
        let (_dir, path, mut conn) = run_db_with(5);
        let path = path.as_path();
        let all = statuses();
        apply(&mut conn, &all, path).unwrap();
        conn.execute_batch("CREATE INDEX mine ON events (ts)").unwrap();
        let fewer = schema(&[("http_status", "$.status", ColumnType::Integer)], &[]);
        let before = master(&conn);
        apply(&mut conn, &fewer, path).unwrap();
        apply(&mut conn, &Schema::default(), path).unwrap();
        assert_eq!(master(&conn), before);
        let found = survey(path, &fewer).unwrap();
        let mut want_indexes: Vec<String> = all.indexes.iter().map(|i| i.name()).collect();
        want_indexes.sort();
        let mut got = found.unconfigured_indexes.clone();
        got.sort();
        assert_eq!(got, want_indexes);
        assert_eq!(found.unconfigured_columns, ["label"]);
        assert!(found.missing_columns.is_empty() && found.missing_indexes.is_empty());
        // And a DB without them at all lacks them.
        let (_bare_dir, bare, _conn) = run_db_with(1);
        let found = survey(&bare, &all).unwrap();
        assert_eq!(found.missing_columns, ["http_status", "label"]);
        assert_eq!(found.missing_indexes.len(), 2);
    }
}
