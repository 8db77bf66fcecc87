//! Issue 4's upkeep tools through the real binary: `dlq replay` with a changed mapping (exact
//! rows added, exact DLQ bytes left, a second replay a no-op, later appends intact), replay
//! killed at many points (nothing lost or doubled, the final state exact), `maintain`
//! retention, and a corrupt run DB quarantined while other runs are untouched.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use serde_json::json;

use crate::dataset::run_row;
use crate::harness::{
    assert_snapshot, db_file_name, line_key, DeadLetter, EventRow, Running, Shipper, Snapshot,
};

/// Writes `lines` (newline-terminated) to `D/<rel>`, aged so `backfill` treats it as finished.
fn write_lines(shipper: &Shipper, rel: &str, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    shipper.write(rel, text.as_bytes());
    shipper.age(rel);
}

fn set_config(shipper: &Shipper, toml: &str) {
    std::fs::write(shipper.root().join("config.toml"), format!("base = \"base\"\n{toml}"))
        .expect("rewrite config");
}

fn replay(shipper: &Shipper, args: &[&str]) -> String {
    let done = shipper.run_cmd(&["dlq", "replay"], args);
    done.assert_success("dlq replay");
    done.stdout
}

fn event(
    shipper: &Shipper,
    rel: &str,
    line_no: u64,
    run: &str,
    key: String,
    text: &str,
) -> EventRow {
    let value: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let column = |k: &str| match value.get(k) {
        Some(serde_json::Value::String(s)) => SqlValue::Text(s.clone()),
        Some(serde_json::Value::Number(n)) => SqlValue::Integer(n.as_i64().expect("int")),
        _ => SqlValue::Null,
    };
    EventRow {
        db: db_file_name(run),
        event_key: key,
        run_id: run.into(),
        event_type: column("event_type"),
        ts: column("ts"),
        data: text.into(),
        source: shipper.source(rel),
        line_no: line_no as i64,
    }
}

/// DLQ lines (all files, in order) with their parsed `line_no` and `source`.
fn dlq_lines(shipper: &Shipper) -> Vec<(String, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for (_, bytes) in shipper.dlq_files() {
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let v: serde_json::Value = serde_json::from_slice(line).expect("DLQ line is JSON");
            let source = v["source"].as_str().expect("source").to_string();
            out.push((source, v["line_no"].as_u64().expect("line_no"), line.to_vec()));
        }
    }
    out
}

/// What the next process does after a kill -9, through `maintain` (which opens, migrates and
/// checkpoints every run DB): a `-wal` is recovered and a DB created but not yet migrated gets
/// its schema, so the harness's read-only snapshot can read them.
fn recover_run_dbs(shipper: &Shipper) {
    shipper.run_cmd(&["maintain"], &[]).assert_success("maintain");
}

#[test]
fn replay_ships_what_the_new_mapping_accepts_and_keeps_the_rest_byte_for_byte() {
    let limits = "[sources]\nmax_line_bytes = \"1KiB\"\n[dlq]\nmax_raw_bytes = \"128B\"\n";
    let shipper = Shipper::with_config(limits);
    let day1 = "raw/events_20240201.ndjson";
    let day2 = "raw/events_20240202.ndjson";
    let long_job = format!(r#"{{"job":"c","pad":"{}"}}"#, "p".repeat(200));
    let l1: Vec<String> = vec![
        r#"{"run_id":"a","event_id":"e1"}"#.into(), // 1 shipped at once
        r#"{"job":"b","event_id":"e2","v":1}"#.into(), // 2 missing_run_id → b
        r#"{"job":"b","ts":3,"event_type":"fetch"}"#.into(), // 3 missing_run_id → b, line key
        r#"{"job":"b","record_type":"run","status":"done"}"#.into(), // 4 → b's runs row
        "{bad".into(),                              // 5 invalid_json, stays
        r#"{"nothing":1}"#.into(),                  // 6 missing_run_id, stays
        long_job.clone(),                           // 7 raw cut to 128B, stays
    ];
    let l2: Vec<String> = vec![r#"{"job":"b","event_id":"e2","v":2}"#.into()]; // later e2 wins
    write_lines(&shipper, day1, &l1);
    write_lines(&shipper, day2, &l2);
    shipper.backfill(&[]);
    let reasons: Vec<(u64, String)> =
        shipper.dead_letters().iter().map(|d| (d.line_no, d.reason.clone())).collect();
    assert_eq!(
        reasons,
        vec![
            (2, "missing_run_id".to_string()),
            (3, "missing_run_id".into()),
            (4, "missing_run_id".into()),
            (5, "invalid_json".into()),
            (6, "missing_run_id".into()),
            (7, "missing_run_id".into()),
            (1, "missing_run_id".into()), // day 2
        ]
    );
    let before = shipper.snapshot();
    let dlq_before = dlq_lines(&shipper);

    // The new mapping: run_id is `job`.
    set_config(&shipper, &format!("{limits}[mapping]\nrun_id = \"job\"\n"));
    // Filtered to a reason the new mapping does not fix: nothing moves.
    let out = replay(&shipper, &["--reason", "invalid_json"]);
    assert!(out.contains("1 considered, 0 shipped"), "{out}");
    assert_eq!(shipper.snapshot(), before);
    assert_eq!(dlq_lines(&shipper), dlq_before);

    let out = replay(&shipper, &[]);
    assert!(out.contains("7 considered, 4 shipped"), "{out}");
    let mut want = before.clone();
    want.events.push(event(&shipper, day2, 1, "b", "e2".into(), &l2[0]));
    want.events.push(event(&shipper, day1, 3, "b", line_key(day1, 3, l1[2].as_bytes()), &l1[2]));
    want.runs.push(run_row("b", json!({"job":"b","record_type":"run","status":"done"})));
    want.sort();
    assert_snapshot(&shipper.snapshot(), &want);
    let removed: BTreeSet<(String, u64)> = [(day1, 2), (day1, 3), (day1, 4), (day2, 1)]
        .iter()
        .map(|(r, n)| (shipper.source(r), *n))
        .collect();
    let kept: Vec<_> = dlq_before
        .iter()
        .filter(|(s, n, _)| !removed.contains(&(s.clone(), *n)))
        .cloned()
        .collect();
    assert_eq!(dlq_lines(&shipper), kept, "kept letters byte for byte, in order");

    // Again: a no-op.
    let out = replay(&shipper, &[]);
    assert!(out.contains("3 considered, 0 shipped"), "{out}");
    assert_snapshot(&shipper.snapshot(), &want);
    assert_eq!(dlq_lines(&shipper), kept);

    // The rewritten file's committed length is right: new dead letters append after the kept
    // ones, and a restart (which cuts to the committed length) keeps everything.
    let day3 = "raw/events_20240203.ndjson";
    write_lines(&shipper, day3, &["[1]".to_string()]);
    shipper.backfill(&[]);
    shipper.backfill(&[]);
    let letters = dlq_lines(&shipper);
    assert_eq!(letters.len(), kept.len() + 1);
    assert_eq!(letters[..kept.len()], kept[..]);
    assert_eq!((letters[kept.len()].0.clone(), letters[kept.len()].1), (shipper.source(day3), 1));
}

#[test]
fn replay_killed_at_any_point_loses_and_doubles_nothing() {
    let shipper = Shipper::with_config("");
    let rel = "raw/events_20240301.ndjson";
    let n = 3000u64;
    let lines: Vec<String> = (1..=n)
        .map(|i| {
            if i.is_multiple_of(10) {
                format!(r#"{{"nope":{i}}}"#) // never has a run
            } else {
                format!(r#"{{"job":"run-{}","seq":{i}}}"#, i % 40)
            }
        })
        .collect();
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    assert_eq!(shipper.dead_letters().len() as u64, n);
    set_config(&shipper, "[mapping]\nrun_id = \"job\"\n");

    // Every line is in exactly one place, whenever replay is killed.
    let check_no_loss = |shipper: &Shipper| {
        recover_run_dbs(shipper);
        let in_dlq: Vec<u64> = dlq_lines(shipper).iter().map(|(_, n, _)| *n).collect();
        let dlq_set: BTreeSet<u64> = in_dlq.iter().copied().collect();
        assert_eq!(dlq_set.len(), in_dlq.len(), "a dead letter is doubled");
        let snapshot = shipper.snapshot();
        let db_set: BTreeSet<u64> = snapshot.events.iter().map(|e| e.line_no as u64).collect();
        assert_eq!(db_set.len(), snapshot.events.len(), "an event is doubled");
        for line_no in 1..=n {
            assert!(dlq_set.contains(&line_no) || db_set.contains(&line_no), "line {line_no} lost");
        }
        eprintln!("killed: {} in DLQ, {} in run DBs", dlq_set.len(), db_set.len());
    };
    for delay_ms in [0u64, 3, 8, 15, 25, 40, 60, 90, 130, 180, 250, 350] {
        let mut running = Running::spawn(shipper.command(&["dlq", "replay"], &[]));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = running.try_status().is_some();
        running.kill9();
        check_no_loss(&shipper);
        if finished && delay_ms > 100 {
            break;
        }
    }
    replay(&shipper, &[]);
    check_no_loss(&shipper);

    let mut want = Snapshot::default();
    for (i, text) in lines.iter().enumerate() {
        let line_no = i as u64 + 1;
        if !line_no.is_multiple_of(10) {
            let run = format!("run-{}", line_no % 40);
            want.events.push(event(
                &shipper,
                rel,
                line_no,
                &run,
                line_key(rel, line_no, text.as_bytes()),
                text,
            ));
        }
    }
    let runs: BTreeSet<String> = want.events.iter().map(|e| e.run_id.clone()).collect();
    want.runs = runs.iter().map(|r| run_row(r, json!({}))).collect();
    want.sort();
    assert_snapshot(&shipper.snapshot(), &want);
    let left: Vec<DeadLetter> = shipper.dead_letters();
    let left_lines: Vec<u64> = left.iter().map(|d| d.line_no).collect();
    assert_eq!(left_lines, (1..=n).filter(|i| i.is_multiple_of(10)).collect::<Vec<_>>());
    // No temp file is left behind.
    let stray: Vec<String> =
        shipper.all_files().into_iter().filter(|f| f.ends_with(".rewrite")).collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn maintain_deletes_run_dbs_past_max_age_with_their_wal_and_shm() {
    let shipper = Shipper::with_config("[retention]\nmax_age = \"2d\"\n");
    let rel = "raw/events_20240401.ndjson";
    let lines: Vec<String> =
        ["old1", "old2", "fresh"].iter().map(|r| format!(r#"{{"run_id":"{r}"}}"#)).collect();
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    let runs_dir = shipper.path("db/runs");
    let past = SystemTime::now() - Duration::from_secs(3 * 86_400);
    for run in ["old1", "old2"] {
        let db = runs_dir.join(format!("{run}.sqlite"));
        // A leftover -wal/-shm must go with its DB.
        std::fs::write(runs_dir.join(format!("{run}.sqlite-shm")), b"").expect("shm");
        for path in [db.clone(), runs_dir.join(format!("{run}.sqlite-shm"))] {
            let f = std::fs::File::options().write(true).open(&path).expect("open");
            f.set_modified(past).expect("set mtime");
        }
    }
    let done = shipper.run_cmd(&["maintain"], &["--vacuum"]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("retention deleted 2 run DBs"), "{}{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("1 run DBs checkpointed and vacuumed"), "{}", done.stdout);
    assert!(done.stderr.contains("retention: deleted run DB"), "{}", done.stderr);
    let left: Vec<String> = std::fs::read_dir(&runs_dir)
        .expect("runs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("old"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(shipper.run_db_names(), vec!["fresh.sqlite".to_string()]);
    // Idempotent.
    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("retention deleted 0 run DBs"), "{}", done.stdout);
}

#[test]
fn a_corrupt_run_db_is_moved_aside_and_the_run_continues_in_a_fresh_one() {
    let shipper = Shipper::new();
    let day1 = "raw/events_20240501.ndjson";
    let day2 = "raw/events_20240502.ndjson";
    let l1: Vec<String> = vec![
        r#"{"run_id":"a","event_id":"a1"}"#.into(),
        r#"{"run_id":"b","event_id":"b1"}"#.into(),
    ];
    write_lines(&shipper, day1, &l1);
    shipper.backfill(&[]);
    let runs_dir = shipper.path("db/runs");
    let garbage = vec![0x5Au8; 4096];
    std::fs::write(runs_dir.join("a.sqlite"), &garbage).expect("corrupt a");
    let l2: Vec<String> = vec![r#"{"run_id":"a","event_id":"a2"}"#.into()];
    write_lines(&shipper, day2, &l2);
    let done = shipper.backfill(&[shipper.path(day2).to_str().expect("UTF-8")]);
    assert!(done.stderr.contains("run DB is corrupt"), "{}", done.stderr);
    assert!(done.stderr.contains("ERROR"), "{}", done.stderr);

    let mut want = Snapshot::default();
    want.events.push(event(&shipper, day2, 1, "a", "a2".into(), &l2[0]));
    want.events.push(event(&shipper, day1, 2, "b", "b1".into(), &l1[1]));
    want.runs = vec![run_row("a", json!({})), run_row("b", json!({}))];
    want.sort();
    assert_snapshot(&shipper.snapshot(), &want);
    let moved: Vec<String> = std::fs::read_dir(&runs_dir)
        .expect("runs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("a.sqlite.corrupt-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(std::fs::read(runs_dir.join(&moved[0])).expect("read"), garbage, "kept as it was");
}

#[test]
fn maintain_checkpoints_and_optimizes_the_state_db_too() {
    let shipper = Shipper::new();
    write_lines(&shipper, "raw/events_20240601.ndjson", &[r#"{"run_id":"a"}"#.to_string()]);
    shipper.backfill(&[]);
    // Another connection (as the daemon's would be) keeps the next process's close from
    // checkpointing and deleting the state DB's WAL: only the last connection does that.
    let state = shipper.path("db/shipper-state.sqlite");
    let holder = rusqlite::Connection::open(&state).expect("open state DB");
    holder.query_row("SELECT count(*) FROM files", [], |_| Ok(())).expect("read");
    write_lines(&shipper, "raw/events_20240602.ndjson", &[r#"{"run_id":"a"}"#.to_string()]);
    shipper.backfill(&[]);
    let wal = shipper.path("db/shipper-state.sqlite-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(wal_len() > 0, "the test needs a state DB WAL with frames in it");

    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("state DB checkpointed"), "{}", done.stdout);
    assert_eq!(wal_len(), 0, "state DB WAL not truncated");
    // And the run DBs' (what `PRAGMA optimize` writes included).
    let run_wal = shipper.path("db/runs/a.sqlite-wal");
    assert_eq!(std::fs::metadata(&run_wal).map_or(0, |m| m.len()), 0, "run DB WAL not truncated");
    // Nothing was lost in the move from WAL to DB.
    let files: i64 =
        holder.query_row("SELECT count(*) FROM files", [], |r| r.get(0)).expect("count");
    assert_eq!(files, 2);
}

/// Every command that uses the state DB, with what it needs to get that far.
const STATE_DB_COMMANDS: &[&[&str]] = &[
    &["run"],
    &["backfill"],
    &["status"],
    &["status", "--json"],
    &["maintain"],
    &["dlq", "replay"],
];

#[test]
fn a_corrupt_state_db_stops_every_command_with_exit_2_and_moving_it_aside_duplicates_nothing() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240601.ndjson";
    let lines: Vec<String> = vec![
        r#"{"run_id":"a","event_id":"a1"}"#.into(),
        "{bad".into(),
        r#"{"run_id":"a","ts":2}"#.into(),
        "[4]".into(),
    ];
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    let rows = shipper.snapshot();
    let dlq = shipper.dlq_files();
    assert_eq!(shipper.dead_letters().len(), 2);
    let state = shipper.path("db/shipper-state.sqlite");
    let healthy = std::fs::read(&state).expect("read state DB");
    assert!(!shipper.path("db/shipper-state.sqlite-wal").exists(), "closed cleanly");

    // Not a database at all (SQLITE_NOTADB), and a valid header over a garbled schema page
    // (SQLITE_CORRUPT).
    let not_a_db = vec![0x5Au8; 8192];
    let mut garbled = healthy.clone();
    garbled[100..4096].fill(0x5A);
    for (what, bytes) in [("not a database", &not_a_db), ("corrupt", &garbled)] {
        std::fs::write(&state, bytes).expect("corrupt the state DB");
        for args in STATE_DB_COMMANDS {
            let done = shipper.run_cmd(args, &[]);
            let context = format!("{what}: {args:?}\nstderr:\n{}", done.stderr);
            assert_eq!(done.status.code(), Some(2), "{context}");
            let errors: Vec<&str> =
                done.stderr.lines().filter(|l| l.starts_with("jsonl-shipper: error:")).collect();
            assert_eq!(errors.len(), 1, "{context}");
            let path = state.to_str().expect("UTF-8");
            for needle in [path, "is corrupt or not a SQLite database", "Move it aside", "mv "] {
                assert!(errors[0].contains(needle), "no {needle:?}: {context}");
            }
            assert_eq!(&std::fs::read(&state).expect("read"), bytes, "left as it is: {context}");
        }
    }
    // Nothing else was touched, nothing was created beside it.
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq);
    let beside: Vec<String> = shipper
        .all_files()
        .into_iter()
        .filter(|f| f.starts_with("base/db/shipper-state") && f != "base/db/shipper-state.sqlite")
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // What the message says to do: move it aside and start again. Every source is read again
    // from the start; no row and no dead letter is written twice.
    std::fs::rename(&state, shipper.path("db/shipper-state.sqlite.corrupt")).expect("mv");
    let done = shipper.backfill(&[]);
    assert!(done.stderr.contains("adopted a DLQ file"), "{}", done.stderr);
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq, "DLQ unchanged byte for byte");
    let size = std::fs::metadata(shipper.path(rel)).expect("stat").len();
    assert_eq!(
        shipper.checkpoints(),
        vec![crate::harness::Checkpoint { path: shipper.source(rel), offset: size, line_no: 4 }]
    );
    // Later dead letters append after the adopted ones.
    shipper.append(rel, b"{bad5\n");
    shipper.age(rel);
    shipper.backfill(&[]);
    let letters = shipper.dead_letters();
    assert_eq!(letters.iter().map(|d| d.line_no).collect::<Vec<_>>(), vec![2, 4, 5]);
    assert!(shipper.dlq_files()[0].1.starts_with(&dlq[0].1));
}

#[test]
fn a_version_1_state_db_is_migrated_in_place_and_its_checkpoints_are_resumed() {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let shipper = Shipper::new();
    let rel = "raw/events_20240701.ndjson";
    let lines: Vec<String> =
        (1..=3).map(|i| format!(r#"{{"run_id":"a","event_id":"e{i}"}}"#)).collect();
    write_lines(&shipper, rel, &lines);
    let bytes = std::fs::read(shipper.path(rel)).expect("read");
    let meta = std::fs::metadata(shipper.path(rel)).expect("stat");
    // Shipped through line 2 by a version that wrote state schema 1 (the schema as it was,
    // written out here so that later edits of the migrations cannot change the fixture).
    let offset = lines[0].len() + lines[1].len() + 2;
    let state = shipper.path("db/shipper-state.sqlite");
    std::fs::create_dir_all(state.parent().expect("parent")).expect("db dir");
    let v1 = rusqlite::Connection::open(&state).expect("create fixture");
    v1.execute_batch(
        "CREATE TABLE files (
            dev INTEGER NOT NULL, ino INTEGER NOT NULL, path TEXT NOT NULL,
            gzip INTEGER NOT NULL DEFAULT 0, offset INTEGER NOT NULL DEFAULT 0,
            line_no INTEGER NOT NULL DEFAULT 0, head_len INTEGER NOT NULL DEFAULT 0,
            head_hash BLOB, tail_hash BLOB, size INTEGER, first_seen_at INTEGER NOT NULL,
            last_read_at INTEGER, PRIMARY KEY (dev, ino));
         CREATE TABLE dlq_files (name TEXT PRIMARY KEY, committed_len INTEGER NOT NULL);
         CREATE TABLE dlq_keys (key BLOB PRIMARY KEY, file TEXT NOT NULL, reason TEXT NOT NULL)
            WITHOUT ROWID;
         PRAGMA user_version = 1;",
    )
    .expect("schema 1");
    let hash = Sha256::digest(&bytes[..offset]).to_vec();
    v1.execute(
        "INSERT INTO files (dev, ino, path, offset, line_no, head_len, head_hash, tail_hash,
            size, first_seen_at, last_read_at) VALUES (?1, ?2, ?3, ?4, 2, ?4, ?5, ?5, ?6, 0, 0)",
        rusqlite::params![
            meta.dev() as i64,
            meta.ino() as i64,
            shipper.source(rel),
            offset as i64,
            hash,
            bytes.len() as i64
        ],
    )
    .expect("checkpoint row");
    drop(v1);

    shipper.backfill(&[]);
    // Only line 3 was read: the checkpoint survived the migration.
    let mut want = Snapshot::default();
    want.events.push(event(&shipper, rel, 3, "a", "e3".into(), &lines[2]));
    want.runs.push(run_row("a", json!({})));
    assert_snapshot(&shipper.snapshot(), &want);
    let want_cp = vec![crate::harness::Checkpoint {
        path: shipper.source(rel),
        offset: bytes.len() as u64,
        line_no: 3,
    }];
    assert_eq!(shipper.checkpoints(), want_cp);
    let conn = rusqlite::Connection::open(&state).expect("open state DB");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    // 4 since issue 12 (the sinks' cursors, `sink_files`), 5 with the sink's error times:
    // every migration applied in turn.
    assert_eq!(version, 5);
    // Only that the version 5 columns exist: the query fails otherwise (the v1 fixture has no
    // sink, so no sink_status row to carry them).
    let times: Option<i64> = conn
        .query_row("SELECT max(last_error_at) + max(recovered_at) FROM sink_status", [], |r| {
            r.get(0)
        })
        .expect("the version 5 columns");
    assert_eq!(times, None);
    let sink_files: i64 =
        conn.query_row("SELECT count(*) FROM sink_files", [], |r| r.get(0)).expect("sink_files");
    assert_eq!(sink_files, 0);
    let pending: i64 = conn
        .query_row("SELECT count(*) FROM dlq_rekey_pending", [], |r| r.get(0))
        .expect("the version 3 table");
    assert_eq!(pending, 0, "dead-letter keys rekeyed at the first start");
    let rewrites: i64 = conn
        .query_row("SELECT count(*) FROM dlq_rewrites", [], |r| r.get(0))
        .expect("the version 2 table");
    assert_eq!(rewrites, 0);
    drop(conn);
    // Idempotent: a second start migrates nothing and reads nothing.
    shipper.backfill(&[]);
    assert_snapshot(&shipper.snapshot(), &want);
    assert_eq!(shipper.checkpoints(), want_cp);
}

#[test]
fn dlq_list_shows_every_letter_and_filters_by_reason() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240801.ndjson";
    let lines: Vec<String> =
        vec![r#"{"run_id":"a"}"#.into(), "{bad".into(), "[3]".into(), r#"{"nothing":4}"#.into()];
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    let in_files: Vec<serde_json::Value> = dlq_lines(&shipper)
        .iter()
        .map(|(_, _, bytes)| serde_json::from_slice(bytes).expect("JSON"))
        .collect();
    assert_eq!(in_files.len(), 3);
    let list = |args: &[&str]| {
        let done = shipper.run_cmd(&["dlq", "list"], args);
        done.assert_success("dlq list");
        done.stdout
    };
    let json_lines = |out: String| -> Vec<serde_json::Value> {
        out.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect()
    };
    // --json: the contract's objects, exactly what the DLQ files hold, in order.
    assert_eq!(json_lines(list(&["--json"])), in_files);
    assert_eq!(json_lines(list(&["--json", "--reason", "not_object"])), vec![in_files[1].clone()]);
    assert_eq!(
        json_lines(list(&["--json", "--reason", "line_too_long"])),
        Vec::<serde_json::Value>::new()
    );
    // Text: one line per letter naming where it came from and why.
    let text = list(&["--reason", "missing_run_id"]);
    assert_eq!(text.lines().count(), 1, "{text}");
    let line = text.lines().next().expect("a line");
    let source = shipper.source(rel);
    let offset = lines[0].len() + lines[1].len() + lines[2].len() + 3;
    assert!(line.contains(&format!("{source}:{offset} (line 4) missing_run_id")), "{line}");
    // An unknown reason is a usage error naming the valid ones.
    let done = shipper.run_cmd(&["dlq", "list"], &["--reason", "nope"]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stderr.contains("invalid_json"), "{}", done.stderr);
}

/// Issue 10 #18: the text listing shows the bad line itself, cut to a terminal's width and with
/// control characters escaped (a raw line must not drive the terminal); `--json` keeps it whole.
#[test]
fn dlq_list_text_shows_the_bad_line_cut_and_escaped() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240802.ndjson";
    let long = format!(r#"{{"x":"{}"}}"#, "a".repeat(300));
    let lines: Vec<String> = vec![long.clone(), "{bad\u{1b}[31m\tx".into()];
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    let done = shipper.run_cmd(&["dlq", "list"], &[]);
    done.assert_success("dlq list");
    let text: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(text.len(), 2, "{}", done.stdout);
    // The first 100 characters of the line, then how long it was.
    let cut = format!(" | {}… ({} bytes)", &long[..100], long.len());
    assert!(text[0].contains("missing_run_id: ") && text[0].ends_with(&cut), "{}", text[0]);
    assert!(text[1].contains("invalid_json: "), "{}", text[1]);
    assert!(text[1].ends_with(r" | {bad\u{1b}[31m\tx"), "{}", text[1]);
    assert!(!done.stdout.contains('\u{1b}') && !done.stdout.contains('\t'), "{}", done.stdout);
    // --json: every letter's whole `raw`.
    let raws: Vec<String> =
        done_json(&shipper).iter().map(|v| v["raw"].as_str().expect("raw").to_owned()).collect();
    assert_eq!(raws, lines);
}

fn done_json(shipper: &Shipper) -> Vec<serde_json::Value> {
    let done = shipper.run_cmd(&["dlq", "list"], &["--json"]);
    done.assert_success("dlq list --json");
    done.stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect()
}

#[test]
fn maintain_deletes_the_oldest_run_dbs_while_all_exceed_max_total_size() {
    let shipper = Shipper::with_config("");
    let rel = "raw/events_20240901.ndjson";
    let lines: Vec<String> =
        ["a", "b", "c"].iter().map(|r| format!(r#"{{"run_id":"{r}"}}"#)).collect();
    write_lines(&shipper, rel, &lines);
    shipper.backfill(&[]);
    let runs_dir = shipper.path("db/runs");
    // Last writes: a three hours ago, b two, c one.
    let mut sizes = Vec::new();
    for (run, hours) in [("a", 3), ("b", 2), ("c", 1)] {
        let db = runs_dir.join(format!("{run}.sqlite"));
        let f = std::fs::File::options().write(true).open(&db).expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(hours * 3600)).expect("mtime");
        assert!(!runs_dir.join(format!("{run}.sqlite-wal")).exists(), "closed by the backfill");
        sizes.push(f.metadata().expect("stat").len());
    }
    // Room for two: the oldest goes, whatever its name.
    let limit = sizes[1] + sizes[2];
    shipper.set_config(&format!("[retention]\nmax_total_size = \"{limit}B\"\n"));
    let done = shipper.run_cmd(&["maintain"], &[]);
    done.assert_success("maintain");
    assert!(done.stdout.contains("retention deleted 1 run DBs"), "{}", done.stdout);
    assert!(done.stderr.contains("MaxTotalSize"), "{}", done.stderr);
    assert_eq!(shipper.run_db_names(), vec!["b.sqlite".to_string(), "c.sqlite".to_string()]);
}

/// `dlq replay` aborted at each of its steps (crash points "replay.after_ship": letters in
/// their run DBs, the DLQ untouched; "replay.after_intent": rewrite intents committed, files
/// not renamed), then run again: the rows, the letters left and the next replay are exactly
/// those of one uninterrupted replay.
#[test]
fn dlq_replay_aborted_at_each_step_then_run_again_equals_one_replay() {
    for point in ["replay.after_ship", "replay.after_intent"] {
        let shipper = Shipper::with_config("");
        let rel = "raw/events_20240201.ndjson";
        let lines: Vec<String> = vec![
            r#"{"job":"b","event_id":"e2","v":1}"#.into(),
            r#"{"job":"b","ts":3,"event_type":"fetch"}"#.into(),
            r#"{"job":"b","record_type":"run","status":"done"}"#.into(),
            "{bad".into(),
        ];
        write_lines(&shipper, rel, &lines);
        shipper.backfill(&[]);
        assert_eq!(shipper.dead_letters().len(), 4);
        set_config(&shipper, "[mapping]\nrun_id = \"job\"\n");

        let mut command = shipper.command(&["dlq", "replay"], &[]);
        command.env("JSONL_SHIPPER_CRASH_AT", point);
        let crashed = crate::harness::Running::spawn(command).wait();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(crashed.status.signal(), Some(libc::SIGABRT), "{point}: {}", crashed.stderr);

        let out = replay(&shipper, &[]);
        let mut want = Snapshot::default();
        want.events.push(event(&shipper, rel, 1, "b", "e2".into(), &lines[0]));
        want.events.push(event(
            &shipper,
            rel,
            2,
            "b",
            line_key(rel, 2, lines[1].as_bytes()),
            &lines[1],
        ));
        want.runs.push(run_row("b", json!({"job":"b","record_type":"run","status":"done"})));
        want.sort();
        assert_snapshot(&shipper.snapshot(), &want);
        let left: Vec<(u64, String)> =
            shipper.dead_letters().iter().map(|d| (d.line_no, d.reason.clone())).collect();
        assert_eq!(left, [(4, "invalid_json".to_string())], "{point}: {out}");
        let again = replay(&shipper, &[]);
        assert!(again.contains("1 considered, 0 shipped"), "{point}: {again}");
        assert_snapshot(&shipper.snapshot(), &want);
    }
}
