//! Unit tests of the summary on a real (temp) run DB whose rows are known by construction.

use serde_json::json;

use super::*;
use crate::config::Agg;

fn metric(name: &str, agg: Agg, column: Option<&str>, filter: Option<&str>) -> SummaryMetric {
    SummaryMetric {
        name: name.into(),
        agg,
        column: column.map(Into::into),
        filter: filter.map(Into::into),
        of: None,
    }
}

fn metrics() -> Vec<SummaryMetric> {
    let mut ratio = metric("even_fetch", Agg::Ratio, None, Some("ts % 2 = 0"));
    ratio.of = Some("event_type = 'fetch'".into());
    vec![
        metric("fetches", Agg::Count, None, Some("event_type = 'fetch'")),
        metric("sum_ts", Agg::Sum, Some("ts"), None),
        metric("avg_ts", Agg::Avg, Some("ts"), None),
        metric("min_ts", Agg::Min, Some("ts"), None),
        metric("max_ts", Agg::Max, Some("ts"), None),
        metric("p50", Agg::P50, Some("ts"), None),
        metric("p90", Agg::P90, Some("ts"), None),
        metric("p95", Agg::P95, Some("ts"), None),
        metric("p99", Agg::P99, Some("ts"), None),
        metric("p50_parse", Agg::P50, Some("ts"), Some("event_type = 'parse'")),
        ratio,
        metric("none", Agg::Max, Some("ts"), Some("0")),
        metric("none_sum", Agg::Sum, Some("ts"), Some("0")),
        metric("none_ratio", Agg::Ratio, None, Some("0")),
    ]
}

/// 100 events with ts 1..=100 (types: 1..=60 fetch, 61..=90 parse, 91..=100 none) and three
/// `fetch` events whose ts is text (ignored by numeric aggregates).
fn fixture(dir: &Path) -> (std::path::PathBuf, Config) {
    let config = Config::for_base(dir);
    let path = dir.join("r.sqlite");
    let conn = crate::sink::run_db::open(&path, &config.sqlite, &Default::default()).unwrap();
    conn.execute_batch(
        "INSERT INTO runs (run_id, status, started_at, ended_at, commits)
           VALUES ('r', 'done', '2024-03-01T08:00:00Z', '2024-03-01T09:30:00.5+01:00', 7);",
    )
    .unwrap();
    let mut insert = conn
        .prepare(
            "INSERT INTO events (event_key, run_id, event_type, ts, data, source, line_no, pos)
             VALUES (?1, 'r', ?2, ?3, '{}', 's', ?4, ?4)",
        )
        .unwrap();
    for i in 1..=103i64 {
        let event_type = match i {
            1..=60 | 101.. => Some("fetch"),
            61..=90 => Some("parse"),
            _ => None,
        };
        let ts: rusqlite::types::Value = if i > 100 { "x".to_string().into() } else { i.into() };
        insert.execute(rusqlite::params![format!("e{i}"), event_type, ts, i]).unwrap();
    }
    (path, config)
}

#[test]
fn a_summary_known_by_construction() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = fixture(dir.path());
    let conn = open_read_only(&path, &Config::for_base(dir.path()).sqlite).unwrap();
    let summary = compute(&conn, &metrics()).unwrap();
    assert_eq!(summary.run_id, "r");
    assert_eq!(summary.commits, 7);
    assert!(summary.is_terminal());
    assert_eq!(
        summary.to_json(),
        json!({"run_id": "r", "status": "done", "metrics": {
            "events": 103,
            "events_by_type": {"(none)": 10, "fetch": 63, "parse": 30},
            "duration_s": 1800.5,
            "first_ts": 1, "last_ts": 100,
            "fetches": 63,
            "sum_ts": 5050, "avg_ts": 50.5, "min_ts": 1, "max_ts": 100,
            "p50": 50, "p90": 90, "p95": 95, "p99": 99,
            "p50_parse": 75,
            // 'x' % 2 = 0 is true in SQLite: 30 even numbers plus the 3 text ones, of 63.
            "even_fetch": 33.0 / 63.0,
            "none": null, "none_sum": null,
            "none_ratio": 0.0, // none of the 103 events
        }})
    );
    // Built-ins first, then the config's order.
    let names: Vec<&str> = summary.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        &names[..6],
        ["events", "events_by_type", "duration_s", "first_ts", "last_ts", "fetches"]
    );
}

#[test]
fn stored_is_current_until_the_run_or_the_definitions_change() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut config) = fixture(dir.path());
    config.summary = metrics();
    let first = refresh(&path, &config, false).unwrap();
    let reader = open_read_only(&path, &config.sqlite).unwrap();
    assert_eq!(stored(&reader, &config.summary).unwrap(), Some(first.clone()));
    // Another definition of a metric, or one metric fewer: not current.
    let mut other = config.summary.clone();
    other[1].filter = Some("1".into());
    assert_eq!(stored(&reader, &other).unwrap(), None);
    assert_eq!(stored(&reader, &config.summary[1..]).unwrap(), None);
    drop(reader);
    // A write to the run (commits moves): not current, and recomputed on demand.
    let conn = crate::sink::run_db::open(&path, &config.sqlite, &Default::default()).unwrap();
    conn.execute_batch(
        "UPDATE runs SET commits = commits + 1;
         INSERT INTO events VALUES ('e104', 'r', 'parse', 1000, '{}', 's', 104, 104);",
    )
    .unwrap();
    let reader = open_read_only(&path, &config.sqlite).unwrap();
    assert_eq!(stored(&reader, &config.summary).unwrap(), None);
    let second = refresh(&path, &config, false).unwrap();
    assert_eq!(second.get("events"), Some(&json!(104)));
    assert_eq!(second.get("last_ts"), Some(&json!(1000)));
    assert_eq!(stored(&reader, &config.summary).unwrap(), Some(second));
}

#[test]
fn text_timestamps_give_first_and_last_as_text_and_missing_runs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_base(dir.path());
    let path = dir.path().join("t.sqlite");
    let conn = crate::sink::run_db::open(&path, &config.sqlite, &Default::default()).unwrap();
    conn.execute_batch(
        "INSERT INTO runs (run_id, status, started_at) VALUES ('t', 'running', 5);
         INSERT INTO events VALUES ('a', 't', NULL, '2024-03-02T00:00:00Z', '{}', 's', 1, 1),
                                   ('b', 't', NULL, '2024-03-01T00:00:00Z', '{}', 's', 2, 2);",
    )
    .unwrap();
    let summary = refresh(&path, &config, false).unwrap();
    assert!(!summary.is_terminal());
    assert_eq!(summary.get("first_ts"), Some(&json!("2024-03-01T00:00:00Z")));
    assert_eq!(summary.get("last_ts"), Some(&json!("2024-03-02T00:00:00Z")));
    assert_eq!(summary.get("duration_s"), Some(&json!(null)), "started_at is not RFC 3339");
    let missing = dir.path().join("missing.sqlite");
    assert!(matches!(refresh(&missing, &config, false), Err(SummaryError::NoRunDb { .. })));
    assert!(!missing.exists(), "a summary never creates a run DB");
}

#[test]
fn nearest_rank_percentiles() {
    assert_eq!(query::nearest_rank(50, 100), 50);
    assert_eq!(query::nearest_rank(95, 100), 95);
    assert_eq!(query::nearest_rank(99, 1), 1);
    assert_eq!(query::nearest_rank(50, 1), 1);
    assert_eq!(query::nearest_rank(50, 3), 2);
    assert_eq!(query::nearest_rank(90, 11), 10);
    assert_eq!(query::nearest_rank(99, 1_000_000), 990_000);
}

#[test]
fn rfc3339_is_strict() {
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(rfc3339("2024-03-01T08:00:00Z"), Some(1_709_280_000.0));
    assert_eq!(rfc3339("2024-03-01T09:00:00+01:00"), Some(1_709_280_000.0));
    assert_eq!(rfc3339("2024-03-01t07:30:00.25-00:30"), Some(1_709_280_000.25));
    assert_eq!(rfc3339("2024-02-29 00:00:00z"), Some(1_709_164_800.0));
    for bad in [
        "2024-03-01",
        "2024-03-01T08:00:00",
        "2024-03-01T08:00Z",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-03-01T08:00:00.Z",
        "2024-03-01T08:00:00+0100",
        "1709280000",
        "",
    ] {
        assert_eq!(rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn fragments_must_be_one_prepared_condition() {
    for ok in [
        "event_type = 'a;b)'",
        "json_extract(data, '$.status') IN (429, 503)",
        "ts > 3 -- a comment with )",
        "\"event_type\" = 'x' /* ; */",
    ] {
        assert_eq!(query::one_condition(ok), Ok(()), "{ok}");
    }
    for (bad, want) in [
        ("1); DROP TABLE events; --", "unbalanced ')'"),
        ("1; SELECT 1", "must be one condition, without ';'"),
        ("(1", "unbalanced '('"),
        ("'open", "unterminated quote"),
    ] {
        assert_eq!(query::one_condition(bad), Err(want.to_string()), "{bad}");
    }
    let mut ms = metrics();
    assert_eq!(check_sql(&ms, &Default::default()), Ok(()));
    ms[3].filter = Some("nope > 1".into());
    let (key, message) = check_sql(&ms, &Default::default()).unwrap_err();
    assert_eq!(key, "summary[3].where");
    assert!(message.contains("no such column: nope"), "{message}");
    ms[3].filter = None;
    ms[10].of = Some("1)) OR ((1".into());
    assert_eq!(check_sql(&ms, &Default::default()).unwrap_err().0, "summary[10].of");
}

/// `config::BUILTIN_COLUMNS` is the run DB's `events` schema.
#[test]
fn builtin_columns_are_the_schema() {
    let conn = crate::sink::run_db::empty_schema(&Default::default()).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('events')").unwrap();
    let names: Vec<String> =
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
    assert_eq!(names, crate::config::BUILTIN_COLUMNS);
}

/// `sum` of integers is an integer (as SQL's `sum()`), a float once a real is among them or
/// the sum leaves i64 (as `total()`, never an overflow error).
#[test]
fn sums_are_integers_unless_a_real_or_an_overflow_makes_them_floats() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = fixture(dir.path());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "UPDATE events SET ts = 2.5 WHERE event_key = 'e91';
         UPDATE events SET ts = {} WHERE event_key IN ('e92', 'e93');",
        i64::MAX
    ))
    .unwrap();
    let sums = [
        metric("ints", Agg::Sum, Some("ts"), Some("event_type = 'parse'")),
        metric("with_real", Agg::Sum, Some("ts"), Some("line_no IN (90, 91)")),
        metric("overflow", Agg::Sum, Some("ts"), Some("line_no IN (92, 93)")),
    ];
    let got = compute(&conn, &sums).unwrap().to_json()["metrics"].clone();
    assert_eq!(got["ints"], json!((61..=90).sum::<i64>()));
    assert!(got["ints"].is_i64(), "{got}");
    assert_eq!(got["with_real"], json!(92.5));
    assert_eq!(got["overflow"], json!(2.0 * i64::MAX as f64));
}
