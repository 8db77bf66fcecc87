//! `run`, the daemon: tails appends (a partial line is not a line until its newline arrives),
//! picks up new daily files, drains and exits 0 on SIGTERM, and resumes after a restart
//! without re-adding anything.

use std::time::Duration;

use serde_json::json;

use crate::dataset::{expected, run_row, Form, GenFile};
use crate::harness::{
    assert_dead_letters, assert_snapshot, poll_until, wait_for_rows, wait_until, Checkpoint,
    RunRow, Running, Shipper, DEADLINE, MAX_LINE_BYTES,
};

/// How long a drain after SIGTERM may take.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

fn checkpoint(shipper: &Shipper, file: &GenFile) -> Checkpoint {
    Checkpoint { path: shipper.source(&file.rel), offset: file.len(), line_no: file.n_lines() }
}

#[test]
fn daemon_tails_appends_partial_lines_and_new_files_and_resumes_after_sigterm() {
    let shipper = Shipper::new();
    let mut day5 = GenFile::new("raw/events_20240105.ndjson", Form::Live);
    day5.good(r#"{"run_id":"live","record_type":"run","status":"running","start_time":"2024-01-05T10:00:00Z"}"#)
        .good(r#"{"run_id":"live","event_id":"a","event_type":"fetch","ts":1}"#)
        .good(r#"{"run_id":"live","ts":2,"note":"no id"}"#)
        .blank("")
        .bad(br#"{"run_id":"live",oops}"#, "invalid_json")
        .good(r#"{"run_id":"live","event_id":"p","v":"written in two halves"}"#)
        .good(r#"{"run_id":"live","event_id":"a","event_type":"fetch","ts":1,"v":"new content"}"#)
        .good(r#"{"run_id":"other","event_id":"b"}"#)
        .good(r#"{"run_id":"live","ts":9}"#);
    let mut day6 = GenFile::new("raw/events_20240106.ndjson", Form::Live);
    day6.good(r#"{"run_id":"live","event_id":"c"}"#)
        .good(r#"{"run_id":"live","record_type":"run","status":"finished","end_time":"2024-01-06T00:01:00Z"}"#)
        .good(r#"{"run_id":"other","ts":3}"#);
    let running = run_row(
        "live",
        json!({"run_id":"live","record_type":"run","status":"running",
               "start_time":"2024-01-05T10:00:00Z"}),
    );
    let finished = run_row(
        "live",
        json!({"run_id":"live","record_type":"run","status":"finished",
               "start_time":"2024-01-05T10:00:00Z","end_time":"2024-01-06T00:01:00Z"}),
    );
    let want = |files: &[&GenFile], runs: &[RunRow]| expected(shipper.base(), files, runs);
    let bytes = day5.bytes();
    let end_of = |n_lines: usize| day5.prefix(n_lines).len() as usize;

    let daemon = shipper.spawn_run();

    // Lines 1-3 in one write.
    shipper.append(&day5.rel, &bytes[..end_of(3)]);
    wait_for_rows(&shipper, &want(&[&day5.prefix(3)], std::slice::from_ref(&running)));

    // A blank line, a bad line and the first half of line 6: only lines 4-5 are lines yet.
    let half = end_of(5) + (end_of(6) - end_of(5)) / 2;
    shipper.append(&day5.rel, &bytes[end_of(3)..half]);
    let path = shipper.path(&day5.rel);
    wait_until(DEADLINE, "the daemon to read the half line", || {
        daemon.read_position(&path) == Some(half as u64)
    });
    let five = day5.prefix(5);
    let caught_up = poll_until(DEADLINE, || {
        shipper.try_checkpoints().is_ok_and(|c| c == [checkpoint(&shipper, &five)])
    });
    assert!(
        caught_up,
        "checkpoint {:?}, want {:?}",
        shipper.checkpoints(),
        checkpoint(&shipper, &five)
    );
    wait_for_rows(&shipper, &want(&[&five], std::slice::from_ref(&running)));

    // The rest of line 6 and line 7 (a new version of event "a").
    shipper.append(&day5.rel, &bytes[half..end_of(7)]);
    wait_for_rows(&shipper, &want(&[&day5.prefix(7)], std::slice::from_ref(&running)));

    let drained = daemon.terminate(DRAIN_DEADLINE);
    drained.assert_success("run after SIGTERM");
    assert_eq!(shipper.checkpoints(), [checkpoint(&shipper, &day5.prefix(7))]);

    // Restarted: appends continue at line 8; a new daily file is picked up.
    let daemon = shipper.spawn_run();
    shipper.append(&day5.rel, &bytes[end_of(7)..]);
    wait_for_rows(&shipper, &want(&[&day5], std::slice::from_ref(&running)));
    shipper.write(&day6.rel, day6.bytes());
    let everything = want(&[&day5, &day6], std::slice::from_ref(&finished));
    wait_for_rows(&shipper, &everything);

    let drained = daemon.terminate(DRAIN_DEADLINE);
    drained.assert_success("run after SIGTERM");
    assert_snapshot(&shipper.snapshot(), &everything.0);
    assert_dead_letters(&shipper.dead_letters(), &everything.1);
    assert_eq!(shipper.checkpoints(), [checkpoint(&shipper, &day5), checkpoint(&shipper, &day6)]);

    // A backfill of what the daemon shipped adds nothing, nor does one of the `.gz` that
    // log rotation makes of a shipped file.
    let dlq = shipper.dlq_files();
    let backfill = shipper.backfill(&[]);
    assert!(backfill.summary().contains(" 0 events written"), "{}", backfill.summary());
    assert_snapshot(&shipper.snapshot(), &everything.0);
    assert_eq!(shipper.dlq_files(), dlq, "the DLQ changed");
    shipper.write_gz("raw/events_20240105.ndjson.gz", day5.bytes(), &[]);
    let backfill = shipper.backfill(&[]);
    assert!(backfill.summary().contains(" 0 events written"), "{}", backfill.summary());
    assert_snapshot(&shipper.snapshot(), &everything.0);
    assert_eq!(shipper.dlq_files(), dlq, "the DLQ changed");
}

#[test]
fn daemon_skips_a_long_line_written_in_pieces_and_keeps_a_partial_line_across_a_restart() {
    let shipper = Shipper::new();
    let mut file = GenFile::new("raw/events_20240108.ndjson", Form::Live);
    file.good(r#"{"run_id":"long","event_id":"before"}"#)
        .too_long(MAX_LINE_BYTES + MAX_LINE_BYTES / 2)
        .good(r#"{"run_id":"long","event_id":"after"}"#)
        .good(r#"{"run_id":"long","event_id":"split by a restart"}"#);
    let bytes = file.bytes();
    let end_of = |n_lines: usize| file.prefix(n_lines).len() as usize;
    let daemon = shipper.spawn_run();

    // The long line arrives in four writes, each read by the daemon before the next one (it
    // must carry the skip over reads), the checkpoint staying at line 1 meanwhile.
    let path = shipper.path(&file.rel);
    shipper.append(&file.rel, &bytes[..end_of(1)]);
    let first = file.prefix(1);
    wait_for_rows(&shipper, &expected(shipper.base(), &[&first], &[]));
    wait_until(DEADLINE, "the checkpoint at line 1", || {
        shipper.try_checkpoints().is_ok_and(|c| c == [checkpoint(&shipper, &first)])
    });
    let long_end = end_of(2);
    let step = (long_end - end_of(1)) / 4;
    for piece in 0..4 {
        let from = end_of(1) + piece * step;
        let to = if piece == 3 { long_end - 1 } else { from + step };
        shipper.append(&file.rel, &bytes[from..to]);
        wait_until(DEADLINE, "the daemon to read the piece", || {
            daemon.read_position(&path) == Some(to as u64)
        });
        assert_eq!(shipper.checkpoints(), [checkpoint(&shipper, &first)]);
        assert_eq!(shipper.dead_letters(), []);
    }
    shipper.append(&file.rel, &bytes[long_end - 1..end_of(3)]);
    wait_for_rows(&shipper, &expected(shipper.base(), &[&file.prefix(3)], &[]));

    // Half of line 4 when SIGTERM comes: the drain must not ship it.
    let half = end_of(3) + (end_of(4) - end_of(3)) / 2;
    shipper.append(&file.rel, &bytes[end_of(3)..half]);
    wait_until(DEADLINE, "the daemon to read the half line", || {
        daemon.read_position(&path) == Some(half as u64)
    });
    wait_until(DEADLINE, "the checkpoint at line 3", || {
        shipper.try_checkpoints().is_ok_and(|c| c == [checkpoint(&shipper, &file.prefix(3))])
    });
    // SIGINT drains like SIGTERM.
    daemon.interrupt().assert_success("run after SIGINT");
    assert_eq!(shipper.checkpoints(), [checkpoint(&shipper, &file.prefix(3))]);
    let three = expected(shipper.base(), &[&file.prefix(3)], &[]);
    assert_snapshot(&shipper.snapshot(), &three.0);
    assert_dead_letters(&shipper.dead_letters(), &three.1);

    let daemon = shipper.spawn_run();
    shipper.append(&file.rel, &bytes[half..]);
    wait_for_rows(&shipper, &expected(shipper.base(), &[&file], &[]));
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
    assert_eq!(shipper.checkpoints(), [checkpoint(&shipper, &file)]);
}

#[test]
fn backfill_while_the_daemon_runs_ships_everything_exactly_once() {
    let shipper = Shipper::new();
    let (files, runs) = crate::dataset::multi_day();
    let daemon = shipper.spawn_run();
    for file in &files {
        file.write(&shipper);
    }

    shipper.backfill(&[]);

    let want = expected(shipper.base(), &files.iter().collect::<Vec<_>>(), &runs);
    wait_for_rows(&shipper, &want);
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
    assert_snapshot(&shipper.snapshot(), &want.0);
    assert_dead_letters(&shipper.dead_letters(), &want.1);
}

#[test]
fn daemon_skips_a_64_mib_line_in_bounded_memory() {
    let shipper = Shipper::new();
    let mut file = GenFile::new("raw/events_20240109.ndjson", Form::Live);
    file.too_long(64 * 1024 * 1024).good(r#"{"run_id":"big","event_id":"after"}"#);
    let daemon = shipper.spawn_run();
    file.write(&shipper);
    wait_for_rows(&shipper, &expected(shipper.base(), &[&file], &[]));
    // Holding the line whole would take 64 MiB at least.
    let peak = daemon.peak_rss();
    assert!(peak < 40 * 1024 * 1024, "peak RSS {} MiB while skipping a 64 MiB line", peak >> 20);
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
}

/// An idle daemon rescans once per `rescan_interval` and no more. (It used to wake itself: a
/// rescan opens the watched directory, inotify reported that open, and the event triggered the
/// next rescan 100 ms later, forever: 10 rescans a second and measurable idle CPU.) A loaded box
/// only makes rescans fewer, so the bound cannot flake.
#[test]
fn an_idle_daemon_rescans_once_per_interval_not_on_its_own_inotify_events() {
    let shipper = Shipper::new();
    shipper.write("raw/events_20240301.ndjson", b"{\"run_id\":\"idle\",\"event_id\":\"1\"}\n");
    let mut command = shipper.command(&["run"], &[]);
    command.env("RUST_LOG", "jsonl_shipper=debug");
    let daemon = Running::spawn(command);
    wait_until(DEADLINE, "the first row", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 1)
    });
    let rescans = || daemon.stderr_so_far().matches("rescanned").count();
    let (before, started) = (rescans(), std::time::Instant::now());
    // An observation window, not a wait for a condition: count what happens within it.
    poll_until(Duration::from_secs(4), || false);
    let (during, window) = (rescans() - before, started.elapsed());
    let bound = window.as_secs() as usize + 2; // rescan_interval is 1 s by default
    assert!(during <= bound, "{during} rescans in {window:?} of idleness (want ≤ {bound})");
    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
}

/// A file the checkpoints know, deleted while the agent was down with bytes it had not read:
/// nothing can read them any more, and the restarted daemon says so once, naming the file,
/// its offset and the bytes (issue 10 #2), instead of forgetting it silently.
#[test]
fn a_file_deleted_while_the_agent_was_down_with_unread_bytes_is_reported() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240301.ndjson";
    let tail = br#"{"run_id":"r","event_id":"half"#;
    shipper.write(rel, b"{\"run_id\":\"r\",\"event_id\":\"a\"}\n");
    shipper.append(rel, tail);
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first line", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 1)
    });
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
    std::fs::remove_file(shipper.path(rel)).unwrap();

    let daemon = shipper.spawn_run();
    let want = format!("unshipped_bytes={}", tail.len());
    wait_until(DEADLINE, "the WARN about the deleted file", || {
        daemon.stderr_so_far().contains(&want)
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    finished.assert_success("run after SIGTERM");
    let warns = finished.stderr.matches("deleted before it was read to its end").count();
    assert_eq!(warns, 1, "{}", finished.stderr);
    assert!(finished.stderr.contains(&shipper.source(rel)), "{}", finished.stderr);

    // `status` keeps listing it, gone, with the bytes nobody will ship as its lag.
    let status = shipper.run_cmd(&["status"], &["--json"]);
    status.assert_success("status --json");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let file = &status["files"][0];
    assert_eq!(file["path"], serde_json::json!(shipper.source(rel)), "{status}");
    assert_eq!(file["present"], serde_json::json!(false), "{status}");
    assert_eq!(file["lag_bytes"], serde_json::json!(tail.len()), "{status}");
    let table = shipper.run_cmd(&["status"], &[]);
    assert!(table.stdout.contains("(gone)"), "{}", table.stdout);
}
