//! Behaviour that needs a config file (`--config F`): `read_from = "end"`, a custom
//! `[mapping]`, finishing rotated or deleted files after `close_inactive`, and the line and
//! raw size limits.

use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use serde_json::json;

use crate::dataset::{expected, run_row, Form, GenFile};
use crate::harness::{
    assert_dead_letters, assert_snapshot, drained_lines, line_key, wait_for_rows, wait_until,
    DeadLetter, EventRow, Shipper, Snapshot, DEADLINE,
};

const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn read_from_end_ships_only_new_lines_of_files_present_at_startup() {
    let shipper = Shipper::with_config("[sources]\nread_from = \"end\"\n");
    let mut old = GenFile::new("raw/events_20240111.ndjson", Form::Live);
    old.good(r#"{"run_id":"r","event_id":"before-1"}"#)
        .good(r#"{"run_id":"r","ts":2}"#)
        .good(r#"{"run_id":"r","event_id":"before-3"}"#)
        .good(r#"{"run_id":"r","ts":4,"note":"appended while running"}"#)
        .good(r#"{"run_id":"r","event_id":"after-5"}"#)
        .good(r#"{"run_id":"r","ts":6,"note":"appended while stopped"}"#);
    let mut new = GenFile::new("raw/events_20240112.ndjson", Form::Live);
    new.good(r#"{"run_id":"r","event_id":"new-1"}"#).good(r#"{"run_id":"r","ts":2}"#);
    let bytes = old.bytes();
    let end_of = |n_lines: usize| old.prefix(n_lines).len() as usize;
    shipper.write(&old.rel, &bytes[..end_of(3)]);

    let daemon = shipper.spawn_run();
    let path = shipper.path(&old.rel);
    wait_until(DEADLINE, "the daemon to open the file at its end", || {
        daemon.read_position(&path) == Some(end_of(3) as u64)
    });
    shipper.append(&old.rel, &bytes[end_of(3)..end_of(5)]);
    // Lines 4 and 5 only, with their true line numbers; a file that appears later is read
    // from its beginning.
    wait_for_rows(&shipper, &expected(shipper.base(), &[&old.prefix(5).skipping(3)], &[]));
    new.write(&shipper);
    let both = expected(shipper.base(), &[&old.prefix(5).skipping(3), &new], &[]);
    wait_for_rows(&shipper, &both);
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");

    // Appended while stopped: the checkpoint, not "end", decides where a known file resumes.
    shipper.append(&old.rel, &bytes[end_of(5)..]);
    let daemon = shipper.spawn_run();
    wait_for_rows(&shipper, &expected(shipper.base(), &[&old.skipping(3), &new], &[]));
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
}

#[test]
fn custom_mapping_selects_runs_keys_and_columns_by_the_configured_field_names() {
    let shipper = Shipper::with_config(
        "[mapping]\nrun_id = \"job\"\nrecord_type = \"kind\"\nevent_id = \"id\"\n\
         event_type = \"type\"\nts = \"time\"\nstatus = \"state\"\n\
         start_time = \"begin\"\nend_time = \"finish\"\n",
    );
    let lines = [
        r#"{"job":"j1","kind":"run","state":"running","begin":"t0","run_id":"ignored"}"#,
        r#"{"job":"j1","id":"x1","type":"fetch","time":5,"event_id":"not-the-key"}"#,
        r#"{"job":"j1","type":"parse","record_type":"run","status":"not a run record"}"#,
        r#"{"run_id":"r1","event_id":"e"}"#,
        r#"{"job":"j1","kind":"run","state":"done","finish":"t1"}"#,
        r#"{"job":"j1","kind":"run","state":"running","late":true}"#,
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let rel = "raw/events_20240113.ndjson";
    shipper.write(rel, text.as_bytes());
    shipper.age(rel);

    shipper.backfill(&[]);

    let source = shipper.source(rel);
    let event = |line_no: usize, key: String, event_type: &str, ts: SqlValue| EventRow {
        db: "j1.sqlite".into(),
        event_key: key,
        run_id: "j1".into(),
        event_type: SqlValue::Text(event_type.into()),
        ts,
        data: lines[line_no - 1].into(),
        source: source.clone(),
        line_no: line_no as i64,
    };
    let mut run = run_row(
        "j1",
        json!({"job":"j1","kind":"run","state":"done","begin":"t0","finish":"t1",
               "run_id":"ignored","late":true}),
    );
    (run.status, run.started_at, run.ended_at) =
        (SqlValue::Text("done".into()), SqlValue::Text("t0".into()), SqlValue::Text("t1".into()));
    let mut want = Snapshot {
        runs: vec![run],
        events: vec![
            event(2, "x1".into(), "fetch", SqlValue::Integer(5)),
            event(3, line_key(rel, 3, lines[2].as_bytes()), "parse", SqlValue::Null),
        ],
    };
    want.sort();
    assert_snapshot(&shipper.snapshot(), &want);
    let dead = DeadLetter {
        source,
        line_no: 4,
        offset: lines[..3].iter().map(|l| l.len() as u64 + 1).sum(),
        reason: "missing_run_id".into(),
        raw_len: lines[3].len() as u64,
        raw: lines[3].into(),
    };
    assert_dead_letters(&shipper.dead_letters(), &[dead]);
}

#[test]
fn rotated_and_deleted_files_are_finished_after_close_inactive() {
    let shipper = Shipper::with_config("[sources]\nclose_inactive = \"1s\"\n");
    let mut rotated = GenFile::new("raw/events_20240114.ndjson", Form::Live);
    rotated.good(r#"{"run_id":"t","event_id":"a"}"#).good(r#"{"run_id":"t","ts":2}"#);
    rotated.tail_good(r#"{"run_id":"t","event_id":"tail that parses"}"#);
    let mut deleted = GenFile::new("raw/events_20240115.ndjson", Form::Live);
    deleted.good(r#"{"run_id":"t","event_id":"c"}"#);
    deleted.tail_bad(br#"{"run_id":"t","#);
    rotated.write(&shipper);
    deleted.write(&shipper);

    let daemon = shipper.spawn_run();
    // While the files are in place, their unterminated tails may still be completed.
    let complete = [rotated.prefix(2), deleted.prefix(1)];
    wait_for_rows(&shipper, &expected(shipper.base(), &[&complete[0], &complete[1]], &[]));

    std::fs::rename(shipper.path(&rotated.rel), shipper.path("raw/events_20240114.ndjson.1"))
        .expect("rotate");
    std::fs::remove_file(shipper.path(&deleted.rel)).expect("delete");
    wait_for_rows(&shipper, &expected(shipper.base(), &[&rotated, &deleted], &[]));
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
}

#[test]
fn configured_line_and_raw_limits_apply() {
    let shipper =
        Shipper::with_config("[sources]\nmax_line_bytes = \"1KiB\"\n[dlq]\nmax_raw_bytes = 100\n");
    let sized = |len: usize| {
        let head = format!(r#"{{"run_id":"r","event_id":"len-{len}","pad":""#);
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    let mut file = GenFile::new("raw/events_20240116.ndjson", Form::Finished);
    file.good(&sized(1024))
        .bad(sized(1025).as_bytes(), "line_too_long")
        .bad(format!("{{{}", "y".repeat(499)).as_bytes(), "invalid_json")
        .good(&sized(1000));
    file.write(&shipper);

    shipper.backfill(&[]);

    let (want, dead) = expected(shipper.base(), &[&file], &[]);
    assert_snapshot(&shipper.snapshot(), &want);
    let dead: Vec<DeadLetter> =
        dead.into_iter().map(|d| DeadLetter { raw: d.raw[..100].to_string(), ..d }).collect();
    assert_dead_letters(&shipper.dead_letters(), &dead);
}

/// SIGHUP applies a changed `[mapping]` and a removed glob in place: lines after the reload are
/// read with the new field names, the removed glob's files are no longer followed, and nothing
/// read before is read again (the line count covers every reload).
#[test]
fn sighup_applies_a_new_mapping_and_a_removed_glob_without_re_reading_anything() {
    let both = "[sources]\nrescan_interval = \"200ms\"\n\
                paths = [\"base/raw/events_*.ndjson\", \"base/other/events_*.ndjson\"]\n";
    let raw_only =
        "[sources]\nrescan_interval = \"200ms\"\npaths = [\"base/raw/events_*.ndjson\"]\n\
                    [mapping]\nrun_id = \"job\"\n";
    let shipper = Shipper::with_config(both);
    let (raw, other) = ("raw/events_20250401.ndjson", "other/events_20250401.ndjson");
    shipper.write(raw, b"{\"run_id\":\"m\",\"event_id\":\"1\"}\n");
    shipper.write(other, b"{\"run_id\":\"m\",\"event_id\":\"o1\"}\n");
    let mut daemon = shipper.spawn_run();
    let keys = || -> Vec<String> {
        let Ok(snapshot) = shipper.try_snapshot() else { return Vec::new() };
        let mut keys: Vec<String> = snapshot.events.iter().map(|e| e.event_key.clone()).collect();
        keys.sort();
        keys
    };
    wait_until(DEADLINE, "both files' first lines", || keys() == ["1", "o1"]);

    shipper.set_config(raw_only);
    daemon.hangup();
    wait_until(DEADLINE, "the reload", || daemon.stderr_so_far().contains("config reloaded"));
    // The log names what changed (and the summary sections untouched are not named).
    let said = daemon.stderr_so_far();
    let line = said.lines().find(|l| l.contains("config reloaded")).unwrap_or_default();
    assert!(line.contains(r#"changed=["mapping.run_id", "sources.paths"]"#), "{line}");
    shipper.append(raw, b"{\"job\":\"m\",\"event_id\":\"2\"}\n");
    shipper.append(other, b"{\"run_id\":\"m\",\"event_id\":\"o2\"}\n");
    shipper.append(raw, b"{\"run_id\":\"m\",\"event_id\":\"3\"}\n");
    wait_until(DEADLINE, "line 2 under the new mapping", || keys() == ["1", "2", "o1"]);
    wait_until(DEADLINE, "line 3, without `job`, dead-lettered", || {
        shipper.dead_letters_so_far().len() == 1
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    finished.assert_success("run after SIGTERM");
    assert_eq!(keys(), ["1", "2", "o1"], "the removed glob's file was followed");
    let dead = shipper.dead_letters();
    assert_eq!((dead.len(), dead[0].reason.as_str()), (1, "missing_run_id"), "{dead:?}");
    let read = drained_lines(&finished.stderr);
    assert_eq!(read, 4, "4 lines read in all (1, o1, 2, 3), none twice");
}
