//! The SQL a summary runs over one run DB, in as few passes over `events` as it can: one
//! aggregate scan for every count, sum, avg, min, max and ratio (each with its own `FILTER`),
//! one `GROUP BY` for `events_by_type`, and one pass per distinct (column, where) of the
//! percentiles, whose values are sorted here.
//!
//! Percentiles are exact, by nearest rank: of the N numeric values in ascending order, the
//! p-th percentile is the one at rank ⌈p·N/100⌉ (1-based), always an observed value. Sorting
//! in Rust beats SQLite's sorter (measured: `bench summary`); past [`IN_MEMORY_VALUES`] values
//! the rank is taken by SQLite instead (`ORDER BY … LIMIT 1 OFFSET k`, its sorter spills to
//! temporary files), so memory stays bounded whatever the run's size.
//!
//! Values of the wrong type are ignored: sum, avg, min, max and the percentiles see only
//! INTEGER and REAL values of their column (a typed column is NULL for a wrong JSON type).

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value;

use crate::config::{Agg, SummaryMetric};

/// Values of one percentile column held in memory at most (8 bytes each: 32 MiB).
const IN_MEMORY_VALUES: i64 = 4 << 20;

/// The `events_by_type` key of events without an `event_type`.
pub(super) const NO_TYPE: &str = "(none)";

/// The `runs` row.
pub(super) struct Head {
    pub run_id: String,
    pub status: Value,
    pub started_at: Value,
    pub ended_at: Value,
    pub commits: i64,
}

pub(super) fn run_head(conn: &Connection) -> rusqlite::Result<Head> {
    // `commits` is schema 3; an old DB opened read-only (not migrated) has none.
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let commits = if version >= 3 { "commits" } else { "0" };
    conn.query_row(
        &format!("SELECT run_id, status, started_at, ended_at, {commits} FROM runs LIMIT 1"),
        [],
        |r| {
            Ok(Head {
                run_id: r.get(0)?,
                status: json(r.get_ref(1)?),
                started_at: json(r.get_ref(2)?),
                ended_at: json(r.get_ref(3)?),
                commits: r.get(4)?,
            })
        },
    )
}

/// What the aggregate scan found.
pub(super) struct Aggregates {
    pub events: i64,
    /// Min and max of `ts`: over its numbers when it has any, else over its text.
    pub first_ts: Value,
    pub last_ts: Value,
    /// Per configured metric (null for the percentiles, computed apart).
    pub configured: Vec<Value>,
    /// Per configured metric: how many numeric values its column has under its `where`.
    pub numeric: Vec<i64>,
}

/// A configured fragment as an SQL condition; the newline keeps a trailing `--` comment from
/// swallowing the parenthesis.
pub(super) fn cond(fragment: Option<&String>) -> String {
    match fragment {
        Some(f) => format!("({f}\n)"),
        None => "1".into(),
    }
}

/// An identifier, quoted (config validation only lets column names through).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn numeric(column: &str) -> String {
    format!("typeof({}) IN ('integer', 'real')", ident(column))
}

/// Two result columns per metric: its value and an auxiliary count (see [`aggregates`]).
fn metric_columns(m: &SummaryMetric) -> [String; 2] {
    let w = cond(m.filter.as_ref());
    let column = m.column.as_deref().unwrap_or("event_key");
    let (c, num) = (ident(column), numeric(column));
    let over = |f: &str| format!("{f}({c}) FILTER (WHERE {num} AND {w})");
    let count_numeric = format!("count({c}) FILTER (WHERE {num} AND {w})");
    match m.agg {
        Agg::Count => [format!("count(*) FILTER (WHERE {w})"), "NULL".into()],
        Agg::Ratio => {
            let of = cond(m.of.as_ref());
            [
                format!("count(*) FILTER (WHERE {w} AND {of})"),
                format!("count(*) FILTER (WHERE {of})"),
            ]
        }
        // total() never overflows (sum() fails the whole query on an integer overflow).
        Agg::Sum => [over("total"), count_numeric],
        Agg::Avg => [over("avg"), count_numeric],
        Agg::Min => [over("min"), count_numeric],
        Agg::Max => [over("max"), count_numeric],
        Agg::P50 | Agg::P90 | Agg::P95 | Agg::P99 => ["NULL".into(), count_numeric],
    }
}

fn aggregate_sql(metrics: &[SummaryMetric]) -> String {
    let mut columns = vec![
        "count(*)".to_string(),
        format!("min(ts) FILTER (WHERE {})", numeric("ts")),
        format!("max(ts) FILTER (WHERE {})", numeric("ts")),
        "min(ts) FILTER (WHERE typeof(ts) = 'text')".into(),
        "max(ts) FILTER (WHERE typeof(ts) = 'text')".into(),
    ];
    columns.extend(metrics.iter().flat_map(metric_columns));
    format!("SELECT {} FROM events", columns.join(",\n "))
}

const EVENTS_BY_TYPE: &str =
    "SELECT CAST(event_type AS TEXT), count(*) FROM events GROUP BY event_type";

fn values_sql(column: &str, filter: Option<&String>) -> String {
    format!("SELECT {} FROM events WHERE {} AND {}", ident(column), numeric(column), cond(filter))
}

fn rank_sql(column: &str, filter: Option<&String>) -> String {
    format!("{} ORDER BY 1 LIMIT 1 OFFSET ?1", values_sql(column, filter))
}

/// Every statement a summary with `metrics` prepares (for `check_sql`).
pub(super) fn all_sql(metrics: &[SummaryMetric]) -> Vec<String> {
    let mut all = vec![aggregate_sql(metrics), EVENTS_BY_TYPE.to_string()];
    for m in metrics.iter().filter(|m| m.agg.percentile().is_some()) {
        let column = m.column.as_deref().unwrap_or_default();
        all.push(values_sql(column, m.filter.as_ref()));
        all.push(rank_sql(column, m.filter.as_ref()));
    }
    all
}

/// The one aggregate scan.
pub(super) fn aggregates(
    conn: &Connection,
    metrics: &[SummaryMetric],
) -> rusqlite::Result<Aggregates> {
    conn.query_row(&aggregate_sql(metrics), [], |r| {
        let pick_ts = |numeric: usize, text: usize| -> rusqlite::Result<Value> {
            Ok(match r.get_ref(numeric)? {
                ValueRef::Null => json(r.get_ref(text)?),
                v => json(v),
            })
        };
        let mut out = Aggregates {
            events: r.get(0)?,
            first_ts: pick_ts(1, 3)?,
            last_ts: pick_ts(2, 4)?,
            configured: Vec::new(),
            numeric: Vec::new(),
        };
        for (i, m) in metrics.iter().enumerate() {
            let (value, aux) = (r.get_ref(5 + 2 * i)?, r.get_ref(6 + 2 * i)?);
            let aux = match aux {
                ValueRef::Integer(n) => n,
                _ => 0,
            };
            let value = match (m.agg, value) {
                (Agg::Ratio, ValueRef::Integer(hits)) if aux > 0 => {
                    Value::from(hits as f64 / aux as f64)
                }
                (Agg::Ratio, _) => Value::Null,
                // total() is 0.0 over nothing: null says there was nothing to add.
                (Agg::Sum, _) if aux == 0 => Value::Null,
                (_, v) => json(v),
            };
            out.configured.push(value);
            out.numeric.push(aux);
        }
        Ok(out)
    })
}

/// `{event_type: count}`; an event without a type counts under [`NO_TYPE`], a non-text type
/// under its text form.
pub(super) fn events_by_type(conn: &Connection) -> rusqlite::Result<Value> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut stmt = conn.prepare(EVENTS_BY_TYPE)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let name: Option<String> = row.get(0)?;
        *counts.entry(name.unwrap_or_else(|| NO_TYPE.into())).or_default() +=
            row.get::<_, i64>(1)?;
    }
    Ok(Value::Object(counts.into_iter().map(|(k, v)| (k, Value::from(v))).collect()))
}

/// The percentile metrics' values (null for the others), one pass per (column, where).
pub(super) fn percentiles(
    conn: &Connection,
    metrics: &[SummaryMetric],
    aggregates: &Aggregates,
) -> rusqlite::Result<Vec<Value>> {
    let mut sorted: HashMap<(&str, Option<&String>), Sorted> = HashMap::new();
    let mut out = Vec::with_capacity(metrics.len());
    for (i, m) in metrics.iter().enumerate() {
        let (Some(p), Some(column)) = (m.agg.percentile(), m.column.as_deref()) else {
            out.push(Value::Null);
            continue;
        };
        let n = aggregates.numeric[i];
        if n == 0 {
            out.push(Value::Null);
            continue;
        }
        let k = nearest_rank(p, n as usize) - 1;
        if n > IN_MEMORY_VALUES {
            let sql = rank_sql(column, m.filter.as_ref());
            out.push(conn.query_row(&sql, [k as i64], |r| Ok(json(r.get_ref(0)?)))?);
            continue;
        }
        let values = match sorted.entry((column, m.filter.as_ref())) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Sorted::load(conn, &values_sql(column, m.filter.as_ref()))?)
            }
        };
        out.push(values.at(k));
    }
    Ok(out)
}

/// The 1-based nearest rank of the p-th percentile of n values: ⌈p·n/100⌉, at least 1.
pub(super) fn nearest_rank(p: u32, n: usize) -> usize {
    (p as usize * n).div_ceil(100).max(1)
}

/// A column's numeric values, ascending.
struct Sorted {
    values: Vec<f64>,
    /// Every value was an INTEGER: answers are integers too.
    integers: bool,
}

impl Sorted {
    fn load(conn: &Connection, sql: &str) -> rusqlite::Result<Sorted> {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        let (mut values, mut integers) = (Vec::new(), true);
        while let Some(row) = rows.next()? {
            match row.get_ref(0)? {
                ValueRef::Integer(v) => values.push(v as f64),
                ValueRef::Real(v) => {
                    integers = false;
                    values.push(v);
                }
                _ => {}
            }
        }
        values.sort_unstable_by(f64::total_cmp);
        Ok(Sorted { values, integers })
    }

    fn at(&self, k: usize) -> Value {
        match self.values.get(k) {
            Some(&v) if self.integers => Value::from(v as i64),
            Some(&v) => Value::from(v),
            None => Value::Null,
        }
    }
}

/// An SQLite value as JSON: numbers as numbers, text as a string, NULL and BLOB as null.
pub(super) fn json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Null | ValueRef::Blob(_) => Value::Null,
    }
}

/// Whether `fragment` is one condition that cannot step out of the parentheses it is put in:
/// parentheses balanced and no `;` outside quotes and comments.
pub(super) fn one_condition(fragment: &str) -> Result<(), String> {
    let b = fragment.as_bytes();
    let mut depth = 0i64;
    let mut i = 0;
    while i < b.len() {
        let closing = match b[i] {
            b'\'' => Some(b'\''),
            b'"' => Some(b'"'),
            b'`' => Some(b'`'),
            b'[' => Some(b']'),
            _ => None,
        };
        if let Some(close) = closing {
            // Skip the quoted part (a doubled quote inside reads as two quoted parts).
            match b[i + 1..].iter().position(|&c| c == close) {
                Some(n) => i += n + 2,
                None => return Err("unterminated quote".into()),
            }
            continue;
        }
        if b[i..].starts_with(b"--") {
            i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            continue;
        }
        if b[i..].starts_with(b"/*") {
            match b[i + 2..].windows(2).position(|w| w == b"*/") {
                Some(n) => i += n + 4,
                None => return Err("unterminated comment".into()),
            }
            continue;
        }
        match b[i] {
            b'(' => depth += 1,
            b')' if depth == 0 => return Err("unbalanced ')'".into()),
            b')' => depth -= 1,
            b';' => return Err("must be one condition, without ';'".into()),
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    Ok(())
}
