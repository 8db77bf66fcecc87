//! Wiring shared by `run` and `backfill`: the state thread, the writer threads, and the
//! [`Opener`] readers open source files with.
//!
//! Threads and channels (all data channels bounded):
//! ```text
//! reader(s) ──Batch──▶ writer-N (run DBs) ──acks spans──┐
//!     └──StateMsg (open, span + dead letters)──▶ state thread (DLQ files, state DB)
//! ```
//! The state thread is the only writer of the state DB and the DLQ. Every `PASS_INTERVAL` it
//! appends the dead letters it holds and advances the checkpoints of files whose oldest spans
//! are fully durable, all in one state transaction (see `dlq` for why that makes the DLQ
//! exactly-once). Shutdown is the channels closing in flow order: readers drop their senders,
//! writers drain and exit, then the state thread makes its last pass and exits.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::{Advance, Checkpoint, StateDb};
use crate::config::Config;
use crate::dlq::{self, DeadLetter, DlqLock};
use crate::follow::Opener;
use crate::metrics::Counters;
use crate::route::{Batch, FileEntry, Router, Span, StateMsg};
use crate::sink::{self, WriterConfig};

/// How often the state thread persists progress. Checkpoints trail the data by about this much,
/// which only costs a little re-reading (a no-op) after a crash.
const PASS_INTERVAL: Duration = Duration::from_millis(200);

/// Checkpoints of files that are gone are kept this long after their last read (a file
/// restored within it resumes where it was), then pruned at the daemon's start.
const PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Batches in flight per writer: enough to keep a writer busy while the reader parses ahead,
/// few enough that a stalled DB stops the reader within a few MiB.
const WRITER_INBOX: usize = 4;

/// How the writers batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Latency matters: flush after `batch_max_delay`.
    Daemon,
    /// Throughput matters: flush by size only.
    Backfill,
}

/// A running pipeline. Dropping the routers it hands out and calling [`Pipeline::finish`]
/// drains it.
pub struct Pipeline {
    config: Arc<Config>,
    mode: Mode,
    counters: Arc<Counters>,
    writer_txs: Vec<Sender<Batch>>,
    state_tx: Sender<StateMsg>,
    writers: Vec<JoinHandle<()>>,
    state: JoinHandle<anyhow::Result<()>>,
    checkpoints: Arc<HashMap<(u64, u64), Checkpoint>>,
    /// Bytes read from disk by every reader (compressed for `.gz`): drives progress bars.
    pub disk_bytes: Arc<crate::metrics::Counter>,
}

impl Pipeline {
    /// Opens the state DB, recovers the DLQ and starts the writer and state threads.
    pub fn start(config: Arc<Config>, mode: Mode, counters: Arc<Counters>) -> anyhow::Result<Self> {
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
        let mut writer_txs = Vec::new();
        let mut writers = Vec::new();
        for shard in 0..n_writers {
            let (tx, rx) = bounded(WRITER_INBOX);
            writer_txs.push(tx);
            writers.push(
                sink::spawn(shard, writer_config.clone(), rx, state_tx.clone(), counters.clone())
                    .context("spawning writer thread")?,
            );
        }
        let dlq_dir = config.dlq.dir.clone();
        let state_counters = counters.clone();
        let state = std::thread::Builder::new()
            .name("state".into())
            .spawn(move || StateThread::new(db, dlq_dir, state_counters).run(state_rx))
            .context("spawning state thread")?;
        Ok(Pipeline {
            config,
            mode,
            counters,
            writer_txs,
            state_tx,
            writers,
            state,
            checkpoints: Arc::new(checkpoints),
            disk_bytes: Default::default(),
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A router for one reader thread. The daemon's never blocks on a full channel (see
    /// [`Router::unstall`]); backfill's simply waits.
    pub fn router(&self) -> Router {
        Router::new(
            self.config.mapping.clone(),
            self.config.dlq.max_raw_bytes,
            self.writer_txs.clone(),
            self.state_tx.clone(),
            self.counters.clone(),
            self.mode == Mode::Daemon,
        )
    }

    /// Opens source files at their resume points for one reader thread.
    pub fn opener(&self) -> Opener {
        Opener::new(
            self.checkpoints.clone(),
            self.state_tx.clone(),
            self.config.sources.max_line_bytes,
            self.config.dlq.max_raw_bytes,
            self.disk_bytes.clone(),
        )
    }

    /// Drains: closes the channels in flow order and joins every thread.
    pub fn finish(self) -> anyhow::Result<()> {
        drop(self.writer_txs);
        drop(self.state_tx);
        for writer in self.writers {
            if writer.join().is_err() {
                anyhow::bail!("a writer thread panicked");
            }
        }
        match self.state.join() {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the state thread panicked"),
        }
    }
}

/// Owns the state DB and the DLQ files; see the module docs.
struct StateThread {
    db: StateDb,
    dlq_dir: PathBuf,
    counters: Arc<Counters>,
    opens: Vec<(Arc<FileEntry>, u64, u64, bool)>,
    queues: HashMap<(u64, u64), VecDeque<Arc<Span>>>,
    dead: Vec<(DeadLetter, Arc<Span>)>,
    last_error_log: Option<Instant>,
}

impl StateThread {
    fn new(db: StateDb, dlq_dir: PathBuf, counters: Arc<Counters>) -> StateThread {
        StateThread {
            db,
            dlq_dir,
            counters,
            opens: Vec::new(),
            queues: HashMap::new(),
            dead: Vec::new(),
            last_error_log: None,
        }
    }

    fn run(mut self, inbox: Receiver<StateMsg>) -> anyhow::Result<()> {
        let mut last_pass = Instant::now();
        loop {
            // Idle (nothing queued): sleep until a message, so an idle daemon costs no CPU here.
            let idle = self.queues.is_empty() && self.dead.is_empty() && self.opens.is_empty();
            let received = if idle {
                inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                inbox.recv_timeout(PASS_INTERVAL)
            };
            match received {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_pass.elapsed() >= PASS_INTERVAL {
                last_pass = Instant::now();
                if let Err(error) = self.pass() {
                    self.log_error(&error);
                }
                // ops: the pipeline's share of "oldest unshipped byte" (read, not yet durable).
                let oldest = self.queues.values().filter_map(|q| q.front()).map(|s| s.sealed_at);
                self.counters.oldest_pending.set_since(oldest.min());
            }
        }
        // Everything upstream is durable or dead-lettered: persist the final positions. Retry
        // a few times (a locked state DB); what is not persisted is re-read next start.
        let mut result = self.pass();
        for _ in 0..50 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(PASS_INTERVAL);
            result = self.pass();
        }
        result.context("persisting the final checkpoints")
    }

    fn handle(&mut self, msg: StateMsg) {
        match msg {
            StateMsg::Open { file, offset, line_no, reset } => {
                if reset {
                    // Spans of an earlier generation of this inode (before a truncation) must
                    // not move the new checkpoint; their data is shipped either way.
                    self.queues.remove(&(file.dev, file.ino));
                }
                self.opens.push((file, offset, line_no, reset));
            }
            StateMsg::Span { span, dead } => {
                self.dead.extend(dead.into_iter().map(|d| (d, span.clone())));
                let key = (span.file.dev, span.file.ino);
                self.queues.entry(key).or_default().push_back(span);
            }
            StateMsg::Dead(letters) => self.dead.extend(letters),
        }
    }

    fn log_error(&mut self, error: &anyhow::Error) {
        if self.last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            self.last_error_log = Some(Instant::now());
            tracing::error!(
                state_db = %self.db.path().display(),
                dlq_dir = %self.dlq_dir.display(),
                error = format!("{error:#}"),
                "cannot persist checkpoints or dead letters; retrying (nothing is lost, progress is not saved meanwhile)"
            );
        }
    }

    /// One state transaction: registrations, dead letters, checkpoint advances. In-memory
    /// state changes only after it commits, so a failed pass is simply tried again.
    fn pass(&mut self) -> anyhow::Result<()> {
        let has_advance =
            self.queues.values().any(|q| q.front().is_some_and(|s| done(s, &HashMap::new())));
        if self.opens.is_empty() && self.dead.is_empty() && !has_advance {
            return Ok(());
        }
        let now = std::time::SystemTime::now();
        let _lock = if self.dead.is_empty() {
            None
        } else {
            let lock = DlqLock::acquire(&self.dlq_dir).context("locking the DLQ")?;
            dlq::index::ensure_file(&mut self.db, &dlq::file_name_for(now))
                .context("recording the DLQ file in the state DB")?;
            Some(lock)
        };
        let tx = self.db.transaction().context("starting state transaction")?;
        for (file, offset, line_no, reset) in &self.opens {
            StateDb::register(&tx, file, *offset, *line_no, *reset)
                .with_context(|| format!("registering {}", file.path.display()))?;
        }
        let new_dead =
            dlq::append(&self.dlq_dir, &tx, &self.dead, now).context("appending to the DLQ")?;
        // Dead letters appended in this transaction count as durable for this pass.
        let mut dead_per_span: HashMap<*const Span, usize> = HashMap::new();
        for (_, span) in &self.dead {
            *dead_per_span.entry(Arc::as_ptr(span)).or_default() += 1;
        }
        let mut advanced = Vec::new();
        for (key, queue) in &self.queues {
            let n_done = queue.iter().take_while(|s| done(s, &dead_per_span)).count();
            if n_done == 0 {
                continue;
            }
            let span = &queue[n_done - 1];
            let file = &span.file;
            let fingerprint = span.fingerprint.clone();
            let size = span.size;
            let advance = Advance {
                dev: file.dev,
                ino: file.ino,
                offset: span.end_offset,
                line_no: span.end_line_no,
                fingerprint,
                size,
            };
            StateDb::advance(&tx, &advance)
                .with_context(|| format!("advancing checkpoint of {}", file.path.display()))?;
            advanced.push((*key, n_done));
        }
        tx.commit().context("committing state transaction")?;
        // Committed: now reflect it in memory.
        for (_, span) in self.dead.drain(..) {
            span.ack(1);
        }
        for (reason, n) in new_dead {
            self.counters.dlq(reason).add(n);
        }
        for (key, n_done) in advanced {
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.drain(..n_done);
                if queue.is_empty() {
                    self.queues.remove(&key);
                }
            }
        }
        self.opens.clear();
        Ok(())
    }
}

/// Whether a span is durable, counting the dead letters appended in the current pass.
fn done(span: &Arc<Span>, dead_now: &HashMap<*const Span, usize>) -> bool {
    let pending = span.pending();
    pending == 0 || dead_now.get(&Arc::as_ptr(span)).is_some_and(|&n| n == pending)
}
