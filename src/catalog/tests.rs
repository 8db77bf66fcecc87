//! Unit tests of the catalog: its queries, its merge rules, and the claims its `events` count
//! rests on.

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;

use super::*;

fn catalog() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
    let catalog = Catalog::open(&dir.path().join("catalog.sqlite"), &sqlite).unwrap();
    (dir, catalog)
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

#[track_caller]
fn put(catalog: &Catalog, run_id: &str, status: &str, started: &str, ended: &str, write: &str) {
    let committed = Committed {
        events: 1,
        status: if status.is_empty() { SqlValue::Null } else { text(status) },
        started_at: if started.is_empty() { SqlValue::Null } else { text(started) },
        ended_at: if ended.is_empty() { SqlValue::Null } else { text(ended) },
    };
    let file = FileState { bytes: 10, last_write_at: write.into() };
    let path = PathBuf::from(format!("/runs/{run_id}.sqlite"));
    let ts = TsRange::default();
    let refresh = Refresh {
        run_id,
        db_path: &path,
        committed: &committed,
        ts: &ts,
        file: &file,
        merge: true,
    };
    upsert(&catalog.conn, &refresh).unwrap();
}

fn ids(rows: Vec<RunRow>) -> Vec<String> {
    rows.into_iter().map(|r| r.run_id).collect()
}

/// The writer's commits report `max(rowid)` as the run's event count: equal to `count(*)`
/// through upserts of existing keys, rolled-back inserts, a savepoint rolled back and VACUUM.
#[test]
fn events_is_max_rowid() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE events (event_key TEXT PRIMARY KEY, ts, data TEXT NOT NULL)")
        .unwrap();
    let upsert = |key: &str, ts: i64| {
        conn.execute(
            "INSERT INTO events (event_key, ts, data) VALUES (?1, ?2, 'x')
             ON CONFLICT (event_key) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > events.ts",
            rusqlite::params![key, ts],
        )
        .unwrap();
    };
    let check = |what: &str| {
        let (max, count): (i64, i64) = conn
            .query_row("SELECT coalesce(max(rowid), 0), count(*) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(max, count, "{what}");
        count
    };
    for i in 0..100 {
        upsert(&format!("k{i}"), i);
    }
    assert_eq!(check("inserts"), 100);
    for i in (0..100).step_by(3) {
        upsert(&format!("k{i}"), 1000 + i);
    }
    assert_eq!(check("upserts replacing rows"), 100);
    conn.execute_batch("BEGIN").unwrap();
    for i in 100..150 {
        upsert(&format!("k{i}"), i);
    }
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(check("rolled back"), 100);
    conn.execute_batch("BEGIN; SAVEPOINT s").unwrap();
    upsert("k-saved", 1);
    conn.execute_batch("ROLLBACK TO s; RELEASE s; COMMIT").unwrap();
    upsert("k-after", 1);
    assert_eq!(check("savepoint rolled back"), 101);
    conn.execute_batch("VACUUM").unwrap();
    assert_eq!(check("vacuum"), 101);
}

/// The claim above needs that nothing deletes or REPLACEs rows of a run DB's `events`
/// (a REPLACE deletes the old row and inserts one with a new rowid).
#[test]
fn no_code_deletes_events_rows() {
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap().to_lowercase();
                let source = source.split_whitespace().collect::<Vec<_>>().join(" ");
                for pattern in ["delete from events", "replace into events", "truncate events"] {
                    // This test names them.
                    if source.contains(pattern) && !path.ends_with("catalog/tests.rs") {
                        offenders.push(format!("{}: {pattern}", path.display()));
                    }
                }
            }
        }
    }
    assert_eq!(offenders, Vec::<String>::new());
}

/// `TsRange` orders values as SQLite's `min()`/`max()` do.
#[test]
fn ts_range_matches_sqlite_min_max() {
    #[track_caller]
    fn check(values: &[SqlValue]) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v)").unwrap();
        let mut range = TsRange::default();
        for v in values {
            conn.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
            range.note(ValueRef::from(v));
        }
        let (min, max): (SqlValue, SqlValue) = conn
            .query_row("SELECT min(v), max(v) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        let or_null = |v: Option<SqlValue>| v.unwrap_or(SqlValue::Null);
        assert_eq!(
            (or_null(range.min.clone()), or_null(range.max.clone())),
            (min, max),
            "{values:?}"
        );
        // Merging the halves gives the same range.
        let (a, b) = values.split_at(values.len() / 2);
        let mut left = TsRange::default();
        a.iter().for_each(|v| left.note(v.into()));
        let mut right = TsRange::default();
        b.iter().for_each(|v| right.note(v.into()));
        left.merge(&right);
        assert_eq!(left, range, "{values:?}");
    }
    use SqlValue::{Integer, Null, Real};
    check(&[]);
    check(&[Null, Null]);
    check(&[text("2024-03-01T00:00:01Z"), text("2024-03-01T00:00:00Z"), Null]);
    check(&[text("b"), Integer(5), text("a"), Real(2.5)]);
    check(&[Integer(3), Real(2.9), Integer(-1), Real(3.1)]);
    check(&[text("2024-03-01T10:00:00.5Z"), text("2024-03-01T10:00:00Z"), text("")]);
    check(&[Integer(1_700_000_000_000), Real(1.7e12), text("x")]);
}

#[test]
fn merge_never_rolls_a_row_back_and_replace_does() {
    let (_dir, catalog) = catalog();
    let path = PathBuf::from("/runs/r.sqlite");
    let file = FileState { bytes: 1, last_write_at: "2024-01-01T00:00:00.000Z".into() };
    let write = |events: i64, status: &str, min: i64, max: i64, merge: bool| {
        let committed = Committed { events, status: text(status), ..Committed::default() };
        let ts = TsRange { min: Some(SqlValue::Integer(min)), max: Some(SqlValue::Integer(max)) };
        let refresh = Refresh {
            run_id: "r",
            db_path: &path,
            committed: &committed,
            ts: &ts,
            file: &file,
            merge,
        };
        upsert(&catalog.conn, &refresh).unwrap();
        let row = catalog.run("r").unwrap().unwrap();
        (row.events, row.status.unwrap(), row.first_ts.unwrap(), row.last_ts.unwrap())
    };
    assert_eq!(write(10, "running", 5, 6, true), (10, "running".into(), "5".into(), "6".into()));
    assert_eq!(write(20, "done", 7, 8, true), (20, "done".into(), "5".into(), "8".into()));
    // A stale update (another process, out of order) changes nothing it would roll back.
    assert_eq!(write(15, "running", 6, 7, true), (20, "done".into(), "5".into(), "8".into()));
    // A complete reading replaces.
    assert_eq!(write(3, "running", 6, 7, false), (3, "running".into(), "6".into(), "7".into()));
}

#[test]
fn last_ended_orders_by_end_time_and_skips_running_runs() {
    let (_dir, catalog) = catalog();
    let w = "2024-05-01T00:00:00.000Z";
    put(&catalog, "a", "done", "", "2024-03-01T10:00:00Z", w);
    // 09:30 in UTC-2 is 11:30Z: after a.
    put(&catalog, "b", "failed", "", "2024-03-01T09:30:00-02:00", w);
    put(&catalog, "c", "running", "", "", w);
    put(&catalog, "d", "", "", "", w);
    // No ended_at: by its last write.
    put(&catalog, "e", "done", "", "", "2024-02-01T00:00:00.000Z");
    assert_eq!(ids(catalog.last_ended(10).unwrap()), ["b", "a", "e"]);
    assert_eq!(ids(catalog.last_ended(1).unwrap()), ["b"]);
    assert_eq!(ids(catalog.last_ended(0).unwrap()), Vec::<String>::new());
}

#[test]
fn totals_and_summary() {
    let (_dir, catalog) = catalog();
    assert_eq!(catalog.totals().unwrap(), Totals::default());
    put(&catalog, "a", "done", "", "", "2024-05-01T00:00:00.000Z");
    put(&catalog, "b", "done", "", "", "2024-05-01T00:00:00.000Z");
    assert_eq!(catalog.totals().unwrap(), Totals { runs: 2, events: 2, bytes: 20 });
    assert!(catalog.set_summary("a", r#"{"events":1}"#, None).unwrap());
    assert!(!catalog.set_summary("zz", "{}", None).unwrap());
    assert_eq!(catalog.run("a").unwrap().unwrap().summary.as_deref(), Some(r#"{"events":1}"#));
    assert_eq!(catalog.run("zz").unwrap(), None);
}
