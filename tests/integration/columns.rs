//! Typed columns and indexes from config (`[columns]`, `[[indexes]]`, issue 11 #1): a run DB
//! written before they were configured gets them when the daemon next opens it, with exact
//! values (a value of the wrong JSON type is NULL), indexes the planner uses, a progress line
//! for a big DB and nothing done twice; `check-config` rejects bad definitions naming the key
//! and reports what DBs keep or lack after the config changes; nothing is dropped silently.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::harness::{wait_until, Shipper, DEADLINE};

const COLUMNS: &str = r#"
[columns]
http_status = { path = "$.status", type = "integer" }
ttfp_ms = { path = "$.metrics.ttfp_ms", type = "real" }
kind = { path = "$.kind", type = "text" }

[[indexes]]
columns = ["event_type", "http_status"]
where = "http_status >= 400"

[[indexes]]
columns = ["ttfp_ms"]
"#;

/// `jss_<columns>_<first 4 bytes of the SHA-256 of the definition, hex>`: the naming that
/// makes applying idempotent, computed here independently.
fn index_name(columns: &[&str], condition: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(columns.join(",").as_bytes());
    if let Some(condition) = condition {
        hasher.update(b"\0where\0");
        hasher.update(condition.as_bytes());
    }
    let hex: String = hasher.finalize()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("jss_{}_{hex}", columns.join("_"))
}

fn open_ro(path: &Path) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy_timeout");
    conn
}

/// `events`' generated columns: `(name, type, hidden)` (`hidden` 2 = VIRTUAL).
fn typed_columns(conn: &Connection) -> Vec<(String, String, i64)> {
    conn.prepare("SELECT name, type, hidden FROM pragma_table_xinfo('events') WHERE hidden <> 0")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// Names and SQL of everything in the DB's schema, and its schema cookie (any DDL moves it).
fn schema_of(conn: &Connection) -> (Vec<(String, Option<String>)>, i64) {
    let master = conn
        .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    let version = conn.query_row("PRAGMA schema_version", [], |r| r.get(0)).expect("version");
    (master, version)
}

fn query_plan(conn: &Connection, sql: &str) -> String {
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("prepare");
    let details = statement.query_map([], |r| r.get::<_, String>(3)).expect("query");
    details.collect::<rusqlite::Result<Vec<_>>>().expect("rows").join("; ")
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn lines(lines: &[String]) -> Vec<u8> {
    lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
}

/// The acceptance test: an old DB (schema 2, written by `backfill` before `[columns]` was
/// set) is opened by the daemon after the config changed; it gets the columns, computed from
/// the rows already there, and the indexes (a progress line each: 10,007 rows), and a
/// later reopen does no DDL at all.
#[test]
fn an_old_run_db_gets_the_configured_columns_when_the_daemon_next_opens_it() {
    let shipper = Shipper::with_config("");
    let special = [
        r#"{"run_id":"r","event_type":"fetch","status":200,"metrics":{"ttfp_ms":120},"kind":"html"}"#,
        r#"{"run_id":"r","event_type":"fetch","status":503,"metrics":{"ttfp_ms":85.5},"kind":"pdf"}"#,
        r#"{"run_id":"r","event_type":"fetch","status":"oops","metrics":{"ttfp_ms":"slow"},"kind":{"a":1}}"#,
        r#"{"run_id":"r","event_type":"fetch","status":404.0,"metrics":[1],"kind":7}"#,
        r#"{"run_id":"r","event_type":"fallback","status":429,"metrics":{"ttfp_ms":null},"kind":true}"#,
        r#"{"run_id":"r","event_type":"fetch","status":true,"metrics":{"ttfp_ms":1e3},"kind":""}"#,
        r#"{"run_id":"r","event_type":"fetch"}"#,
    ];
    let mut day1: Vec<String> = special.iter().map(|l| l.to_string()).collect();
    let filler = 8..=10_007i64;
    day1.extend(
        filler
            .clone()
            .map(|n| format!(r#"{{"run_id":"r","event_type":"tick","status":{}}}"#, n % 7)),
    );
    shipper.write("raw/events_20240301.ndjson", &lines(&day1));
    shipper.age("raw/events_20240301.ndjson");
    shipper.backfill(&[]);
    let db = shipper.path("db/runs/r.sqlite");
    {
        let conn = open_ro(&db);
        assert_eq!(shipper.user_version("r.sqlite"), 3);
        assert_eq!(typed_columns(&conn), []);
    }

    shipper.set_config(COLUMNS);
    let daemon = shipper.spawn_run();
    let day2 =
        r#"{"run_id":"r","event_type":"fetch","status":500,"metrics":{"ttfp_ms":7},"kind":"html"}"#;
    shipper.write("raw/events_20240302.ndjson", &lines(&[day2.to_string()]));
    wait_until(DEADLINE, "the day-2 line in the run DB", || {
        count(&open_ro(&db), "SELECT count(*) FROM events") == 10_008
    });
    let finished = daemon.terminate(DEADLINE);
    finished.assert_success("run");

    let conn = open_ro(&db);
    let typed = |name: &str, ty: &str| (name.to_string(), ty.to_string(), 2);
    assert_eq!(
        typed_columns(&conn),
        [typed("http_status", "INTEGER"), typed("kind", "TEXT"), typed("ttfp_ms", "REAL")]
    );
    // `typeof` as the column computes it: SQLite's sorter hands an integral REAL of a
    // generated column back as an INTEGER (same number), so the type is read before the sort.
    let rows: Vec<(i64, Value, Option<f64>, String, Value)> = conn
        .prepare(
            "SELECT line_no, http_status, ttfp_ms, typeof(ttfp_ms), kind FROM events
             WHERE event_type <> 'tick' ORDER BY source, line_no",
        )
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    let (int, text, null) = (Value::Integer, |s: &str| Value::Text(s.into()), Value::Null);
    let (real, no_real) = (|x: f64| (Some(x), "real".to_string()), (None, "null".to_string()));
    let row = |line_no, status, (ttfp, ttfp_type), kind| (line_no, status, ttfp, ttfp_type, kind);
    assert_eq!(
        rows,
        [
            row(1, int(200), real(120.0), text("html")),
            row(2, int(503), real(85.5), text("pdf")),
            // A string, a real, `true`, an array, an object: never coerced.
            row(3, null.clone(), no_real.clone(), null.clone()),
            row(4, null.clone(), no_real.clone(), null.clone()),
            row(5, int(429), no_real.clone(), null.clone()),
            row(6, null.clone(), real(1000.0), text("")),
            row(7, null.clone(), no_real.clone(), null.clone()),
            row(1, int(500), real(7.0), text("html")),
        ]
    );
    let filler_sum: i64 = filler.clone().map(|n| n % 7).sum();
    let ticks: (i64, i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(http_status), count(ttfp_ms), count(kind) FROM events
             WHERE event_type = 'tick'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .expect("ticks");
    assert_eq!(ticks, (10_000, filler_sum, 0, 0));

    // The indexes exist under their derived names, and the planner uses them: the partial
    // one for a query whose condition implies its `where`.
    let errors = index_name(&["event_type", "http_status"], Some("http_status >= 400"));
    let ttfp = index_name(&["ttfp_ms"], None);
    let by_errors = "SELECT count(*) FROM events WHERE event_type = 'fetch' AND http_status >= 400";
    assert!(query_plan(&conn, by_errors).contains(&errors), "{}", query_plan(&conn, by_errors));
    assert_eq!(count(&conn, by_errors), 2);
    let by_fallback =
        "SELECT count(*) FROM events WHERE event_type = 'fallback' AND http_status >= 400";
    assert_eq!(count(&conn, by_fallback), 1);
    let slow = "SELECT count(*) FROM events WHERE ttfp_ms > 100";
    assert!(query_plan(&conn, slow).contains(&ttfp), "{}", query_plan(&conn, slow));
    assert_eq!(count(&conn, slow), 2);

    // One line before and one after each index build, with its duration.
    let log = &finished.stderr;
    for index in [&errors, &ttfp] {
        let mentions = |what: &str| {
            log.lines().filter(|l| l.contains(what) && l.contains(index.as_str())).count()
        };
        assert_eq!(mentions("building index on run DB"), 1, "{index}:\n{log}");
        assert_eq!(mentions("index built"), 1, "{index}:\n{log}");
        assert!(
            log.lines().any(|l| l.contains("index built") && l.contains("elapsed_ms=")),
            "{log}"
        );
    }
    let before = schema_of(&conn);
    drop(conn);

    // Opened again (another day's line for the run): nothing to do, no DDL, no log line.
    shipper.write("raw/events_20240303.ndjson", &lines(&[day2.replace("500", "501")]));
    shipper.age("raw/events_20240303.ndjson");
    let finished = shipper.backfill(&[]);
    let conn = open_ro(&db);
    assert_eq!(count(&conn, "SELECT count(*) FROM events WHERE http_status = 501"), 1);
    assert_eq!(schema_of(&conn), before);
    assert!(!finished.stderr.contains("index"), "{}", finished.stderr);
}

/// Every kind of bad definition is a config error (exit 2) naming the key, found by
/// `check-config`; `run` refuses it the same way before touching anything.
#[test]
fn bad_columns_and_indexes_are_config_errors_naming_the_key() {
    let shipper = Shipper::with_config("");
    let column = "[columns]\nhttp_status = { path = \"$.status\", type = \"integer\" }\n";
    let cases = [
        (
            "[columns]\nhttp-status = { path = \"$.status\", type = \"integer\" }".to_string(),
            "columns.http-status: \"http-status\" is not an SQL identifier",
        ),
        (
            "[columns]\nRun_Id = { path = \"$.run\", type = \"text\" }".into(),
            "columns.Run_Id: \"Run_Id\" is a built-in column of events (run_id)",
        ),
        (
            "[columns]\nhttp_status = { path = \"$.status\", type = \"float\" }".into(),
            "columns.http_status.type: invalid value \"float\", expected one of: integer, real, text",
        ),
        (
            "[columns]\nhttp_status = { path = \"$.status[\", type = \"integer\" }".into(),
            "columns.http_status.path: \"$.status[\" is not a valid JSON path",
        ),
        (
            format!("{column}[[indexes]]\ncolumns = [\"event_type\", \"http_stat\"]"),
            "indexes[0].columns: unknown column \"http_stat\"",
        ),
        (
            format!("{column}[[indexes]]\ncolumns = [\"event_type\"]\nwhere = \"http_stat >= 400\""),
            "indexes[0].where: no such column: http_stat",
        ),
        (
            format!("{column}[[indexes]]\ncolumns = [\"ts\"]\nwhere = \"http_status >= 400; DROP TABLE events\""),
            "indexes[0].where:",
        ),
    ];
    for (toml, want) in &cases {
        shipper.set_config(toml);
        let finished = shipper.run_cmd(&["check-config"], &[]);
        assert_eq!(finished.status.code(), Some(2), "{toml}\nstderr:\n{}", finished.stderr);
        assert!(
            finished.stderr.contains(want),
            "{toml}\nwant: {want}\nstderr:\n{}",
            finished.stderr
        );
        assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    }
    shipper.set_config(&cases[5].0);
    shipper.write("raw/events_20240301.ndjson", b"{\"run_id\":\"r\"}\n");
    let finished = shipper.spawn_run().wait();
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(finished.stderr.contains(cases[5].1), "{}", finished.stderr);
    assert_eq!(shipper.run_db_names(), Vec::<String>::new());
}

/// The config changes under existing DBs: a column and an index removed (kept in the DB,
/// reported by `check-config`, never dropped), a column's path changed (redefined at the next
/// open, its index rebuilt) and a column added (added at the next open).
#[test]
fn config_changes_keep_what_was_removed_and_check_config_reports_it() {
    let shipper = Shipper::with_config(
        "[columns]\nhttp_status = { path = \"$.status\", type = \"integer\" }\n\
         kind = { path = \"$.kind\", type = \"text\" }\n\
         [[indexes]]\ncolumns = [\"kind\"]\n\
         [[indexes]]\ncolumns = [\"http_status\"]\nwhere = \"http_status >= 400\"\n",
    );
    let day = |n: u32, lines_: &[&str]| {
        let rel = format!("raw/events_2024030{n}.ndjson");
        shipper.write(&rel, &lines(&lines_.iter().map(|l| l.to_string()).collect::<Vec<_>>()));
        shipper.age(&rel);
    };
    day(1, &[r#"{"run_id":"r","status":503,"code":404,"kind":"pdf","depth":2}"#]);
    shipper.backfill(&[]);
    let db = shipper.path("db/runs/r.sqlite");
    let kind_index = index_name(&["kind"], None);
    let status_index = index_name(&["http_status"], Some("http_status >= 400"));
    let check_config = || {
        let finished = shipper.run_cmd(&["check-config"], &[]);
        finished.assert_success("check-config");
        let start = finished.stdout.find("\n# [columns]").unwrap_or(finished.stdout.len());
        finished.stdout[start..].trim().to_string()
    };
    let dir = shipper.path("db/runs");
    assert_eq!(
        check_config(),
        format!("# [columns] and [[indexes]]: 1 run DB in {} up to date", dir.display())
    );

    shipper.set_config(
        "[columns]\nhttp_status = { path = \"$.code\", type = \"integer\" }\n\
         depth = { path = \"$.depth\", type = \"integer\" }\n\
         [[indexes]]\ncolumns = [\"http_status\"]\nwhere = \"http_status >= 400\"\n",
    );
    let e_g = format!("; e.g. {}", db.display());
    let kept = format!(
        "# - column kind is not in [columns]: kept in 1 run DB (never dropped; by hand: ALTER TABLE events DROP COLUMN kind){e_g}\n\
         # - index {kind_index} is not in [[indexes]]: kept in 1 run DB (never dropped; by hand: DROP INDEX {kind_index}){e_g}"
    );
    assert_eq!(
        check_config(),
        format!(
            "# [columns] and [[indexes]] in the 1 run DB in {}:\n{kept}\n\
             # - column http_status is defined differently in 1 run DB: redefined when `run` or `backfill` next writes each, or now by `jsonl-shipper maintain`{e_g}\n\
             # - column depth is missing from 1 run DB: added when `run` or `backfill` next writes each, or now by `jsonl-shipper maintain`{e_g}",
            dir.display()
        )
    );

    day(2, &[r#"{"run_id":"r","status":200,"code":500,"kind":"html","depth":3}"#]);
    shipper.backfill(&[]);
    let conn = open_ro(&db);
    let typed = |name: &str| (name.to_string(), "INTEGER".to_string(), 2);
    let mut columns = typed_columns(&conn);
    columns.sort();
    assert_eq!(columns, [typed("depth"), typed("http_status"), ("kind".into(), "TEXT".into(), 2)]);
    let rows: Vec<(i64, i64, String)> = conn
        .prepare(&format!(
            "SELECT http_status, depth, kind FROM events INDEXED BY {status_index}
             WHERE http_status >= 400 ORDER BY source"
        ))
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    assert_eq!(rows, [(404, 2, "pdf".to_string()), (500, 3, "html".to_string())]);
    assert_eq!(
        count(&conn, &format!("SELECT count(*) FROM sqlite_master WHERE name = '{kind_index}'")),
        1
    );
    assert_eq!(
        check_config(),
        format!("# [columns] and [[indexes]] in the 1 run DB in {}:\n{kept}", dir.display())
    );
}
