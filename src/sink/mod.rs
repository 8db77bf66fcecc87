//! The writers: OS threads that own every run-DB connection, each writing the runs
//! `route::Writers` assigned it.
//!
//! A writer takes [`Batch`]es from its bounded inbox and sorts their records into per-run
//! buffers. A run is committed when it holds `batch_max_events` rows, or, with several runs
//! buffered, 1024 rows and its share of half of `batch_max_bytes`; the biggest runs are
//! committed when the buffers hold `batch_max_bytes`; every run when the oldest record has waited
//! `batch_max_delay` (daemon only; backfill flushes by size), or when the inbox closes. Each
//! commit is one IMMEDIATE transaction for one run; only after it are the spans acked. A locked or full database is retried with backoff, forever, never dead-lettered;
//! a record that fails on its own (too big, or making its run's merged `data` too big)
//! becomes a `write_failed` dead letter; a DB found corrupt on a write is moved aside as at open
//! (`Pool::quarantine`) and the batch goes to a fresh DB. After each commit the writer reads
//! the run's committed state (two O(log n) lookups on its own connection) and posts it, with
//! the commit's `ts` range, to the catalog thread ([`crate::catalog::Keeper`]: never waits);
//! its pool posts a DB created or replaced and a DB closed.
//!
//! No other module opens a run DB for writing.
//!
//! By job: `writer` (a writer thread's loop: buffers, commits, retries), `pool` (its LRU of
//! run-DB connections), `release` (retention asking the writers to close a DB it deletes), `wal` (WAL checkpoints of its DBs, on the `checkpoint-N` thread and
//! inline), `run_db` (one run DB: schema and writes), `columns` (the configured typed columns
//! and indexes of a run DB: applied at open, surveyed by `check-config`), `run_path` and
//! `merge` (pure helpers).

pub(crate) mod columns;
pub(crate) mod merge;
pub(crate) mod run_db;
pub(crate) mod run_path;
mod pool;
mod release;
mod wal;
mod writer;

pub(crate) use release::Releases;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::catalog::Keeper;
use crate::config::{Mapping, SqliteConfig};
use crate::flow::{Batch, RunChanged, Spares, StateMsg};
use crate::metrics::Counters;
use crate::schema::Schema;

/// When writers checkpoint their databases' WALs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Maintenance {
    /// `sqlite.checkpoint_interval`: how often open DBs are checkpointed.
    pub interval: Duration,
    /// `output.idle_close_after`: DBs not written for this long are checkpointed (TRUNCATE)
    /// and closed.
    pub idle_close_after: Duration,
}

/// What a writer needs to know; shared by all writers.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub output_dir: PathBuf,
    pub sqlite: SqliteConfig,
    pub mapping: Mapping,
    /// `[columns]` and `[[indexes]]`, applied to every DB the writers open.
    pub schema: Schema,
    pub max_events: usize,
    pub max_bytes: usize,
    /// Flush when the oldest buffered record is this old; None = flush by size only.
    pub linger: Option<Duration>,
    /// Open connections per writer.
    pub max_open: usize,
    /// The WAL checkpoint loop (daemon only; backfill checkpoints everything when it ends).
    pub maintenance: Option<Maintenance>,
    pub max_raw_bytes: usize,
}

/// Who a writer tells after a commit, never waiting for them: the catalog thread (every run it
/// wrote) and the summary thread (a run that is terminal now); and where the batches it has
/// buffered go back to the readers (never waiting either).
pub(crate) struct Listeners {
    pub catalog: Keeper,
    pub summaries: Sender<RunChanged>,
    pub spares: Spares,
}

/// Starts writer thread `shard`.
pub(crate) fn spawn(
    shard: usize,
    config: Arc<WriterConfig>,
    inbox: Receiver<Batch>,
    state: Sender<StateMsg>,
    counters: Arc<Counters>,
    releases: &Releases,
    listeners: Listeners,
) -> std::io::Result<JoinHandle<()>> {
    let releases = releases.register();
    std::thread::Builder::new().name(format!("writer-{shard}")).spawn(move || {
        writer::Writer::new(shard, config, state, counters, releases, listeners).run(inbox)
    })
}
