//! Wiring shared by `run` and `backfill`: the state thread, the writer threads, and opening a
//! source file at its checkpoint.
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
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::checkpoint::{Advance, Checkpoint, StateDb};
use crate::config::Config;
use crate::dlq::{self, DeadLetter, DlqLock};
use crate::metrics::Counters;
use crate::route::{Batch, FileEntry, Router, Span, StateMsg};
use crate::sink::{self, WriterConfig};
use crate::tail::{LineReader, Source};

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
    checkpoints: HashMap<(u64, u64), Checkpoint>,
    /// Bytes read from disk by every reader (compressed for `.gz`): drives progress bars.
    pub disk_bytes: Arc<crate::metrics::Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Checkpoint,
    /// No checkpoint: start after the last complete line.
    End,
    Zero,
    /// Where this process left a file (verified like a saved checkpoint).
    At(Box<Checkpoint>),
}

/// A source file opened at its resume point.
pub struct Opened {
    pub file: Arc<FileEntry>,
    pub reader: LineReader<Source>,
    /// Where reading starts (the checkpoint, or 0).
    pub start_offset: u64,
    /// The reader's descriptor (shared, not a second one): metadata and fingerprints.
    pub handle: Arc<File>,
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
            checkpoints,
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

    /// The checkpoint saved for a file identity when the pipeline started.
    pub fn checkpoint(&self, dev: u64, ino: u64) -> Option<&Checkpoint> {
        self.checkpoints.get(&(dev, ino))
    }

    /// Opens `path` at its checkpoint (or at 0, or at the end of its last complete line with
    /// `from_end`), and registers it with the state thread. None if the file vanished.
    pub fn open(&self, path: &Path, from_end: bool) -> anyhow::Result<Option<Opened>> {
        self.open_with(path, if from_end { Start::End } else { Start::Checkpoint })
    }

    /// Opens `path` at 0 whatever its checkpoint says (it was truncated under us).
    pub fn open_from_start(&self, path: &Path) -> anyhow::Result<Option<Opened>> {
        self.open_with(path, Start::Zero)
    }

    /// Reopens a file this process already read up to `offset` (it was closed while idle).
    /// Falls back to the saved checkpoint if `path` is now another file, and to 0 if it shrank.
    pub fn reopen(
        &self,
        path: &Path,
        known_as: &Path,
        key: (u64, u64),
        offset: u64,
        line_no: u64,
        fingerprint: crate::checkpoint::Fingerprint,
    ) -> anyhow::Result<Option<Opened>> {
        let checkpoint = Checkpoint::at(key, known_as, offset, line_no, fingerprint);
        self.open_with(path, Start::At(Box::new(checkpoint)))
    }

    fn open_with(&self, path: &Path, start: Start) -> anyhow::Result<Option<Opened>> {
        let handle = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let meta = handle.metadata().with_context(|| format!("stat {}", path.display()))?;
        let gzip =
            crate::tail::is_gzip(&handle).with_context(|| format!("reading {}", path.display()))?;
        let (mut offset, mut line_no, mut reset) = (0, 0, true);
        let key = (meta.dev(), meta.ino());
        let checkpoint = match &start {
            Start::Zero => None,
            Start::At(cp) if (cp.dev, cp.ino) == key => Some(&**cp),
            Start::Checkpoint | Start::End | Start::At(_) => self.checkpoints.get(&key),
        };
        if let Some(cp) = checkpoint {
            match cp.verify(&handle, gzip).with_context(|| format!("reading {}", path.display()))? {
                Ok(()) => (offset, line_no, reset) = (cp.offset, cp.line_no, false),
                Err(mismatch) => tracing::warn!(
                    path = %path.display(),
                    checkpoint = cp.offset,
                    size = meta.len(),
                    ?mismatch,
                    "checkpoint does not match the file any more; reading it from the start"
                ),
            }
        } else if matches!(start, Start::End) && !gzip {
            (offset, line_no) =
                last_line_end(&handle).with_context(|| format!("reading {}", path.display()))?;
        }
        // Read through the descriptor just identified and verified, not a fresh open of `path`.
        let (source, handle) = Source::from_file(handle, offset, Some(self.disk_bytes.clone()))
            .with_context(|| format!("{}: opening at offset {offset}", path.display()))?;
        // A file reopened after a rename keeps the name its earlier lines were shipped under.
        let known_as = match &start {
            Start::At(cp) if (cp.dev, cp.ino) == key => cp.path.clone(),
            _ => path.to_path_buf(),
        };
        let file_name = known_as.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let file = Arc::new(FileEntry {
            path: known_as.clone(),
            source: Arc::from(known_as.to_string_lossy().as_ref()),
            dev: meta.dev(),
            ino: meta.ino(),
            gzip,
            day: crate::parse::file_day(&file_name),
        });
        let max_line = self.config.sources.max_line_bytes;
        let reader =
            LineReader::new(source, offset, line_no, max_line, self.config.dlq.max_raw_bytes);
        let msg = StateMsg::Open { file: file.clone(), offset, line_no, reset };
        if self.state_tx.send(msg).is_err() {
            anyhow::bail!("state thread stopped");
        }
        Ok(Some(Opened { file, reader, start_offset: offset, handle }))
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

/// The offset just past the last `\n` and the number of lines before it: where `read_from =
/// "end"` starts, so that line numbers (part of event keys) match a later full read.
fn last_line_end(file: &File) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.try_clone()?);
    let (mut pos, mut end, mut lines) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((end, lines));
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            lines += 1;
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
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
