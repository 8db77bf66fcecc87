//! The state thread: the only writer of the state DB and the DLQ files while a pipeline runs.
//!
//! It receives what readers opened and sealed ([`StateMsg`]) and what writers could not store,
//! and every `PASS_INTERVAL`, in one state transaction, registers newly opened files, appends
//! the dead letters it holds (see `dlq` for why that makes the DLQ exactly-once) and advances
//! the checkpoint of each file over its longest prefix of fully durable spans. In-memory state
//! changes only after that transaction commits, so a failed pass is simply tried again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::checkpoint::{Advance, StateDb};
use crate::dlq::{self, DlqLock};
use crate::flow::{DeadLetter, FileEntry, Opening, Span, StateMsg};
use crate::identity::FileId;
use crate::metrics::Counters;

/// How often the state thread persists progress. Checkpoints trail the data by about this much,
/// which only costs a little re-reading (a no-op) after a crash.
const PASS_INTERVAL: Duration = Duration::from_millis(200);

/// Runs the state thread until every sender of `inbox` is gone, then makes its last pass.
pub(crate) fn run(
    db: StateDb,
    dlq_dir: PathBuf,
    counters: Arc<Counters>,
    inbox: Receiver<StateMsg>,
) -> anyhow::Result<()> {
    StateThread::new(db, dlq_dir, counters).run(inbox)
}

/// Owns the state DB and the DLQ files; see the module docs.
struct StateThread {
    db: StateDb,
    dlq_dir: PathBuf,
    counters: Arc<Counters>,
    opens: Vec<Opening>,
    queues: HashMap<FileId, VecDeque<Arc<Span>>>,
    generations: Generations,
    dead: Vec<(DeadLetter, Arc<Span>)>,
    last_error_log: Option<Instant>,
}

/// Which spans may move a checkpoint. A reset (a file read again from its start: new to the
/// state DB, or its content changed under a reader) starts a new *generation* of the file; each
/// reader (one per `Opening`, told apart by its `FileEntry`) belongs to the generation its file
/// had when it opened. Spans of an earlier generation never move the checkpoint: those queued
/// are dropped at the reset, later ones are not queued (their records are stored either way).
///
/// Dropping all of them, not only the queued ones, is what makes this safe with two readers of
/// one file at once (`backfill --jobs 2`, one file under two paths): the first reader goes on
/// sending spans, and had only its queued spans been dropped, its later ones would move the
/// checkpoint past lines still in the writers' buffers. The newer reader, which reads the file
/// from its start, moves the checkpoint instead. One reader at a time (the daemon) loses
/// nothing by it: the earlier reader has stopped before the file is opened again.
#[derive(Default)]
struct Generations {
    /// The generation of each file some reader of which is alive.
    current: HashMap<FileId, u64>,
    /// Readers by the address of their `FileEntry` (kept allocated by the `Weak`, so never
    /// reused while listed): their file and generation.
    readers: HashMap<usize, (FileId, u64, Weak<FileEntry>)>,
}

impl Generations {
    /// A reader started; returns whether it starts a new generation of its file.
    fn open(&mut self, opening: &Opening) -> bool {
        let generation = self.current.entry(opening.file.id).or_default();
        if opening.reset {
            *generation += 1;
        }
        let reader = (opening.file.id, *generation, Arc::downgrade(&opening.file));
        self.readers.insert(Arc::as_ptr(&opening.file) as usize, reader);
        opening.reset
    }

    /// Whether a span is of its file's current generation (a span whose opening was not seen
    /// is).
    fn is_current(&self, span: &Span) -> bool {
        self.readers.get(&(Arc::as_ptr(&span.file) as usize)).is_none_or(|(id, generation, _)| {
            self.current.get(id).is_none_or(|current| current == generation)
        })
    }

    /// Forgets readers that are gone with all their spans, and the generations of files no
    /// reader of which is left (no span of theirs can arrive any more).
    fn forget_finished(&mut self) {
        self.readers.retain(|_, (_, _, entry)| entry.strong_count() > 0);
        let alive: HashSet<FileId> = self.readers.values().map(|(id, _, _)| *id).collect();
        self.current.retain(|id, _| alive.contains(id));
    }
}

impl StateThread {
    fn new(db: StateDb, dlq_dir: PathBuf, counters: Arc<Counters>) -> StateThread {
        StateThread {
            db,
            dlq_dir,
            counters,
            opens: Vec::new(),
            queues: HashMap::new(),
            generations: Generations::default(),
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
                self.generations.forget_finished();
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
            StateMsg::Open(opening) => {
                if self.generations.open(&opening) {
                    // Spans of an earlier generation must not move the new checkpoint (see
                    // `Generations`); their data is shipped either way.
                    self.queues.remove(&opening.file.id);
                }
                self.opens.push(opening);
            }
            StateMsg::Span { span, dead } => {
                self.dead.extend(dead.into_iter().map(|d| (d, span.clone())));
                if self.generations.is_current(&span) {
                    let key = span.file.id;
                    self.queues.entry(key).or_default().push_back(span);
                }
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
        for Opening { file, offset, line_no, reset } in &self.opens {
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
                id: file.id,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FileEntry;

    /// Issue 10 #3: two readers of one file at once (`backfill --jobs 2`, one file under two
    /// paths), each opening it with a reset. The second reset must not leave the first
    /// reader's later spans to move the checkpoint past its earlier ones, still in the writers'
    /// buffers: the checkpoint follows the second reader only.
    #[test]
    fn a_reset_never_lets_another_readers_later_spans_skip_its_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let db = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
        let mut state = StateThread::new(db, dir.path().to_path_buf(), Arc::default());
        let id = FileId { dev: 1, ino: 2 };
        let reader = |path: &str| {
            Arc::new(FileEntry { path: path.into(), source: path.into(), id, gzip: false, day: 0 })
        };
        let open = |state: &mut StateThread, file: &Arc<FileEntry>| {
            let opening = Opening { file: file.clone(), offset: 0, line_no: 0, reset: true };
            state.handle(StateMsg::Open(opening));
        };
        let seal = |state: &mut StateThread, file: &Arc<FileEntry>, end: u64| {
            let span = Arc::new(Span::new(
                file.clone(),
                end,
                end / 100,
                1,
                Default::default(),
                Some(300),
                Instant::now(),
            ));
            state.handle(StateMsg::Span { span: span.clone(), dead: Vec::new() });
            span
        };
        let offset = |state: &mut StateThread| {
            state.pass().unwrap();
            state.db.load().unwrap()[&id].offset
        };
        let (a, b) = (reader("/raw/events.ndjson"), reader("/alias/events.ndjson"));
        open(&mut state, &a);
        let (a1, a2) = (seal(&mut state, &a, 100), seal(&mut state, &a, 200));
        open(&mut state, &b);
        let a3 = seal(&mut state, &a, 300);
        a3.ack(1);
        assert_eq!(offset(&mut state), 0, "lines 1-2 are still in the writers' buffers");
        a1.ack(1);
        a2.ack(1);
        assert_eq!(offset(&mut state), 0, "the first reader's spans were superseded");
        let (b1, b2, b3) =
            (seal(&mut state, &b, 100), seal(&mut state, &b, 200), seal(&mut state, &b, 300));
        b1.ack(1);
        b3.ack(1);
        assert_eq!(offset(&mut state), 100);
        b2.ack(1);
        assert_eq!(offset(&mut state), 300);
        // Both readers gone with their spans: nothing of them is kept.
        drop((a, b, a1, a2, a3, b1, b2, b3));
        state.generations.forget_finished();
        assert!(state.generations.readers.is_empty() && state.generations.current.is_empty());
    }
}
