//! The WAL checkpoint loop: DBs written recently are checkpointed, idle ones are checkpointed
//! (TRUNCATE) and closed so a finished run is one file, and a reader that pins the WAL is
//! reported without stopping the shipping.

use std::time::Duration;

use crate::harness::{wait_until, Shipper, DEADLINE};

const FAST_MAINTENANCE: &str =
    "[output]\nidle_close_after = \"300ms\"\nbatch_max_delay = \"20ms\"\n\
                                [sqlite]\ncheckpoint_interval = \"100ms\"\n";

/// Rows of one run DB; -1 while the DBs cannot be read (one being created or deleted).
fn count_rows(shipper: &Shipper, db: &str) -> i64 {
    shipper.try_snapshot().map_or(-1, |s| s.events.iter().filter(|e| e.db == db).count() as i64)
}

#[test]
fn idle_run_dbs_are_checkpointed_and_closed_leaving_one_file() {
    let shipper = Shipper::with_config(FAST_MAINTENANCE);
    shipper.write("raw/events_20240301.ndjson", b"");
    let daemon = shipper.spawn_run();
    let mut lines = String::new();
    for i in 0..50 {
        lines.push_str(&format!("{{\"run_id\":\"r1\",\"event_id\":\"e{i}\"}}\n"));
    }
    shipper.append("raw/events_20240301.ndjson", lines.as_bytes());
    wait_until(DEADLINE, "50 rows in r1", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 50)
    });
    let wal = shipper.path("db/runs/r1.sqlite-wal");
    let shm = shipper.path("db/runs/r1.sqlite-shm");
    wait_until(DEADLINE, "the idle DB's WAL and shm to be removed", || {
        !wal.exists() && !shm.exists()
    });
    // Still followed: a later append reopens the DB.
    shipper.append("raw/events_20240301.ndjson", b"{\"run_id\":\"r1\",\"event_id\":\"late\"}\n");
    wait_until(DEADLINE, "the late row", || count_rows(&shipper, "r1.sqlite") == 51);
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(!wal.exists(), "WAL left after shutdown");
}

#[test]
fn a_reader_pinning_the_wal_is_reported_and_shipping_continues() {
    let addr = crate::ops::free_port();
    let shipper = Shipper::with_config(&format!(
        "[metrics]\nlisten = \"{addr}\"\n\
         [output]\nidle_close_after = \"1h\"\nbatch_max_delay = \"20ms\"\n\
         [sqlite]\ncheckpoint_interval = \"100ms\"\n"
    ));
    shipper.write("raw/events_20240301.ndjson", b"{\"run_id\":\"r1\",\"event_id\":\"a\"}\n");
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first row", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 1)
    });
    // An analyst's long read transaction: it pins the WAL's current snapshot.
    let reader = rusqlite::Connection::open(shipper.path("db/runs/r1.sqlite")).unwrap();
    reader.execute_batch("BEGIN; SELECT count(*) FROM events;").unwrap();
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"run_id\":\"r1\",\"event_id\":\"b{i}\",\"pad\":\"{}\"}}\n",
            "x".repeat(200)
        ));
    }
    shipper.append("raw/events_20240301.ndjson", lines.as_bytes());
    wait_until(DEADLINE, "201 rows while a reader holds a snapshot", || {
        count_rows(&shipper, "r1.sqlite") == 201
    });
    wait_until(DEADLINE, "the blocked checkpoint to be reported", || {
        daemon.stderr_so_far().contains("WAL checkpoint blocked by a reader")
    });
    wait_until(DEADLINE, "the blocked checkpoint to be counted", || {
        crate::ops::metric(addr, "jsonl_shipper_wal_checkpoints_blocked_total")
            .is_some_and(|n| n >= 1.0)
    });
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    // Still open at shutdown (idle_close_after is an hour): its WAL was truncated on the way
    // out.
    let wal = shipper.path("db/runs/r1.sqlite-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "WAL left after shutdown");
}

#[test]
fn the_daemon_deletes_run_dbs_older_than_max_age_and_keeps_shipping() {
    let shipper = Shipper::with_config(
        "[output]\nidle_close_after = \"200ms\"\nbatch_max_delay = \"20ms\"\n\
         [sqlite]\ncheckpoint_interval = \"100ms\"\n\
         [retention]\nmax_age = \"1h\"\ncheck_interval = \"200ms\"\n",
    );
    shipper.write("raw/events_20240301.ndjson", b"{\"run_id\":\"old\",\"event_id\":\"a\"}\n");
    let daemon = shipper.spawn_run();
    let old_db = shipper.path("db/runs/old.sqlite");
    wait_until(DEADLINE, "the old run's row, then its DB closed by the daemon", || {
        count_rows(&shipper, "old.sqlite") == 1 && daemon.read_position(&old_db).is_none()
    });
    // Its last write was two hours ago.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old_db)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    if !crate::harness::poll_until(DEADLINE, || !old_db.exists()) {
        panic!("retention did not delete the old run DB:\n{}", daemon.stderr_so_far());
    }
    shipper.append("raw/events_20240301.ndjson", b"{\"run_id\":\"new\",\"event_id\":\"b\"}\n");
    wait_until(DEADLINE, "the new run's row", || count_rows(&shipper, "new.sqlite") == 1);
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(!old_db.exists(), "the deleted run DB came back");
}

/// Issue 10 #17: a run DB past `max_age` that the daemon's own writer still holds open (idle
/// far below `idle_close_after`) is deleted: the writer lets go of it when retention asks. It
/// stays deleted, and a later line of that run starts a fresh DB.
#[test]
fn retention_deletes_an_old_run_db_its_own_writer_holds_open() {
    let shipper = Shipper::with_config(
        "[output]\nidle_close_after = \"1h\"\nbatch_max_delay = \"20ms\"\n\
         [sqlite]\ncheckpoint_interval = \"1h\"\n\
         [retention]\nmax_age = \"1h\"\ncheck_interval = \"200ms\"\n",
    );
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, b"{\"run_id\":\"old\",\"event_id\":\"a\"}\n");
    let daemon = shipper.spawn_run();
    let old_db = shipper.path("db/runs/old.sqlite");
    wait_until(DEADLINE, "the old run's row, its DB held open by the daemon", || {
        count_rows(&shipper, "old.sqlite") == 1 && daemon.read_position(&old_db).is_some()
    });
    // Its last write (the DB and its WAL: no checkpoint runs) was two hours ago.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for suffix in ["", "-wal"] {
        let path = shipper.path(&format!("db/runs/old.sqlite{suffix}"));
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    let gone = |shipper: &Shipper| {
        ["", "-wal", "-shm"]
            .iter()
            .all(|s| !shipper.path(&format!("db/runs/old.sqlite{s}")).exists())
    };
    if !crate::harness::poll_until(DEADLINE, || gone(&shipper)) {
        panic!("retention did not delete the open run DB:\n{}", daemon.stderr_so_far());
    }
    // (Logged just after the files are removed.)
    wait_until(DEADLINE, "the deletion logged", || {
        daemon.stderr_so_far().contains("retention: deleted run DB")
    });
    let log = daemon.stderr_so_far();
    assert!(!log.contains("retention: run DB kept"), "{log}");
    let held: Vec<_> = daemon
        .fd_targets()
        .into_iter()
        .filter(|t| t.to_string_lossy().starts_with(&*old_db.to_string_lossy()))
        .collect();
    assert_eq!(held, Vec::<std::path::PathBuf>::new(), "still open after its deletion");
    // A new line of the run: a fresh DB holding exactly it.
    shipper.append(rel, b"{\"run_id\":\"old\",\"event_id\":\"b\"}\n");
    wait_until(DEADLINE, "the new row", || count_rows(&shipper, "old.sqlite") == 1);
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let snapshot = shipper.snapshot();
    let keys: Vec<&str> = snapshot.events.iter().map(|e| e.event_key.as_str()).collect();
    assert_eq!(keys, ["b"]);
    assert_eq!(snapshot.runs.len(), 1);
}

#[test]
fn five_thousand_runs_are_written_within_the_open_db_budget_and_bounded_memory() {
    // The 5,000 runs, interleaved, at most 8 open DBs (4 per writer): every row lands,
    // and the process never holds more than the budget's descriptors on run DBs nor more
    // memory than a fixed bound, however many runs there are.
    const RUNS: usize = 5000;
    let shipper = Shipper::with_config("[output]\nmax_open_dbs = 8\nbatch_max_events = 4\n");
    let mut lines = String::new();
    for i in 0..2 * RUNS {
        lines.push_str(&format!("{{\"run_id\":\"run-{:04}\",\"event_id\":\"e{i}\"}}\n", i % RUNS));
    }
    shipper.write("raw/events_20240301.ndjson", lines.as_bytes());
    let started = std::time::Instant::now();
    let mut backfill = shipper.spawn_backfill(&[]);
    let (mut max_db_fds, mut max_fds, mut peak_rss) = (0, 0, 0);
    while backfill.try_status().is_none() {
        let fds = backfill.fd_targets();
        let db_fds = fds.iter().filter(|p| p.to_string_lossy().contains("/db/runs/")).count();
        max_db_fds = max_db_fds.max(db_fds);
        max_fds = max_fds.max(fds.len());
        // (Not `peak_rss()`: a process that just exited has no VmHWM line to read.)
        let status = std::fs::read_to_string(format!("/proc/{}/status", backfill.pid()));
        let hwm_kib = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak_rss = peak_rss.max(hwm_kib.unwrap_or(0) * 1024);
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = backfill.wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    eprintln!(
        "{RUNS} runs in {:?}: ≤{max_db_fds} run-DB descriptors, ≤{max_fds} in all, peak RSS {} MiB",
        started.elapsed(),
        peak_rss >> 20
    );
    // Evicted DBs were closed without a checkpoint; the end of the backfill checkpointed them.
    let leftovers: Vec<_> = std::fs::read_dir(shipper.path("db/runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-wal") || n.ends_with("-shm"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{} WAL/shm files left, e.g. {:?}",
        leftovers.len(),
        leftovers.first()
    );
    // (Read the DBs only now: a reader's connection creates -wal/-shm files itself.)
    let snapshot = shipper.snapshot();
    assert_eq!(snapshot.runs.len(), RUNS);
    assert_eq!(snapshot.events.len(), 2 * RUNS);
    assert!(max_db_fds <= 8 * 3, "{max_db_fds} descriptors on run DBs with max_open_dbs = 8");
    assert!(max_fds <= 8 * 3 + 32, "{max_fds} descriptors in all");
    assert!(peak_rss < 128 << 20, "peak RSS {} MiB", peak_rss >> 20);
}

#[test]
fn the_wal_stays_bounded_under_continuous_writes() {
    // Small limits so the bound is visible in a short test: autocheckpoint every 64 pages
    // (256 KiB) and a WAL truncated back to 512 KiB after a checkpoint.
    let shipper = Shipper::with_config(
        "[output]\nbatch_max_delay = \"10ms\"\nbatch_max_events = 64\n\
         [sqlite]\nwal_autocheckpoint = 64\njournal_size_limit = \"512KiB\"\n\
         checkpoint_interval = \"100ms\"\n",
    );
    shipper.write("raw/events_20240301.ndjson", b"");
    let daemon = shipper.spawn_run();
    let wal = shipper.path("db/runs/r1.sqlite-wal");
    let mut max_wal = 0;
    for chunk in 0..40 {
        let mut lines = String::new();
        for i in 0..250 {
            lines.push_str(&format!(
                "{{\"run_id\":\"r1\",\"event_id\":\"c{chunk}-{i}\",\"pad\":\"{}\"}}\n",
                "y".repeat(300)
            ));
        }
        shipper.append("raw/events_20240301.ndjson", lines.as_bytes());
        // Watch the WAL while the daemon works through this chunk (~80 KB of rows).
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            max_wal = max_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(shipper.snapshot().events.len(), 10_000);
    // ~3.2 MB of rows went through; the WAL never held more than a few checkpoint periods.
    assert!(max_wal > 0, "the WAL was never seen");
    assert!(max_wal <= 2 << 20, "WAL grew to {max_wal} bytes");
}

/// Issue 10 #16: a burst leaves a run DB's WAL at its peak (here ~30 MiB: an analyst's read
/// pinned it meanwhile). Once the burst is over, the WAL is back to ≤ 8 MiB within a few
/// checkpoint intervals, while the run keeps being written slowly; every row lands once.
#[test]
fn a_wal_grown_by_a_burst_is_cut_back_while_the_run_keeps_being_written() {
    let shipper = Shipper::with_config(
        "[output]\nidle_close_after = \"1h\"\nbatch_max_delay = \"20ms\"\n\
         [sqlite]\ncheckpoint_interval = \"100ms\"\n",
    );
    let rel = "raw/events_20240301.ndjson";
    shipper.write(rel, b"{\"run_id\":\"r1\",\"event_id\":\"first\"}\n");
    let daemon = shipper.spawn_run();
    let db = shipper.path("db/runs/r1.sqlite");
    let wal = shipper.path("db/runs/r1.sqlite-wal");
    let rows = || -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        );
        conn.and_then(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
            .unwrap_or(-1)
    };
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    wait_until(DEADLINE, "the first row", || rows() == 1);
    // The burst, ~30 MiB, while a reader's snapshot keeps every checkpoint from finishing.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN; SELECT count(*) FROM events;").unwrap();
    const BURST: i64 = 30_000;
    let pad = "p".repeat(1000);
    let mut lines = String::new();
    for i in 0..BURST {
        lines.push_str(&format!("{{\"run_id\":\"r1\",\"event_id\":\"b{i}\",\"pad\":\"{pad}\"}}\n"));
    }
    shipper.append(rel, lines.as_bytes());
    wait_until(DEADLINE, "the burst's rows", || rows() == 1 + BURST);
    let peak = wal_len();
    assert!(peak > 24 << 20, "the burst left a WAL of only {peak} bytes");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // Slow steady writes: a line every 20 ms until the WAL is small again.
    let mut steady = 0;
    let cut_back = crate::harness::poll_until(DEADLINE, || {
        steady += 1;
        shipper
            .append(rel, format!("{{\"run_id\":\"r1\",\"event_id\":\"s{steady}\"}}\n").as_bytes());
        wal_len() <= 8 << 20
    });
    let after = wal_len();
    assert!(cut_back, "the WAL stayed at {after} bytes (peak {peak})");
    let cut_after = steady;
    // And it stays small while the slow writes go on (100 more lines, ~10 checkpoint rounds).
    let mut max_after = 0;
    crate::harness::poll_until(DEADLINE, || {
        steady += 1;
        shipper
            .append(rel, format!("{{\"run_id\":\"r1\",\"event_id\":\"s{steady}\"}}\n").as_bytes());
        max_after = max_after.max(wal_len());
        steady == cut_after + 100
    });
    eprintln!(
        "WAL: {} KiB after the burst, {} KiB after {cut_after} slow lines, at most {} KiB over \
         the next 100",
        peak >> 10,
        after >> 10,
        max_after >> 10
    );
    assert!(max_after <= 8 << 20, "the WAL grew back to {max_after} bytes");
    wait_until(DEADLINE, "every row", || rows() == 1 + BURST + steady);
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(rows(), 1 + BURST + steady);
}
