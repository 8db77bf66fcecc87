//! The SQL a summary runs over one run DB: **one pass** over `events` that yields, per row,
//! its type, `ts`, the configured columns and each distinct `where`/`of` fragment evaluated
//! once (`IS TRUE`), and the aggregation here. SQLite would evaluate a fragment once per
//! aggregate that names it, and every percentile or `GROUP BY` would be another pass; each
//! pass over a JSON condition parses every row's `data` again (measured: `bench summary`, from
//! 6.4 s of CPU with a pass per percentile and an SQL aggregate scan, see README).
//!
//! Percentiles are exact, by nearest rank: of the N numeric values in ascending order, the
//! p-th percentile is the one at rank ⌈p·N/100⌉ (1-based), always an observed value. The
//! values of each (column, where) are kept and sorted here up to [`IN_MEMORY_VALUES`]; past
//! that the rank is taken by SQLite (`ORDER BY … LIMIT 1 OFFSET k`, its sorter spills to
//! temporary files), so memory stays bounded whatever the run's size.
//!
//! Values of the wrong type are ignored: sum, avg, min, max and the percentiles see only
//! INTEGER and REAL values of their column (a typed column is NULL for a wrong JSON type).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value;

use crate::config::{Agg, SummaryMetric};

/// Values of one percentile column held in memory at most (8 bytes each: 32 MiB).
const IN_MEMORY_VALUES: usize = 4 << 20;

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
    let version = crate::sqlite::user_version(conn)?;
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

/// The one pass: its SQL and where each metric finds its column and fragments in a row.
struct Plan<'a> {
    sql: String,
    /// Per metric: (column index, where index, of index) into the row; None = absent.
    slots: Vec<(Option<usize>, Option<usize>, Option<usize>)>,
    /// Distinct (column, where) of the percentiles, and each percentile metric's group.
    groups: Vec<(&'a str, Option<&'a String>)>,
    group_of: Vec<Option<usize>>,
    /// Per group: (column index, where index) into the row.
    group_slots: Vec<(usize, Option<usize>)>,
}

/// Row layout: 0 = event_type as text, 1 = ts, then the distinct columns, then the distinct
/// fragments.
fn plan(metrics: &[SummaryMetric]) -> Plan<'_> {
    let mut columns: Vec<&str> = Vec::new();
    let mut fragments: Vec<&String> = Vec::new();
    let mut slots = Vec::new();
    let (mut groups, mut group_of) = (Vec::new(), Vec::new());
    for m in metrics {
        let column = m.column.as_deref().map(|c| index_of(&mut columns, c));
        let filter = m.filter.as_ref().map(|f| index_of(&mut fragments, f));
        let of = m.of.as_ref().map(|f| index_of(&mut fragments, f));
        slots.push((column, filter, of));
        group_of.push(match (m.agg.percentile(), m.column.as_deref()) {
            (Some(_), Some(c)) => Some(index_of(&mut groups, (c, m.filter.as_ref()))),
            _ => None,
        });
    }
    let base = 2 + columns.len();
    let slots: Vec<(Option<usize>, Option<usize>, Option<usize>)> = slots
        .into_iter()
        .map(|(c, w, o)| (c.map(|c| 2 + c), w.map(|w| base + w), o.map(|o| base + o)))
        .collect();
    let group_slots = (0..groups.len())
        .map(|g| {
            let member = group_of.iter().position(|x| *x == Some(g)).expect("a member");
            let (column, filter, _) = slots[member];
            (column.expect("a percentile has a column"), filter)
        })
        .collect();
    let mut select = vec!["CAST(event_type AS TEXT)".to_string(), "ts".to_string()];
    select.extend(columns.iter().map(|c| ident(c)));
    select.extend(fragments.iter().map(|f| format!("{} IS TRUE", cond(Some(f)))));
    let sql = format!("SELECT {} FROM events", select.join(",\n "));
    Plan { sql, slots, groups, group_of, group_slots }
}

/// The index of `item` in `list`, added if new.
fn index_of<T: PartialEq>(list: &mut Vec<T>, item: T) -> usize {
    match list.iter().position(|x| *x == item) {
        Some(i) => i,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

fn rank_sql(column: &str, filter: Option<&String>) -> String {
    format!(
        "SELECT {c} FROM events WHERE typeof({c}) IN ('integer', 'real') AND {} \
         ORDER BY 1 LIMIT 1 OFFSET ?1",
        cond(filter),
        c = ident(column)
    )
}

/// Every statement a summary with `metrics` prepares (for `check_sql`).
pub(super) fn all_sql(metrics: &[SummaryMetric]) -> Vec<String> {
    let plan = plan(metrics);
    let mut all = vec![plan.sql.clone()];
    all.extend(plan.groups.iter().map(|(c, w)| rank_sql(c, *w)));
    all
}

/// What the pass found.
pub(super) struct Scan {
    pub events: i64,
    pub events_by_type: Value,
    /// Min and max of `ts`: over its numbers when it has any, else over its text.
    pub first_ts: Value,
    pub last_ts: Value,
    /// Per configured metric, in order.
    pub configured: Vec<Value>,
}

/// A numeric SQLite value, compared as SQLite does (INTEGER and REAL by value).
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Real(f64),
}

impl Num {
    fn of(v: ValueRef<'_>) -> Option<Num> {
        match v {
            ValueRef::Integer(i) => Some(Num::Int(i)),
            ValueRef::Real(f) => Some(Num::Real(f)),
            _ => None,
        }
    }

    fn f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Real(f) => f,
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.f64() < b.f64(),
        }
    }

    fn json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            Num::Real(f) => Value::from(f),
        }
    }
}

/// Min and max of the values offered.
#[derive(Debug, Default)]
struct MinMax {
    min: Option<Num>,
    max: Option<Num>,
}

impl MinMax {
    fn offer(&mut self, v: Num) {
        if self.min.is_none_or(|m| v.less(m)) {
            self.min = Some(v);
        }
        if self.max.is_none_or(|m| m.less(v)) {
            self.max = Some(v);
        }
    }
}

/// One configured metric's running state.
#[derive(Debug, Default)]
struct Acc {
    /// Rows counted (count), `of` rows (ratio), numeric values (the others).
    n: i64,
    /// Ratio: rows matching `where` among the `of` rows.
    hits: i64,
    /// Sum of the integers (exact) and of the reals, and whether any value was a real.
    ints: i128,
    reals: f64,
    any_real: bool,
    range: MinMax,
}

/// A percentile group's values.
#[derive(Debug, Default)]
struct Values {
    values: Vec<f64>,
    n: usize,
    integers: bool,
    /// More than [`IN_MEMORY_VALUES`]: SQLite takes the rank.
    spilled: bool,
}

/// Makes `t` the bound if there is none yet or `t` compares `beyond` it.
fn keep_bound(bound: &mut Option<Vec<u8>>, t: &[u8], beyond: Ordering) {
    match bound {
        Some(b) if t.cmp(b) == beyond => {
            b.clear();
            b.extend_from_slice(t);
        }
        Some(_) => {}
        None => *bound = Some(t.to_vec()),
    }
}

/// The one pass, and the percentiles.
pub(super) fn scan(conn: &Connection, metrics: &[SummaryMetric]) -> rusqlite::Result<Scan> {
    let plan = plan(metrics);
    let mut accs: Vec<Acc> = metrics.iter().map(|_| Acc::default()).collect();
    let mut groups: Vec<Values> =
        plan.groups.iter().map(|_| Values { integers: true, ..Default::default() }).collect();
    let mut by_type: HashMap<Vec<u8>, i64> = HashMap::new();
    // Text bounds as bytes, updated in place: UTF-8's byte order is its text order, and the
    // usual rising `ts` makes a new maximum on every row (an allocation each, as `String`s).
    let (mut events, mut ts_num, mut ts_text) =
        (0i64, MinMax::default(), (None::<Vec<u8>>, None::<Vec<u8>>));
    let mut stmt = conn.prepare(&plan.sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        events += 1;
        let kind = match row.get_ref(0)? {
            ValueRef::Text(t) => t,
            _ => NO_TYPE.as_bytes(),
        };
        match by_type.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                by_type.insert(kind.to_vec(), 1);
            }
        }
        match row.get_ref(1)? {
            ValueRef::Text(t) => {
                keep_bound(&mut ts_text.0, t, Ordering::Less);
                keep_bound(&mut ts_text.1, t, Ordering::Greater);
            }
            v => {
                if let Some(v) = Num::of(v) {
                    ts_num.offer(v);
                }
            }
        }
        let holds = |slot: Option<usize>| -> rusqlite::Result<bool> {
            match slot {
                None => Ok(true),
                Some(i) => Ok(matches!(row.get_ref(i)?, ValueRef::Integer(1))),
            }
        };
        for (i, m) in metrics.iter().enumerate() {
            let (column, filter, of) = plan.slots[i];
            let acc = &mut accs[i];
            match m.agg {
                Agg::Count => acc.n += i64::from(holds(filter)?),
                Agg::Ratio => {
                    if holds(of)? {
                        acc.n += 1;
                        acc.hits += i64::from(holds(filter)?);
                    }
                }
                _ => {
                    let Some(c) = column else { continue };
                    let Some(v) = Num::of(row.get_ref(c)?) else { continue };
                    if !holds(filter)? {
                        continue;
                    }
                    acc.n += 1;
                    match v {
                        Num::Int(x) => acc.ints += i128::from(x),
                        Num::Real(x) => {
                            acc.reals += x;
                            acc.any_real = true;
                        }
                    }
                    acc.range.offer(v);
                }
            }
        }
        // A group's values are collected once, whatever number of percentiles share it.
        for (g, &(c, w)) in plan.group_slots.iter().enumerate() {
            let Some(v) = Num::of(row.get_ref(c)?) else { continue };
            if !holds(w)? {
                continue;
            }
            let values = &mut groups[g];
            values.n += 1;
            values.integers &= matches!(v, Num::Int(_));
            if values.n > IN_MEMORY_VALUES {
                values.spilled = true;
                values.values = Vec::new();
            } else {
                values.values.push(v.f64());
            }
        }
    }
    drop(rows);
    for values in &mut groups {
        values.values.sort_unstable_by(f64::total_cmp);
    }
    let mut configured = Vec::with_capacity(metrics.len());
    for (i, m) in metrics.iter().enumerate() {
        let acc = &accs[i];
        let value = match m.agg {
            Agg::Count => Value::from(acc.n),
            // Null: nothing matched `of`, or the column had no numeric value.
            _ if acc.n == 0 => Value::Null,
            Agg::Ratio => Value::from(acc.hits as f64 / acc.n as f64),
            // Integers sum to an integer, as SQL's sum() does; a real among them, or a sum
            // beyond i64, gives a float (like total(): never an overflow error).
            Agg::Sum => match i64::try_from(acc.ints) {
                Ok(sum) if !acc.any_real => Value::from(sum),
                _ => Value::from(acc.ints as f64 + acc.reals),
            },
            Agg::Avg => Value::from((acc.ints as f64 + acc.reals) / acc.n as f64),
            Agg::Min => acc.range.min.map_or(Value::Null, Num::json),
            Agg::Max => acc.range.max.map_or(Value::Null, Num::json),
            Agg::P50 | Agg::P90 | Agg::P95 | Agg::P99 => {
                let g = plan.group_of[i].expect("a percentile has a group");
                let values = &groups[g];
                let p = m.agg.percentile().expect("a percentile");
                match values.n {
                    0 => Value::Null,
                    n => {
                        let k = nearest_rank(p, n) - 1;
                        if values.spilled {
                            let (column, filter) = plan.groups[g];
                            conn.query_row(&rank_sql(column, filter), [k as i64], |r| {
                                Ok(json(r.get_ref(0)?))
                            })?
                        } else if values.integers {
                            Value::from(values.values[k] as i64)
                        } else {
                            Value::from(values.values[k])
                        }
                    }
                }
            }
        };
        configured.push(value);
    }
    let (first_ts, last_ts) = match (ts_num.min, ts_num.max) {
        (Some(min), Some(max)) => (min.json(), max.json()),
        _ => {
            let text = |b: Option<Vec<u8>>| {
                b.map_or(Value::Null, |b| Value::from(String::from_utf8_lossy(&b).into_owned()))
            };
            (text(ts_text.0), text(ts_text.1))
        }
    };
    let by_type: BTreeMap<String, i64> = by_type
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .fold(BTreeMap::new(), |mut m, (k, v)| {
            *m.entry(k).or_default() += v;
            m
        });
    let events_by_type =
        Value::Object(by_type.into_iter().map(|(k, v)| (k, Value::from(v))).collect());
    Ok(Scan { events, events_by_type, first_ts, last_ts, configured })
}

/// The 1-based nearest rank of the p-th percentile of n values: ⌈p·n/100⌉, at least 1.
pub(super) fn nearest_rank(p: u32, n: usize) -> usize {
    (p as usize * n).div_ceil(100).max(1)
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
