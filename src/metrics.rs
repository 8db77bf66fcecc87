//! The agent's counters, in one place: plain atomics updated per batch or per read call (never
//! per line on a hot path that can avoid it), read by the progress bar, the summary line and
//! the `/metrics` endpoint.
//!
//! Names match the contract's `jsonl_shipper_*` metrics; no counter has a per-path or per-run
//! label, so the series count stays bounded.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::parse::DeadReason;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// For gauges several threads contribute to (e.g. open DBs across writers).
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the pipeline counts.
#[derive(Debug, Default)]
pub struct Counters {
    /// `jsonl_shipper_lines_read_total`
    pub lines_read: Counter,
    /// `jsonl_shipper_bytes_read_total`
    pub bytes_read: Counter,
    /// Empty or whitespace-only lines (skipped, not dead-lettered).
    pub blank_lines: Counter,
    /// `jsonl_shipper_events_written_total`: events and run records committed to run DBs.
    pub events_written: Counter,
    /// Records whose row was already stored as is (a replay or a re-read of shipped data).
    pub events_unchanged: Counter,
    /// Distinct runs written (backfill only; the daemon does not keep the set).
    pub runs_touched: Counter,
    /// Dead letters produced by the readers (before they are durable).
    pub dead_letters_routed: Counter,
    /// `jsonl_shipper_dlq_lines_total{reason}`: durable dead letters, by reason.
    pub dlq_lines: [Counter; DeadReason::ALL.len()],
    /// `jsonl_shipper_write_retries_total`
    pub write_retries: Counter,
    /// Run-DB transactions committed.
    pub commits: Counter,
    /// Files found shorter than their read position (copytruncate, truncation).
    pub truncations: Counter,
    /// Rotated-away or deleted files read to their end and closed.
    pub rotations: Counter,
    /// `jsonl_shipper_wal_checkpoints_total`
    pub wal_checkpoints: Counter,
    /// WAL checkpoints that readers kept from completing.
    pub checkpoints_blocked: Counter,
    /// `jsonl_shipper_retention_deleted_total`: run DBs, DLQ and source files deleted.
    pub retention_deleted: Counter,
    /// `jsonl_shipper_open_run_dbs`
    pub open_run_dbs: Gauge,
    /// `jsonl_shipper_files_watched`
    pub files_watched: Gauge,
}

impl Counters {
    pub fn dlq(&self, reason: DeadReason) -> &Counter {
        &self.dlq_lines[reason as usize]
    }

    pub fn dlq_total(&self) -> u64 {
        self.dlq_lines.iter().map(Counter::get).sum()
    }
}
