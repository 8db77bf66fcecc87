//! Summaries and the SLO gate through the real binary: a run whose summary is known by
//! construction (`backfill`, then `summary --json` exact), `slo` exiting 0 and 1 with exact
//! JSON, the daemon computing a summary when the end record arrives (the run DB's `summary`
//! table, the `/metrics` SLI gauges), bad SQL fragments rejected by `check-config`, and a
//! schema-2 run DB migrated.

use serde_json::{json, Value};

use crate::harness::{wait_until, Shipper, DEADLINE};
use crate::ops::{free_port, get, metric};

const SUMMARY: &str = r#"
[[summary]]
name = "fetches"
agg = "count"
where = "event_type = 'fetch'"

[[summary]]
name = "p50_ms"
agg = "p50"
column = "ts"

[[summary]]
name = "p95_ms"
agg = "p95"
column = "ts"

[[summary]]
name = "sum_ms"
agg = "sum"
column = "ts"

[[summary]]
name = "ratio_429"
agg = "ratio"
where = "json_extract(data, '$.status') = 429"
of = "event_type = 'fetch'"
"#;

/// Run `r`: started 08:00, ended 09:30:30Z; events with `ts` 1..=100 (1..=80 `fetch`, of which
/// every 10th is a 429, 81..=100 `parse`), two fetches whose `ts` is text (ignored by the
/// numeric metrics), and a late `running` heartbeat that does not undo the end.
fn run_lines(end_status: &str) -> String {
    let mut lines = vec![
        r#"{"run_id":"r","record_type":"run","status":"running","start_time":"2024-03-01T08:00:00Z"}"#.to_string(),
    ];
    for i in 1..=100 {
        let kind = if i <= 80 { "fetch" } else { "parse" };
        let status = if i % 10 == 0 && i <= 80 { 429 } else { 200 };
        lines.push(format!(
            r#"{{"run_id":"r","event_id":"e{i}","event_type":"{kind}","ts":{i},"status":{status}}}"#
        ));
    }
    lines.push(
        r#"{"run_id":"r","event_id":"t1","event_type":"fetch","ts":"soon","status":200}"#.into(),
    );
    lines.push(
        r#"{"run_id":"r","event_id":"t2","event_type":"fetch","ts":"late","status":429}"#.into(),
    );
    lines.push(format!(
        r#"{{"run_id":"r","record_type":"run","status":"{end_status}","end_time":"2024-03-01T09:30:30Z"}}"#
    ));
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// What `summary r --json` must print for [`run_lines`].
fn expected(status: &str) -> Value {
    json!({"run_id": "r", "status": status, "metrics": {
        "events": 102,
        "events_by_type": {"fetch": 82, "parse": 20},
        "duration_s": 5430.0,
        "first_ts": 1, "last_ts": 100,
        "fetches": 82,
        "p50_ms": 50, "p95_ms": 95,
        "sum_ms": 5050,
        // 8 of the numeric fetches and one text one are 429s, of 82 fetches.
        "ratio_429": 9.0 / 82.0,
    }})
}

fn slo_config(max_429: f64) -> String {
    format!(
        "{SUMMARY}\n[[slo]]\nname = \"few 429\"\nmetric = \"ratio_429\"\nmax = {max_429}\n\n\
         [[slo]]\nname = \"enough\"\nmetric = \"events\"\nmin = 100\n"
    )
}

fn stdout_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// Backfill hands each ended run to the summary thread once its writer closed its DB for good,
/// while the writers close the others. With one open DB per writer every run is evicted
/// (closed without a checkpoint) before that: each still ends as one checkpointed file (no
/// `-wal`, no `-shm` left) whose stored summary counts its own events exactly.
#[test]
fn backfill_summarises_every_ended_run_and_leaves_each_as_one_file() {
    let shipper = Shipper::with_config("[output]\nmax_open_dbs = 2\nwriter_threads = 2\n");
    let runs = 40;
    let mut lines = String::new();
    for r in 0..runs {
        lines +=
            &format!("{{\"run_id\":\"r{r}\",\"record_type\":\"run\",\"status\":\"running\"}}\n");
    }
    // 25 events a run, and one more for r0.
    for i in 0..=25 * runs {
        let r = i % runs;
        lines += &format!("{{\"run_id\":\"r{r}\",\"event_type\":\"t\",\"ts\":{i}}}\n");
    }
    for r in 0..runs {
        lines +=
            &format!("{{\"run_id\":\"r{r}\",\"record_type\":\"run\",\"status\":\"finished\"}}\n");
    }
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, lines.as_bytes());
    shipper.age(rel);
    shipper.backfill(&[]);

    let dir = shipper.path("db/runs");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("run DB dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..runs).map(|r| format!("r{r}.sqlite")).collect();
        v.sort();
        v
    };
    assert_eq!(names, expected, "one file per run, nothing else");
    for r in 0..runs {
        let conn = rusqlite::Connection::open(dir.join(format!("r{r}.sqlite"))).expect("run DB");
        let events: String = conn
            .query_row("SELECT value FROM summary WHERE name = 'events'", [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("r{r}: no stored summary: {e}"));
        let count: i64 =
            conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0)).unwrap();
        assert_eq!(events, count.to_string(), "r{r}");
        assert_eq!(count, 25 + i64::from(r == 0), "r{r}");
    }
}

#[test]
fn backfill_stores_the_summary_and_summary_json_is_exact() {
    let shipper = Shipper::with_config(&slo_config(0.2));
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, run_lines("finished").as_bytes());
    shipper.age(rel);
    shipper.backfill(&[]);

    // Stored by backfill (its summary thread runs once the writers are done).
    let db = shipper.path("db/runs/r.sqlite");
    let conn = rusqlite::Connection::open(&db).expect("run DB");
    let stored: Vec<(String, String)> = conn
        .prepare("SELECT name, value FROM summary ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("summary rows");
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "duration_s",
            "events",
            "events_by_type",
            "fetches",
            "first_ts",
            "last_ts",
            "p50_ms",
            "p95_ms",
            "ratio_429",
            "sum_ms"
        ]
    );
    assert_eq!(stored[3].1, "82");
    drop(conn);

    let out = shipper.run_cmd(&["summary"], &["r", "--json"]);
    out.assert_success("summary --json");
    assert_eq!(stdout_json(&out.stdout), expected("finished"));

    let table = shipper.run_cmd(&["summary"], &["r"]);
    table.assert_success("summary");
    assert!(
        table.stdout.lines().any(|l| l == "events_by_type  fetch=82 parse=20"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.lines().any(|l| l == "p95_ms          95"), "{}", table.stdout);

    let missing = shipper.run_cmd(&["summary"], &["nope"]);
    assert_eq!(missing.status.code(), Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("run \"nope\": no run DB"), "{}", missing.stderr);
    assert!(!shipper.path("db/runs/nope.sqlite").exists());
}

#[test]
fn the_slo_gate_exits_0_when_every_slo_holds_and_1_when_one_fails_or_is_missing() {
    let shipper = Shipper::with_config(&slo_config(0.2));
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, run_lines("finished").as_bytes());
    shipper.age(rel);
    shipper.backfill(&[]);
    let ratio = 9.0 / 82.0;
    let verdicts = |max: f64, ok_429: bool| {
        json!({"ok": ok_429, "runs": [{"run_id": "r", "ok": ok_429, "slos": [
            {"name": "few 429", "metric": "ratio_429", "value": ratio, "op": "max",
             "threshold": max, "ok": ok_429},
            {"name": "enough", "metric": "events", "value": 102, "op": "min",
             "threshold": 100.0, "ok": true},
        ]}]})
    };

    let pass = shipper.run_cmd(&["slo"], &["r", "--json"]);
    assert_eq!(pass.status.code(), Some(0), "{}", pass.stderr);
    assert_eq!(stdout_json(&pass.stdout), verdicts(0.2, true));
    let last = shipper.run_cmd(&["slo"], &["--last", "1", "--json"]);
    assert_eq!(last.status.code(), Some(0), "{}", last.stderr);
    assert_eq!(stdout_json(&last.stdout), verdicts(0.2, true));

    shipper.set_config(&slo_config(0.1));
    let fail = shipper.run_cmd(&["slo"], &["r", "--json"]);
    assert_eq!(fail.status.code(), Some(1), "{}", fail.stderr);
    assert_eq!(stdout_json(&fail.stdout), verdicts(0.1, false));
    let table = shipper.run_cmd(&["slo"], &["r"]);
    assert_eq!(table.status.code(), Some(1));
    assert!(table.stdout.ends_with("1 of 2 SLOs failed\n"), "{}", table.stdout);
    assert!(table.stdout.contains("FAIL"), "{}", table.stdout);

    // A metric with nothing to aggregate is null: missing, so the gate fails.
    shipper.set_config(&format!(
        "{SUMMARY}\n[[summary]]\nname = \"nothing\"\nagg = \"max\"\ncolumn = \"ts\"\nwhere = \"0\"\n\
         [[slo]]\nname = \"needs data\"\nmetric = \"nothing\"\nmax = 1\n"
    ));
    let missing = shipper.run_cmd(&["slo"], &["r", "--json"]);
    assert_eq!(missing.status.code(), Some(1), "{}", missing.stderr);
    assert_eq!(
        stdout_json(&missing.stdout),
        json!({"ok": false, "runs": [{"run_id": "r", "ok": false, "slos": [
            {"name": "needs data", "metric": "nothing", "value": null, "op": "max",
             "threshold": 1.0, "ok": false}]}]})
    );
    let usage = shipper.run_cmd(&["slo"], &["r", "--last", "2"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
}

/// A typed column redefined in the run DB (its path changed in `[columns]`, applied by
/// `maintain`) makes the stored summary over it stale: `slo` computes it again and judges the
/// new value, not the one stored before.
#[test]
fn a_redefined_typed_column_makes_the_stored_summary_stale() {
    let config = |path: &str| {
        format!(
            "[columns]\nst = {{ path = \"{path}\", type = \"integer\" }}\n\
             [[summary]]\nname = \"max_st\"\nagg = \"max\"\ncolumn = \"st\"\n\
             [[slo]]\nname = \"status seen\"\nmetric = \"max_st\"\nmax = 500\n"
        )
    };
    let shipper = Shipper::with_config(&config("$.status"));
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, run_lines("finished").as_bytes());
    shipper.age(rel);
    shipper.backfill(&[]);
    let verdict = |value: Value, ok: bool| {
        json!({"ok": ok, "runs": [{"run_id": "r", "ok": ok, "slos": [
            {"name": "status seen", "metric": "max_st", "value": value, "op": "max",
             "threshold": 500.0, "ok": ok}]}]})
    };
    let pass = shipper.run_cmd(&["slo"], &["r", "--json"]);
    assert_eq!(pass.status.code(), Some(0), "{}", pass.stderr);
    assert_eq!(stdout_json(&pass.stdout), verdict(json!(429), true));

    shipper.set_config(&config("$.nowhere"));
    shipper.run_cmd(&["maintain"], &[]).assert_success("maintain");
    let fail = shipper.run_cmd(&["slo"], &["r", "--json"]);
    assert_eq!(fail.status.code(), Some(1), "{}", fail.stderr);
    assert_eq!(stdout_json(&fail.stdout), verdict(Value::Null, false));
}

#[test]
fn the_daemon_summarises_a_run_when_it_ends_and_shows_its_slis() {
    let addr = free_port();
    let shipper =
        Shipper::with_config(&format!("[metrics]\nlisten = \"{addr}\"\n{}", slo_config(0.1)));
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "/metrics to answer", || get(addr, "/metrics").is_some());
    let lines = run_lines("finished");
    let (before_end, end) = lines.trim_end().rsplit_once('\n').expect("lines");
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, format!("{before_end}\n").as_bytes());
    wait_until(DEADLINE, "103 records committed", || {
        metric(addr, "jsonl_shipper_events_written_total") == Some(103.0)
    });
    // Still running: no summary yet, no SLIs.
    let db = shipper.path("db/runs/r.sqlite");
    let rows = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open(db)
            .and_then(|c| c.query_row("SELECT count(*) FROM summary", [], |r| r.get(0)))
            .unwrap_or(-1)
    };
    assert_eq!(rows(&db), 0);
    assert_eq!(metric(addr, "jsonl_shipper_summary_value{metric=\"events\"}"), None);

    shipper.append(rel, format!("{end}\n").as_bytes());
    wait_until(DEADLINE, "the summary stored in the run DB", || rows(&db) == 10);
    wait_until(DEADLINE, "the SLI gauges", || {
        metric(addr, "jsonl_shipper_slo_ok{slo=\"few 429\"}") == Some(0.0)
    });
    let (_, body) = get(addr, "/metrics").expect("metrics");
    let value = |series: &str| crate::ops::sample(&body, series);
    assert_eq!(value("jsonl_shipper_summary_value{metric=\"events\"}"), Some(102.0));
    assert_eq!(value("jsonl_shipper_summary_value{metric=\"p95_ms\"}"), Some(95.0));
    assert_eq!(value("jsonl_shipper_summary_value{metric=\"duration_s\"}"), Some(5430.0));
    assert_eq!(value("jsonl_shipper_slo_ok{slo=\"enough\"}"), Some(1.0));
    assert!(!body.contains("events_by_type"), "an object is not a gauge:\n{body}");
    assert!(!body.contains("run_id="), "{body}");

    // More events after the end: the summary is computed again.
    shipper.append(
        rel,
        b"{\"run_id\":\"r\",\"event_id\":\"e101\",\"event_type\":\"parse\",\"ts\":101}\n",
    );
    wait_until(DEADLINE, "the summary recomputed", || {
        metric(addr, "jsonl_shipper_summary_value{metric=\"events\"}") == Some(103.0)
    });
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");

    // A restart shows the latest ended run's SLIs again, from the stored summary.
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the SLIs after a restart", || {
        metric(addr, "jsonl_shipper_summary_value{metric=\"last_ts\"}") == Some(101.0)
    });
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");
}

/// The SLI gauges follow what happens to the run they show: retention deleting its DB puts the
/// latest ended run left in its place (within the daemon's 30 s recheck), as `slo --last 1`.
#[test]
fn the_sli_gauges_move_on_when_retention_deletes_the_run_they_show() {
    let addr = free_port();
    let shipper = Shipper::with_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\n[retention]\nmax_age = \"1h\"\ncheck_interval = \"1s\"\n"
    ));
    let run = |id: &str, events: usize, end: &str| {
        let mut lines = vec![format!(
            r#"{{"run_id":"{id}","record_type":"run","status":"running","start_time":"2024-03-01T08:00:00Z"}}"#
        )];
        for i in 0..events {
            lines.push(format!(r#"{{"run_id":"{id}","event_id":"{id}{i}","event_type":"fetch"}}"#));
        }
        lines.push(format!(
            r#"{{"run_id":"{id}","record_type":"run","status":"finished","end_time":"{end}"}}"#
        ));
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "/metrics to answer", || get(addr, "/metrics").is_some());
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, run("early", 2, "2024-03-01T10:00:00Z").as_bytes());
    shipper.append(rel, run("late", 3, "2024-03-01T12:00:00Z").as_bytes());
    let events = || metric(addr, "jsonl_shipper_summary_value{metric=\"events\"}");
    wait_until(DEADLINE, "the gauges to show the run that ended last", || events() == Some(3.0));

    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for suffix in ["", "-wal", "-shm"] {
        let path = shipper.path(&format!("db/runs/late.sqlite{suffix}"));
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            file.set_modified(past).expect("age the run DB");
        }
    }
    wait_until(DEADLINE, "retention to delete the run DB", || {
        !shipper.path("db/runs/late.sqlite").exists()
    });
    wait_until(DEADLINE, "the gauges to show the run left", || events() == Some(2.0));
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");
}

#[test]
fn check_config_rejects_bad_sql_fragments_naming_the_key() {
    for (toml, want) in [
        (
            "[[summary]]\nname = \"a\"\nagg = \"count\"\n[[summary]]\nname = \"b\"\nagg = \"count\"\nwhere = \"nope = 1\"\n",
            "summary[1].where: invalid SQL condition: no such column: nope",
        ),
        (
            "[[summary]]\nname = \"a\"\nagg = \"ratio\"\nof = \"1); DELETE FROM events; --\"\n",
            "summary[0].of: unbalanced ')'",
        ),
        (
            "[[summary]]\nname = \"a\"\nagg = \"ratio\"\nwhere = \"event_type =\"\n",
            "summary[0].where: invalid SQL condition",
        ),
        (
            "[[summary]]\nname = \"a\"\nagg = \"count\"\nwhere = \"LOAD_EXTENSION('/tmp/x') IS NULL\"\n",
            "summary[0].where: invalid SQL condition: not authorized",
        ),
        ("[[slo]]\nname = \"s\"\nmetric = \"p99\"\nmax = 1\n", "slo[0].metric: unknown metric \"p99\""),
    ] {
        let shipper = Shipper::with_config(toml);
        let out = shipper.run_cmd(&["check-config"], &[]);
        assert_eq!(out.status.code(), Some(2), "{toml}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{toml}: want {want:?} in {}", out.stderr);
        assert!(out.stderr.contains("config.toml: "), "{}", out.stderr);
    }
    let shipper = Shipper::with_config(&slo_config(0.1));
    let out = shipper.run_cmd(&["check-config"], &[]);
    out.assert_success("check-config");
    assert!(
        out.stdout.contains("[[slo]]") && out.stdout.contains("name = \"ratio_429\""),
        "{}",
        out.stdout
    );
}

/// A run DB written by the previous schema (2) gets `runs.commits` and `summary` when a
/// summary is asked for, and keeps its rows.
#[test]
fn a_schema_2_run_db_is_migrated_and_summarised() {
    let shipper = Shipper::with_config(SUMMARY);
    let dir = shipper.path("db/runs");
    std::fs::create_dir_all(&dir).expect("runs dir");
    let conn = rusqlite::Connection::open(dir.join("old.sqlite")).expect("create");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE runs (run_id TEXT PRIMARY KEY, status, started_at, ended_at,
            data TEXT NOT NULL DEFAULT '{}', merged_pos INTEGER NOT NULL DEFAULT -1,
            updated_at INTEGER);
         CREATE TABLE events (event_key TEXT PRIMARY KEY, run_id TEXT NOT NULL, event_type,
            ts, data TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER NOT NULL,
            pos INTEGER NOT NULL);
         CREATE TABLE run_records (record_key TEXT PRIMARY KEY, pos INTEGER NOT NULL,
            data TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER NOT NULL);
         INSERT INTO runs (run_id, status, started_at, ended_at)
            VALUES ('old', 'failed', '2024-01-01T00:00:00Z', '2024-01-01T00:00:10Z');
         INSERT INTO events VALUES ('a', 'old', 'fetch', 7, '{\"status\":429}', 's', 1, 1),
                                   ('b', 'old', 'fetch', 9, '{\"status\":200}', 's', 2, 2);
         PRAGMA user_version = 2;",
    )
    .expect("schema 2 fixture");
    drop(conn);
    // `catalog rebuild` reads it, its summary into the row, without migrating it.
    shipper.run_cmd(&["catalog", "rebuild"], &[]).assert_success("catalog rebuild");
    assert_eq!(shipper.user_version("old.sqlite"), 2);
    let catalog = rusqlite::Connection::open(shipper.path("db/catalog.sqlite")).expect("catalog");
    let summary: String = catalog
        .query_row("SELECT summary FROM runs WHERE run_id = 'old'", [], |r| r.get(0))
        .expect("old's row with a summary");
    assert!(
        summary.contains(r#""events":2,"#) && summary.contains(r#""ratio_429":0.5"#),
        "{summary}"
    );
    drop(catalog);
    let out = shipper.run_cmd(&["summary"], &["old", "--json"]);
    out.assert_success("summary of an old DB");
    assert_eq!(
        stdout_json(&out.stdout),
        json!({"run_id": "old", "status": "failed", "metrics": {
            "events": 2, "events_by_type": {"fetch": 2}, "duration_s": 10.0,
            "first_ts": 7, "last_ts": 9, "fetches": 2, "p50_ms": 7, "p95_ms": 9,
            "sum_ms": 16, "ratio_429": 0.5}})
    );
    assert_eq!(shipper.user_version("old.sqlite"), 3);
}

/// A metric over a typed column the run DB does not have yet (added to the config after the
/// run was written) is null, and `summary` says why on stderr; once `maintain` added the
/// column, it has its value and no note.
#[test]
fn summary_says_why_a_metric_over_a_column_the_run_db_lacks_is_null() {
    let shipper = Shipper::with_config("");
    shipper.write("raw/events_20240301.ndjson", run_lines("finished").as_bytes());
    shipper.age("raw/events_20240301.ndjson");
    shipper.backfill(&[]);
    shipper.set_config(
        "[columns]\nhttp_status = { path = \"$.status\", type = \"integer\" }\n\
         [[summary]]\nname = \"sum_status\"\nagg = \"sum\"\ncolumn = \"http_status\"\n",
    );
    let before = shipper.run_cmd(&["summary"], &["r", "--json"]);
    before.assert_success("summary --json");
    assert_eq!(stdout_json(&before.stdout)["metrics"]["sum_status"], Value::Null);
    assert!(
        before.stderr.contains("note: sum_status: column \"http_status\" is not in this run DB"),
        "{}",
        before.stderr
    );
    shipper.run_cmd(&["maintain"], &[]).assert_success("maintain");
    let after = shipper.run_cmd(&["summary"], &["r", "--json"]);
    after.assert_success("summary --json");
    // e1..e100: 8 of the 80 fetches are 429s, the other 92 are 200s; t1 is a 200, t2 a 429.
    let want = 9 * 429 + 93 * 200;
    assert_eq!(stdout_json(&after.stdout)["metrics"]["sum_status"], json!(want));
    assert!(!after.stderr.contains("note:"), "{}", after.stderr);
}
