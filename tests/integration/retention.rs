//! Retention of DLQ files and source files (issue 4, point 3), by `maintain` and by the
//! daemon's periodic round: exactly which files remain, that the DLQ's exactly-once
//! bookkeeping survives a deleted DLQ file (appends after it, restarts, re-reads), and that a
//! source file is deleted only once every record of it is in the run DBs.

use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use serde_json::json;

use crate::dataset::run_row;
use crate::harness::{
    assert_snapshot, db_file_name, wait_until, DeadLetter, EventRow, Shipper, Snapshot, DEADLINE,
};
use crate::ops::{free_port, metric};

const DAY: Duration = Duration::from_secs(86_400);

/// Writes `lines` (newline-terminated) to `D/<rel>` and sets its mtime `age` in the past.
fn write_aged(shipper: &Shipper, rel: &str, lines: &[String], age: Duration) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    shipper.write(rel, text.as_bytes());
    set_age(shipper, rel, age);
}

fn set_age(shipper: &Shipper, rel: &str, age: Duration) {
    let file = std::fs::File::options().write(true).open(shipper.path(rel)).expect("open");
    file.set_modified(SystemTime::now() - age).expect("set mtime");
}

/// Lines of run `r` with event_ids `<tag>-1..=n`.
fn events(tag: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!(r#"{{"run_id":"r","event_id":"{tag}-{i}"}}"#)).collect()
}

/// The row line `line_no` of `D/<rel>` (made by [`events`]) becomes.
fn row(shipper: &Shipper, rel: &str, line_no: usize, text: &str) -> EventRow {
    let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
    EventRow {
        db: db_file_name("r"),
        event_key: value["event_id"].as_str().expect("event_id").to_string(),
        run_id: "r".into(),
        event_type: SqlValue::Null,
        ts: SqlValue::Null,
        data: text.to_string(),
        source: shipper.source(rel),
        line_no: line_no as i64,
    }
}

/// The rows `lines` of `D/<rel>` become.
fn rows(shipper: &Shipper, rel: &str, lines: &[String]) -> Vec<EventRow> {
    lines.iter().enumerate().map(|(i, text)| row(shipper, rel, i + 1, text)).collect()
}

/// File names of `rels` (`raw/<name>`), as [`raw_files`] lists them.
fn in_raw(rels: &[&str]) -> Vec<String> {
    rels.iter().map(|rel| rel.trim_start_matches("raw/").to_string()).collect()
}

fn snapshot_of(events: Vec<EventRow>) -> Snapshot {
    let mut want = Snapshot { runs: vec![run_row("r", json!({}))], events };
    want.sort();
    want
}

/// Names of the files in `D/raw`, sorted.
fn raw_files(shipper: &Shipper) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(shipper.path("raw"))
        .expect("raw dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// DLQ files of earlier days (the process that wrote them is long gone): `dlq_<day>.ndjson`
/// with ten well-formed letters each, every file the same size. Returns `(name, bytes)`.
fn write_old_dlq_files(shipper: &Shipper, days: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for day in days {
        let mut bytes = Vec::new();
        for i in 1..=10u64 {
            let raw = format!("{{bad {day} {i:02} {}", "x".repeat(1000));
            let letter = json!({
                "at": format!("{}-{}-{}T00:00:00.000Z", &day[0..4], &day[4..6], &day[6..8]),
                "source": shipper.source(&format!("raw/events_{day}.ndjson")),
                "offset": (i - 1) * (raw.len() as u64 + 1),
                "line_no": i,
                "reason": "invalid_json",
                "error": "key must be a string at line 1 column 2",
                "raw_len": raw.len(),
                "raw": raw,
            });
            bytes.extend(serde_json::to_vec(&letter).expect("JSON"));
            bytes.push(b'\n');
        }
        let name = format!("dlq_{day}.ndjson");
        shipper.write(&format!("dlq/{name}"), &bytes);
        out.push((name, bytes));
    }
    assert!(out.windows(2).all(|w| w[0].1.len() == w[1].1.len()), "equal sizes");
    out
}

/// The state DB's `dlq_files` table: `(name, committed_len)`, sorted.
fn dlq_rows(shipper: &Shipper) -> Vec<(String, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        shipper.path("db/shipper-state.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open state DB");
    let mut stmt =
        conn.prepare("SELECT name, committed_len FROM dlq_files ORDER BY name").expect("prepare");
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<String> {
    files.iter().map(|(n, _)| n.clone()).collect()
}

/// Lines of stderr that log a retention deletion of `what` naming `path`.
fn deletion_logged(stderr: &str, what: &str, path: &std::path::Path) -> bool {
    let path = path.to_str().expect("UTF-8");
    stderr.lines().any(|l| l.contains(what) && l.contains(path))
}

#[test]
fn maintain_deletes_dlq_files_oldest_day_first_down_to_dlq_max_total_size() {
    let shipper = Shipper::with_config("");
    let old = write_old_dlq_files(&shipper, &["20240101", "20240102", "20240103"]);
    let rel = "raw/events_20240601.ndjson";
    let bad = vec!["{bad".to_string(), "[2]".into(), r#"{"run_id":"r","event_id":"e"}"#.into()];
    write_aged(&shipper, rel, &bad, DAY);
    shipper.backfill(&[]);
    let files = shipper.dlq_files();
    assert_eq!(files.len(), 4, "{:?}", names(&files));
    // Letters written now go to today's file, which sorts after every 2024 day.
    let today = files[3].clone();
    assert_eq!(files[..3], old[..]);
    let today_letters =
        shipper.dead_letters().iter().filter(|d| d.source == shipper.source(rel)).count();
    assert_eq!(today_letters, 2);

    // Room for the newest old file and today's: the two oldest days go, in that order.
    let limit = old[2].1.len() + today.1.len();
    shipper.set_config(&format!("[dlq]\nmax_total_size = \"{limit}B\"\n"));
    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("2 DLQ files"), "{}", done.stdout);
    let dlq = shipper.path("dlq");
    for (name, _) in &old[..2] {
        assert!(
            deletion_logged(&done.stderr, "retention: deleted DLQ file", &dlq.join(name)),
            "{name} not logged:\n{}",
            done.stderr
        );
    }
    let first = done.stderr.find("dlq_20240101").expect("logged");
    assert!(first < done.stderr.find("dlq_20240102").expect("logged"), "oldest first");
    assert_eq!(shipper.dlq_files(), vec![old[2].clone(), today.clone()], "kept byte for byte");
    // The deleted files are forgotten; the kept ones keep their committed lengths.
    assert_eq!(
        dlq_rows(&shipper),
        vec![(old[2].0.clone(), old[2].1.len() as u64), (today.0.clone(), today.1.len() as u64)]
    );

    // At the limit exactly: nothing more to do.
    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("0 DLQ files"), "{}", done.stdout);
    assert_eq!(shipper.dlq_files(), vec![old[2].clone(), today.clone()]);
    // One byte less: the oldest left goes, today's stays.
    shipper.set_config(&format!("[dlq]\nmax_total_size = \"{}B\"\n", limit - 1));
    shipper.run_cmd(&["maintain"], &[]).assert_success("maintain");
    assert_eq!(shipper.dlq_files(), vec![today.clone()]);
    assert_eq!(dlq_rows(&shipper), vec![(today.0.clone(), today.1.len() as u64)]);
}

#[test]
fn the_daemon_keeps_dlq_files_under_the_limit_and_its_bookkeeping_follows_deleted_files() {
    let shipper = Shipper::with_config("");
    let old = write_old_dlq_files(&shipper, &["20240101", "20240102", "20240103"]);
    let addr = free_port();
    // One old file (~12.5 KB) plus room for today's few letters: the two oldest go.
    let limit = old[0].1.len() + 8000;
    shipper.set_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\n[output]\nbatch_max_delay = \"20ms\"\n\
         [retention]\ncheck_interval = \"200ms\"\n[dlq]\nmax_total_size = \"{limit}B\"\n"
    ));
    let rel = "raw/events_20240601.ndjson";
    shipper.write(rel, b"{bad\n[2]\n");
    let daemon = shipper.spawn_run();
    let ours = |shipper: &Shipper| -> Vec<u64> {
        let source = shipper.source(rel);
        let mut lines: Vec<u64> = shipper
            .dead_letters_so_far()
            .into_iter()
            .filter(|d| d.source == source)
            .map(|d| d.line_no)
            .collect();
        lines.sort();
        lines
    };
    wait_until(DEADLINE, "the two oldest DLQ files deleted and today's letters written", || {
        let files = shipper.dlq_files();
        files.len() == 2 && files[0] == old[2] && ours(&shipper) == [1, 2]
    });
    wait_until(DEADLINE, "jsonl_shipper_retention_deleted_total = 2", || {
        metric(addr, "jsonl_shipper_retention_deleted_total") == Some(2.0)
    });
    // The keys of the deleted files' letters went with them (issue 10 #13).
    let today = shipper.dlq_files()[1].0.clone();
    let want_keys = vec![(old[2].0.clone(), 10), (today.clone(), 2)];
    wait_until(DEADLINE, "the keys of the deleted DLQ files pruned", || {
        dlq_key_files(&shipper) == want_keys
    });
    let dlq = shipper.path("dlq");
    let log = daemon.stderr_so_far();
    for (name, _) in &old[..2] {
        assert!(deletion_logged(&log, "retention: deleted DLQ file", &dlq.join(name)), "{log}");
    }

    // Another process (an operator's `maintain` with a limit of 1 byte) deletes every DLQ file,
    // today's included, while the daemon runs.
    let zero = shipper.root().join("zero.toml");
    std::fs::write(&zero, "base = \"base\"\n[dlq]\nmax_total_size = \"1B\"\n").expect("config");
    let done = shipper.run_bare(&["maintain", "--config", zero.to_str().expect("UTF-8")]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("2 DLQ files"), "{}", done.stdout);
    assert_eq!(shipper.dlq_files(), vec![]);
    assert_eq!(dlq_rows(&shipper), vec![]);
    assert_eq!(dlq_key_files(&shipper), vec![]);

    // The daemon's next dead letter starts a fresh file holding exactly that letter: nothing
    // is cut, nothing deleted comes back.
    shipper.append(rel, b"{bad3\n");
    wait_until(DEADLINE, "the new letter", || ours(&shipper) == [3]);
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
    let files = shipper.dlq_files();
    assert_eq!(files.len(), 1);
    let want = vec![DeadLetter {
        source: shipper.source(rel),
        line_no: 3,
        offset: 9,
        reason: "invalid_json".into(),
        raw_len: 5,
        raw: "{bad3".into(),
    }];
    assert_eq!(shipper.dead_letters(), want);
    assert_eq!(dlq_rows(&shipper), vec![(files[0].0.clone(), files[0].1.len() as u64)]);

    assert_eq!(dlq_key_files(&shipper), vec![(today.clone(), 1)]);

    // Restart (the DLQ is recovered: nothing to cut) with a copy of the source: the same
    // lines again. The letter still in the DLQ keeps its key, so it is not written again;
    // the two whose letters (and keys) were deleted are dead-lettered again, once each.
    // (Its name keeps the producer's date: a line's identity includes it.)
    let copy = "raw/events_20240601_copy.ndjson";
    std::fs::copy(shipper.path(rel), shipper.path(copy)).expect("copy");
    let copy_len = std::fs::metadata(shipper.path(copy)).expect("stat").len();
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the copy read to its end", || {
        let source = shipper.source(copy);
        shipper.checkpoints().iter().any(|cp| cp.path == source && cp.offset == copy_len)
    });
    daemon.terminate(Duration::from_secs(30)).assert_success("run after SIGTERM");
    let again = |line_no: u64, offset: u64, reason: &str, raw: &str| DeadLetter {
        source: shipper.source(copy),
        line_no,
        offset,
        reason: reason.into(),
        raw_len: raw.len() as u64,
        raw: raw.into(),
    };
    let mut want = want;
    want.push(again(1, 0, "invalid_json", "{bad"));
    want.push(again(2, 5, "not_object", "[2]"));
    assert_eq!(shipper.dead_letters(), want);
    let after = shipper.dlq_files();
    assert_eq!(names(&after), names(&files));
    assert!(after[0].1.starts_with(&files[0].1), "appended to, never cut");
    assert_eq!(dlq_rows(&shipper), vec![(after[0].0.clone(), after[0].1.len() as u64)]);
    assert_eq!(dlq_key_files(&shipper), vec![(today, 3)]);
}

/// The state DB's `dlq_keys` by DLQ file: `(file, keys)`, sorted.
fn dlq_key_files(shipper: &Shipper) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open_with_flags(
        shipper.path("db/shipper-state.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open state DB");
    let mut stmt = conn
        .prepare("SELECT file, count(*) FROM dlq_keys GROUP BY file ORDER BY file")
        .expect("prepare");
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query");
    rows.collect::<rusqlite::Result<_>>().expect("rows")
}

#[test]
fn maintain_deletes_only_old_fully_shipped_sources_that_are_not_the_newest() {
    let shipper = Shipper::with_config(
        "[sources]\npaths = [\"base/raw/events_*.ndjson\", \"base/raw/events_*.ndjson.gz\"]\n\
         [retention]\ndelete_sources_after = \"1h\"\n",
    );
    let old = 2 * Duration::from_secs(3600);
    let day = |d: u32| format!("raw/events_202401{d:02}.ndjson");
    let mut all = Vec::new();
    for d in 1..=5 {
        let lines = events(&format!("d{d}"), 2);
        // Day 4 was written just now; every other file two hours ago.
        let age = if d == 4 { Duration::ZERO } else { old };
        write_aged(&shipper, &day(d), &lines, age);
        all.extend(rows(&shipper, &day(d), &lines));
    }
    // A `.gz` is never deleted: its checkpoint counts decompressed bytes.
    let gz = "raw/events_20231231.ndjson.gz";
    let gz_lines = events("gz", 2);
    let gz_text: String = gz_lines.iter().map(|l| format!("{l}\n")).collect();
    shipper.write_gz(gz, gz_text.as_bytes(), &[]);
    set_age(&shipper, gz, old);
    all.extend(rows(&shipper, gz, &gz_lines));
    shipper.backfill(&[]);
    assert_snapshot(&shipper.snapshot(), &snapshot_of(all.clone()));

    // Day 2 is replaced by an identical copy (another inode, never shipped as far as the state
    // DB knows); day 3 grows by a line nobody shipped yet.
    let tmp = shipper.path("raw/day2.tmp");
    std::fs::copy(shipper.path(&day(2)), &tmp).expect("copy");
    std::fs::rename(&tmp, shipper.path(&day(2))).expect("rename");
    set_age(&shipper, &day(2), old);
    let extra = r#"{"run_id":"r","event_id":"d3-3"}"#.to_string();
    shipper.append(&day(3), format!("{extra}\n").as_bytes());
    set_age(&shipper, &day(3), old);

    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("1 source files"), "{}", done.stdout);
    assert!(
        deletion_logged(
            &done.stderr,
            "retention: deleted fully shipped source file",
            &shipper.path(&day(1))
        ),
        "{}",
        done.stderr
    );
    assert_eq!(raw_files(&shipper), in_raw(&[gz, &day(2), &day(3), &day(4), &day(5)]));

    // Once they are shipped (this inode of day 2, all of day 3), they go too.
    shipper.backfill(&[]);
    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("2 source files"), "{}", done.stdout);
    assert_eq!(raw_files(&shipper), in_raw(&[gz, &day(4), &day(5)]));
    // Every record of every file, deleted or not, is in the run DB.
    all.push(row(&shipper, &day(3), 3, &extra));
    assert_snapshot(&shipper.snapshot(), &snapshot_of(all));
    // Nothing left to delete.
    let done = shipper.run_cmd(&["maintain"], &[]);
    assert!(done.stdout.contains("0 source files"), "{}", done.stdout);
}

#[test]
fn the_daemon_deletes_old_fully_shipped_sources_and_never_a_partly_shipped_or_the_newest() {
    let addr = free_port();
    let shipper = Shipper::with_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\n[output]\nbatch_max_delay = \"20ms\"\n\
         [retention]\ncheck_interval = \"200ms\"\ndelete_sources_after = \"1h\"\n"
    ));
    let old = 2 * Duration::from_secs(3600);
    let day = |d: u32| format!("raw/events_202401{d:02}.ndjson");
    let mut all = Vec::new();
    for d in 1..=3 {
        let lines = events(&format!("d{d}"), 2);
        write_aged(&shipper, &day(d), &lines, old);
        all.extend(rows(&shipper, &day(d), &lines));
    }
    // Day 2 ends in a line still being written: its checkpoint stays short of its size.
    let partial = br#"{"run_id":"r","event_id":"d2-partial""#;
    shipper.append(&day(2), partial);
    set_age(&shipper, &day(2), old);
    let size = |d: u32| std::fs::metadata(shipper.path(&day(d))).expect("stat").len();
    let (size2, size3) = (size(2), size(3));
    let checkpoint = |shipper: &Shipper, rel: &str| {
        let source = shipper.source(rel);
        shipper.checkpoints().into_iter().find(|cp| cp.path == source).map(|cp| cp.offset)
    };
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "every complete line shipped and day 1 deleted", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 6) && !shipper.path(&day(1)).exists()
    });
    wait_until(DEADLINE, "the checkpoints of days 2 and 3 final", || {
        checkpoint(&shipper, &day(2)) == Some(size2 - partial.len() as u64)
            && checkpoint(&shipper, &day(3)) == Some(size3)
    });
    // A probe shipped after all that: once a round deletes it, a round has seen days 2 and 3
    // as shipped as they will get.
    let probe = "raw/events_20231231.ndjson";
    let probe_lines = events("probe", 1);
    write_aged(&shipper, probe, &probe_lines, old);
    all.extend(rows(&shipper, probe, &probe_lines));
    wait_until(DEADLINE, "the probe shipped and deleted", || !shipper.path(probe).exists());
    assert_eq!(raw_files(&shipper), in_raw(&[&day(2), &day(3)]));
    wait_until(DEADLINE, "jsonl_shipper_retention_deleted_total = 2", || {
        metric(addr, "jsonl_shipper_retention_deleted_total") == Some(2.0)
    });

    // The newest file is still followed.
    let late = events("d3-late", 1);
    shipper.append(&day(3), format!("{}\n", late[0]).as_bytes());
    all.push(row(&shipper, &day(3), 3, &late[0]));
    wait_until(DEADLINE, "the late line", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == all.len())
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    finished.assert_success("run after SIGTERM");
    for rel in [day(1), probe.to_string()] {
        assert!(
            deletion_logged(
                &finished.stderr,
                "retention: deleted fully shipped source file",
                &shipper.path(&rel)
            ),
            "{rel}:\n{}",
            finished.stderr
        );
    }
    assert_eq!(raw_files(&shipper), in_raw(&[&day(2), &day(3)]));
    assert_snapshot(&shipper.snapshot(), &snapshot_of(all));
}
