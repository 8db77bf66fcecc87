//! kill -9 (and Ctrl-C, once or twice) during a backfill, at several points, or kill -9 of the
//! daemon, then resume: the result is identical to an uninterrupted run (no row lost,
//! duplicated or rolled back; no dead letter duplicated).

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::json;

use crate::dataset::{expected, run_row, Form, GenFile};
use crate::harness::{
    assert_dead_letters, assert_same, assert_snapshot, poll_until, wait_until, Checkpoint, RunRow,
    Shipper, DEADLINE,
};

const RUNS: u32 = 20;

/// Three days of `lines_per_day` lines (with `gzip_first`, the first day is gzip, so resuming
/// it re-decompresses its prefix), 20 runs: run records at the start, middle and end; half
/// the events carry an `event_id` that every day repeats with new content; a bad line now and
/// then.
fn big_set(lines_per_day: u32, gzip_first: bool) -> (Vec<GenFile>, Vec<RunRow>) {
    let mut files = Vec::new();
    for day in 1..=3u32 {
        let (rel, form) = match day {
            1 if gzip_first => ("raw/events_20240101.ndjson.gz".to_string(), Form::Gzip),
            _ => (format!("raw/events_2024010{day}.ndjson"), Form::Finished),
        };
        let mut file = GenFile::new(&rel, form);
        for i in 0..lines_per_day {
            let run = i % RUNS;
            if day == 1 && i < RUNS {
                file.good(&format!(
                    r#"{{"run_id":"run-{run:02}","record_type":"run","status":"running","start_time":{i},"hb":0}}"#
                ));
            } else if day == 2 && (lines_per_day / 2..lines_per_day / 2 + RUNS).contains(&i) {
                file.good(&format!(r#"{{"run_id":"run-{run:02}","record_type":"run","status":"running","hb":{day}}}"#));
            } else if day == 3 && i >= lines_per_day - RUNS {
                file.good(&format!(
                    r#"{{"run_id":"run-{run:02}","record_type":"run","status":"finished","end_time":{i}}}"#
                ));
            } else if i % 9973 == 0 {
                file.bad(format!("not json {day}/{i}").as_bytes(), "invalid_json");
            } else if i % 2 == 0 {
                file.good(&format!(
                    r#"{{"run_id":"run-{run:02}","event_id":"e{i}","event_type":"t{}","ts":{i},"day":{day}}}"#,
                    i % 7
                ));
            } else {
                file.good(&format!(r#"{{"run_id":"run-{run:02}","ts":{i},"day":{day}}}"#));
            }
        }
        files.push(file);
    }
    let runs = (0..RUNS)
        .map(|run| {
            let end = (lines_per_day - RUNS..lines_per_day)
                .find(|i| i % RUNS == run)
                .expect("one per run");
            run_row(
                &format!("run-{run:02}"),
                json!({"run_id":format!("run-{run:02}"),"record_type":"run","status":"finished",
                       "start_time":run,"end_time":end,"hb":2}),
            )
        })
        .collect();
    (files, runs)
}

/// How a backfill is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL.
    Kill9,
    /// One SIGINT (Ctrl-C): a graceful stop.
    Interrupt,
    /// SIGINT again and again until it exits: the second one exits at once.
    InterruptTwice,
}

#[test]
fn kill_9_and_ctrl_c_at_several_points_then_resume_equals_an_uninterrupted_backfill() {
    let (files, runs) = big_set(66_667, true);
    let clean = Shipper::new();
    // Small per-run batches make checkpoints advance in small steps, so every stop point below
    // is reached with work still left (the default batches are sized for throughput).
    let crashed = Shipper::with_config("[output]\nbatch_max_events = 64\n");
    for file in &files {
        file.write(&clean);
        file.write(&crashed);
    }
    let total: u64 = files.iter().map(GenFile::len).sum();

    let mut last_progress = 0;
    for (percent, stop) in
        [(10, Stop::Kill9), (30, Stop::Interrupt), (45, Stop::InterruptTwice), (60, Stop::Kill9)]
    {
        let mut backfill = crashed.spawn_backfill(&[]);
        let target = (total * percent / 100).max(last_progress + 1);
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        wait_until(DEADLINE, &format!("checkpoints at {percent}% or an exit"), || {
            let progress = crashed.progress();
            if seen.last().is_none_or(|&(_, p)| p != progress) {
                seen.push((started.elapsed().as_millis(), progress));
            }
            progress >= target || backfill.try_status().is_some()
        });
        if backfill.try_status().is_some() {
            let ended = backfill.wait();
            panic!(
                "backfill ended ({}) before the {percent}% stop point ({target} of {total} \
                 bytes); (ms, checkpointed bytes) seen: {seen:?}\n{}",
                ended.status, ended.stderr
            );
        }
        let stopped = match stop {
            Stop::Kill9 => {
                let killed = backfill.kill9();
                assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "{}", killed.stderr);
                killed
            }
            Stop::Interrupt => backfill.interrupt(),
            Stop::InterruptTwice => backfill.interrupt_until_exit(),
        };
        let progress = crashed.progress();
        assert!(progress >= last_progress, "checkpoints went back: {progress} < {last_progress}");
        assert!(
            progress < total,
            "stopped ({stop:?}) at {percent}% but everything was checkpointed:\n{}",
            stopped.stderr
        );
        last_progress = progress;
    }
    crashed.backfill(&[]);
    clean.backfill(&[]);

    let (want, want_dead) = expected(clean.base(), &files.iter().collect::<Vec<_>>(), &runs);
    assert_snapshot(&clean.snapshot(), &want);
    assert_dead_letters(&clean.dead_letters(), &want_dead);
    assert_snapshot(
        &crashed.snapshot().rebased(crashed.base(), "D"),
        &want.rebased(clean.base(), "D"),
    );
    let rebased_dead: Vec<_> =
        crashed.dead_letters().iter().map(|d| d.rebased(crashed.base(), "D")).collect();
    let want_dead: Vec<_> = want_dead.iter().map(|d| d.rebased(clean.base(), "D")).collect();
    assert_dead_letters(&rebased_dead, &want_dead);
    let at_end: Vec<Checkpoint> = {
        let mut v: Vec<Checkpoint> = files
            .iter()
            .map(|f| Checkpoint {
                path: crashed.source(&f.rel),
                offset: f.len(),
                line_no: f.n_lines(),
            })
            .collect();
        v.sort();
        v
    };
    assert_same("checkpoints", &crashed.checkpoints(), &at_end, |c| c.path.clone());
}

#[test]
fn daemon_killed_mid_stream_resumes_exactly() {
    let (files, runs) = big_set(20_000, false);
    let shipper = Shipper::new();
    let total: u64 = files.iter().map(GenFile::len).sum();
    let daemon = shipper.spawn_run();
    // The last day is written only once some progress is checkpointed, and the kill comes as
    // soon as the daemon starts reading it: on a loaded box, a daemon given everything at once
    // could commit it all before its first checkpoint, and then there is no crash mid-stream.
    let (last, first) = files.split_last().expect("files");
    for file in first {
        file.write(&shipper);
    }
    wait_until(DEADLINE, "the daemon to checkpoint some progress", || shipper.progress() > 0);
    last.write(&shipper);
    let last_path = shipper.path(&last.rel);
    wait_until(DEADLINE, "the daemon to read the last day", || {
        daemon.read_position(&last_path).is_some_and(|pos| pos > 0)
    });
    let killed = daemon.kill9();
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "{}", killed.stderr);
    assert!(shipper.progress() < total, "killed, but everything was already checkpointed");

    restart_and_expect(&shipper, &files, &runs);
}

/// Starts the daemon again and waits until every file is shipped to its end: exactly the
/// rows, runs rows and dead letters of an uninterrupted run.
fn restart_and_expect(shipper: &Shipper, files: &[GenFile], runs: &[RunRow]) {
    let total: u64 = files.iter().map(GenFile::len).sum();
    let daemon = shipper.spawn_run();
    let want = expected(shipper.base(), &files.iter().collect::<Vec<_>>(), runs);
    poll_until(DEADLINE, || {
        shipper.progress() == total && shipper.try_snapshot().is_ok_and(|s| s == want.0)
    });
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
    assert_snapshot(&shipper.snapshot(), &want.0);
    assert_dead_letters(&shipper.dead_letters(), &want.1);
}

/// The commit protocol's crash points, each with the hit to abort at: a later one where the
/// first comes before anything interesting; the state thread's first pass with anything to
/// do (a fast daemon may need no second one).
const PROTOCOL_POINTS: [(&str, u32); 6] = [
    ("writer.after_commit", 3),
    ("dlq.before_fsync", 1),
    ("dlq.after_fsync", 1),
    ("state.before_commit", 1),
    ("state.after_commit", 1),
    ("wal.after_checkpoint", 2),
];

/// Runs `command` with `JSONL_SHIPPER_CRASH_AT=point@nth` to its end, which must be an abort.
fn crash_at(mut command: std::process::Command, point: &str, nth: u32) {
    command.env("JSONL_SHIPPER_CRASH_AT", format!("{point}@{nth}"));
    let crashed = crate::harness::Running::spawn(command).wait();
    assert_eq!(crashed.status.signal(), Some(libc::SIGABRT), "{point}: {}", crashed.stderr);
    assert!(crashed.stderr.contains(&format!("crash point {point} reached")), "{point}");
}

/// Every crash point of the commit protocol (`src/crash.rs` lists them; a tidy test there
/// checks each is named here), in a backfill: the process aborts exactly there, like kill -9;
/// a second backfill then leaves exactly what an uninterrupted one leaves: rows, runs rows,
/// dead letters (none twice) and checkpoints at every file's end.
#[test]
fn every_crash_point_in_a_backfill_then_resume_equals_an_uninterrupted_backfill() {
    use crate::dataset::multi_day;
    let (files, runs) = multi_day();
    for (point, nth) in PROTOCOL_POINTS {
        // Small batches: many commits, so a crash leaves work on both sides of it.
        let shipper = Shipper::with_config("[output]\nbatch_max_events = 16\n");
        for file in &files {
            file.write(&shipper);
        }
        crash_at(shipper.command(&["backfill"], &[]), point, nth);

        shipper.backfill(&[]);
        let (want, want_dead) = expected(shipper.base(), &files.iter().collect::<Vec<_>>(), &runs);
        assert_snapshot(&shipper.snapshot(), &want);
        assert_dead_letters(&shipper.dead_letters(), &want_dead);
        let mut at_end: Vec<Checkpoint> = files
            .iter()
            .map(|f| Checkpoint {
                path: shipper.source(&f.rel),
                offset: f.len(),
                line_no: f.n_lines(),
            })
            .collect();
        at_end.sort();
        assert_eq!(shipper.checkpoints(), at_end, "{point}");
    }
}

/// The same crash points in the daemon: it aborts there while tailing; restarted, it ends with
/// exactly the rows, runs rows and dead letters of the files, every file read to its end.
#[test]
fn every_crash_point_in_the_daemon_then_restart_equals_no_crash() {
    let (files, runs) = big_set(3_000, false);
    for (point, nth) in PROTOCOL_POINTS {
        // Checkpoints every 100 ms: the WAL checkpoint loop's point is reached while tailing.
        let shipper = Shipper::with_config(
            "[output]\nbatch_max_events = 16\n[sqlite]\ncheckpoint_interval = \"100ms\"\n",
        );
        for file in &files {
            file.write(&shipper);
        }
        // The daemon runs until it reaches the point (every file is there from the start).
        crash_at(shipper.command(&["run"], &[]), point, nth);
        restart_and_expect(&shipper, &files, &runs);
    }
}

/// Retention aborted while deleting a run DB ("retention.between_files"): what is left is a
/// DB file without its `-wal` (never a `-wal` a new DB of the run would replay); the next
/// round deletes it, and the run starts again in a fresh DB holding only its new lines.
#[test]
fn retention_aborted_mid_delete_leaves_no_stray_wal_and_finishes_next_round() {
    use std::time::SystemTime;
    let shipper = Shipper::with_config("[retention]\nmax_age = \"2d\"\n");
    let day1 = "raw/events_20240401.ndjson";
    shipper.write(
        day1,
        b"{\"run_id\":\"old\",\"event_id\":\"o1\"}\n{\"run_id\":\"fresh\",\"event_id\":\"f1\"}\n",
    );
    shipper.age(day1);
    shipper.backfill(&[]);
    let runs_dir = shipper.path("db/runs");
    let db = runs_dir.join("old.sqlite");
    let wal = runs_dir.join("old.sqlite-wal");
    std::fs::write(&wal, b"").unwrap(); // a -wal to be deleted with it
    let past = SystemTime::now() - Duration::from_secs(3 * 86_400);
    for path in [&db, &wal] {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(past).unwrap();
    }

    crash_at(shipper.command(&["maintain"], &[]), "retention.between_files", 1);
    assert!(db.exists() && !wal.exists(), "the DB file is removed last");

    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(!db.exists(), "{}{}", done.stdout, done.stderr);
    assert_eq!(shipper.run_db_names(), vec!["fresh.sqlite".to_string()]);

    let day2 = "raw/events_20240402.ndjson";
    shipper.write(day2, b"{\"run_id\":\"old\",\"event_id\":\"o2\"}\n");
    shipper.age(day2);
    shipper.backfill(&[]);
    let keys: Vec<(String, String)> =
        shipper.snapshot().events.into_iter().map(|e| (e.run_id, e.event_key)).collect();
    assert_eq!(keys, [("fresh".into(), "f1".into()), ("old".into(), "o2".into())]);
}
