//! `backfill` over the generated multi-day set: exact rows, runs and dead letters; idempotence
//! (twice, copies, `.gz` of shipped files); `--jobs 2` equals `--jobs 1`.

use std::collections::BTreeSet;

use crate::dataset::{expected, multi_day, Form, GenFile};
use crate::harness::{
    assert_dead_letters, assert_private, assert_same, assert_snapshot, gzip_members, Checkpoint,
    Shipper,
};

fn write_all(shipper: &Shipper, files: &[GenFile]) {
    for file in files {
        file.write(shipper);
    }
}

/// The checkpoint of a file shipped to its end: its whole (decompressed) length, every line.
fn at_end(shipper: &Shipper, files: &[GenFile]) -> Vec<Checkpoint> {
    let mut out: Vec<Checkpoint> = files
        .iter()
        .map(|f| Checkpoint { path: shipper.source(&f.rel), offset: f.len(), line_no: f.n_lines() })
        .collect();
    out.sort();
    out
}

#[test]
fn multi_day_set_ships_every_row_run_and_dead_letter_exactly() {
    let shipper = Shipper::new().with_umask_000();
    let (files, runs) = multi_day();
    write_all(&shipper, &files);
    // Not matched by the default sources: never read.
    shipper.write("raw/events_20240101.json", b"not ndjson\n");
    shipper.write("raw/notes.txt", b"{\"run_id\":\"notes\"}\n");

    shipper.backfill(&[]);

    // Run under umask 000, every file the shipper made (DBs, -wal, -shm, DLQ) is still 0640
    // or stricter. (Checked before this test opens any DB itself.)
    let made = shipper.all_files();
    for file in made.iter().filter(|f| f.starts_with("base/db/") || f.starts_with("base/dlq/")) {
        assert_private(&shipper.root().join(file));
    }
    let (want, want_dead) = expected(shipper.base(), &files.iter().collect::<Vec<_>>(), &runs);
    let got = shipper.snapshot();
    assert_snapshot(&got, &want);
    assert_dead_letters(&shipper.dead_letters(), &want_dead);
    assert_eq!(shipper.checkpoints(), at_end(&shipper, &files));

    // One DB per run, named by the escaping, holding exactly its original run_id; nothing
    // anywhere else (a hostile run_id must not name a file outside D/db/runs).
    let want_dbs: BTreeSet<String> = want.runs.iter().map(|r| r.db.clone()).collect();
    assert_eq!(shipper.run_db_names().into_iter().collect::<BTreeSet<_>>(), want_dbs);
    let hostile = ["../x", "a/b", "/", "\0", &"x".repeat(1000), &"z".repeat(4096), " ", "ünï"];
    for run_id in hostile.into_iter().chain(["42", "12345678901234567890"]) {
        assert!(got.runs.iter().any(|r| r.run_id == run_id), "no runs row with run_id {run_id:?}");
    }
    let mut allowed: BTreeSet<String> = files.iter().map(|f| format!("base/{}", f.rel)).collect();
    allowed.extend(["base/raw/events_20240101.json".into(), "base/raw/notes.txt".into()]);
    for suffix in ["", "-wal", "-shm"] {
        allowed.insert(format!("base/db/shipper-state.sqlite{suffix}"));
        allowed.insert(format!("base/db/catalog.sqlite{suffix}"));
        for db in &want_dbs {
            allowed.insert(format!("base/db/runs/{db}{suffix}"));
        }
    }
    let stray: Vec<String> =
        made.into_iter().filter(|f| !allowed.contains(f) && !f.starts_with("base/dlq/")).collect();
    assert!(stray.is_empty(), "files outside the expected layout: {stray:?}");
    for db in &want_dbs {
        // `data` is JSON that SQLite's own functions accept (what analysts query with).
        assert_eq!(shipper.rows_sqlite_rejects(db), Vec::<String>::new(), "{db}");
        assert_eq!(shipper.user_version(db), 3, "{db}");
    }
}

#[test]
fn backfill_twice_changes_nothing() {
    let shipper = Shipper::new();
    let (files, _) = multi_day();
    write_all(&shipper, &files);
    shipper.backfill(&[]);
    let (rows, dlq, checkpoints) = (shipper.snapshot(), shipper.dlq_files(), shipper.checkpoints());

    let second = shipper.backfill(&[]);

    assert!(second.summary().contains(" 0 events written"), "{}", second.summary());
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq, "the DLQ changed");
    assert_eq!(shipper.checkpoints(), checkpoints);
}

#[test]
fn jobs_2_equals_jobs_1() {
    let (files, runs) = multi_day();
    let one = Shipper::new();
    let two = Shipper::new();
    write_all(&one, &files);
    write_all(&two, &files);

    one.backfill(&["--jobs", "1"]);
    two.backfill(&["--jobs", "2"]);

    let (want, want_dead) = expected(two.base(), &files.iter().collect::<Vec<_>>(), &runs);
    assert_snapshot(&two.snapshot(), &want);
    assert_snapshot(
        &two.snapshot().rebased(two.base(), "D"),
        &one.snapshot().rebased(one.base(), "D"),
    );
    let rebase = |s: &Shipper| -> Vec<_> {
        s.dead_letters().iter().map(|d| d.rebased(s.base(), "D")).collect()
    };
    assert_dead_letters(&two.dead_letters(), &want_dead);
    assert_dead_letters(&rebase(&two), &rebase(&one));
    let checkpoints = |s: &Shipper| -> Vec<Checkpoint> {
        let base = s.base().to_str().expect("UTF-8").to_string();
        s.checkpoints()
            .into_iter()
            .map(|c| Checkpoint { path: c.path.replace(&base, "D"), ..c })
            .collect()
    };
    assert_same("checkpoints", &checkpoints(&two), &checkpoints(&one), |c| c.path.clone());
}

#[test]
fn rereading_copies_renames_and_gzips_of_shipped_files_adds_nothing() {
    let shipper = Shipper::new();
    let (files, _) = multi_day();
    write_all(&shipper, &files);
    shipper.backfill(&[]);
    let (rows, dlq) = (shipper.snapshot(), shipper.dlq_files());
    let [_, day1, day2, day3, _] = &files[..] else { panic!("five days") };

    // Under the configured glob: a copy of the plain day, and a `.gz` of it.
    shipper.write("raw/events_20240103-copy.ndjson", day3.bytes());
    shipper.age("raw/events_20240103-copy.ndjson");
    let n = day3.bytes().len();
    shipper.write_gz("raw/events_20240103.ndjson.gz", day3.bytes(), &[n / 2]);
    let again = shipper.backfill(&[]);
    assert!(again.summary().contains(" 0 events written"), "{}", again.summary());
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq, "the DLQ changed");

    // Given explicitly, elsewhere, under other names that keep the producer's date (part of
    // a line's identity): a `.gz` copy of a `.gz`, a decompressed copy of a `.gz` (a rename),
    // and a single-member `.gz` of a plain file.
    let gz_copy =
        shipper.write("elsewhere/events_20240101.copy.gz", &gzip_members(day1.bytes(), &[]));
    let plain_copy = shipper.write("elsewhere/events_20240102.renamed", day2.bytes());
    shipper.age("elsewhere/events_20240102.renamed");
    let gz_of_plain =
        shipper.write("elsewhere/events_20240103.plain.gz", &gzip_members(day3.bytes(), &[]));
    let paths: Vec<&str> = [&gz_copy, &plain_copy, &gz_of_plain]
        .into_iter()
        .map(|p| p.to_str().expect("UTF-8"))
        .collect();
    let again = shipper.backfill(&paths);
    assert!(again.summary().contains(" 0 events written"), "{}", again.summary());
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq, "the DLQ changed");
}

#[test]
fn dead_letter_raw_is_the_lossy_line_cut_to_max_raw_bytes() {
    let shipper = Shipper::new();
    let mut file = GenFile::new("raw/events_20240110.ndjson", Form::Finished);
    // 65,536 bytes into these lines falls inside a two-byte `é`, or inside a run of invalid
    // bytes that lossy decoding turns into three-byte U+FFFD: either way `raw` must stay
    // within 64 KiB.
    file.too_long_of(2 * 1024 * 1024, r#"{"run_id":"r","pad":""#, 'é').bad(
        &[&b"{\"run_id\":\"r\",\"x\":\""[..], &[0xff; 70_000], b"\"}"].concat(),
        "invalid_json",
    );
    file.write(&shipper);

    shipper.backfill(&[]);

    let letters = shipper.dead_letters();
    let too_big: Vec<(u64, usize)> = letters
        .iter()
        .filter(|l| l.raw.len() > 64 * 1024)
        .map(|l| (l.line_no, l.raw.len()))
        .collect();
    assert_eq!(too_big, [], "(line_no, raw bytes) of dead letters whose raw exceeds 64 KiB");
    assert_dead_letters(&letters, &expected(shipper.base(), &[&file], &[]).1);
}

#[test]
fn explicit_files_directories_and_globs_are_shipped_with_absolute_sources() {
    let shipper = Shipper::new();
    let mut by_file = GenFile::new("elsewhere/one/events_20240201.ndjson", Form::Finished);
    by_file.good(r#"{"run_id":"p","event_id":"file"}"#);
    let mut by_dir = GenFile::new("elsewhere/two/events_20240202.ndjson.gz", Form::Gzip);
    by_dir.good(r#"{"run_id":"p","event_id":"dir"}"#);
    let mut by_glob = GenFile::new("elsewhere/three/x_20240203.ndjson", Form::Finished);
    by_glob.good(r#"{"run_id":"p","event_id":"glob"}"#);
    let mut not_given = GenFile::new("raw/events_20240204.ndjson", Form::Finished);
    not_given.good(r#"{"run_id":"p","event_id":"not given"}"#);
    for file in [&by_file, &by_dir, &by_glob, &not_given] {
        file.write(&shipper);
    }

    // Relative to the working directory (the temp root, the parent of D).
    shipper.backfill(&[
        "base/elsewhere/one/events_20240201.ndjson",
        "base/elsewhere/two",
        "base/elsewhere/three/*_20240203.ndjson",
    ]);

    let (want, _) = expected(shipper.base(), &[&by_file, &by_dir, &by_glob], &[]);
    assert_snapshot(&shipper.snapshot(), &want);
}

/// The contract's line identity carries the producer's date: the same id-less line, and the
/// same bad line, at the same line number of two days' files are two rows and two dead
/// letters; a copy of one day's file (another name, same `events_YYYYMMDD`) adds nothing.
#[test]
fn identical_lines_of_two_days_are_two_rows_and_two_letters() {
    let shipper = Shipper::new();
    let day = |n: u32| {
        format!("{{\"run_id\":\"r\",\"event_type\":\"started\",\"n\":1}}\n{{\"run_id\":\"\"}}\n{{\"run_id\":\"r\",\"event_type\":\"day\",\"d\":{n}}}\n")
    };
    for (rel, n) in [("raw/events_20261101.ndjson", 1), ("raw/events_20261102.ndjson", 2)] {
        shipper.write(rel, day(n).as_bytes());
        shipper.age(rel);
    }
    shipper.backfill(&[]);
    let events = shipper.snapshot().events;
    let started: Vec<_> = events.iter().filter(|e| e.data.contains("started")).collect();
    assert_eq!(started.len(), 2, "{events:#?}");
    assert_eq!(events.len(), 4);
    let letters = shipper.dead_letters();
    assert_eq!(letters.len(), 2, "{letters:#?}");
    assert_eq!(
        letters.iter().map(|l| (l.line_no, l.source.clone())).collect::<BTreeSet<_>>(),
        [
            (2, shipper.source("raw/events_20261101.ndjson")),
            (2, shipper.source("raw/events_20261102.ndjson")),
        ]
        .into_iter()
        .collect()
    );

    // A copy under another name of the same day: the same keys, nothing new.
    let copy = "old/events_20261101.ndjson.bak";
    shipper.write(copy, day(1).as_bytes());
    shipper.age(copy);
    shipper.backfill(&[shipper.path(copy).to_str().unwrap()]);
    assert_eq!(shipper.snapshot().events.len(), 4);
    assert_eq!(shipper.dead_letters().len(), 2);
}

/// Backfill takes an idle plain file for finished and ships its unterminated tail; if the file
/// then goes on, that line is read again from its start, whole, with its line number, and the
/// lines after it keep theirs: no half line from the middle (issue 10 #5).
#[test]
fn a_file_that_grows_after_its_tail_was_shipped_is_read_on_from_that_line_start() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240601.ndjson";
    shipper
        .write(rel, b"{\"run_id\":\"r\",\"event_id\":\"a\"}\n{\"run_id\":\"r\",\"event_id\":\"b\"");
    shipper.age(rel);
    shipper.backfill(&[]);
    let letters = shipper.dead_letters();
    assert_eq!(
        letters.iter().map(|l| (l.line_no, l.reason.as_str())).collect::<Vec<_>>(),
        [(2, "incomplete_line")]
    );

    shipper.append(rel, b",\"more\":1}\n{\"run_id\":\"r\",\"event_id\":\"c\"}\n");
    shipper.backfill(&[]);
    let events = shipper.snapshot().events;
    let got: Vec<(String, i64)> = events.iter().map(|e| (e.event_key.clone(), e.line_no)).collect();
    assert_eq!(got, [("a".into(), 1), ("b".into(), 2), ("c".into(), 3)], "{events:#?}");
    assert_eq!(shipper.dead_letters(), letters, "no half line dead-lettered");
    let bytes = std::fs::metadata(shipper.path(rel)).unwrap().len();
    assert_eq!(
        shipper.checkpoints(),
        vec![Checkpoint { path: shipper.source(rel), offset: bytes, line_no: 3 }]
    );
}

/// Issue 10 #3: one file given to `backfill --jobs 2` as itself, a symlink and a hard link is
/// read once, by one reader, under its own name: exact rows, one checkpoint at its end, and
/// its lines counted once.
#[test]
fn jobs_2_reads_a_file_given_under_three_paths_once() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240301.ndjson";
    const LINES: u64 = 10_000; // three spans
    let mut text = String::new();
    for i in 0..LINES {
        text.push_str(&format!("{{\"run_id\":\"r{}\",\"event_id\":\"e{i}\"}}\n", i % 3));
    }
    let file = shipper.write(rel, text.as_bytes());
    for dir in ["alias", "hard"] {
        std::fs::create_dir_all(shipper.path(dir)).unwrap();
    }
    let (link, hard) =
        (shipper.path("alias/events_20240301.ndjson"), shipper.path("hard/events_20240301.ndjson"));
    std::os::unix::fs::symlink(&file, &link).unwrap();
    std::fs::hard_link(&file, &hard).unwrap();
    let args: Vec<String> =
        [&file, &link, &hard].iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut argv = vec!["--jobs", "2"];
    argv.extend(args.iter().map(String::as_str));

    let done = shipper.backfill(&argv);

    let want =
        format!(": 1 files, {LINES} lines, {LINES} events written (0 already stored), 3 runs");
    assert!(done.summary().contains(&want), "{}", done.summary());
    let events = shipper.snapshot().events;
    assert_eq!(events.len() as u64, LINES);
    let source = shipper.source(rel);
    assert!(events.iter().all(|e| e.source == source), "a row under another path");
    let keys: BTreeSet<&str> = events.iter().map(|e| e.event_key.as_str()).collect();
    assert_eq!(keys.len() as u64, LINES);
    let at_end = Checkpoint { path: source, offset: text.len() as u64, line_no: LINES };
    assert_eq!(shipper.checkpoints(), vec![at_end]);
}

/// Issue 10 #9: `--from-start` re-reads every source ignoring checkpoints, `--run` ships one
/// run's records only; neither moves a checkpoint nor writes a dead letter, so a run DB lost
/// to quarantine (here: deleted) comes back exactly while the sources exist.
#[test]
fn from_start_rebuilds_one_run_leaving_checkpoints_dead_letters_and_other_runs_alone() {
    let shipper = Shipper::new();
    let (files, _) = multi_day();
    write_all(&shipper, &files);
    shipper.backfill(&[]);
    let (rows, dlq, checkpoints) = (shipper.snapshot(), shipper.dlq_files(), shipper.checkpoints());
    shipper.remove_db("db/runs/alpha.sqlite");
    shipper.remove_db("db/runs/night.sqlite");

    let usage = shipper.run_cmd(&["backfill"], &["--run", "alpha"]);
    assert_eq!(usage.status.code(), Some(2), "{}", usage.stderr);
    assert!(usage.stderr.contains("--from-start"), "{}", usage.stderr);

    shipper.backfill(&["--from-start", "--run", "alpha"]).assert_success("rebuild alpha");
    let mut without_night = rows.clone();
    without_night.runs.retain(|r| r.run_id != "night");
    without_night.events.retain(|e| e.run_id != "night");
    assert_snapshot(&shipper.snapshot(), &without_night);
    assert_eq!(shipper.dlq_files(), dlq, "a rebuild wrote dead letters");
    assert_eq!(shipper.checkpoints(), checkpoints, "a rebuild moved checkpoints");

    shipper.backfill(&["--from-start", "--run", "night"]).assert_success("rebuild night");
    assert_snapshot(&shipper.snapshot(), &rows);

    // Everything again, every run: nothing changes.
    let again = shipper.backfill(&["--from-start"]);
    assert!(again.summary().contains(" 0 events written"), "{}", again.summary());
    assert_snapshot(&shipper.snapshot(), &rows);
    assert_eq!(shipper.dlq_files(), dlq);
    assert_eq!(shipper.checkpoints(), checkpoints);
}

/// One hot run commits up to `batch_max_events` (16 Ki by default) rows at a time: 5,000
/// events of one run are one commit. With 1 Ki, the old default, two: a run is committed
/// after the reader's batch that filled it, and a batch holds up to 4,096 records.
#[test]
fn one_run_commits_up_to_batch_max_events_rows_at_a_time() {
    let lines: String = (0..5000)
        .map(|i| format!("{{\"run_id\":\"solo\",\"event_type\":\"e\",\"n\":{i}}}\n"))
        .collect();
    for (toml, want_commits) in [("", 1i64), ("[output]\nbatch_max_events = 1024\n", 2)] {
        let shipper = Shipper::with_config(toml);
        shipper.write("raw/events_20240301.ndjson", lines.as_bytes());
        shipper.backfill(&[]);
        assert_eq!(shipper.run_db_names(), ["solo.sqlite"]);
        let db = rusqlite::Connection::open(shipper.path("db/runs/solo.sqlite")).unwrap();
        let got: (i64, i64) = db
            .query_row("SELECT (SELECT count(*) FROM events), commits FROM runs", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(got, (5000, want_commits), "events and commits with config {toml:?}");
    }
}
