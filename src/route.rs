//! From lines to batches: classify each line with [`parse`](crate::parse), send each record to
//! the writer thread that owns its run, and cut the stream into [`Span`]s, the unit a checkpoint
//! advances by.
//!
//! A span is sealed (its record count fixed) *before* any of its records leaves the reader, and
//! registered with the state thread before that too; writers and the DLQ ack it as they make its
//! records durable. The checkpoint moves past a span only when its count reaches zero, so it
//! never moves past a line that is not durable. Its IO: reading lines through the reader it is
//! given, and at each seal the file's fingerprint and size (two small preads and an fstat,
//! through the reader's descriptor) and the clock (when the span was sealed); it sends on
//! bounded channels, which is where backpressure reaches the reader.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::config::Mapping;
use crate::flow::{Batch, BatchBuilder, DeadLetter, FileEntry, Rebuild, Span, Spares, StateMsg};
use crate::identity::Fingerprint;
use crate::metrics::Counters;
use crate::parse::{self, DeadReason, Outcome};
use crate::tail::{Line, LineReader};

/// Records per span: small enough that a checkpoint trails the data by little, large enough
/// that span bookkeeping stays off the profile.
const SPAN_MAX_RECORDS: usize = 4096;

/// Bytes per span: with long lines, a span of 4,096 records could hold gigabytes. A span (its
/// batches and dead letters) holds at most this plus one line of `max_line_bytes`.
const SPAN_MAX_BYTES: u64 = 8 << 20;

/// Runs whose writer is remembered, at most; past it the assignments start afresh (a run may
/// then get a second writer: slower for a moment, still correct, as when `backfill` runs
/// beside the daemon, since run-DB writes are upserts in stream order under SQLite's lock).
const MAX_OWNED_RUNS: usize = 65_536;

/// A router's own copy of the assignments it used, at most (then cleared).
const MAX_CACHED_RUNS: usize = 4_096;

/// The writer threads' inboxes and which writer owns each run. A run goes to the writer with
/// the fewest runs when first seen, as the limit program does: hashing run ids split 50 runs
/// of equal size 30/20 over two writers, and the busier one bounds a backfill's wall time
/// (pair.py at 50 runs: see ARCHITECTURE.md). Shared by every reader's router, since a run DB
/// should have one writer; each router caches its answers, so the lock is taken once per
/// run and reader.
#[derive(Clone)]
pub(crate) struct Writers {
    inboxes: Vec<Sender<Batch>>,
    owners: Arc<Mutex<Owners>>,
    /// Batches the writers are done with, to build the next ones in.
    spares: Spares,
}

#[derive(Default)]
struct Owners {
    by_run: HashMap<String, usize>,
    /// Runs assigned to each writer.
    runs: Vec<usize>,
}

impl Writers {
    pub(crate) fn new(inboxes: Vec<Sender<Batch>>, spares: Spares) -> Writers {
        let owners = Owners { by_run: HashMap::new(), runs: vec![0; inboxes.len()] };
        Writers { inboxes, owners: Arc::new(Mutex::new(owners)), spares }
    }

    fn len(&self) -> usize {
        self.inboxes.len()
    }

    /// The writer that owns `run_id`, assigning one if it has none.
    fn owner(&self, run_id: &str) -> usize {
        let mut owners = self.owners.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&shard) = owners.by_run.get(run_id) {
            return shard;
        }
        if owners.by_run.len() >= MAX_OWNED_RUNS {
            owners.by_run.clear();
            owners.runs.iter_mut().for_each(|n| *n = 0);
        }
        let shard = (0..owners.runs.len()).min_by_key(|&i| owners.runs[i]).unwrap_or(0);
        owners.runs[shard] += 1;
        owners.by_run.insert(run_id.to_string(), shard);
        shard
    }
}

/// Per-reader routing state: turns lines of one file at a time into sealed spans.
pub(crate) struct Router {
    mapping: Mapping,
    max_raw_bytes: usize,
    writers: Writers,
    /// The owners of the runs this router has seen (see `Writers`).
    owner_of: HashMap<String, usize>,
    state: Sender<StateMsg>,
    counters: Arc<Counters>,
    /// Never block on a full channel (the daemon): keep the sealed messages here and tell the
    /// caller, whose loop must stay free to close deleted files and answer signals while a
    /// writer is held up. At most one span's messages, so memory stays bounded.
    yielding: bool,
    stalled: VecDeque<Stalled>,
    /// Set: ship records only (of one run, if named), nothing to the state thread.
    rebuild: Option<Rebuild>,
}

/// A sealed message not yet handed on (its channel was full), in sending order.
enum Stalled {
    State(StateMsg),
    Batch(usize, Batch),
}

/// Tells the reader loop why routing stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// No complete line is available right now.
    Drained,
    /// A channel closed: the pipeline is shutting down.
    Closed,
    /// (Yielding routers only.) A writer or the state thread is not keeping up: what was read
    /// is sealed and held in the router; call [`Router::unstall`] before routing again.
    Blocked,
}

/// How sealing a span went.
enum Sealed {
    Sent,
    Stalled,
    Closed,
}

impl Router {
    pub(crate) fn new(
        mapping: Mapping,
        max_raw_bytes: usize,
        writers: Writers,
        state: Sender<StateMsg>,
        counters: Arc<Counters>,
        yielding: bool,
    ) -> Router {
        Router {
            mapping,
            max_raw_bytes,
            writers,
            owner_of: HashMap::new(),
            state,
            counters,
            yielding,
            stalled: VecDeque::new(),
            rebuild: None,
        }
    }

    /// Routes for a rebuild (see [`Rebuild`]).
    pub(crate) fn rebuilding(mut self, rebuild: Rebuild) -> Router {
        self.rebuild = Some(rebuild);
        self
    }

    /// The writer of `run_id`'s records (see [`Writers`]).
    fn owner(&mut self, run_id: &str) -> usize {
        if let Some(&shard) = self.owner_of.get(run_id) {
            return shard;
        }
        if self.owner_of.len() >= MAX_CACHED_RUNS {
            self.owner_of.clear();
        }
        let shard = self.writers.owner(run_id);
        self.owner_of.insert(run_id.to_string(), shard);
        shard
    }

    /// Hands the stalled messages on, in order, waiting up to `wait` for room (a zero wait only
    /// tries; `Duration::MAX` waits as long as it takes). Ok(true) once none is left; Err if a
    /// channel closed.
    pub(crate) fn unstall(&mut self, wait: Duration) -> Result<bool, Closed> {
        let deadline = Instant::now().checked_add(wait);
        while let Some(msg) = self.stalled.pop_front() {
            let left =
                deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            let back = match msg {
                Stalled::State(m) => match self.state.send_timeout(m, left) {
                    Ok(()) => continue,
                    Err(SendTimeoutError::Timeout(m)) => Stalled::State(m),
                    Err(SendTimeoutError::Disconnected(_)) => return Err(Closed),
                },
                Stalled::Batch(shard, b) => match self.writers.inboxes[shard].send_timeout(b, left)
                {
                    Ok(()) => continue,
                    Err(SendTimeoutError::Timeout(b)) => Stalled::Batch(shard, b),
                    Err(SendTimeoutError::Disconnected(_)) => return Err(Closed),
                },
            };
            self.stalled.push_front(back);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether sealed messages are waiting for room (see [`Routed::Blocked`]).
    #[cfg(test)]
    pub(crate) fn is_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Routes every complete line `reader` has now. With `finished`, also the unterminated tail
    /// of the stream (the file is known to be complete). `stop` is polled between spans.
    pub(crate) fn route<R: Read>(
        &mut self,
        file: &Arc<FileEntry>,
        handle: &File,
        reader: &mut LineReader<R>,
        finished: bool,
        stop: &dyn Fn() -> bool,
    ) -> std::io::Result<Routed> {
        match self.unstall(Duration::ZERO) {
            Ok(true) => {}
            Ok(false) => return Ok(Routed::Blocked),
            Err(Closed) => return Ok(Routed::Closed),
        }
        let mut pending = Pending::new(self.writers.len());
        let mut counted = (reader.offset(), 0u64);
        let read =
            self.read_spans(file, handle, reader, finished, stop, &mut pending, &mut counted);
        if let Ok(Some(early)) = read {
            return Ok(early);
        }
        // Drained, or a read error: what was classified is sealed either way, so that nothing
        // the reader moved past is dropped (the next read resumes after it).
        let (offset, line_no) = (reader.offset(), reader.line_no());
        self.count(offset - counted.0, counted.1);
        if pending.n_records > 0 || !pending.dead.is_empty() || pending.blank_advance {
            match self.seal(file, handle, &mut pending, offset, line_no) {
                Sealed::Sent => {}
                Sealed::Stalled if read.is_ok() => return Ok(Routed::Blocked),
                Sealed::Closed if read.is_ok() => return Ok(Routed::Closed),
                Sealed::Stalled | Sealed::Closed => {}
            }
        }
        read.map(|_| Routed::Drained)
    }

    /// A `.gz` whose stream is corrupt or cut short for good (see [`is_corrupt_gzip`]): what
    /// was read after its last complete line, maybe nothing, becomes one `incomplete_line`
    /// dead letter naming the error, sealed with the checkpoint left at that line's start. So
    /// reading the file again ends the same way, at the same line with the same bytes: the same
    /// letter key, not a second letter. Call after [`Router::route`] returned the error.
    pub(crate) fn give_up<R: Read>(
        &mut self,
        file: &Arc<FileEntry>,
        handle: &File,
        reader: &mut LineReader<R>,
        error: &std::io::Error,
    ) -> Routed {
        let (offset, line_no) = (reader.offset(), reader.line_no());
        tracing::warn!(
            path = %file.path.display(),
            offset,
            %error,
            "the .gz is corrupt or cut short; what cannot be read after this offset is one incomplete_line dead letter"
        );
        let mut pending = Pending::new(self.writers.len());
        if self.rebuild.is_none() {
            let error = format!(
                "the gzip stream cannot be read after byte {offset} (decompressed): {error}; \
                 the rest of the file is lost"
            );
            let letter = match reader.give_up() {
                Line::Complete(meta, bytes) => DeadLetter::new(
                    file,
                    meta,
                    DeadReason::IncompleteLine,
                    error,
                    bytes,
                    bytes.len() as u64,
                    &parse::digest(bytes),
                    self.max_raw_bytes,
                ),
                Line::TooLong(meta, t) => DeadLetter::new(
                    file,
                    meta,
                    DeadReason::IncompleteLine,
                    error,
                    &t.prefix,
                    t.len,
                    &t.digest,
                    self.max_raw_bytes,
                ),
            };
            pending.dead.push(letter);
        }
        match self.seal(file, handle, &mut pending, offset, line_no) {
            Sealed::Sent => Routed::Drained,
            Sealed::Stalled => Routed::Blocked,
            Sealed::Closed => Routed::Closed,
        }
    }

    /// Reads and classifies lines, sealing a span every [`SPAN_MAX_RECORDS`] records or
    /// [`SPAN_MAX_BYTES`] bytes. Some(..) when routing must stop there; None when the reader
    /// has no complete line left (the caller seals the rest). `counted`: the offset and the
    /// lines not yet added to the read counters.
    #[allow(clippy::too_many_arguments)]
    fn read_spans<R: Read>(
        &mut self,
        file: &Arc<FileEntry>,
        handle: &File,
        reader: &mut LineReader<R>,
        finished: bool,
        stop: &dyn Fn() -> bool,
        pending: &mut Pending,
        counted: &mut (u64, u64),
    ) -> std::io::Result<Option<Routed>> {
        loop {
            let mut got_line = false;
            while let Some(line) = reader.next_line()? {
                got_line = true;
                counted.1 += 1;
                self.classify(file, line, pending, false);
                let bytes = reader.offset() - counted.0;
                if pending.n_records >= SPAN_MAX_RECORDS || bytes >= SPAN_MAX_BYTES {
                    let (offset, line_no) = (reader.offset(), reader.line_no());
                    self.count(offset - counted.0, counted.1);
                    *counted = (offset, 0);
                    match self.seal(file, handle, pending, offset, line_no) {
                        Sealed::Sent => {}
                        Sealed::Stalled => return Ok(Some(Routed::Blocked)),
                        Sealed::Closed => return Ok(Some(Routed::Closed)),
                    }
                    if stop() {
                        return Ok(Some(Routed::Drained));
                    }
                }
            }
            if !finished {
                return Ok(None);
            }
            if let Some(line) = reader.finish()? {
                counted.1 += 1;
                self.classify(file, line, pending, true);
            } else if !got_line && reader.at_eof() {
                return Ok(None);
            }
            if reader.at_eof() && reader.pending_bytes() == 0 {
                return Ok(None);
            }
        }
    }

    fn count(&self, bytes: u64, lines: u64) {
        self.counters.bytes_read.add(bytes);
        self.counters.lines_read.add(lines);
    }

    fn classify(
        &mut self,
        file: &Arc<FileEntry>,
        line: Line<'_>,
        pending: &mut Pending,
        at_end: bool,
    ) {
        let (meta, bytes) = match line {
            Line::Complete(meta, bytes) => (meta, bytes),
            // A rebuild writes no dead letters: the first reading of the line did.
            Line::TooLong(..) if self.rebuild.is_some() => return,
            Line::TooLong(meta, too_long) => {
                let error =
                    format!("line is {} bytes, longer than sources.max_line_bytes", too_long.len);
                pending.dead.push(DeadLetter::new(
                    file,
                    meta,
                    DeadReason::LineTooLong,
                    error,
                    &too_long.prefix,
                    too_long.len,
                    &too_long.digest,
                    self.max_raw_bytes,
                ));
                return;
            }
        };
        let outcome = parse::parse_line(bytes, &self.mapping);
        let record = match outcome {
            Outcome::Record(record) => record,
            Outcome::Dead(..) if self.rebuild.is_some() => return,
            Outcome::Blank => {
                self.counters.blank_lines.add(1);
                pending.blank_advance = true;
                return;
            }
            Outcome::Dead(reason, error) => {
                // Trailing bytes of a finished file that do not parse are `incomplete_line`.
                let reason = if at_end { DeadReason::IncompleteLine } else { reason };
                pending.dead.push(DeadLetter::new(
                    file,
                    meta,
                    reason,
                    error,
                    bytes,
                    bytes.len() as u64,
                    &parse::digest(bytes),
                    self.max_raw_bytes,
                ));
                return;
            }
        };
        if let Some(Rebuild { run: Some(run) }) = &self.rebuild {
            if *run != record.run_id {
                return;
            }
        }
        let shard = self.owner(&record.run_id);
        let batch = pending.batches[shard].get_or_insert_with(|| self.writers.spares.builder());
        batch.push(&record, meta, bytes, file.day);
        pending.n_records += 1;
    }

    /// Seals the pending records as one span, registers it, then hands out the batches.
    fn seal(
        &mut self,
        file: &Arc<FileEntry>,
        handle: &File,
        pending: &mut Pending,
        end_offset: u64,
        end_line_no: u64,
    ) -> Sealed {
        let n_dead = pending.dead.len();
        // Unreadable now: no fingerprint, so a restart resumes on (dev, inode) and size alone.
        let fingerprint = Fingerprint::compute(handle, file.gzip, end_offset).unwrap_or_default();
        let size = if file.gzip { None } else { handle.metadata().ok().map(|m| m.len()) };
        let span = Arc::new(Span::new(
            file.clone(),
            end_offset,
            end_line_no,
            pending.n_records + n_dead,
            fingerprint,
            size,
            Instant::now(),
        ));
        self.counters.dead_letters_routed.add(n_dead as u64);
        let msg = StateMsg::Span { span: span.clone(), dead: std::mem::take(&mut pending.dead) };
        pending.n_records = 0;
        pending.blank_advance = false;
        let batches = pending.batches.iter_mut().enumerate().filter_map(|(shard, slot)| {
            slot.take().map(|builder| (shard, builder.into_batch(span.clone())))
        });
        // Registered before any of its records can be acked, so state sees the span first.
        // A rebuild's spans move no checkpoint: nobody waits for their acks.
        if self.rebuild.is_none() {
            self.stalled.push_back(Stalled::State(msg));
        }
        self.stalled.extend(batches.map(|(shard, batch)| Stalled::Batch(shard, batch)));
        // Backfill's readers simply wait; the daemon's keeps what finds no room.
        let wait = if self.yielding { Duration::ZERO } else { Duration::MAX };
        match self.unstall(wait) {
            Ok(true) => Sealed::Sent,
            Ok(false) => Sealed::Stalled,
            Err(Closed) => Sealed::Closed,
        }
    }
}

/// Whether a read error is the content of a `.gz` (a corrupt or cut-short stream), not the
/// device (EIO, ESTALE: worth retrying). Still growing, a cut-short stream is a `.gz` being
/// written: the callers give up only on one idle for `sources.close_inactive`.
pub(crate) fn is_corrupt_gzip(file: &FileEntry, error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{InvalidData, InvalidInput, UnexpectedEof};
    file.gzip && matches!(error.kind(), InvalidData | InvalidInput | UnexpectedEof)
}

/// A channel of the pipeline closed: it is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

struct Pending {
    batches: Vec<Option<BatchBuilder>>,
    dead: Vec<DeadLetter>,
    n_records: usize,
    /// Blank lines alone still move the checkpoint.
    blank_advance: bool,
}

impl Pending {
    fn new(n_shards: usize) -> Pending {
        Pending {
            batches: (0..n_shards).map(|_| None).collect(),
            dead: Vec::new(),
            n_records: 0,
            blank_advance: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crossbeam_channel::Receiver;

    use super::*;
    use crate::flow::Key;
    use crate::identity::FileId;

    fn event(i: usize) -> String {
        format!("{{\"run_id\":\"r\",\"event_id\":\"{i}\"}}\n")
    }

    /// The file the tests read, as the pipeline knows it.
    fn file_of(source: &tempfile::NamedTempFile) -> Arc<FileEntry> {
        Arc::new(FileEntry {
            path: source.path().to_path_buf(),
            source: "events.ndjson".into(),
            id: FileId { dev: 1, ino: 2 },
            gzip: false,
            day: 0,
        })
    }

    /// Runs go to the writer with the fewest runs when first seen, and stay with it whichever
    /// router asks: 50 runs over 2 writers are 25 and 25 (hashing made it 30 and 20).
    #[test]
    fn runs_are_spread_evenly_over_the_writers_and_keep_theirs() {
        let (inboxes, _rxs): (Vec<_>, Vec<_>) =
            (0..2).map(|_| crossbeam_channel::bounded::<Batch>(1)).unzip();
        let writers = Writers::new(inboxes, Spares::new(1));
        let owners: Vec<usize> = (0..50).map(|i| writers.owner(&format!("run-{i}"))).collect();
        assert_eq!(owners.iter().filter(|&&o| o == 0).count(), 25);
        let other_reader = writers.clone();
        for (i, &owner) in owners.iter().enumerate() {
            assert_eq!(other_reader.owner(&format!("run-{i}")), owner);
        }
        // Bounded: past `MAX_OWNED_RUNS` runs the assignments start afresh.
        for i in 0..MAX_OWNED_RUNS + 10 {
            writers.owner(&format!("many-{i}"));
        }
        // 50 + MAX_OWNED_RUNS + 10 runs: cleared once, at MAX_OWNED_RUNS.
        let owners = writers.owners.lock().unwrap();
        assert_eq!(owners.by_run.len(), 60);
        assert_eq!(owners.runs, vec![30, 30]);
    }

    /// The line numbers the spans sent to the state thread so far end at, in order.
    fn span_ends(state_rx: &Receiver<StateMsg>) -> Vec<u64> {
        let span_end = |m| match m {
            StateMsg::Span { span, .. } => Some(span.end_line_no),
            _ => None,
        };
        state_rx.try_iter().filter_map(span_end).collect()
    }

    /// A router with one writer, the receiving ends of its writer and state channels (of
    /// these capacities) in hand.
    fn router(
        writer_cap: usize,
        state_cap: usize,
        yielding: bool,
    ) -> (Router, Receiver<Batch>, Receiver<StateMsg>) {
        let (writer_tx, writer_rx) = crossbeam_channel::bounded(writer_cap);
        let (state_tx, state_rx) = crossbeam_channel::bounded(state_cap);
        let mapping = crate::config::Config::for_base(std::path::Path::new("/nonexistent")).mapping;
        let counters = Arc::new(Counters::default());
        let writers = Writers::new(vec![writer_tx], Spares::new(1));
        let router = Router::new(mapping, 1024, writers, state_tx, counters, yielding);
        (router, writer_rx, state_rx)
    }

    /// The daemon's router never blocks: with the writer's inbox full it keeps the sealed span
    /// (registered first, then its batch), reads nothing more, and hands both on, in order,
    /// once there is room.
    #[test]
    fn a_yielding_router_holds_one_sealed_span_while_the_writer_is_full() {
        let mut source = tempfile::NamedTempFile::new().unwrap();
        let n = SPAN_MAX_RECORDS * 3;
        source.write_all((0..n).map(event).collect::<String>().as_bytes()).unwrap();
        let handle = source.reopen().unwrap();
        let file = file_of(&source);
        let (mut router, writer_rx, state_rx) = router(1, 16, true);
        let mut reader = LineReader::new(source.reopen().unwrap(), 0, 0, 1 << 20, 1024);

        // One span fits the inbox; the second is sealed and held: the pass stops there.
        let routed = router.route(&file, &handle, &mut reader, false, &|| false).unwrap();
        assert_eq!(routed, Routed::Blocked);
        assert!(router.is_stalled());
        assert_eq!(reader.line_no(), 2 * SPAN_MAX_RECORDS as u64, "read ahead by one span only");
        assert_eq!(state_rx.len(), 2, "both spans registered before their batches left");
        // Routing again reads nothing while the held span cannot go.
        let again = router.route(&file, &handle, &mut reader, false, &|| false).unwrap();
        assert_eq!((again, reader.line_no()), (Routed::Blocked, 2 * SPAN_MAX_RECORDS as u64));

        let first = writer_rx.recv().unwrap();
        assert_eq!(router.unstall(Duration::from_secs(5)), Ok(true));
        let second = writer_rx.recv().unwrap();
        assert_eq!(
            router.route(&file, &handle, &mut reader, false, &|| false).unwrap(),
            Routed::Drained
        );
        let third = writer_rx.recv().unwrap();
        let keys: Vec<String> = [first, second, third]
            .iter()
            .flat_map(|b| {
                b.recs
                    .iter()
                    .map(|r| {
                        b.text(match r.key {
                            Key::EventId(t) => t,
                            Key::Line(_) => unreachable!("every line has an event_id"),
                        })
                        .to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(keys, (0..n).map(|i| i.to_string()).collect::<Vec<_>>(), "all, once, in order");
        let spans = span_ends(&state_rx);
        let span = SPAN_MAX_RECORDS as u64;
        assert_eq!(spans, [span, 2 * span, 3 * span]);
    }

    /// A source that gives `data`, then fails (EIO on NFS, a bad gzip member).
    struct FailsAfter(std::io::Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("injected read error")),
                n => Ok(n),
            }
        }
    }

    /// A read error after some lines seals what was read before it: nothing the reader moved
    /// past is dropped, and a span never covers a line that did not leave the router.
    #[test]
    fn a_read_error_seals_the_lines_read_before_it() {
        let source = tempfile::NamedTempFile::new().unwrap();
        let file = file_of(&source);
        let (mut router, writer_rx, state_rx) = router(16, 16, true);
        let data: String = (0..3).map(event).collect::<String>() + "{\"run_id\":\"r\",\"ev";
        let bytes = data.len();
        let mut reader = LineReader::new(
            FailsAfter(std::io::Cursor::new(data.into_bytes())),
            0,
            0,
            1 << 20,
            1024,
        );
        let handle = source.reopen().unwrap();
        let error = router.route(&file, &handle, &mut reader, false, &|| false).unwrap_err();
        assert_eq!(error.to_string(), "injected read error");
        let spans: Vec<(u64, u64)> = state_rx
            .try_iter()
            .filter_map(|m| match m {
                StateMsg::Span { span, .. } => Some((span.end_line_no, span.end_offset)),
                _ => None,
            })
            .collect();
        let complete = bytes as u64 - "{\"run_id\":\"r\",\"ev".len() as u64;
        assert_eq!(spans, [(3, complete)], "the three complete lines, sealed");
        assert_eq!(writer_rx.try_recv().unwrap().recs.len(), 3);
        assert_eq!((reader.offset(), reader.line_no()), (complete, 3));
    }

    /// Long lines: a span is sealed by bytes too, so its memory is bounded whatever the
    /// record count.
    #[test]
    fn spans_are_sealed_by_bytes_too() {
        let mut source = tempfile::NamedTempFile::new().unwrap();
        let pad = "x".repeat(512 << 10);
        let line =
            |i: usize| format!("{{\"run_id\":\"r\",\"event_id\":\"{i}\",\"p\":\"{pad}\"}}\n");
        let n = 40;
        source.write_all((0..n).map(line).collect::<String>().as_bytes()).unwrap();
        let file = file_of(&source);
        let (mut router, writer_rx, state_rx) = router(64, 64, false);
        let mut reader = LineReader::new(source.reopen().unwrap(), 0, 0, 1 << 20, 1024);
        let handle = source.reopen().unwrap();
        let routed = router.route(&file, &handle, &mut reader, false, &|| false).unwrap();
        assert_eq!(routed, Routed::Drained);
        let ends = span_ends(&state_rx);
        // 16 lines of just over 512 KiB pass 8 MiB.
        assert_eq!(ends, [16, 32, 40]);
        let records: usize = writer_rx.try_iter().map(|b| b.recs.len()).sum();
        assert_eq!(records, n);
    }
}
