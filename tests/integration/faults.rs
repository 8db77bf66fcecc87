//! Faults cost time, never data: a run DB locked by another process and a full disk delay
//! shipping (retried with backoff, counted, logged), and everything lands exactly once when
//! the fault clears. Nothing is dead-lettered for them.

use std::process::Command;
use std::time::Duration;

use crate::harness::{wait_until, Shipper, DEADLINE};

fn lines(prefix: &str, n: usize, pad: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"run_id\":\"r1\",\"event_id\":\"{prefix}{i}\",\"pad\":\"{}\"}}\n",
                "x".repeat(pad)
            )
        })
        .collect()
}

#[test]
fn a_locked_run_db_delays_the_batch_and_it_commits_once_the_lock_is_gone() {
    let shipper = Shipper::with_config(
        "[output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"100ms\"\n",
    );
    shipper.write("raw/events_20240301.ndjson", lines("a", 1, 0).as_bytes());
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "the first row", || {
        shipper.try_snapshot().is_ok_and(|s| s.events.len() == 1)
    });

    // Another process's writer holds the run DB's write lock.
    let locker = rusqlite::Connection::open(shipper.path("db/runs/r1.sqlite")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
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

#[test]
fn a_locked_state_db_holds_checkpoints_and_dead_letters_back_until_the_lock_is_gone() {
    let shipper = Shipper::with_config(
        "[output]\nbatch_max_delay = \"20ms\"\n[sqlite]\nbusy_timeout = \"100ms\"\n",
    );
    let rel = "raw/events_20240301.ndjson";
    let first = lines("a", 1, 0);
    shipper.write(rel, first.as_bytes());
    let source = shipper.source(rel);
    let offset = |shipper: &Shipper| {
        shipper.try_checkpoints().ok()?.into_iter().find(|cp| cp.path == source).map(|cp| cp.offset)
    };
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
