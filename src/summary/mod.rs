//! Per-run summaries: the built-in metrics and the configured `[[summary]]` ones, computed
//! from a run DB's committed rows over a read-only connection, stored in the run DB's
//! `summary` table, and judged against `[[slo]]` (`slo`).
//!
//! By job: this file (the [`Summary`] type, reading a run DB: [`compute`], [`store`],
//! [`stored`], [`refresh`]; checking the configured SQL: [`check_sql`]), `query` (the SQL a
//! summary runs, and the percentiles), `slo` (the gate's verdicts), `worker` (the daemon's and
//! backfill's summary thread) and `runs` (finding run DBs by run_id or by when they ended).
//!
//! Never on a writer's path: a summary reads through its own read-only connection
//! (`query_only`, a time limit), a WAL reader that never blocks the writers; storing it is one
//! short transaction of its own. Nothing here creates a run DB.

mod query;
pub(crate) mod runs;
pub(crate) mod slo;
pub(crate) mod worker;

pub(crate) use worker::Worker;

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use crate::config::{Config, SqliteConfig, SummaryMetric};

/// A summary's queries are interrupted after this long (the progress handler). Measured: a
/// 1,000,000-event run with 5 metrics takes about a second (README, `bench summary`).
pub(crate) const QUERY_TIME_LIMIT: Duration = Duration::from_secs(120);

/// The `definition` stored for the built-in metrics.
const BUILT_IN: &str = "built-in";

/// One run's summary: the built-in metrics first, then the configured ones in config order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub run_id: String,
    /// `runs.status` as stored (a string, or null while unknown).
    pub status: Value,
    /// `runs.ended_at` as stored.
    pub ended_at: Value,
    /// `runs.commits` when it was computed: it is current while that has not moved.
    pub commits: i64,
    pub metrics: Vec<Metric>,
}

/// One named value of a summary.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metric {
    pub name: String,
    /// A JSON number, null (nothing to aggregate), a string (`first_ts`, `last_ts` over text
    /// timestamps) or an object (`events_by_type`).
    pub value: Value,
    /// What computed it (`built-in`, or the config entry as JSON): a stored value is current
    /// only for the same definition.
    pub definition: String,
}

impl Summary {
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.metrics.iter().find(|m| m.name == name).map(|m| &m.value)
    }

    /// `{"run_id","status","metrics":{name: value}}` (the contract's `summary --json`).
    pub(crate) fn to_json(&self) -> Value {
        let metrics: serde_json::Map<String, Value> =
            self.metrics.iter().map(|m| (m.name.clone(), m.value.clone())).collect();
        serde_json::json!({"run_id": self.run_id, "status": self.status, "metrics": metrics})
    }

    /// Whether the run has a terminal status (anything but "running").
    pub(crate) fn is_terminal(&self) -> bool {
        is_terminal(&self.status)
    }
}

/// Why a summary could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SummaryError {
    #[error("run {run_id:?}: no run DB {path}")]
    NoRunDb { run_id: String, path: std::path::PathBuf },
    #[error("{path}: the run DB has no runs row")]
    NoRun { path: std::path::PathBuf },
    #[error("{path}: summary queries ran longer than {limit:?} and were stopped")]
    TooSlow { path: std::path::PathBuf, limit: Duration },
    #[error("{path}: reading the summary")]
    Sqlite {
        path: std::path::PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl SummaryError {
    pub(crate) fn sqlite(path: &Path, source: rusqlite::Error) -> SummaryError {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) {
            return SummaryError::TooSlow { path: path.to_path_buf(), limit: QUERY_TIME_LIMIT };
        }
        SummaryError::Sqlite { path: path.to_path_buf(), source }
    }
}

/// A read-only connection for summaries: `query_only`, and every statement interrupted once
/// the connection is [`QUERY_TIME_LIMIT`] old. In WAL mode it never blocks the writers (it
/// only holds back a checkpoint past its snapshot while it reads).
pub(crate) fn open_read_only(path: &Path, sqlite: &SqliteConfig) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(sqlite.busy_timeout)?;
    conn.pragma_update(None, "query_only", true)?;
    let opened = Instant::now();
    // Checked every 10,000 VM steps: well under a millisecond.
    conn.progress_handler(10_000, Some(move || opened.elapsed() > QUERY_TIME_LIMIT));
    Ok(conn)
}

/// Computes the summary of the run DB `conn` is open on, with `metrics` (`config.summary`),
/// in one read transaction (one snapshot). For `catalog rebuild` too: give it a connection
/// from [`open_read_only`].
pub(crate) fn compute(conn: &Connection, metrics: &[SummaryMetric]) -> rusqlite::Result<Summary> {
    let tx = conn.unchecked_transaction()?;
    let head = query::run_head(&tx)?;
    let mut summary = Summary {
        run_id: head.run_id,
        status: head.status,
        ended_at: head.ended_at.clone(),
        commits: head.commits,
        metrics: Vec::new(),
    };
    let scan = query::scan(&tx, metrics)?;
    let builtins = [
        ("events", Value::from(scan.events)),
        ("events_by_type", scan.events_by_type),
        ("duration_s", duration_s(&head.started_at, &head.ended_at)),
        ("first_ts", scan.first_ts),
        ("last_ts", scan.last_ts),
    ];
    for (name, value) in builtins {
        summary.metrics.push(Metric { name: name.into(), value, definition: BUILT_IN.into() });
    }
    let columns = columns_digest(&tx)?;
    for (m, value) in metrics.iter().zip(scan.configured) {
        let definition = definition(m, &columns);
        summary.metrics.push(Metric { name: m.name.clone(), value, definition });
    }
    tx.commit()?;
    Ok(summary)
}

/// Replaces the stored summary of the run DB `conn` is open on (writable, schema 3) in one
/// short transaction. The summary is derived data: `synchronous = NORMAL` is enough (a
/// power loss at worst loses it, and it is computed again), and keeps the write lock, which
/// the writers wait for, to well under a millisecond.
pub(crate) fn store(conn: &Connection, summary: &Summary) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM summary", [])?;
    let now = crate::sqlite::unix_millis();
    {
        let mut insert = tx.prepare(
            "INSERT INTO summary (name, value, definition, run_commits, computed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for m in &summary.metrics {
            insert.execute(rusqlite::params![
                m.name,
                m.value.to_string(),
                m.definition,
                summary.commits,
                now
            ])?;
        }
    }
    tx.commit()
}

/// The stored summary if it is current: computed at the run's present `commits`, with the
/// same metrics and definitions as `metrics` asks for. None otherwise (or before schema 3).
pub(crate) fn stored(
    conn: &Connection,
    metrics: &[SummaryMetric],
) -> rusqlite::Result<Option<Summary>> {
    let version = crate::sqlite::user_version(conn)?;
    if version < 3 {
        return Ok(None);
    }
    let tx = conn.unchecked_transaction()?;
    let head = query::run_head(&tx)?;
    let columns = columns_digest(&tx)?;
    let wanted = BUILTIN_NAMES
        .iter()
        .map(|n| (n.to_string(), BUILT_IN.to_string()))
        .chain(metrics.iter().map(|m| (m.name.clone(), definition(m, &columns))));
    let mut out = Vec::new();
    {
        let mut row =
            tx.prepare("SELECT value, definition, run_commits FROM summary WHERE name = ?1")?;
        for (name, want_definition) in wanted {
            let found: Option<(String, String, i64)> =
                row.query_row([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
            match found {
                Some((value, definition, commits))
                    if definition == want_definition && commits == head.commits =>
                {
                    let value = serde_json::from_str(&value).unwrap_or(Value::Null);
                    out.push(Metric { name, value, definition });
                }
                _ => return Ok(None),
            }
        }
    }
    let rows: i64 = tx.query_row("SELECT count(*) FROM summary", [], |r| r.get(0))?;
    if rows as usize != out.len() {
        return Ok(None); // a metric since removed from the config
    }
    Ok(Some(Summary {
        run_id: head.run_id,
        status: head.status,
        ended_at: head.ended_at,
        commits: head.commits,
        metrics: out,
    }))
}

const BUILTIN_NAMES: [&str; 5] = crate::config::BUILTIN_METRICS;

/// The contract's terminal status (anything but "running", and not absent), as JSON.
fn is_terminal(status: &Value) -> bool {
    match status {
        Value::Null => false,
        Value::String(s) => s != "running",
        _ => true,
    }
}

/// [`refresh`] for a run that has ended; `Ok(None)`, computing nothing, for one still running
/// (its summary is computed when it ends). For commands that add events to runs that may have
/// ended already (`dlq replay`): their stored summary is then stale.
pub(crate) fn refresh_ended(path: &Path, config: &Config) -> Result<Option<Summary>, SummaryError> {
    let head = open_read_only(path, &config.sqlite)
        .and_then(|conn| query::run_head(&conn))
        .map_err(|e| SummaryError::sqlite(path, e))?;
    if !is_terminal(&head.status) {
        return Ok(None);
    }
    refresh(path, config, false).map(Some)
}

/// The run DB at `path`'s summary under `config`: the stored one while current (unless
/// `force`), else computed (read-only) and stored; then copied into the catalog. Storing is
/// best effort: a read-only copy of a run DB (an analyst's, a CI job's) still gets its
/// summary, with one WARN.
pub(crate) fn refresh(path: &Path, config: &Config, force: bool) -> Result<Summary, SummaryError> {
    let summary = refresh_stored(path, config, force)?;
    copy_to_catalog(config, &summary, path);
    Ok(summary)
}

/// [`refresh`] without the copy into the catalog (`catalog rebuild` writes the row itself).
pub(crate) fn refresh_stored(
    path: &Path,
    config: &Config,
    force: bool,
) -> Result<Summary, SummaryError> {
    let fail = |e| SummaryError::sqlite(path, e);
    if !path.is_file() {
        let run_id = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
        return Err(SummaryError::NoRunDb { run_id, path: path.to_path_buf() });
    }
    if !force {
        // Read-only first: a current summary (thousands of them in a `catalog rebuild`) needs no
        // writable open, whose WAL files and migration check cost about 2 ms a DB.
        let reader = open_read_only(path, &config.sqlite).map_err(fail)?;
        if let Some(summary) = stored(&reader, &config.summary).map_err(fail)? {
            return Ok(summary);
        }
    }
    // Opened before the reader: it migrates an old DB, so the reader sees the `summary` table.
    let writable = match crate::sink::run_db::open_existing(path, &config.sqlite) {
        Ok(conn) => Some(conn),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "run DB not writable; the summary will not be stored");
            None
        }
    };
    let reader = open_read_only(path, &config.sqlite).map_err(fail)?;
    let summary = match compute(&reader, &config.summary) {
        Err(rusqlite::Error::QueryReturnedNoRows) => {
            return Err(SummaryError::NoRun { path: path.to_path_buf() })
        }
        other => other.map_err(fail)?,
    };
    drop(reader);
    if let Some(conn) = writable {
        if let Err(error) = store(&conn, &summary) {
            tracing::warn!(path = %path.display(), %error, "cannot store the summary in the run DB");
        }
    }
    Ok(summary)
}

thread_local! {
    /// The catalog connection `copy_to_catalog` last used on this thread, kept for the next
    /// summary: opening (and checking the migrations of) the catalog for each of 5,000 runs at
    /// the end of a backfill cost more than their summaries.
    static CATALOG: std::cell::RefCell<Option<(std::path::PathBuf, crate::catalog::Catalog)>> =
        const { std::cell::RefCell::new(None) };
}

/// Copies the metrics into the catalog's row of the run (`runs.summary`), directly: a short
/// write beside the catalog thread's, which SQLite's lock orders. A failure only delays it
/// to the next `catalog rebuild` (which reads the run DB's stored summary).
pub(super) fn copy_to_catalog(config: &Config, summary: &Summary, path: &Path) {
    if !config.output.catalog.exists() {
        // Not created for this (`summary` on a copied run DB, a base that has none): it would
        // have no row to copy into, and `run`/`backfill` create it from the run DBs.
        return;
    }
    let metrics = summary.to_json()["metrics"].to_string();
    // Storing it wrote the run DB (its connection is closed by now): size and mtime moved.
    let file = crate::catalog::FileState::of(path);
    let copied = CATALOG.with_borrow_mut(|cached| {
        if cached.as_ref().is_none_or(|(p, _)| *p != config.output.catalog) {
            *cached = None;
            let catalog = crate::catalog::Catalog::open(&config.output.catalog, &config.sqlite)?;
            *cached = Some((config.output.catalog.clone(), catalog));
        }
        let (_, catalog) = cached.as_ref().expect("opened above");
        let copied = catalog.set_summary(&summary.run_id, &metrics, file.as_ref());
        if copied.is_err() {
            *cached = None; // the next summary opens the catalog afresh
        }
        copied
    });
    if let Err(error) = copied {
        tracing::warn!(catalog = %config.output.catalog.display(), run_id = %summary.run_id, %error, "cannot copy the summary into the catalog; `catalog rebuild` will");
    }
}

/// The stored `definition` of a configured metric: its config entry as JSON.
fn definition(m: &SummaryMetric, columns: &str) -> String {
    let entry = serde_json::json!({
        "agg": m.agg.as_str(), "column": m.column, "where": m.filter, "of": m.of,
        "columns": columns,
    });
    entry.to_string()
}

/// Which typed columns a summary was computed over: a digest of the run DB's `events` table
/// definition (SQLite keeps each added column's definition in it verbatim). Part of every
/// configured metric's stored `definition`, so a `[columns]` path or type redefined in the DB
/// makes its stored summary stale and `summary`/`slo` compute it again.
fn columns_digest(conn: &Connection) -> rusqlite::Result<String> {
    use sha2::Digest;
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    let digest = sha2::Sha256::digest(sql.as_bytes());
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

/// `ended_at − started_at` in seconds when both are RFC 3339 text; else null.
fn duration_s(started_at: &Value, ended_at: &Value) -> Value {
    match (started_at.as_str().and_then(rfc3339), ended_at.as_str().and_then(rfc3339)) {
        (Some(start), Some(end)) => Value::from(end - start),
        _ => Value::Null,
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; `t`/`z`/space accepted as RFC 3339 allows); None
/// for anything else. A dozen lines rather than a date crate for one subtraction.
pub(crate) fn rfc3339(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let seps = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        frac = format!("0.{}", &s[i + 1..i + 1 + digits]).parse().ok()?;
        i += 1 + digits;
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let minutes = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days_in_month = [31, 28 + i64::from(is_leap(year)), 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month[month as usize - 1]).contains(&day)
        && hour < 24
        && minute < 60
        && second <= 60;
    if !valid {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset * 60;
    Some(secs as f64 + frac)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Checks the configured SQL: each `where`/`of` is one condition (balanced parentheses, no
/// `;`) that prepares against an empty run DB, and so do the summary's queries. The error
/// names the key (`summary[1].where`) and says what SQLite said.
pub(crate) fn check_sql(
    metrics: &[SummaryMetric],
    schema: &crate::schema::Schema,
) -> Result<(), (String, String)> {
    let conn = crate::sink::run_db::empty_schema(schema)
        .map_err(|e| ("summary".to_string(), format!("cannot build the run-DB schema: {e}")))?;
    // load_extension() prepares, then fails on every run (extension loading is off): refuse it
    // here, where the key can be named.
    conn.authorizer(Some(|ctx: rusqlite::hooks::AuthContext<'_>| match ctx.action {
        rusqlite::hooks::AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            rusqlite::hooks::Authorization::Deny
        }
        _ => rusqlite::hooks::Authorization::Allow,
    }));
    for (i, m) in metrics.iter().enumerate() {
        for (field, fragment) in [("where", &m.filter), ("of", &m.of)] {
            let Some(fragment) = fragment else { continue };
            let key = format!("summary[{i}].{field}");
            query::one_condition(fragment).map_err(|problem| (key.clone(), problem))?;
            let sql = format!("SELECT count(*) FROM events WHERE {}", query::cond(Some(fragment)));
            conn.prepare(&sql).map_err(|e| (key, format!("invalid SQL condition: {e}")))?;
        }
    }
    for sql in query::all_sql(metrics) {
        conn.prepare(&sql).map_err(|e| ("summary".to_string(), format!("invalid SQL: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
