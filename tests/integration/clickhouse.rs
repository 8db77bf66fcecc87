//! Issue 12: the fleet sink, against real ClickHouse servers the tests start
//! ([`ClickHouse`]): every record the run DBs hold, exactly once after `FINAL`, through a
//! backfill, a crash between an insert and its cursor, a server down at start and a server
//! killed mid-stream; the SQLite path the same meanwhile.

use std::time::Duration;

use serde_json::Value as Json;

use crate::harness::{poll_until, wait_until, ClickHouse, Shipper, DEADLINE};

/// `[sinks.clickhouse]` for `server` with a password file (written by [`shipper_for`]).
fn sink_config(server: &ClickHouse, extra: &str) -> String {
    format!(
        "[sinks.clickhouse]\nurl = \"{}\"\ndatabase = \"telemetry\"\nuser = \"shipper\"\n\
         password_file = \"ch-password\"\nhost_label = \"crawl-07\"\nbatch_max_delay = \"100ms\"\n{extra}",
        server.url()
    )
}

fn shipper_for(server: &ClickHouse, extra: &str, sink_extra: &str) -> Shipper {
    let shipper = Shipper::with_config(&format!("{extra}\n{}", sink_config(server, sink_extra)));
    std::fs::write(shipper.root().join("ch-password"), "s3cret\n").expect("password file");
    shipper
}

/// `n` lines of the day's file starting at line `from`: events of three runs (derived keys,
/// and an `event_id` repeated, which upserts), run records (start, then end), a bad line.
fn lines(n: usize, from: usize) -> String {
    let mut out = String::new();
    for i in from..from + n {
        let run = format!("run-{}", i % 3);
        let line = match i % 50 {
            0 => {
                serde_json::json!({"run_id": run, "record_type": "run", "status": "running", "start_time": format!("t{i}")})
            }
            49 => {
                serde_json::json!({"run_id": run, "record_type": "run", "status": "done", "end_time": format!("t{i}"), "n": i})
            }
            7 => {
                serde_json::json!({"run_id": run, "event_id": format!("dup-{}", i % 7), "event_type": "dup", "v": i})
            }
            13 => {
                out.push_str("not json\n");
                continue;
            }
            _ => {
                serde_json::json!({"run_id": run, "event_type": "page", "ts": i, "status": 200 + i % 5})
            }
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// Waits until ClickHouse holds, after `FINAL`, exactly the run DBs' events and runs rows,
/// then compares them field by field.
#[track_caller]
fn assert_clickhouse_matches_run_dbs(shipper: &Shipper, server: &ClickHouse) {
    let snapshot = shipper.snapshot();
    let want_events = snapshot.events.len() as u64;
    let want_runs = snapshot.runs.len() as u64;
    poll_until(DEADLINE, || {
        server.count("telemetry.events", true) == want_events
            && server.count("telemetry.runs", true) == want_runs
            && runs_of(server) == runs_of_dbs(shipper)
    });
    let mut want: Vec<(String, String, String, String, u64)> = snapshot
        .events
        .iter()
        .map(|e| {
            let key = e.event_key.strip_prefix("blob:").unwrap_or(&e.event_key).to_string();
            (e.run_id.clone(), key, e.data.clone(), e.source.clone(), e.line_no as u64)
        })
        .collect();
    want.sort();
    let mut got: Vec<(String, String, String, String, u64)> = server
        .rows("SELECT host, run_id, event_key, data, source, line_no FROM telemetry.events FINAL")
        .into_iter()
        .map(|r| {
            assert_eq!(r["host"], "crawl-07");
            let line_no = r["line_no"].as_str().and_then(|n| n.parse().ok()).expect("line_no");
            let text = |k: &str| r[k].as_str().expect(k).to_string();
            (text("run_id"), text("event_key"), text("data"), text("source"), line_no)
        })
        .collect();
    got.sort();
    crate::harness::assert_same("clickhouse events FINAL", &got, &want, |r| {
        (r.0.clone(), r.1.clone())
    });
    assert_eq!(server.count("telemetry.events", true), want_events);
    assert_eq!(runs_of(server), runs_of_dbs(shipper));
}

type RunView = (String, Option<String>, Option<String>, Option<String>, Json);

fn runs_of(server: &ClickHouse) -> Vec<RunView> {
    let sql = "SELECT run_id, status, started_at, ended_at, data FROM telemetry.runs FINAL ORDER BY run_id";
    let Ok(text) = server.try_query(&format!("{sql} FORMAT JSONEachRow")) else { return vec![] };
    text.lines()
        .map(|l| {
            let r: Json = serde_json::from_str(l).expect("JSON row");
            let opt = |k: &str| r[k].as_str().map(str::to_string);
            let data = serde_json::from_str(r["data"].as_str().expect("data")).expect("data JSON");
            (
                opt("run_id").expect("run_id"),
                opt("status"),
                opt("started_at"),
                opt("ended_at"),
                data,
            )
        })
        .collect()
}

fn runs_of_dbs(shipper: &Shipper) -> Vec<RunView> {
    let text = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Null => None,
        rusqlite::types::Value::Text(t) => Some(t.clone()),
        other => Some(format!("{other:?}")),
    };
    let Ok(snapshot) = shipper.try_snapshot() else { return vec![] };
    let mut runs: Vec<RunView> = snapshot
        .runs
        .iter()
        .map(|r| {
            (
                r.run_id.clone(),
                text(&r.status),
                text(&r.started_at),
                text(&r.ended_at),
                r.data.clone(),
            )
        })
        .collect();
    runs.sort_by(|a, b| a.0.cmp(&b.0));
    runs
}

/// `status --json`'s `sinks.clickhouse`.
fn sink_status(shipper: &Shipper) -> Json {
    let status = shipper.run_cmd(&["status"], &["--json"]);
    status.assert_success("status");
    let json: Json = serde_json::from_str(&status.stdout).expect("status JSON");
    json["sinks"]["clickhouse"].clone()
}

#[test]
fn backfill_ships_every_record_once_and_again_adds_nothing() {
    let server = ClickHouse::start();
    // Beside the run DBs whatever this host's CPUs (`auto` is `after` on 2 or fewer).
    let shipper = shipper_for(&server, "", "batch_max_rows = 500\nbackfill = \"beside\"");
    shipper.write("raw/events_20240101.ndjson", lines(2000, 0).as_bytes());
    shipper.write("raw/events_20240102.ndjson", lines(1000, 0).as_bytes());
    shipper.write_gz("raw/events_20231231.ndjson.gz", lines(700, 0).as_bytes(), &[1000]);
    shipper.age("raw/events_20240102.ndjson");
    // A file still being written ends in a partial line: left to the daemon by both paths,
    // and backfill still ends.
    let tail = br#"{"run_id":"run-1","event_type":"tail""#;
    shipper.append("raw/events_20240101.ndjson", tail);
    let done = shipper.backfill(&[]);
    // Backfill's sink is a background job (SCHED_IDLE) while the run DBs are written (it may
    // not get the CPU to connect at all then), and its last pass runs at normal priority.
    let complete = done.stderr.find("the run DBs are complete").expect("the run DBs complete");
    let (before, after) = done.stderr.split_at(complete);
    let connected = |text: &str| -> Vec<String> {
        let lines = text.lines().filter(|l| l.contains("clickhouse sink connected"));
        lines.map(String::from).collect()
    };
    assert!(connected(before).iter().all(|l| l.contains("background=true")), "{}", done.stderr);
    let last = connected(after);
    assert!(last.len() == 1 && last[0].contains("background=false"), "{}", done.stderr);
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    let inserted = server.count("telemetry.events", false);

    // Again: the sink's cursor is at every file's end; not one row more, even before FINAL.
    shipper.backfill(&[]);
    assert_eq!(server.count("telemetry.events", false), inserted);
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    let sink = sink_status(&shipper);
    assert_eq!(sink["lag_bytes"], tail.len() as u64, "{sink}");
    assert_eq!(sink["errors"], 0, "{sink}");
    assert!(sink["last_insert_at"].is_string(), "{sink}");

    // The password is read from its file and never shown.
    let check = shipper.run_cmd(&["check-config"], &[]);
    check.assert_success("check-config");
    assert!(check
        .stdout
        .contains("ENGINE = ReplacingMergeTree(pos) ORDER BY (run_id, host, event_key)"));
    assert!(!check.stdout.contains("s3cret") && !check.stderr.contains("s3cret"));
}

/// Bytes the TabSeparated body must escape arrive as the SQLite path stores them: tabs,
/// newlines, CRs and backslashes in decoded values (`event_type`, `ts`, an `event_id` key) and a
/// raw tab between JSON tokens (`data`), a value that reads `\N` (text, not NULL), a NUL, non-
/// ASCII, a NULL `event_type` and a number as `ts`.
#[test]
fn awkward_bytes_arrive_as_the_run_dbs_hold_them() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "");
    let lines = [
        r#"{"run_id":"r\\1",	"event_type":"a\tb","ts":"\\N","x":"line\nbreak\r"}"#,
        r#"{"run_id":"r\\1","event_type":"\\N","ts":"é\u0000ü","event_id":"k\t1\\"}"#,
        r#"{"run_id":"r\\1","event_type":null,"ts":12.5,"event_id":"\\N"}"#,
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    assert!(text.contains('\t'), "a raw tab in data");
    shipper.write("raw/events_20240101.ndjson", text.as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    shipper.backfill(&[]);
    assert_clickhouse_matches_run_dbs(&shipper, &server);

    let value = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Null => None,
        rusqlite::types::Value::Text(t) => Some(t.clone()),
        rusqlite::types::Value::Real(x) => Some(x.to_string()),
        other => panic!("unexpected {other:?}"),
    };
    let mut want: Vec<_> = shipper
        .snapshot()
        .events
        .iter()
        .map(|e| {
            let key = e.event_key.strip_prefix("blob:").unwrap_or(&e.event_key).to_string();
            (e.run_id.clone(), key, value(&e.event_type), value(&e.ts), e.data.clone())
        })
        .collect();
    want.sort();
    assert_eq!(want.len(), 3);
    assert_eq!(want[0].0, "r\\1");
    let mut got: Vec<_> = server
        .rows("SELECT run_id, event_key, event_type, ts, data FROM telemetry.events FINAL")
        .into_iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().map(str::to_string);
            (
                text("run_id").unwrap(),
                text("event_key").unwrap(),
                text("event_type"),
                text("ts"),
                text("data").unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, want);
}

/// Backfill's sink runs as a background job beside the run DBs; once they are complete the
/// rest ships at normal priority. With the server down at the start, the sink that finally
/// connects (after the run DBs are complete) is the restarted, normal one, and every record
/// arrives once.
#[test]
fn backfill_ships_the_rest_at_normal_priority_once_the_run_dbs_are_complete() {
    let mut server = ClickHouse::configure();
    let shipper = shipper_for(&server, "", "backfill = \"beside\"");
    shipper.write("raw/events_20240101.ndjson", lines(500, 0).as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    let backfill = shipper.spawn_backfill(&[]);
    wait_until(DEADLINE, "the run DBs to be complete", || {
        backfill.stderr_so_far().contains("the run DBs are complete")
    });
    server.start_again();
    let done = backfill.wait();
    done.assert_success("backfill");
    let connected: Vec<&str> =
        done.stderr.lines().filter(|l| l.contains("clickhouse sink connected")).collect();
    assert_eq!(connected.len(), 1, "{}", done.stderr);
    assert!(connected[0].contains("background=false"), "{}", connected[0]);
    assert_clickhouse_matches_run_dbs(&shipper, &server);
}

/// `backfill = "after"`: the sink starts only once the run DBs are complete (nothing is sent
/// before), at normal priority, and ships every record once.
#[test]
fn backfill_after_the_run_dbs_starts_the_sink_once_they_are_complete() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "batch_max_rows = 300\nbackfill = \"after\"");
    shipper.write("raw/events_20240101.ndjson", lines(1500, 0).as_bytes());
    shipper.write_gz("raw/events_20231231.ndjson.gz", lines(400, 0).as_bytes(), &[700]);
    shipper.age("raw/events_20240101.ndjson");
    let done = shipper.backfill(&[]);
    done.assert_success("backfill");
    let at = |what: &str| done.stderr.lines().position(|l| l.contains(what));
    let (complete, connected) = (at("the run DBs are complete"), at("clickhouse sink connected"));
    assert!(complete.is_some() && complete < connected, "{}", done.stderr);
    let line = done.stderr.lines().nth(connected.unwrap_or_default()).unwrap_or_default();
    assert!(line.contains("background=false"), "{line}");
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    // Again: nothing more.
    let inserted = server.count("telemetry.events", false);
    shipper.backfill(&[]).assert_success("backfill again");
    assert_eq!(server.count("telemetry.events", false), inserted);
}

/// Backfill's sink ships what the run DBs hold, not what a file still being written gained
/// since: lines (a run record among them) appended after the SQLite pass, before the sink
/// read the file, stay for the daemon. Before, the sink waited for ever for the SQLite path
/// to store that run record, and backfill never ended.
#[test]
fn backfill_ships_what_the_run_dbs_hold_of_a_file_still_growing() {
    let mut server = ClickHouse::configure();
    let shipper = shipper_for(&server, "", "backfill = \"after\"");
    let file = "raw/events_20240101.ndjson";
    shipper.write(file, lines(120, 0).as_bytes());
    let backfill = shipper.spawn_backfill(&[]);
    wait_until(DEADLINE, "the run DBs to be complete", || {
        backfill.stderr_so_far().contains("the run DBs are complete")
    });
    let late = serde_json::json!({"run_id": "run-0", "record_type": "run", "status": "failed"});
    shipper.append(file, format!("{late}\n{}", lines(10, 500)).as_bytes());
    server.start_again();
    let done = backfill.wait();
    done.assert_success("backfill");
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    assert_eq!(
        shipper.snapshot().events.len(),
        120 - 5 - 3,
        "the first 120 lines: 5 run records, 3 bad"
    );
    // Said, naming the file, and the summary line says what ClickHouse got.
    let warn = done.stderr.lines().find(|l| l.contains("not in the run DBs yet"));
    assert!(warn.is_some_and(|l| l.contains("events_20240101.ndjson")), "{}", done.stderr);
    let summary = done.stderr.lines().find(|l| l.starts_with("backfill done:"));
    assert!(summary.is_some_and(|l| l.contains("; clickhouse: ") && !l.contains("FAILED")));

    // The daemon ships the rest to both.
    let daemon = shipper.spawn_run();
    let size = || std::fs::metadata(shipper.path(file)).unwrap().len();
    wait_until(DEADLINE, "the run DBs to hold the appended lines", || shipper.progress() == size());
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
}

/// `backfill = "after"` with an unreadable password file: said at the start, with the OS's
/// reason, the run DBs built all the same, exit 1, and nothing sent.
#[test]
fn backfill_after_says_an_unreadable_password_file_at_the_start_and_exits_1() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "backfill = \"after\"");
    std::fs::remove_file(shipper.root().join("ch-password")).expect("remove the password file");
    shipper.write("raw/events_20240101.ndjson", lines(100, 0).as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    let done = shipper.run_cmd(&["backfill"], &[]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    let at = |what: &str| done.stderr.find(what);
    let (said, started) = (at("cannot read the password file"), at("backfill started"));
    assert!(said.is_some() && said > started, "{}", done.stderr);
    assert!(done.stderr.contains("No such file or directory"), "{}", done.stderr);
    assert!(done.stderr.contains("clickhouse: 0 rows, FAILED"), "{}", done.stderr);
    assert_eq!(shipper.snapshot().events.len(), 100 - 4 - 2, "the run DBs are built");
    assert_eq!(server.count("telemetry.events", false), 0);
}

/// Backfill beside a running daemon while a producer keeps appending: the daemon moves the
/// file's SQLite checkpoint on and on, and backfill's last ClickHouse pass still ends (it
/// reads each file's cap once). Everything reaches both outputs once. (Without the cap read
/// once the pass usually ends too, when the daemon happens not to commit between two passes:
/// this test is the scenario, not a proof of that rule.) Also the start race it found: the
/// daemon and backfill creating the state DB at once, one of them got SQLITE_BUSY.
#[test]
fn backfill_ends_while_the_daemon_moves_a_growing_files_checkpoint() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "batch_max_rows = 50\nbackfill = \"after\"");
    let file = "raw/events_20240101.ndjson";
    shipper.write(file, lines(400, 0).as_bytes());
    let daemon = shipper.spawn_run();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (stop, path) = (stop.clone(), shipper.path(file));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut out = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            // The file always ends in half a line, so that it always has bytes the sink has
            // not shipped: a last pass that re-read its caps would never end.
            let mut rest = String::new();
            let mut i = 1000;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let next = lines(5, i);
                let cut = next.len() - 10;
                out.write_all(format!("{rest}{}", &next[..cut]).as_bytes()).unwrap();
                rest = next[cut..].to_string();
                i += 5;
                std::thread::sleep(Duration::from_millis(20));
            }
            out.write_all(rest.as_bytes()).unwrap();
        })
    };
    // `wait` fails the test if backfill has not exited within its deadline.
    let done = shipper.spawn_backfill(&[]).wait();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    producer.join().unwrap();
    done.assert_success("backfill beside the daemon and a producer");
    let size = || std::fs::metadata(shipper.path(file)).unwrap().len();
    wait_until(DEADLINE, "the run DBs to hold every line", || shipper.progress() == size());
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
}

/// kill -9 between an acknowledged insert and the sink's cursor (crash point
/// `clickhouse.after_insert`): the restart inserts the batch again, and `FINAL` shows every
/// record once.
#[test]
fn a_crash_after_an_insert_before_its_cursor_replays_rows_that_collapse() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "batch_max_rows = 300");
    shipper.write("raw/events_20240101.ndjson", lines(3000, 0).as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    let mut command = shipper.command(&["backfill"], &[]);
    let point = "clickhouse.after_insert";
    command.env("JSONL_SHIPPER_CRASH_AT", format!("{point}@3"));
    let crashed = crate::harness::Running::spawn(command).wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(crashed.status.signal(), Some(libc::SIGABRT), "{}", crashed.stderr);
    // Three batches of 300 events acknowledged; the cursor saved after two of them (lines
    // hold 47 events in 50), so the restart sends the third again.
    assert_eq!(server.count("telemetry.events", true), 900);
    let state = rusqlite::Connection::open(shipper.path("db/shipper-state.sqlite")).unwrap();
    let saved: i64 = state
        .query_row("SELECT line_no FROM sink_files WHERE sink = 'clickhouse'", [], |r| r.get(0))
        .unwrap();
    assert!((600 * 50 / 47..900 * 50 / 47).contains(&(saved as usize)), "cursor at line {saved}");

    shipper.backfill(&[]);
    assert_clickhouse_matches_run_dbs(&shipper, &server);
}

/// The server is down when the daemon starts: the run DBs fill as without a sink, the sink
/// counts its failures in `status`; once the server is up it catches up from its cursor.
#[test]
fn daemon_with_the_server_down_at_start_ships_sqlite_first_then_catches_up() {
    let mut server = ClickHouse::configure();
    let addr = crate::ops::free_port();
    let shipper = shipper_for(&server, &format!("[metrics]\nlisten = \"{addr}\"\n"), "");
    shipper.write("raw/events_20240101.ndjson", lines(500, 0).as_bytes());
    let daemon = shipper.spawn_run();
    let size = || std::fs::metadata(shipper.path("raw/events_20240101.ndjson")).unwrap().len();
    wait_until(DEADLINE, "the run DBs to hold every line", || shipper.progress() == size());
    wait_until(DEADLINE, "the sink to report its failures", || {
        sink_status(&shipper)["errors"].as_u64().is_some_and(|n| n > 0)
    });
    let failing = sink_status(&shipper);
    assert_eq!(failing["lag_bytes"], size());
    assert_eq!(failing["failing"], true, "{failing}");
    assert!(failing["last_error_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{failing}");
    assert!(failing["last_error"].as_str().is_some_and(|e| e.contains("127.0.0.1")), "{failing}");
    // The gauge says the same while the server is down (an alert on it can fire).
    wait_until(DEADLINE, "the lag gauge to show the unshipped file", || {
        let series = "jsonl_shipper_sink_lag_bytes{sink=\"clickhouse\"}";
        crate::ops::metric(addr, series) == Some(size() as f64)
    });
    assert!(
        daemon.stderr_so_far().contains("clickhouse sink: connecting failed"),
        "{}",
        daemon.stderr_so_far()
    );
    // The run DBs and the DLQ hold exactly what an installation without the sink makes of the
    // same file, while the server is still down.
    let reference = Shipper::new();
    reference.write("raw/events_20240101.ndjson", lines(500, 0).as_bytes());
    reference.backfill(&[]).assert_success("backfill without the sink");
    let rebase = |s: &Shipper| {
        let mut snapshot = s.snapshot().rebased(s.base(), "D");
        snapshot.sort();
        let letters: Vec<_> = s.dead_letters().iter().map(|d| d.rebased(s.base(), "D")).collect();
        (snapshot, letters)
    };
    let (with_sink, without) = (rebase(&shipper), rebase(&reference));
    assert_eq!(with_sink.0.events.len(), 500 - 10 - 20, "500 lines: 10 bad, 20 run records");
    crate::harness::assert_snapshot(&with_sink.0, &without.0);
    crate::harness::assert_dead_letters(&with_sink.1, &without.1);
    assert_eq!(server.count("telemetry.events", false), 0);

    server.start_again();
    shipper.append("raw/events_20240101.ndjson", lines(300, 500).as_bytes());
    wait_until(DEADLINE, "the run DBs to hold the appended lines", || shipper.progress() == size());
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    // The error is kept, with its time, and told apart from a current one.
    let answered = sink_status(&shipper);
    assert_eq!(answered["failing"], false, "{answered}");
    // (The server kept failing a while after `failing` was read: the same time or later.)
    let at = |s: &Json| s["last_error_at"].as_str().unwrap_or_default().to_owned();
    assert!(at(&answered) >= at(&failing) && !at(&failing).is_empty(), "{answered}");
    let table = shipper.run_cmd(&["status"], &[]);
    table.assert_success("status");
    assert!(table.stdout.contains(", answered since:"), "{}", table.stdout);
    let log = daemon.terminate(Duration::from_secs(30));
    log.assert_success("run after SIGTERM");
    // One WARN per minute at most, not one per retry.
    let warns =
        log.stderr.lines().filter(|l| l.contains("clickhouse sink: connecting failed")).count();
    assert_eq!(warns, 1, "{}", log.stderr);
    assert!(log.stderr.contains("the server answers again"), "{}", log.stderr);
    assert!(!log.stderr.contains("s3cret"));
}

/// The server is killed while the daemon ships, and restarted: the sink waits, retries, and
/// catches up; the run DBs got every line meanwhile.
#[test]
fn daemon_survives_the_server_killed_mid_stream_and_restarted() {
    let mut server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "");
    let file = "raw/events_20240101.ndjson";
    shipper.write(file, lines(400, 0).as_bytes());
    let daemon = shipper.spawn_run();
    let size = || std::fs::metadata(shipper.path(file)).unwrap().len();
    wait_until(DEADLINE, "the run DBs to hold every line", || shipper.progress() == size());
    assert_clickhouse_matches_run_dbs(&shipper, &server);

    server.stop();
    shipper.append(file, lines(600, 400).as_bytes());
    wait_until(DEADLINE, "the run DBs to hold the lines appended during the outage", || {
        shipper.progress() == size()
    });
    wait_until(DEADLINE, "the sink to report its failures", || {
        sink_status(&shipper)["errors"].as_u64().is_some_and(|n| n > 0)
    });

    server.start_again();
    assert_clickhouse_matches_run_dbs(&shipper, &server);
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
}

/// Two servers as the two shards of a cluster: the agent's `events` and `runs` are
/// `Distributed` tables (sharding by `cityHash64(run_id)`) over ReplacingMergeTree tables on
/// each shard. The agent creates only missing tables, never a `Distributed` one, so the tables
/// are made here by hand (as an operator would, from `check-config`'s DDL); the agent finds
/// them and inserts into them. Every record is once across the shards after `FINAL` on the
/// shards' own tables, and each run lives on one shard.
#[test]
fn a_two_shard_cluster_behind_a_distributed_table_holds_every_record_once() {
    let shards = ClickHouse::cluster(2);
    let shipper = shipper_for(&shards[0], "", "batch_max_rows = 700");
    for shard in &shards {
        // check-config's DDL, each table renamed to <name>_local.
        for sql in printed_ddl(&shipper) {
            let local = sql.replace("telemetry.events (", "telemetry.events_local (");
            shard.query(&local.replace("telemetry.runs (", "telemetry.runs_local ("));
        }
    }
    for table in ["events", "runs"] {
        shards[0].query(&format!(
            "CREATE TABLE telemetry.{table} AS telemetry.{table}_local \
             ENGINE = Distributed(fleet, telemetry, {table}_local, cityHash64(run_id))"
        ));
    }
    // Eight runs, so that both shards get some (cityHash64 is deterministic).
    let many_runs = |n: usize, from: usize| lines(n, from).replace("\"run-", "\"r8-");
    let mut text = String::new();
    for i in 0..8 {
        text.push_str(&many_runs(400, i * 400).replace("r8-", &format!("r8-{i}-")));
    }
    shipper.write("raw/events_20240101.ndjson", text.as_bytes());
    shipper.write("raw/events_20240102.ndjson", many_runs(900, 0).as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    shipper.age("raw/events_20240102.ndjson");
    shipper.backfill(&[]).assert_success("backfill");
    // Again: the sink's cursors are at the end; nothing more is sent.
    shipper.backfill(&[]).assert_success("backfill again");

    let snapshot = shipper.snapshot();
    let mut want_per_run: std::collections::BTreeMap<String, u64> = Default::default();
    for event in &snapshot.events {
        *want_per_run.entry(event.run_id.clone()).or_default() += 1;
    }
    assert!(want_per_run.len() >= 8, "{want_per_run:?}");
    let per_run = |shard: &ClickHouse| -> std::collections::BTreeMap<String, u64> {
        let sql = "SELECT run_id, count() AS n FROM telemetry.events_local FINAL GROUP BY run_id";
        let Ok(text) = shard.try_query(&format!("{sql} FORMAT TSV")) else { return [].into() };
        text.lines()
            .map(|l| {
                let (run, n) = l.split_once('\t').expect("run_id\tcount");
                (run.to_string(), n.parse().expect("count"))
            })
            .collect()
    };
    let merged = || {
        let mut all = per_run(&shards[0]);
        for (run, n) in per_run(&shards[1]) {
            *all.entry(run).or_default() += n;
        }
        all
    };
    // The Distributed table forwards the other shard's rows in the background.
    poll_until(DEADLINE, || merged() == want_per_run);
    let (first, second) = (per_run(&shards[0]), per_run(&shards[1]));
    assert!(!first.is_empty() && !second.is_empty(), "one shard got nothing: {first:?} {second:?}");
    assert!(first.keys().all(|run| !second.contains_key(run)), "a run on both shards");
    assert_eq!(merged(), want_per_run);
    let total: u64 = first.values().chain(second.values()).sum();
    assert_eq!(total, snapshot.events.len() as u64);
    // Each shard holds exactly its runs' rows after FINAL; the Distributed table sees them all.
    for (shard, runs) in [(&shards[0], &first), (&shards[1], &second)] {
        let n: u64 = runs.values().sum();
        assert_eq!(shard.count("telemetry.events_local", true), n);
    }
    assert_eq!(shards[0].count("telemetry.events", false), total);
    // runs rows: one per run after FINAL, on the run's shard, with the run DB's status.
    let runs_on = |shard: &ClickHouse| -> Vec<(String, Option<String>)> {
        shard
            .rows("SELECT run_id, status FROM telemetry.runs_local FINAL ORDER BY run_id")
            .iter()
            .map(|r| {
                (r["run_id"].as_str().expect("run_id").into(), r["status"].as_str().map(Into::into))
            })
            .collect()
    };
    let want_runs: Vec<(String, Option<String>)> =
        runs_of_dbs(&shipper).into_iter().map(|r| (r.0, r.1)).collect();
    poll_until(DEADLINE, || {
        let mut got = runs_on(&shards[0]);
        got.extend(runs_on(&shards[1]));
        got.sort();
        got == want_runs
    });
    let mut got = runs_on(&shards[0]);
    for (run, _) in &got {
        assert!(first.contains_key(run), "runs row of {run} not on its events' shard");
    }
    got.extend(runs_on(&shards[1]));
    got.sort();
    assert_eq!(got, want_runs);
}

/// The DDL `check-config` prints (as comments after the config), one statement each.
fn printed_ddl(shipper: &Shipper) -> Vec<String> {
    let check = shipper.run_cmd(&["check-config"], &[]);
    check.assert_success("check-config");
    let (_, ddl) = check.stdout.split_once("# To create them by hand:\n").expect("DDL printed");
    let script: String =
        ddl.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    script.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The statements of the first ```sql block of the README's fleet-sink section.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (_, section) = readme.split_once("## Fleet sink: ClickHouse").expect("fleet-sink section");
    let (_, block) = section.split_once("```sql\n").expect("a sql block in the section");
    let (block, _) = block.split_once("```").expect("the block's end");
    block.split(';').map(str::trim).filter(|q| !q.is_empty()).map(String::from).collect()
}

/// check-config's DDL and the README's `FINAL` queries on a current engine: chdb (PyPI's
/// embedded ClickHouse), when `python3` can import it (skipped with a message otherwise).
/// The rows are those the agent inserted into an 18.16 server, given twice (a replay); each
/// query must answer in chdb exactly what 18.16 answers.
#[test]
fn the_ddl_and_the_readme_queries_answer_the_same_on_a_current_engine() {
    let server = ClickHouse::start();
    let shipper = shipper_for(&server, "", "batch_max_rows = 400");
    shipper.write("raw/events_20240101.ndjson", lines(1500, 0).as_bytes());
    shipper.write("raw/events_20240102.ndjson", lines(600, 0).as_bytes());
    shipper.age("raw/events_20240101.ndjson");
    shipper.age("raw/events_20240102.ndjson");
    shipper.backfill(&[]).assert_success("backfill");
    assert_clickhouse_matches_run_dbs(&shipper, &server);

    let queries = readme_queries();
    assert_eq!(queries.len(), 4, "{queries:?}");
    let want: Vec<String> =
        queries.iter().map(|q| server.query(&format!("{q} FORMAT TSV"))).collect();
    assert_eq!(want[0].trim(), shipper.snapshot().events.len().to_string());
    let export =
        |table: &str| server.query(&format!("SELECT * FROM telemetry.{table} FORMAT JSONEachRow"));
    let (events, runs) = (export("events"), export("runs"));
    let spec = serde_json::json!({
        "ddl": printed_ddl(&shipper),
        "inserts": [["telemetry.events", events], ["telemetry.runs", runs],
                    ["telemetry.events", events], ["telemetry.runs", runs]],
        "queries": queries,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/chdb_check.py");
    let child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: python3 is not installed (the chdb check needs `pip install chdb`)");
        return;
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(spec.to_string().as_bytes()).expect("writing the spec");
    }
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        eprintln!("skipped: {} (`pip install chdb` to run this check)", stderr.trim());
        return;
    }
    assert!(out.status.success(), "chdb_check.py: {}\n{stderr}", out.status);
    let answer: Json = serde_json::from_slice(&out.stdout).expect("chdb_check.py's JSON");
    let version = answer["version"].as_str().expect("version");
    assert!(!version.starts_with("18."), "chdb {version}");
    let got: Vec<&str> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r.as_str().expect("TSV"))
        .collect();
    for ((query, got), want) in queries.iter().zip(&got).zip(&want) {
        assert_eq!(got, want, "{query}: chdb {version} vs 18.16");
    }
    eprintln!(
        "chdb {version}: check-config's DDL and {} README queries agree with 18.16",
        queries.len()
    );
}
