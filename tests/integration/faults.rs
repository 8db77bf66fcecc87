//! Faults cost time, never data: a run DB locked by another process and a full disk delay
//! shipping (retried with backoff, counted, logged), and everything lands exactly once when
//! the fault clears. Nothing is dead-lettered for them.

use std::process::Command;
use std::time::Duration;

use crate::harness::{drained_lines, poll_until, wait_until, Running, Shipper, DEADLINE};

fn lines(prefix: &str, n: usize, pad: usize) -> String {
    (0..n).map(|i| line(prefix, i, pad)).collect()
}

fn line(prefix: &str, i: usize, pad: usize) -> String {
    format!("{{\"run_id\":\"r1\",\"event_id\":\"{prefix}{i}\",\"pad\":\"{}\"}}\n", "x".repeat(pad))
}

/// The daemon with `config`, once run `r1`'s first row is committed, and another process's
/// writer holding that run DB's write lock.
fn daemon_with_a_locked_run_db(config: &str) -> (Shipper, Running, rusqlite::Connection) {
    let shipper = Shipper::with_config(config);
    shipper.write("raw/events_20240301.ndjson", lines("a", 1, 0).as_bytes());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first row", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 1)
    });
    let locker = rusqlite::Connection::open(shipper.path("db/runs/r1.sqlite")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    (shipper, daemon, locker)
}

#[test]
fn a_locked_run_db_delays_the_batch_and_it_commits_once_the_lock_is_gone() {
    let (shipper, daemon, locker) = daemon_with_a_locked_run_db(
        "[output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"100ms\"\n",
    );
    shipper.append("raw/events_20240301.ndjson", lines("b", 100, 10).as_bytes());
    wait_until(DEADLINE, "the writer to report the locked DB", || {
        daemon.stderr_so_far().contains("cannot write run DB")
    });
    assert_eq!(shipper.snapshot().events.len(), 1, "rows committed through a held lock");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    wait_until(DEADLINE, "all 101 rows after the lock is released", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 101)
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(shipper.dead_letters().is_empty(), "a locked DB must not dead-letter anything");
    assert!(finished.stderr.contains("succeeded after retries"), "{}", finished.stderr);
}

/// A commit slowed by another connection's write lock (shorter than `busy_timeout`, so no
/// retry) is reported as slow, and the WARN says the lock, not the disk, is the cause.
#[test]
fn slow_commits_behind_another_connections_lock_are_blamed_on_the_lock_not_the_disk() {
    let addr = crate::ops::free_port();
    let (shipper, daemon, locker) = daemon_with_a_locked_run_db(&format!(
        "[output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"20s\"\n\
         [metrics]\nlisten = \"{addr}\"\nslow_commit_threshold = \"100ms\"\n"
    ));
    shipper.append("raw/events_20240301.ndjson", lines("b", 1, 0).as_bytes());
    wait_until(DEADLINE, "the second line to be read", || {
        crate::ops::metric(addr, "jsonl_shipper_lines_read_total") == Some(2.0)
    });
    // The stimulus, not a wait for a result: the writer's commit waits behind the lock.
    std::thread::sleep(Duration::from_millis(400));
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    wait_until(DEADLINE, "the slow-commit WARN", || {
        daemon.stderr_so_far().contains("slow run-DB commits")
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let warn = finished.stderr.lines().find(|l| l.contains("slow run-DB commits")).unwrap();
    assert!(warn.contains("waiting for run DBs' write locks"), "{warn}");
    assert!(!warn.contains("check the disk"), "{warn}");
    assert_eq!(shipper.snapshot().events.len(), 2);
    assert!(!finished.stderr.contains("cannot write run DB"), "no retry: {}", finished.stderr);
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0750"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_delays_shipping_and_nothing_is_lost_or_duplicated_when_space_returns() {
    let shipper = Shipper::with_config(
        "[output]\ndir = \"out/runs\"\nstate_db = \"out/state.sqlite\"\nbatch_max_delay = \"20ms\"\n\
         [dlq]\ndir = \"out/dlq\"\n",
    );
    let Some(tmpfs) = Tmpfs::mount(&shipper.root().join("out"), "400k") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CAP_SYS_ADMIN); not testing ENOSPC");
        return;
    };
    // ~1.2 MB of rows (plus WAL) into 400 KiB: the writes fail with SQLITE_FULL.
    shipper.write("raw/events_20240301.ndjson", lines("e", 3000, 300).as_bytes());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the full disk to be reported", || {
        let err = daemon.stderr_so_far();
        err.contains("cannot write run DB") || err.contains("cannot persist checkpoints")
    });
    tmpfs.resize("64m");
    let events = || {
        let conn = rusqlite::Connection::open(shipper.root().join("out/runs/r1.sqlite")).ok()?;
        conn.query_row("SELECT count(*), count(DISTINCT event_key) FROM events", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .ok()
    };
    wait_until(DEADLINE, "all 3000 rows once space returns", || events() == Some((3000, 3000)));
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let dlq = shipper.root().join("out/dlq");
    let dead: usize = std::fs::read_dir(&dlq)
        .map(|d| {
            d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson")).count()
        })
        .unwrap_or(0);
    assert_eq!(dead, 0, "a full disk must not dead-letter anything");
    assert_eq!(events(), Some((3000, 3000)));
}

/// The "held-up writer while 1 GB of tailed files are deleted", scaled to 4 × 32 MB:
/// the reader stops at a bounded amount of read-ahead, and a deleted file it cannot finish is
/// let go (loudly) once it has made no progress for `close_inactive`, so its disk space is
/// freed. What was read is committed exactly once when the lock goes; nothing is invented.
#[test]
fn deleted_files_are_not_held_open_past_close_inactive_while_a_locked_db_holds_the_writer_up() {
    const FILES: usize = 4;
    const LINES: usize = 32 * 1024; // ~1 KiB each: 32 MiB per file
    let close_inactive = Duration::from_secs(2);
    let shipper = Shipper::with_config(
        "[sources]\nrescan_interval = \"200ms\"\nclose_inactive = \"2s\"\n\
         [output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"100ms\"\n",
    );
    shipper.write("raw/events_20240301.ndjson", lines("first", 1, 0).as_bytes());
    let daemon = shipper.spawn_run();
    let db = shipper.path("db/runs/r1.sqlite");
    let shipped = || -> Option<Vec<String>> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        let mut stmt = conn.prepare("SELECT event_key FROM events").ok()?;
        let keys = stmt.query_map([], |r| r.get::<_, String>(0)).ok()?;
        keys.collect::<Result<_, _>>().ok()
    };
    wait_until(DEADLINE, "the first row", || shipped().is_some_and(|k| k.len() == 1));

    // Four files being tailed (each has shipped its first line)...
    let rels: Vec<String> =
        (0..FILES).map(|f| format!("raw/events_2024030{}.ndjson", f + 2)).collect();
    let paths: Vec<_> = rels
        .iter()
        .enumerate()
        .map(|(f, rel)| shipper.write(rel, lines(&format!("f{f}-"), 1, 1000).as_bytes()))
        .collect();
    wait_until(DEADLINE, "the first line of every file", || {
        shipped().is_some_and(|k| k.len() == 1 + FILES)
    });
    assert!(paths.iter().all(|p| daemon.fd_targets().contains(p)), "all four files followed");
    // ...then the run DB is locked and 32 MiB appended to each.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for (f, rel) in rels.iter().enumerate() {
        let rest: String = (1..LINES).map(|i| line(&format!("f{f}-"), i, 1000)).collect();
        shipper.append(rel, rest.as_bytes());
    }
    wait_until(DEADLINE, "the writer to hit the lock", || {
        daemon.stderr_so_far().contains("cannot write run DB")
    });
    for path in &paths {
        std::fs::remove_file(path).unwrap();
    }
    let deleted_at = std::time::Instant::now();
    let held_deleted = || {
        daemon.fd_targets().iter().filter(|t| t.to_string_lossy().ends_with(" (deleted)")).count()
    };
    wait_until(DEADLINE, "the deleted files to be closed", || held_deleted() == 0);
    let held = deleted_at.elapsed();
    eprintln!("deleted files held open for {held:?} (close_inactive {close_inactive:?})");
    let bound = close_inactive + Duration::from_secs(3);
    assert!(held <= bound, "deleted files held open for {held:?}, want ≤ {bound:?}");
    // The WARN is written before the descriptor closes, but the test reads the log through a
    // pipe: wait for the lines to arrive, then check there are exactly that many.
    let let_go = || {
        daemon.stderr_so_far().matches("closed a deleted file before reading it to its end").count()
    };
    wait_until(DEADLINE, "a WARN for each deleted file let go", || let_go() >= FILES);
    let log = daemon.stderr_so_far();
    assert_eq!(let_go(), FILES, "each deleted file let go unread once:\n{log}");
    assert_eq!(shipped().unwrap().len(), 1 + FILES, "rows committed through a held lock");

    // The lock goes: what was read before is committed, once; the agent keeps going.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    shipper.write("raw/events_20240310.ndjson", lines("after", 3, 0).as_bytes());
    wait_until(DEADLINE, "the file written after the lock went", || {
        shipped().is_some_and(|k| k.iter().filter(|k| k.starts_with("after")).count() == 3)
    });
    let finished = daemon.terminate(Duration::from_secs(60));
    assert!(finished.status.success(), "{}", finished.stderr);
    let keys = shipped().unwrap();
    let lines_read = drained_lines(&finished.stderr);
    assert_eq!(keys.len() as u64, lines_read, "every line read is committed");
    // Per file, the shipped lines are exactly a prefix: read in order, none twice, none made up.
    for f in 0..FILES {
        let mut got: Vec<usize> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&format!("f{f}-")))
            .map(|i| i.parse().unwrap())
            .collect();
        got.sort_unstable();
        assert!(got.len() < LINES, "file {f} was read in full while the writer was held up");
        assert_eq!(got, (0..got.len()).collect::<Vec<_>>(), "file {f}: not a prefix");
    }
    assert!(shipper.dead_letters().is_empty(), "nothing is dead-lettered for a lock");
}

#[test]
fn a_locked_state_db_holds_checkpoints_and_dead_letters_back_until_the_lock_is_gone() {
    let shipper = Shipper::with_config(
        "[output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"100ms\"\n",
    );
    let rel = "raw/events_20240301.ndjson";
    let first = lines("a", 1, 0);
    shipper.write(rel, first.as_bytes());
    let offset = |shipper: &Shipper| shipper.checkpoint_offset(rel);
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first line checkpointed", || {
        offset(&shipper) == Some(first.len() as u64)
    });

    // Another process's writer holds the state DB's write lock.
    let locker = rusqlite::Connection::open(shipper.path("db/shipper-state.sqlite")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    shipper.append(rel, format!("{}{{bad\n", lines("b", 100, 10)).as_bytes());
    // Run DBs are not the state DB: rows keep flowing.
    wait_until(DEADLINE, "101 rows while the state DB is locked", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 101)
    });
    wait_until(DEADLINE, "the state thread to report the locked state DB", || {
        daemon.stderr_so_far().contains("cannot persist checkpoints or dead letters")
    });
    // The checkpoint and the dead letter wait for the lock (they commit together).
    assert_eq!(offset(&shipper), Some(first.len() as u64));
    assert!(shipper.dead_letters_so_far().is_empty(), "a dead letter written under a held lock");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);

    let size = std::fs::metadata(shipper.path(rel)).unwrap().len();
    wait_until(DEADLINE, "the checkpoint at the end and the dead letter", || {
        offset(&shipper) == Some(size) && shipper.dead_letters_so_far().len() == 1
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    let letters = shipper.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].line_no, letters[0].raw.as_str()), (102, "{bad"));
    assert_eq!(shipper.snapshot().events.len(), 101);
}

/// Issue 10 #9: a run DB that went corrupt while the daemon runs (found on a write, not at
/// open) is moved aside, kept, with one ERROR; that run's new lines go to a fresh DB and the
/// other runs of the writer's shard are not held up (one writer: both runs share it).
#[test]
fn a_run_db_corrupted_while_running_is_moved_aside_and_its_run_goes_on_in_a_fresh_db() {
    use std::io::{Seek, SeekFrom, Write};
    let shipper = Shipper::with_config(
        "[output]\nwriter_threads = 1\nbatch_max_delay = \"20ms\"\nidle_close_after = \"300ms\"\n\
         [sqlite]\ncheckpoint_interval = \"100ms\"\n",
    );
    let event = |run: &str, id: &str| format!("{{\"run_id\":\"{run}\",\"event_id\":\"{id}\"}}\n");
    let file = "raw/events_20240301.ndjson";
    shipper.write(file, [event("x", "x1"), event("x", "x2"), event("y", "y1")].concat().as_bytes());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first three rows", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 3)
    });

    // The writer closes X's DB once idle (its WAL checkpointed into it): then garble every
    // page but the first, so that opening it succeeds and only a write meets the corruption.
    let x_db = shipper.path("db/runs/x.sqlite");
    wait_until(DEADLINE, "the writer to close x.sqlite", || {
        !daemon.fd_targets().iter().any(|p| p.file_name() == x_db.file_name())
    });
    let len = std::fs::metadata(&x_db).unwrap().len();
    assert!(len > 4096, "x.sqlite has one page only ({len} bytes)");
    let mut db = std::fs::OpenOptions::new().write(true).open(&x_db).unwrap();
    db.seek(SeekFrom::Start(4096)).unwrap();
    db.write_all(&vec![0xA5; (len - 4096) as usize]).unwrap();
    db.sync_all().unwrap();
    drop(db);
    let garbled = std::fs::read(&x_db).unwrap();

    let appended = std::time::Instant::now();
    shipper
        .append(file, [event("x", "x3"), event("y", "y2"), event("x", "x4")].concat().as_bytes());
    wait_until(DEADLINE, "x3 and x4 in a fresh x.sqlite, y1 and y2", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 4)
    });
    // Without the quarantine the writer retried the corrupt DB for ever and y2 never came.
    assert!(appended.elapsed() < Duration::from_secs(10), "took {:?}", appended.elapsed());
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);

    let rows: Vec<(String, String, String)> =
        shipper.snapshot().events.into_iter().map(|e| (e.db, e.run_id, e.event_key)).collect();
    let row = |db: &str, run: &str, key: &str| (db.to_string(), run.to_string(), key.to_string());
    assert_eq!(
        rows,
        vec![
            row("x.sqlite", "x", "x3"),
            row("x.sqlite", "x", "x4"),
            row("y.sqlite", "y", "y1"),
            row("y.sqlite", "y", "y2"),
        ]
    );
    assert!(shipper.dead_letters().is_empty(), "{:?}", shipper.dead_letters());

    // Exactly one quarantined file set, kept byte for byte.
    let aside: Vec<String> = std::fs::read_dir(shipper.path("db/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".corrupt-"))
        .collect();
    let dbs: Vec<&String> =
        aside.iter().filter(|n| n.ends_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(dbs.len(), 1, "{aside:?}");
    assert!(dbs[0].starts_with("x.sqlite.corrupt-"), "{aside:?}");
    assert!(aside.iter().all(|n| n.starts_with(dbs[0].as_str())), "{aside:?}");
    assert_eq!(std::fs::read(shipper.path("db/runs").join(dbs[0])).unwrap(), garbled);

    // One ERROR, naming the DB and where it went; no retry loop.
    let errors: Vec<&str> = finished.stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{}", finished.stderr);
    assert!(errors[0].contains("run DB is corrupt"), "{}", errors[0]);
    assert!(errors[0].contains(&x_db.display().to_string()), "{}", errors[0]);
    assert!(errors[0].contains(dbs[0].as_str()), "{}", errors[0]);
    assert!(errors[0].contains("writing"), "{}", errors[0]);
    assert!(errors[0].contains("backfill --from-start --run"), "{}", errors[0]);
    assert!(!finished.stderr.contains("cannot write run DB"), "{}", finished.stderr);

    // Quarantine is not loss while the sources exist: a rebuild of x brings back x1 and x2,
    // and leaves y and the checkpoints alone.
    let checkpoints = shipper.checkpoints();
    shipper.backfill(&["--from-start", "--run", "x"]).assert_success("rebuild of x");
    let rows: Vec<(String, String)> =
        shipper.snapshot().events.into_iter().map(|e| (e.db, e.event_key)).collect();
    let row = |db: &str, key: &str| (db.to_string(), key.to_string());
    assert_eq!(
        rows,
        vec![
            row("x.sqlite", "x1"),
            row("x.sqlite", "x2"),
            row("x.sqlite", "x3"),
            row("x.sqlite", "x4"),
            row("y.sqlite", "y1"),
            row("y.sqlite", "y2"),
        ]
    );
    assert_eq!(shipper.checkpoints(), checkpoints);
}

/// A `.gz` whose stream breaks (a good member, then bytes that are no gzip member) and whose
/// last readable line is cut by the break.
fn corrupt_gz(shipper: &Shipper, rel: &str) -> (usize, &'static str) {
    let good = "{\"run_id\":\"r\",\"event_id\":\"a\"}\n{\"run_id\":\"r\",\"event_id\":\"b\"}\n";
    let partial = "{\"run_id\":\"r\",\"ev";
    let mut bytes = crate::harness::gzip_members(format!("{good}{partial}").as_bytes(), &[]);
    bytes.extend_from_slice(b"this is not a gzip member");
    shipper.write(rel, &bytes);
    shipper.age(rel);
    (good.len(), partial)
}

/// Issue 10 #1: a `.gz` that stays corrupt ends in one `incomplete_line` dead letter naming
/// its file and offset; what was readable before is shipped; reading it again adds nothing.
#[test]
fn a_corrupt_gz_ends_in_one_dead_letter_and_a_second_backfill_adds_nothing() {
    let shipper = Shipper::new();
    let rel = "raw/events_20240301.ndjson.gz";
    let (good_len, partial) = corrupt_gz(&shipper, rel);
    for _ in 0..2 {
        let finished = shipper.backfill(&[]);
        assert!(finished.stderr.contains("the .gz is corrupt"), "{}", finished.stderr);
        let keys: Vec<String> =
            shipper.snapshot().events.into_iter().map(|e| e.event_key).collect();
        assert_eq!(keys, ["a", "b"]);
        let letters = shipper.dead_letters();
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter.source, shipper.source(rel));
        assert_eq!((letter.offset, letter.line_no), (good_len as u64, 3));
        assert_eq!((letter.reason.as_str(), letter.raw.as_str()), ("incomplete_line", partial));
        let checkpoints = shipper.checkpoints();
        assert_eq!(checkpoints.len(), 1);
        assert_eq!((checkpoints[0].offset, checkpoints[0].line_no), (good_len as u64, 2));
    }
}

/// The daemon retries a corrupt `.gz` (it may be a `.gz` still being written) and gives up
/// once it has been idle for `close_inactive`: one dead letter, then no more retries.
#[test]
fn the_daemon_gives_up_on_a_corrupt_gz_after_close_inactive_with_one_dead_letter() {
    let shipper = Shipper::with_config(
        "[sources]\npaths = [\"base/raw/events_*.ndjson.gz\"]\nclose_inactive = \"2s\"\n\
         [output]\nbatch_max_delay = \"20ms\"\n",
    );
    let rel = "raw/events_20240301.ndjson.gz";
    let (good_len, partial) = corrupt_gz(&shipper, rel);
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the dead letter", || shipper.dead_letters_so_far().len() == 1);
    // Parked once idle, and not reopened by the rescans after (each reopen of a `.gz`
    // decompresses it again, and here retried it and wrote another letter).
    let gz = shipper.path(rel);
    let is_open = || daemon.fd_targets().contains(&gz);
    wait_until(DEADLINE, "the .gz parked", || !is_open());
    assert!(!poll_until(Duration::from_secs(3), is_open), "the given-up .gz was reopened");
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(finished.stderr.matches("the .gz is corrupt").count(), 1, "{}", finished.stderr);
    let keys: Vec<String> = shipper.snapshot().events.into_iter().map(|e| e.event_key).collect();
    assert_eq!(keys, ["a", "b"]);
    let letters = shipper.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].offset, letters[0].raw.as_str()), (good_len as u64, partial));
}

/// `chattr` on the state DB's files (`+i`: not even root may write them); false where the
/// file system or the container does not allow it.
fn set_immutable(paths: &[std::path::PathBuf], on: bool) -> bool {
    let flag = if on { "+i" } else { "-i" };
    paths
        .iter()
        .filter(|p| p.exists())
        .all(|p| Command::new("chattr").arg(flag).arg(p).status().is_ok_and(|s| s.success()))
}

/// Issue 10, proof: a state DB that cannot be written (its files made immutable: read-only
/// even for root) holds checkpoints and dead letters back while rows keep flowing; once it is
/// writable again, both catch up exactly.
#[test]
fn a_read_only_state_db_holds_checkpoints_back_and_catches_up_when_writable() {
    let shipper = Shipper::with_config("[output]\nbatch_max_delay = \"20ms\"\n");
    let rel = "raw/events_20240301.ndjson";
    let first = lines("a", 1, 0);
    shipper.write(rel, first.as_bytes());
    let offset = |shipper: &Shipper| shipper.checkpoint_offset(rel);
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first line checkpointed", || {
        offset(&shipper) == Some(first.len() as u64)
    });
    let state: Vec<std::path::PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| shipper.path(&format!("db/shipper-state.sqlite{s}")))
        .collect();
    if !set_immutable(&state, true) {
        set_immutable(&state, false);
        eprintln!("skipped: chattr +i is not allowed here");
        return;
    }
    shipper.append(rel, format!("{}{{bad\n", lines("b", 100, 10)).as_bytes());
    let rows = wait_for(|| shipper.try_snapshot().is_ok_and(|s| s.events.len() == 101));
    let reported =
        wait_for(|| daemon.stderr_so_far().contains("cannot persist checkpoints or dead letters"));
    let held = offset(&shipper);
    let letters = shipper.dead_letters_so_far().len();
    assert!(set_immutable(&state, false), "chattr -i");
    assert!(rows, "rows stopped while the state DB was read-only");
    assert!(reported, "{}", daemon.stderr_so_far());
    assert_eq!(held, Some(first.len() as u64), "a checkpoint moved while read-only");
    assert_eq!(letters, 0, "a dead letter was written while the state DB was read-only");

    let size = std::fs::metadata(shipper.path(rel)).unwrap().len();
    wait_until(DEADLINE, "the checkpoint at the end and the dead letter", || {
        offset(&shipper) == Some(size) && shipper.dead_letters_so_far().len() == 1
    });
    let finished = daemon.terminate(Duration::from_secs(30));
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(shipper.dead_letters().len(), 1);
    assert_eq!(shipper.snapshot().events.len(), 101);
}

/// Polls `cond` until it holds or the deadline passes (then false: the caller makes the
/// files writable again before it fails, so the temp dir can be removed).
fn wait_for(cond: impl FnMut() -> bool) -> bool {
    poll_until(DEADLINE, cond)
}
