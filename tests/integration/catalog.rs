//! The run catalog (issue 11 #2, `output.catalog`): exact rows after a backfill, after more
//! data and restarts, after a crash (no double count), after retention, with the catalog
//! locked while the daemon ships, and `catalog rebuild` against the live catalog.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use serde_json::json;

use crate::harness::{wait_until, Shipper, DEADLINE};

/// A catalog row without the fields that depend on file timing (`db_bytes`,
/// `last_write_at`, checked apart) or on the temp dir (`db_path`: the file name only).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    run_id: String,
    db_file: String,
    status: SqlValue,
    started_at: SqlValue,
    ended_at: SqlValue,
    events: i64,
    first_ts: SqlValue,
    last_ts: SqlValue,
}

/// Every field of a row, for comparing two catalogs.
#[derive(Debug, Clone, PartialEq)]
struct FullRow {
    row: Row,
    db_path: String,
    db_bytes: i64,
    last_write_at: Option<String>,
    summary: Option<String>,
}

fn catalog_path(shipper: &Shipper) -> std::path::PathBuf {
    shipper.path("db/catalog.sqlite")
}

fn try_full_rows(shipper: &Shipper) -> rusqlite::Result<Vec<FullRow>> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(catalog_path(shipper), flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut statement = conn.prepare(
        "SELECT run_id, db_path, status, started_at, ended_at, events, first_ts, last_ts,
            db_bytes, last_write_at, summary FROM runs ORDER BY run_id",
    )?;
    let rows = statement.query_map([], |r| {
        let db_path: String = r.get(1)?;
        Ok(FullRow {
            row: Row {
                run_id: r.get(0)?,
                db_file: Path::new(&db_path).file_name().unwrap().to_string_lossy().into(),
                status: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
                events: r.get(5)?,
                first_ts: r.get(6)?,
                last_ts: r.get(7)?,
            },
            db_path,
            db_bytes: r.get(8)?,
            last_write_at: r.get(9)?,
            summary: r.get(10)?,
        })
    })?;
    rows.collect()
}

fn full_rows(shipper: &Shipper) -> Vec<FullRow> {
    try_full_rows(shipper).expect("reading the catalog")
}

fn rows(shipper: &Shipper) -> Vec<Row> {
    full_rows(shipper).into_iter().map(|r| r.row).collect()
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

fn row(run_id: &str, status: Option<&str>, events: i64, ts: (&str, &str)) -> Row {
    let opt = |s: Option<&str>| s.map_or(SqlValue::Null, text);
    Row {
        run_id: run_id.into(),
        db_file: format!("{run_id}.sqlite"),
        status: opt(status),
        started_at: opt(status.map(|_| "2024-03-01T09:00:00Z")),
        ended_at: opt(status.filter(|s| *s != "running").map(|_| "2024-03-01T12:00:00Z")),
        events,
        first_ts: text(ts.0),
        last_ts: text(ts.1),
    }
}

fn event(run: &str, id: &str, ts: &str) -> String {
    format!(r#"{{"run_id":"{run}","event_id":"{id}","event_type":"fetch","ts":"{ts}"}}"#)
}

fn run_record(run: &str, status: &str) -> String {
    let end = if status == "running" {
        String::new()
    } else {
        r#","end_time":"2024-03-01T12:00:00Z""#.into()
    };
    format!(
        r#"{{"run_id":"{run}","record_type":"run","status":"{status}","start_time":"2024-03-01T09:00:00Z"{end}}}"#
    )
}

fn lines(lines: &[String]) -> Vec<u8> {
    lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()
}

/// Day 1: run a (4 events, one of them sent twice with a later ts, finished), run b (2
/// events, no run record), a bad line.
fn day1() -> Vec<u8> {
    lines(&[
        run_record("a", "running"),
        event("a", "a1", "2024-03-01T10:00:03Z"),
        event("a", "a2", "2024-03-01T10:00:01Z"),
        event("b", "b1", "2024-03-01T11:00:00Z"),
        "not json".into(),
        event("a", "a3", "2024-03-01T10:00:02Z"),
        event("a", "a2", "2024-03-01T10:00:01Z"), // a retry: same event, same row
        event("b", "b2", "2024-03-01T11:00:05Z"),
        event("a", "a4", "2024-03-01T10:00:09Z"),
        run_record("a", "done"),
    ])
}

fn day1_rows() -> Vec<Row> {
    vec![
        row("a", Some("done"), 4, ("2024-03-01T10:00:01Z", "2024-03-01T10:00:09Z")),
        Row {
            started_at: SqlValue::Null,
            ..row("b", None, 2, ("2024-03-01T11:00:00Z", "2024-03-01T11:00:05Z"))
        },
    ]
}

/// Day 2: more of b, and a new run c still running.
fn day2() -> Vec<u8> {
    lines(&[
        event("b", "b3", "2024-03-02T00:00:01Z"),
        run_record("c", "running"),
        event("c", "c1", "2024-03-02T01:00:00Z"),
        event("b", "b1", "2024-03-01T11:00:00Z"), // b1 again: nothing new
    ])
}

fn day2_rows() -> Vec<Row> {
    vec![
        day1_rows()[0].clone(),
        Row {
            started_at: SqlValue::Null,
            ..row("b", None, 3, ("2024-03-01T11:00:00Z", "2024-03-02T00:00:01Z"))
        },
        row("c", Some("running"), 1, ("2024-03-02T01:00:00Z", "2024-03-02T01:00:00Z")),
    ]
}

/// `db_bytes` and `last_write_at` of each row are those of its file now (the run DB and its
/// `-wal`; the later mtime of the DB and a non-empty `-wal`).
#[track_caller]
fn assert_file_fields_current(shipper: &Shipper) {
    for full in full_rows(shipper) {
        let path = Path::new(&full.db_path);
        assert_eq!(path, shipper.path(&format!("db/runs/{}", full.row.db_file)));
        let db = std::fs::metadata(path).expect("run DB");
        let wal = std::fs::metadata(format!("{}-wal", full.db_path)).ok();
        let wal_len = wal.as_ref().map_or(0, |w| w.len());
        assert_eq!(full.db_bytes as u64, db.len() + wal_len, "{}", full.row.run_id);
        let mut last = db.modified().unwrap();
        if let Some(wal) = wal.filter(|w| w.len() > 0) {
            last = last.max(wal.modified().unwrap());
        }
        let want = humantime::format_rfc3339_millis(last).to_string();
        assert_eq!(full.last_write_at.as_deref(), Some(want.as_str()), "{}", full.row.run_id);
    }
}

/// After a backfill the catalog has exactly one row per run DB with the run's numbers; a
/// second backfill of the same files changes nothing; a new day's file updates b and adds c;
/// `status --json` reports the catalog's totals.
#[test]
fn catalog_after_backfills_has_exact_rows() {
    let shipper = Shipper::new();
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.backfill(&[]).assert_success("backfill");
    assert_eq!(rows(&shipper), day1_rows());
    assert_file_fields_current(&shipper);

    shipper.backfill(&[]).assert_success("backfill again");
    assert_eq!(rows(&shipper), day1_rows());

    shipper.write("raw/events_20240302.ndjson", &day2());
    shipper.backfill(&[]).assert_success("backfill of day 2");
    assert_eq!(rows(&shipper), day2_rows());
    assert_file_fields_current(&shipper);

    let status = shipper.run_cmd(&["status"], &["--json"]);
    status.assert_success("status");
    let got: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    let bytes: i64 = full_rows(&shipper).iter().map(|r| r.db_bytes).sum();
    assert_eq!(
        got["runs"]["catalog"],
        json!({"path": catalog_path(&shipper).display().to_string(), "runs": 3, "events": 8, "bytes": bytes})
    );
}

/// The daemon keeps the catalog current while it runs, and after SIGTERM and a restart with
/// more data it is exact.
#[test]
fn catalog_follows_the_daemon_across_a_restart() {
    let shipper = Shipper::new();
    shipper.write("raw/events_20240301.ndjson", &day1());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the catalog has day 1", || {
        try_full_rows(&shipper)
            .is_ok_and(|r| r.into_iter().map(|r| r.row).collect::<Vec<_>>() == day1_rows())
    });
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");
    assert_eq!(rows(&shipper), day1_rows());
    assert_file_fields_current(&shipper);

    shipper.write("raw/events_20240302.ndjson", &day2());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the catalog has day 2", || {
        try_full_rows(&shipper)
            .is_ok_and(|r| r.into_iter().map(|r| r.row).collect::<Vec<_>>() == day2_rows())
    });
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");
    assert_eq!(rows(&shipper), day2_rows());
    assert_file_fields_current(&shipper);
}

/// A backfill aborted right after a run-DB commit (like kill -9, before the catalog heard of
/// it) and run again: the catalog is exact, nothing counted twice.
#[test]
fn catalog_after_a_crash_mid_backfill_counts_nothing_twice() {
    let shipper = Shipper::new();
    // A span per file, committed per run: 4 commits (a, b; b, c), the crash after the third.
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.write("raw/events_20240302.ndjson", &day2());
    let mut command = shipper.command(&["backfill"], &[]);
    command.env("JSONL_SHIPPER_CRASH_AT", "writer.after_commit@3");
    let crashed = crate::harness::Running::spawn(command).wait();
    assert!(
        crashed.stderr.contains("crash point writer.after_commit reached"),
        "{}",
        crashed.stderr
    );

    shipper.backfill(&[]).assert_success("backfill after the crash");
    assert_eq!(rows(&shipper), day2_rows());
    assert_file_fields_current(&shipper);
}

/// With the catalog locked by another connection the daemon ships as usual (rows committed,
/// checkpoints at the end) and warns; killed with -9 before the catalog heard of anything
/// (the lines are checkpointed: nothing is replayed), the next start reconciles the catalog
/// from the run DBs.
#[test]
fn a_locked_catalog_does_not_stall_shipping_and_a_restart_after_kill_9_catches_it_up() {
    let shipper = Shipper::with_config("[sqlite]\nbusy_timeout = \"100ms\"\n");
    // The catalog exists (an earlier start), then an analyst's tool locks it.
    shipper.backfill(&[]).assert_success("backfill of nothing");
    let lock = rusqlite::Connection::open(catalog_path(&shipper)).expect("open catalog");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock the catalog");

    let data = day1();
    shipper.write("raw/events_20240301.ndjson", &data);
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "every line checkpointed", || shipper.progress() == data.len() as u64);
    wait_until(DEADLINE, "the catalog warning", || {
        daemon.stderr_so_far().contains("cannot update the run catalog; retrying")
    });
    let killed = daemon.kill9();
    assert_eq!(
        killed.stderr.matches("cannot update the run catalog").count(),
        1,
        "{}",
        killed.stderr
    );
    let snapshot = shipper.snapshot();
    assert_eq!(snapshot.events.len(), 6, "the run DBs got everything meanwhile");
    lock.execute_batch("ROLLBACK").expect("unlock");
    drop(lock);
    assert_eq!(rows(&shipper), vec![], "the catalog never heard of the runs");

    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the catalog reconciled", || {
        try_full_rows(&shipper)
            .is_ok_and(|r| r.into_iter().map(|r| r.row).collect::<Vec<_>>() == day1_rows())
    });
    daemon.terminate(DEADLINE).assert_success("run after SIGTERM");
    assert_eq!(rows(&shipper), day1_rows());
    assert_file_fields_current(&shipper);
}

/// Retention deleting a run DB removes its row; the other rows stay.
#[test]
fn retention_removes_the_row_of_a_deleted_run_db() {
    let shipper = Shipper::with_config("[retention]\nmax_age = \"2d\"\n");
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.backfill(&[]).assert_success("backfill");
    assert_eq!(rows(&shipper), day1_rows());
    let old = std::fs::File::options().write(true).open(shipper.path("db/runs/b.sqlite")).unwrap();
    old.set_modified(SystemTime::now() - Duration::from_secs(3 * 86_400)).unwrap();
    shipper.run_cmd(&["maintain"], &[]).assert_success("maintain");
    assert!(!shipper.path("db/runs/b.sqlite").exists());
    assert_eq!(rows(&shipper), vec![day1_rows()[0].clone()]);
}

/// `catalog rebuild` recreates a missing catalog equal to the live one (every field: the run
/// DBs are closed, so their sizes and last writes are those the live one recorded), keeps
/// summaries the run DBs do not store, and replaces a catalog that went wrong.
#[test]
fn catalog_rebuild_equals_the_live_catalog() {
    let shipper = Shipper::new();
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.write("raw/events_20240302.ndjson", &day2());
    shipper.backfill(&[]).assert_success("backfill");
    let live = full_rows(&shipper);
    assert_eq!(live.iter().map(|r| r.row.clone()).collect::<Vec<_>>(), day2_rows());

    shipper.remove_db("db/catalog.sqlite");
    let rebuilt = shipper.run_cmd(&["catalog", "rebuild"], &[]);
    rebuilt.assert_success("catalog rebuild");
    assert!(
        rebuilt.stderr.contains(
            "catalog rebuilt: 3 runs, 8 events, 0 run DBs without a run yet, 0 unreadable"
        ),
        "{}",
        rebuilt.stderr
    );
    assert_eq!(full_rows(&shipper), live);

    // Wrong rows (a stale count, a wrong summary, a row of a run DB that is gone) are
    // replaced: the summary from the one the run DB stores (a ended, so it has one).
    let conn = rusqlite::Connection::open(catalog_path(&shipper)).unwrap();
    conn.execute_batch(
        "UPDATE runs SET events = 99, summary = '{\"events\":4}' WHERE run_id = 'a';
         INSERT INTO runs (run_id, db_path) VALUES ('gone', '/nowhere/gone.sqlite');",
    )
    .unwrap();
    drop(conn);
    shipper.run_cmd(&["catalog", "rebuild"], &[]).assert_success("catalog rebuild");
    let summary = live[0].summary.as_deref().expect("a's summary copied into the catalog");
    assert!(summary.contains(r#""events":4,"events_by_type":{"fetch":4}"#), "{summary}");
    assert_eq!(full_rows(&shipper), live);
    // Read-only: no run DB was created or touched.
    assert_eq!(shipper.run_db_names(), ["a.sqlite", "b.sqlite", "c.sqlite"]);
}

/// `dlq replay` shipping into run DBs updates their catalog rows (a new run's too) and the
/// stored summary of a run that had ended: the catalog then equals a rebuild from the run DBs.
#[test]
fn dlq_replay_updates_the_catalog_and_the_summaries_of_ended_runs() {
    let shipper = Shipper::with_config("");
    let mut day = day1();
    day.extend(lines(&[
        r#"{"job":"a","event_id":"a5","event_type":"fetch","ts":"2024-03-01T10:00:10Z"}"#.into(),
        r#"{"job":"d","event_id":"d1","event_type":"fetch","ts":"2024-03-01T13:00:00Z"}"#.into(),
    ]));
    shipper.write("raw/events_20240301.ndjson", &day);
    shipper.backfill(&[]).assert_success("backfill");
    assert_eq!(rows(&shipper), day1_rows());
    let summary_of_a = |shipper: &Shipper| full_rows(shipper)[0].summary.clone().expect("a ended");
    assert!(summary_of_a(&shipper).contains(r#""events":4,"#), "{}", summary_of_a(&shipper));

    shipper.set_config("[mapping]\nrun_id = \"job\"\n");
    let replayed = shipper.run_cmd(&["dlq", "replay"], &[]);
    replayed.assert_success("dlq replay");
    assert!(replayed.stdout.contains("3 considered, 2 shipped"), "{}", replayed.stdout);
    assert!(!replayed.stderr.contains("WARN"), "{}", replayed.stderr);
    let mut want = day1_rows();
    want[0].events = 5;
    want[0].last_ts = text("2024-03-01T10:00:10Z");
    want.push(Row {
        started_at: SqlValue::Null,
        ..row("d", None, 1, ("2024-03-01T13:00:00Z", "2024-03-01T13:00:00Z"))
    });
    assert_eq!(rows(&shipper), want);
    assert!(summary_of_a(&shipper).contains(r#""events":5,"#), "{}", summary_of_a(&shipper));
    assert_file_fields_current(&shipper);
    let live = full_rows(&shipper);
    assert_eq!(live[2].summary, None, "d has not ended: no summary");

    shipper.remove_db("db/catalog.sqlite");
    shipper.run_cmd(&["catalog", "rebuild"], &[]).assert_success("catalog rebuild");
    assert_eq!(full_rows(&shipper), live);
}

/// `summary` computing a run's summary where there is no catalog stores it in the run DB only:
/// it creates no catalog (`run` and `backfill` create it, from the run DBs).
#[test]
fn summary_without_a_catalog_creates_none() {
    let shipper = Shipper::with_config("");
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.backfill(&[]).assert_success("backfill");
    shipper.remove_db("db/catalog.sqlite");
    // A new metric: the stored summary is no longer current, so it is computed.
    shipper.set_config(
        "[[summary]]\nname = \"fetches\"\nagg = \"count\"\nwhere = \"event_type = 'fetch'\"\n",
    );
    let done = shipper.run_cmd(&["summary"], &["a", "--json"]);
    done.assert_success("summary");
    let got: serde_json::Value = serde_json::from_str(&done.stdout).expect("JSON");
    assert_eq!(got["metrics"]["fetches"], json!(4), "{}", done.stdout);
    assert!(!catalog_path(&shipper).exists(), "summary created a catalog");
}

/// `catalog rebuild` computes the summary of an ended run whose stored one is not current (a
/// metric added to the config) and stores it; runs still going get none.
#[test]
fn catalog_rebuild_computes_summaries_that_are_not_current() {
    let shipper = Shipper::with_config("");
    shipper.write("raw/events_20240301.ndjson", &day1());
    shipper.write("raw/events_20240302.ndjson", &day2());
    shipper.backfill(&[]).assert_success("backfill");
    shipper.set_config(
        "[[summary]]\nname = \"fetches\"\nagg = \"count\"\nwhere = \"event_type = 'fetch'\"\n",
    );
    let rebuilt = shipper.run_cmd(&["catalog", "rebuild"], &[]);
    rebuilt.assert_success("catalog rebuild");
    assert!(!rebuilt.stderr.contains("WARN"), "{}", rebuilt.stderr);
    let rows = full_rows(&shipper);
    assert_eq!(rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>(), day2_rows());
    let summary: serde_json::Value =
        serde_json::from_str(rows[0].summary.as_deref().expect("a ended")).expect("JSON");
    assert_eq!(summary["fetches"], json!(4), "{summary}");
    assert_eq!(summary["events"], json!(4), "{summary}");
    assert_eq!((rows[1].summary.as_deref(), rows[2].summary.as_deref()), (None, None));
    assert_file_fields_current(&shipper);
    // Stored in the run DB.
    let conn = rusqlite::Connection::open(shipper.path("db/runs/a.sqlite")).unwrap();
    let stored: String = conn
        .query_row("SELECT value FROM summary WHERE name = 'fetches'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, "4");
    drop(conn);
    let done = shipper.run_cmd(&["summary"], &["a", "--json"]);
    done.assert_success("summary");
    let got: serde_json::Value = serde_json::from_str(&done.stdout).expect("JSON");
    assert_eq!(got["metrics"], summary);
}
