//! Wiring shared by `run` and `backfill`: the state thread, the writer threads, and the
//! [`Opener`] readers open source files with.
//!
//! Threads and channels (all data channels bounded):
//! ```text
//! reader(s) ──Batch──▶ writer-N (run DBs) ──acks spans──┐
//!     │                    └──after each commit: run state (coalesced per run)──▶ catalog thread
//!     └──StateMsg (open, span + dead letters)──▶ state thread (DLQ files, state DB)
//! ```
//! The state thread ([`crate::state`]) is the only writer of the state DB and the DLQ while the
//! pipeline runs. Shutdown is the channels closing in flow order: readers drop their senders,
//! writers drain and exit, then the state thread makes its last pass and exits, then the
//! catalog thread writes what the writers' last commits and closes posted and exits.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::{bounded, Sender};

use crate::catalog::KeeperThread;
use crate::checkpoint::{Checkpoint, StateDb};
use crate::config::Config;
use crate::dlq::{self, DlqLock};
use crate::flow::{Rebuild, Spares, StateMsg};
use crate::follow::Opener;
use crate::identity::FileId;
use crate::metrics::Counters;
use crate::route::{Router, Writers};
use crate::sink::{self, Releases, WriterConfig};

/// Checkpoints of files that are gone are kept this long after their last read (a file
/// restored within it resumes where it was), then pruned at the daemon's start.
const PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Batches in flight per writer: enough to keep a writer busy while the reader parses ahead,
/// few enough that a stalled DB stops the reader within a few MiB.
const WRITER_INBOX: usize = 4;

/// How the writers batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Latency matters: flush after `batch_max_delay`.
    Daemon,
    /// Throughput matters: flush by size only.
    Backfill,
}

/// A running pipeline. Dropping the routers it hands out and calling [`Pipeline::finish`]
/// drains it.
pub(crate) struct Pipeline {
    config: Arc<Config>,
    mode: Mode,
    counters: Arc<Counters>,
    writer_txs: Writers,
    state_tx: Sender<StateMsg>,
    /// Dropped when draining: the state thread then reads its inbox whatever its backlog, so
    /// writers waiting to hand it `write_failed` letters can finish (see `state`).
    state_drain: Sender<()>,
    writers: Vec<JoinHandle<()>>,
    state: JoinHandle<anyhow::Result<()>>,
    /// Keeps `output.catalog` current from the writers' commits (see `catalog::keeper`).
    catalog: KeeperThread,
    checkpoints: Arc<HashMap<FileId, Checkpoint>>,
    /// How retention asks these writers to let go of a run DB it deletes.
    releases: Arc<Releases>,
    /// Bytes read from disk by every reader (compressed for `.gz`): drives progress bars.
    pub disk_bytes: Arc<crate::metrics::Counter>,
    rebuild: Option<Rebuild>,
    /// Summaries of runs that reached a terminal status (after the writers, off their path).
    summaries: crate::summary::Worker,
}

impl Pipeline {
    /// Opens the state DB, recovers the DLQ and starts the writer and state threads.
    pub(crate) fn start(
        config: Arc<Config>,
        mode: Mode,
        counters: Arc<Counters>,
    ) -> anyhow::Result<Self> {
        let state_path = &config.output.state_db;
        let db = StateDb::open(state_path, &config.sqlite)
            .with_context(|| format!("opening state DB {}", state_path.display()))?;
        {
            let _lock = DlqLock::acquire(&config.dlq.dir)
                .with_context(|| format!("locking DLQ dir {}", config.dlq.dir.display()))?;
            for (path, from, to) in dlq::recover(&config.dlq.dir, &db)
                .with_context(|| format!("recovering DLQ in {}", config.dlq.dir.display()))?
            {
                tracing::warn!(path = %path.display(), from, to, "cut uncommitted dead letters left by a crash; they will be replayed");
            }
        }
        let mut db = db;
        if mode == Mode::Daemon {
            let cutoff = crate::sqlite::unix_millis() - PRUNE_AFTER.as_millis() as i64;
            let pruned = db.prune_gone(cutoff).context("pruning checkpoints of deleted files")?;
            if !pruned.is_empty() {
                tracing::info!(
                    files = pruned.len(),
                    "forgot checkpoints of files gone for over a day"
                );
            }
        }
        let checkpoints = db.load().context("loading checkpoints")?;
        let n_writers = config.output.writer_threads.max(1);
        let (state_tx, state_rx) = bounded(1024);
        let writer_config = Arc::new(WriterConfig {
            output_dir: config.output.dir.clone(),
            sqlite: config.sqlite.clone(),
            mapping: config.mapping.clone(),
            schema: config.schema.clone(),
            max_events: config.output.batch_max_events.max(1),
            max_bytes: config.output.batch_max_bytes.div_ceil(n_writers).max(1),
            linger: (mode == Mode::Daemon).then_some(config.output.batch_max_delay),
            max_open: config.output.max_open_dbs.div_ceil(n_writers).max(1),
            maintenance: (mode == Mode::Daemon).then_some(sink::Maintenance {
                interval: config.sqlite.checkpoint_interval,
                idle_close_after: config.output.idle_close_after,
            }),
            max_raw_bytes: config.dlq.max_raw_bytes,
        });
        let catalog = KeeperThread::spawn(
            config.output.catalog.clone(),
            config.output.dir.clone(),
            config.sqlite.clone(),
        )
        .context("spawning the catalog thread")?;
        let releases = Arc::new(Releases::default());
        let timing = match mode {
            Mode::Daemon => crate::summary::worker::Timing::Daemon,
            Mode::Backfill => crate::summary::worker::Timing::AtEnd,
        };
        let summaries = crate::summary::Worker::spawn(config.clone(), counters.clone(), timing)
            .context("spawning the summary thread")?;
        let mut writer_txs = Vec::new();
        let mut writers = Vec::new();
        // One spent batch per writer on its way back is enough: a reader builds one per
        // writer per span.
        let spares = Spares::new(n_writers);
        for shard in 0..n_writers {
            let (tx, rx) = bounded(WRITER_INBOX);
            writer_txs.push(tx);
            writers.push(
                sink::spawn(
                    shard,
                    writer_config.clone(),
                    rx,
                    state_tx.clone(),
                    counters.clone(),
                    &releases,
                    sink::Listeners {
                        catalog: catalog.keeper(),
                        summaries: summaries.notifier(),
                        spares: spares.clone(),
                    },
                )
                .context("spawning writer thread")?,
            );
        }
        let dlq_dir = config.dlq.dir.clone();
        let state_counters = counters.clone();
        let (state_drain, drain_rx) = bounded(0);
        let state = std::thread::Builder::new()
            .name("state".into())
            .spawn(move || crate::state::run(db, dlq_dir, state_counters, state_rx, drain_rx))
            .context("spawning state thread")?;
        Ok(Pipeline {
            config,
            mode,
            counters,
            writer_txs: Writers::new(writer_txs, spares),
            state_tx,
            state_drain,
            writers,
            state,
            catalog,
            checkpoints: Arc::new(checkpoints),
            releases,
            disk_bytes: Default::default(),
            rebuild: None,
            summaries,
        })
    }

    /// Makes the readers' routers and openers rebuild (see [`Rebuild`]).
    pub(crate) fn rebuilding(mut self, rebuild: Rebuild) -> Pipeline {
        self.rebuild = Some(rebuild);
        self
    }

    /// The writers' side of retention's requests to close a run DB (the daemon's retention).
    pub(crate) fn releases(&self) -> Arc<Releases> {
        self.releases.clone()
    }

    /// A router for one reader thread. The daemon's never blocks on a full channel (see
    /// [`Router::unstall`]); backfill's simply waits.
    pub(crate) fn router(&self) -> Router {
        let router = Router::new(
            self.config.mapping.clone(),
            self.config.dlq.max_raw_bytes,
            self.writer_txs.clone(),
            self.state_tx.clone(),
            self.counters.clone(),
            self.mode == Mode::Daemon,
        );
        match &self.rebuild {
            Some(rebuild) => router.rebuilding(rebuild.clone()),
            None => router,
        }
    }

    /// Opens source files at their resume points for one reader thread.
    pub(crate) fn opener(&self) -> Opener {
        let opener = Opener::new(
            self.checkpoints.clone(),
            self.state_tx.clone(),
            self.config.sources.max_line_bytes,
            self.config.dlq.max_raw_bytes,
            self.disk_bytes.clone(),
        );
        if self.rebuild.is_some() {
            opener.rebuilding()
        } else {
            opener
        }
    }

    /// Drains: closes the channels in flow order and joins every thread.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        drop(self.writer_txs);
        drop(self.state_tx);
        drop(self.state_drain);
        for writer in self.writers {
            if writer.join().is_err() {
                anyhow::bail!("a writer thread panicked");
            }
        }
        let state = match self.state.join() {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the state thread panicked"),
        };
        // After the writers: their final commits and closes are posted by now.
        self.catalog.finish();
        // After the state thread's last pass, so summaries never delay the checkpoints.
        self.summaries.finish();
        state
    }
}
