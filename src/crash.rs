//! Crash points: the named steps of the commit protocol where a test aborts the process (like
//! kill -9: no destructor, no flush, no drain) to prove that a restart neither loses nor
//! duplicates anything, at every step, not at steps found by luck.
//!
//! Inert unless `JSONL_SHIPPER_CRASH_AT` is set (read once): `name` aborts at the first time
//! the step is reached, `name@N` at the N-th. The list lives here, and a tidy test checks that
//! every name has a crash test (in `tests/integration`), so a new step cannot be added
//! without one. Compiled in always rather than behind a feature: `cargo test` drives the real
//! release-shaped binary, and a second build of it with a feature would double CI's build.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every crash point, in protocol order.
pub(crate) const POINTS: &[&str] = &[
    // A run-DB commit is durable; its spans are not acked yet.
    "writer.after_commit",
    // Dead letters are written to the DLQ file, not fsynced.
    "dlq.before_fsync",
    // Fsynced; the state transaction recording them is not committed.
    "dlq.after_fsync",
    // Inside the state transaction: files registered, checkpoints advanced, not committed.
    "state.before_commit",
    // Committed; the in-memory queues and acks not updated.
    "state.after_commit",
    // A WAL checkpoint (a writer's loop, a DB's close, the state DB) copied the WAL into the
    // DB; the connection has not gone on (SQLite's own crash safety, proved here, not assumed).
    "wal.after_checkpoint",
    // Retention deleting a run DB: its `-wal` removed, the DB file not yet.
    "retention.between_files",
    // `dlq replay`: the letters shipped into their run DBs, the DLQ not rewritten yet.
    "replay.after_ship",
    // `dlq replay`: the rewrite intents committed (temp files written), not renamed yet.
    "replay.after_intent",
    // The ClickHouse sink: a batch acknowledged by the server (events and runs rows), the
    // sink's cursors not saved yet (the replay must collapse under FINAL).
    "clickhouse.after_insert",
];

struct Target {
    name: String,
    nth: u64,
    hits: AtomicU64,
}

/// Aborts the process if `JSONL_SHIPPER_CRASH_AT` names this step (and this is its N-th hit).
pub(crate) fn point(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "crash point {name} is not in crash::POINTS");
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("JSONL_SHIPPER_CRASH_AT").ok()?;
        let (name, nth) = match spec.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        };
        Some(Target { name, nth, hits: AtomicU64::new(0) })
    });
    let Some(target) = target else { return };
    if target.name == name && target.hits.fetch_add(1, Ordering::Relaxed) + 1 == target.nth {
        eprintln!("jsonl-shipper: crash point {name} reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    /// Every crash point has a crash test (one that names it, in `tests/integration`).
    #[test]
    fn every_crash_point_has_a_test() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
        let tests: String = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        let untested: Vec<_> =
            super::POINTS.iter().filter(|p| !tests.contains(&format!("\"{p}\""))).collect();
        assert!(untested.is_empty(), "crash points without a crash test: {untested:?}");
    }
}
