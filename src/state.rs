//! The state thread: the only writer of the state DB and the DLQ files while a pipeline runs.
//!
//! It receives what readers opened and sealed ([`StateMsg`]) and what writers could not store,
//! and every `PASS_INTERVAL`, in one state transaction, registers newly opened files, appends
//! the dead letters it holds (see `dlq` for why that makes the DLQ exactly-once) and advances
//! the checkpoint of each file over its longest prefix of fully durable spans. In-memory state
//! changes only after that transaction commits, so a failed pass is simply tried again.
//!
//! Its backlog is bounded (issue 10 #10). Dead letters are the one thing it holds that can be
//! big (up to `dlq.max_raw_bytes` each) and that only a successful pass frees. Once those it
//! holds pass [`Limits`], it stops taking messages from its inbox: the inbox is bounded, so the
//! readers are held back through it (the daemon's router yields, its opener only tries;
//! backfill's readers wait) and memory stays at the bound plus one message plus the inbox. A
//! healthy thread then passes at once (a burst costs no throughput); a failing one retries with
//! capped exponential backoff (`Limits::retry`), not every `PASS_INTERVAL`, re-appending and
//! fsyncing the whole pile each time.
//!
//! Why holding back cannot deadlock: a successful pass appends *every* letter held, whatever
//! the writers do (only checkpoints wait for the writers' acks), so the thread, held back,
//! waits for nothing but its own DB and DLQ. Writers send `write_failed` letters with a
//! blocking `send` and may wait on a full inbox meanwhile; they are freed by the first pass
//! that succeeds. At shutdown nothing may wait on a DLQ that stays broken: the pipeline closes
//! the *drain* channel before joining the writers, and a draining thread takes every message
//! again (the readers are gone, so what is left is bounded by the writers' buffers), then
//! makes its last passes as before.

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

/// How much the state thread holds before it stops reading its inbox, and how it retries.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Dead letters held (not yet durable) above which the inbox is not read.
    letters: usize,
    /// Their approximate bytes above which the inbox is not read.
    bytes: usize,
    /// Spans queued for a checkpoint (durable or not) above which the inbox is not read:
    /// while passes fail (a state DB locked, full or read-only) their number would grow
    /// with every span the readers seal.
    spans: usize,
    /// The longest wait between two failing passes (doubling from `PASS_INTERVAL`).
    retry: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        // 16 Ki letters (a few MiB of small ones) or 64 MiB: a burst of bad lines between two
        // passes fits; a DLQ that stays broken holds the readers back well before memory hurts.
        // 64 Ki spans of a few hundred bytes each (their records are in the writers' hands,
        // not here): ~20 MiB, minutes of a busy host's spans.
        Limits {
            letters: 16 * 1024,
            bytes: 64 << 20,
            spans: 64 * 1024,
            retry: Duration::from_secs(10),
        }
    }
}

/// Runs the state thread until every sender of `inbox` is gone, then makes its last pass.
/// `drain` is closed (its sender dropped) when the pipeline shuts down: from then on the inbox
/// is read whatever the backlog (module docs).
pub(crate) fn run(
    db: StateDb,
    dlq_dir: PathBuf,
    counters: Arc<Counters>,
    inbox: Receiver<StateMsg>,
    drain: Receiver<()>,
) -> anyhow::Result<()> {
    StateThread::new(db, dlq_dir, counters).run(inbox, drain)
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
    /// Approximate bytes of `dead` (see [`letter_bytes`]).
    dead_bytes: usize,
    /// Spans in `queues`.
    n_spans: usize,
    limits: Limits,
    /// The wait before the next pass: `PASS_INTERVAL`, doubled (up to `limits.retry`) by each
    /// failing pass.
    backoff: Duration,
    last_error_log: Option<Instant>,
}

/// What a dead letter costs in memory, roughly: its strings plus the struct and its span's
/// share.
fn letter_bytes(letter: &DeadLetter) -> usize {
    letter.raw.len() + letter.error.len() + letter.key.len() + 128
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
            dead_bytes: 0,
            n_spans: 0,
            limits: Limits::default(),
            backoff: PASS_INTERVAL,
            last_error_log: None,
        }
    }

    /// Whether the dead letters or spans held reached a bound: the inbox is not read until a
    /// pass persists them (or the pipeline drains).
    fn held_back(&self) -> bool {
        self.dead.len() >= self.limits.letters
            || self.dead_bytes >= self.limits.bytes
            || self.n_spans >= self.limits.spans
    }

    fn run(mut self, inbox: Receiver<StateMsg>, drain: Receiver<()>) -> anyhow::Result<()> {
        let mut last_pass = Instant::now();
        let mut draining = false;
        loop {
            let failing = self.backoff > PASS_INTERVAL;
            let held = !draining && self.held_back();
            // Held back while passes succeed (a burst): pass now. Otherwise every
            // `PASS_INTERVAL`, or the backoff while passes fail.
            let next_pass =
                if held && !failing { Instant::now() } else { last_pass + self.backoff };
            if held {
                // The inbox stays unread (module docs); only the pipeline's drain wakes us early.
                if let Err(RecvTimeoutError::Disconnected) = drain.recv_deadline(next_pass) {
                    draining = true;
                }
            } else {
                // Idle (nothing queued): sleep until a message, so an idle daemon costs no CPU.
                let idle = self.queues.is_empty() && self.dead.is_empty() && self.opens.is_empty();
                let received = if idle {
                    inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    inbox.recv_deadline(next_pass)
                };
                match received {
                    Ok(msg) => self.handle(msg),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if Instant::now() >= next_pass || (self.held_back() && !failing) {
                last_pass = Instant::now();
                match self.pass() {
                    Ok(()) => self.backoff = PASS_INTERVAL,
                    Err(error) => {
                        self.backoff = (self.backoff * 2).min(self.limits.retry);
                        self.log_error(&error);
                    }
                }
                self.generations.forget_finished();
                // ops: the pipeline's share of "oldest unshipped byte" (read, not yet durable).
                let oldest = self.queues.values().filter_map(|q| q.front()).map(|s| s.sealed_at);
                self.counters.oldest_pending.set_since(oldest.min());
            }
            self.counters.dlq_pending.set(self.dead.len() as u64); // ops: the backlog's size
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
                    let gone = self.queues.remove(&opening.file.id);
                    self.n_spans -= gone.map_or(0, |q| q.len());
                }
                self.opens.push(opening);
            }
            StateMsg::Span { span, dead } => {
                self.dead_bytes += dead.iter().map(letter_bytes).sum::<usize>();
                self.dead.extend(dead.into_iter().map(|d| (d, span.clone())));
                if self.generations.is_current(&span) {
                    let key = span.file.id;
                    self.queues.entry(key).or_default().push_back(span);
                    self.n_spans += 1;
                }
            }
            StateMsg::Dead(letters) => {
                self.dead_bytes += letters.iter().map(|(d, _)| letter_bytes(d)).sum::<usize>();
                self.dead.extend(letters);
            }
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
        crate::crash::point("state.before_commit");
        tx.commit().context("committing state transaction")?;
        crate::crash::point("state.after_commit");
        // Committed: now reflect it in memory.
        for (_, span) in self.dead.drain(..) {
            span.ack(1);
        }
        self.dead_bytes = 0;
        for (reason, n) in new_dead {
            self.counters.dlq(reason).add(n);
        }
        for (key, n_done) in advanced {
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.drain(..n_done);
                self.n_spans -= n_done;
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

    /// A state thread running in its own thread, fed like the pipeline feeds it: a small
    /// inbox, a file of spans of one line each, every line a dead letter.
    struct Harness {
        dir: tempfile::TempDir,
        dlq_dir: PathBuf,
        counters: Arc<Counters>,
        limits: Limits,
        tx: Option<crossbeam_channel::Sender<StateMsg>>,
        drain: Option<crossbeam_channel::Sender<()>>,
        thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
        file: Arc<FileEntry>,
        spans: Vec<Arc<Span>>,
    }

    const INBOX: usize = 8;

    impl Harness {
        /// Starts the thread with a DLQ "directory" that is a file: every pass fails.
        fn broken_dlq() -> Harness {
            let limits = Limits {
                letters: 10,
                bytes: usize::MAX,
                spans: usize::MAX,
                retry: Duration::from_millis(400),
            };
            Harness::start(limits, |dir| {
                let dlq_dir = dir.join("dlq");
                std::fs::write(&dlq_dir, "not a directory").unwrap(); // fails as root too
                dlq_dir
            })
        }

        fn start(limits: Limits, dlq_dir: impl FnOnce(&std::path::Path) -> PathBuf) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let mut sqlite = crate::config::Config::for_base(dir.path()).sqlite;
            sqlite.busy_timeout = Duration::from_millis(10);
            let db = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
            let dlq_dir = dlq_dir(dir.path());
            let counters = Arc::<Counters>::default();
            let mut state = StateThread::new(db, dlq_dir.clone(), counters.clone());
            state.limits = limits;
            let (tx, rx) = crossbeam_channel::bounded(INBOX);
            let (drain, drain_rx) = crossbeam_channel::bounded(0);
            let thread = std::thread::spawn(move || state.run(rx, drain_rx));
            let path = dir.path().join("events_20261101.ndjson");
            let file = Arc::new(FileEntry {
                source: path.to_string_lossy().into(),
                path,
                id: FileId { dev: 1, ino: 2 },
                gzip: false,
                day: 20261101,
            });
            let opening = Opening { file: file.clone(), offset: 0, line_no: 0, reset: true };
            tx.send(StateMsg::Open(opening)).unwrap();
            Harness {
                dir,
                dlq_dir,
                counters,
                limits,
                tx: Some(tx),
                drain: Some(drain),
                thread: Some(thread),
                file,
                spans: Vec::new(),
            }
        }

        /// The next span (line `n + 1`, one dead letter) and its message.
        fn next(&self) -> (Arc<Span>, StateMsg) {
            let n = self.spans.len() as u64;
            let span = Arc::new(Span::new(
                self.file.clone(),
                (n + 1) * 100,
                n + 1,
                1,
                Default::default(),
                Some(1_000_000),
                Instant::now(),
            ));
            let mut key = vec![0; 24];
            key[4..12].copy_from_slice(&(n + 1).to_be_bytes());
            let letter = DeadLetter {
                source: self.file.source.clone(),
                offset: n * 100,
                line_no: n + 1,
                reason: crate::parse::DeadReason::InvalidJson,
                error: "expected value".into(),
                raw: format!("garbage {n} {}", "x".repeat(60)),
                raw_len: 99,
                key,
            };
            (span.clone(), StateMsg::Span { span, dead: vec![letter] })
        }

        fn tx(&self) -> &crossbeam_channel::Sender<StateMsg> {
            self.tx.as_ref().unwrap()
        }

        /// Sends spans without blocking until the inbox is full and the thread holds back.
        fn fill(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "the inbox never filled");
                let (span, msg) = self.next();
                match self.tx().try_send(msg) {
                    Ok(()) => self.spans.push(span),
                    Err(crossbeam_channel::TrySendError::Full(_))
                        if self.counters.dlq_pending.get() >= self.limits.letters as u64 =>
                    {
                        break
                    }
                    Err(crossbeam_channel::TrySendError::Full(_)) => {
                        std::thread::sleep(Duration::from_millis(2)) // poll
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        }

        /// Makes the DLQ directory usable.
        fn heal(&self) {
            std::fs::remove_file(&self.dlq_dir).unwrap();
            std::fs::create_dir(&self.dlq_dir).unwrap();
        }

        /// Waits until every span sent is durable (its dead letter in the DLQ).
        fn wait_all_durable(&self) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.spans.iter().any(|s| s.pending() > 0) {
                assert!(Instant::now() < deadline, "dead letters never appended");
                std::thread::sleep(Duration::from_millis(5)); // poll
            }
        }

        /// Closes the pipeline's side and returns the thread's result.
        fn finish(&mut self) -> anyhow::Result<()> {
            self.tx = None;
            self.drain = None;
            self.thread.take().unwrap().join().unwrap()
        }

        /// Dead letters in every DLQ file, by line number.
        fn dlq_lines(&self) -> Vec<u64> {
            let mut lines = Vec::new();
            for entry in std::fs::read_dir(&self.dlq_dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "ndjson") {
                    for line in std::fs::read_to_string(&path).unwrap().lines() {
                        let value: serde_json::Value = serde_json::from_str(line).unwrap();
                        lines.push(value["line_no"].as_u64().unwrap());
                    }
                }
            }
            lines.sort_unstable();
            lines
        }

        fn checkpoint(&self) -> u64 {
            let sqlite = crate::config::Config::for_base(self.dir.path()).sqlite;
            let db = StateDb::open(&self.dir.path().join("state.sqlite"), &sqlite).unwrap();
            db.load().unwrap()[&self.file.id].offset
        }
    }

    /// Issue 10 #10: while its passes fail (the DLQ directory unusable), the state thread holds
    /// at most its bound of dead letters and stops reading its inbox, so senders see it full;
    /// once the DLQ heals, every letter is appended exactly once and the checkpoint advances.
    #[test]
    fn a_failing_dlq_bounds_the_backlog_and_holds_the_senders_back() {
        let mut h = Harness::broken_dlq();
        h.fill();
        let bound = h.limits.letters;
        assert_eq!(h.counters.dlq_pending.get(), bound as u64);
        // Taken: the opening and `bound` spans; the rest waits in the inbox, unread.
        assert_eq!(h.spans.len(), bound + INBOX);
        assert_eq!(h.tx().len(), INBOX);
        assert!(h.spans.iter().all(|s| s.pending() == 1), "nothing is durable yet");
        let (_, msg) = h.next();
        assert!(matches!(h.tx().try_send(msg), Err(crossbeam_channel::TrySendError::Full(_))));

        h.heal();
        // The readers go on: everything is taken, appended and checkpointed.
        for _ in 0..50 {
            let (span, msg) = h.next();
            h.tx().send(msg).unwrap();
            h.spans.push(span);
        }
        h.wait_all_durable();
        let total = h.spans.len() as u64;
        h.finish().unwrap();
        assert_eq!(h.dlq_lines(), (1..=total).collect::<Vec<_>>(), "each letter exactly once");
        assert_eq!(h.checkpoint(), total * 100);
        assert_eq!(h.counters.dlq(crate::parse::DeadReason::InvalidJson).get(), total);
    }

    /// Issue 10 #10, the span queue: while the state DB is locked (every pass fails) spans
    /// whose records the writers committed wait for their checkpoint; at most the bound of
    /// them is taken, then the inbox is not read. Once the lock goes, the checkpoint moves
    /// over every span.
    #[test]
    fn a_failing_state_db_bounds_the_span_queue_and_holds_the_senders_back() {
        let limits = Limits {
            letters: usize::MAX,
            bytes: usize::MAX,
            spans: 10,
            retry: Duration::from_millis(100),
        };
        let mut h = Harness::start(limits, |dir| dir.join("dlq"));
        let locker = rusqlite::Connection::open(h.dir.path().join("state.sqlite")).unwrap();
        locker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the inbox never filled");
            let n = h.spans.len() as u64;
            let span = Arc::new(Span::new(
                h.file.clone(),
                (n + 1) * 100,
                n + 1,
                1,
                Default::default(),
                Some(1_000_000),
                Instant::now(),
            ));
            span.ack(1); // its record is committed: only the checkpoint waits
            match h.tx().try_send(StateMsg::Span { span: span.clone(), dead: Vec::new() }) {
                Ok(()) => h.spans.push(span),
                Err(crossbeam_channel::TrySendError::Full(_)) if h.spans.len() >= 10 + INBOX => {
                    break
                }
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    std::thread::sleep(Duration::from_millis(2)) // poll
                }
                Err(error) => panic!("{error}"),
            }
        }
        // Taken: the opening and 10 spans; the rest waits in the inbox, unread.
        assert_eq!(h.spans.len(), 10 + INBOX);
        assert_eq!(h.tx().len(), INBOX);
        locker.execute_batch("ROLLBACK").unwrap();
        let total = h.spans.len() as u64;
        h.finish().unwrap();
        assert_eq!(h.checkpoint(), total * 100);
    }

    /// A state thread held back by a broken DLQ still reads its inbox once the pipeline drains
    /// (writers may be waiting to hand it `write_failed` letters), and its last pass persists
    /// everything once the DLQ heals.
    #[test]
    fn a_held_back_state_thread_still_drains_at_shutdown() {
        let mut h = Harness::broken_dlq();
        h.fill();
        assert_eq!(h.tx().len(), INBOX);
        h.drain = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while h.counters.dlq_pending.get() < h.spans.len() as u64 {
            assert!(Instant::now() < deadline, "the inbox was not drained");
            std::thread::sleep(Duration::from_millis(5)); // poll
        }
        assert!(h.tx().is_empty());
        h.heal();
        let total = h.spans.len() as u64;
        h.finish().unwrap();
        assert!(h.spans.iter().all(|s| s.pending() == 0));
        assert_eq!(h.dlq_lines(), (1..=total).collect::<Vec<_>>(), "each letter exactly once");
        assert_eq!(h.checkpoint(), total * 100);
    }
}
