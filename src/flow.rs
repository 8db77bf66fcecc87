//! The vocabulary every stage of the pipeline shares: the [`FileEntry`] a line comes from, the
//! [`Span`] its checkpoint advances by, the [`Batch`] its record travels in (and the
//! [`BatchBuilder`] that fills one), the [`DeadLetter`] it becomes when it cannot be stored, and
//! the [`StateMsg`]s the state thread hears. Types only: no IO, no threads, no policy.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::identity::{FileId, Fingerprint};
use crate::parse::{self, DeadReason, Kind, Scalar};
use crate::tail::LineMeta;

/// A source file as the pipeline knows it. Shared by the reader, the batches and the state
/// thread; immutable once created.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub path: PathBuf,
    /// `path` as text, for the `events.source` column and dead letters.
    pub source: Arc<str>,
    pub id: FileId,
    pub gzip: bool,
    /// The `YYYYMMDD` of the file name (0 if none): orders records across files.
    pub day: u32,
}

/// A contiguous run of lines of one file, ending at `end_offset`.
#[derive(Debug)]
pub(crate) struct Span {
    pub file: Arc<FileEntry>,
    pub end_offset: u64,
    pub end_line_no: u64,
    /// The file's fingerprint as of `end_offset`, taken by the reader when it sealed the span
    /// (through its open descriptor: right even after a rename; the span holds no descriptor).
    pub fingerprint: Fingerprint,
    /// The file's size then (None for `.gz`).
    pub size: Option<u64>,
    /// When the reader sealed it: the age of the oldest span not yet checkpointed is the
    /// "oldest unshipped byte" an operator alerts on.
    pub sealed_at: Instant,
    /// Records and dead letters of this span not yet durable.
    pending: AtomicUsize,
}

impl Span {
    pub(crate) fn new(
        file: Arc<FileEntry>,
        end_offset: u64,
        end_line_no: u64,
        pending: usize,
        fingerprint: Fingerprint,
        size: Option<u64>,
        sealed_at: Instant,
    ) -> Span {
        Span {
            file,
            end_offset,
            end_line_no,
            fingerprint,
            size,
            sealed_at,
            pending: AtomicUsize::new(pending),
        }
    }

    /// Marks `n` of this span's records durable.
    pub(crate) fn ack(&self, n: usize) {
        if n > 0 {
            let before = self.pending.fetch_sub(n, Ordering::AcqRel);
            debug_assert!(before >= n, "span acked more than it holds");
        }
    }

    /// Records and dead letters of this span not yet durable.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// A text range inside a batch's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Text {
    start: u32,
    end: u32,
}

/// A record's identity: the producer's `event_id` (TEXT) or the line's identity (BLOB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    EventId(Text),
    Line([u8; 24]),
}

/// A column value inside a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(Text),
}

/// One record, its strings living in the batch arena.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    pub kind: Kind,
    pub run_id: Text,
    /// `event_key` for events, `record_key` for run records.
    pub key: Key,
    pub data: Text,
    pub event_type: Value,
    pub ts: Value,
    pub offset: u64,
    pub line_no: u64,
    pub pos: i64,
    /// Index into the owning batch's spans.
    span: u32,
}

/// Records with their strings packed in one arena, so a batch is a handful of allocations
/// whatever its size. Readers send one per span and writer shard; writers keep one per run,
/// filled from many incoming batches (`push_from`), so each record knows its span.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// The spans the records belong to, with how many records of each are here, in order.
    spans: Vec<(Arc<Span>, usize)>,
    arena: String,
    pub recs: Vec<Rec>,
}

impl Batch {
    pub(crate) fn text(&self, t: Text) -> &str {
        &self.arena[t.start as usize..t.end as usize]
    }

    pub(crate) fn value(&self, v: Value) -> rusqlite::types::ToSqlOutput<'_> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        ToSqlOutput::Borrowed(match v {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(r) => ValueRef::Real(r),
            Value::Text(t) => ValueRef::Text(self.text(t).as_bytes()),
        })
    }

    pub(crate) fn key<'a>(&'a self, key: &'a Key) -> rusqlite::types::ToSqlOutput<'a> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        ToSqlOutput::Borrowed(match key {
            Key::EventId(t) => ValueRef::Text(self.text(*t).as_bytes()),
            Key::Line(bytes) => ValueRef::Blob(bytes),
        })
    }

    /// The span a record belongs to.
    pub(crate) fn span_of(&self, rec: &Rec) -> &Arc<Span> {
        &self.spans[rec.span as usize].0
    }

    /// The path a record was read from.
    pub(crate) fn source(&self, rec: &Rec) -> &str {
        &self.span_of(rec).file.source
    }

    /// The spans of these records with their record counts.
    pub(crate) fn spans(&self) -> &[(Arc<Span>, usize)] {
        &self.spans
    }

    /// Roughly what this batch holds in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.arena.capacity() + self.recs.capacity() * std::mem::size_of::<Rec>()
    }

    /// What its records take (its allocations may be bigger: a reused batch keeps them).
    pub(crate) fn used_bytes(&self) -> usize {
        self.arena.len() + self.recs.len() * std::mem::size_of::<Rec>()
    }

    /// Empties it (its spans released), keeping its allocations for reuse.
    pub(crate) fn clear(&mut self) {
        self.spans.clear();
        self.arena.clear();
        self.recs.clear();
    }

    /// Copies `rec` of `from` into this batch.
    pub(crate) fn push_from(&mut self, from: &Batch, rec: &Rec) {
        let span = from.span_of(rec);
        match self.spans.last_mut() {
            Some((last, n)) if Arc::ptr_eq(last, span) => *n += 1,
            _ => self.spans.push((span.clone(), 1)),
        }
        let arena = &mut self.arena;
        let mut copy = |t: Text| push_text(arena, from.text(t));
        let copied = Rec {
            run_id: copy(rec.run_id),
            key: match rec.key {
                Key::EventId(t) => Key::EventId(copy(t)),
                line @ Key::Line(_) => line,
            },
            data: copy(rec.data),
            span: (self.spans.len() - 1) as u32,
            ..rec.clone()
        };
        let event_type = copy_value(&mut self.arena, from, rec.event_type);
        let ts = copy_value(&mut self.arena, from, rec.ts);
        self.recs.push(Rec { event_type, ts, ..copied });
    }
}

fn copy_value(arena: &mut String, from: &Batch, v: Value) -> Value {
    match v {
        Value::Text(t) => Value::Text(push_text(arena, from.text(t))),
        other => other,
    }
}

fn push_text(arena: &mut String, s: &str) -> Text {
    // Bounded, never wrapped: a span holds at most 8 MiB and one line (at most 1 GiB), a
    // writer's run buffer at most `batch_max_bytes` (at most 1 GiB) more.
    let offset = |len: usize| u32::try_from(len).expect("a batch arena stays under 4 GiB");
    let start = offset(arena.len());
    arena.push_str(s);
    Text { start, end: offset(arena.len()) }
}

fn push_value(arena: &mut String, s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Int(i) => Value::Int(*i),
        Scalar::Real(r) => Value::Real(*r),
        Scalar::Text(t) => Value::Text(push_text(arena, t)),
    }
}

/// `backfill --from-start`: every source read again from 0 to rebuild run DBs (a quarantined
/// one, say), leaving the agent's own progress alone: no file is registered, no checkpoint
/// moves, no dead letter is written (the first reading wrote them). Only `run`'s records are
/// shipped when it is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rebuild {
    pub run: Option<String>,
}

/// A reader started on a file at `offset` (`line_no` lines before it); `reset` replaces a
/// stale checkpoint (a new file, or one whose content changed).
#[derive(Debug)]
pub(crate) struct Opening {
    pub file: Arc<FileEntry>,
    pub offset: u64,
    pub line_no: u64,
    pub reset: bool,
}

/// What the state thread receives from readers and writers.
#[derive(Debug)]
pub(crate) enum StateMsg {
    /// A reader started on a file.
    Open(Opening),
    /// A sealed span, with its dead letters (they count in its pending total).
    Span { span: Arc<Span>, dead: Vec<DeadLetter> },
    /// Records a writer could not store (`write_failed`), still pending in their spans.
    Dead(Vec<(DeadLetter, Arc<Span>)>),
}

/// A writer committed to a run whose status is terminal: its summary is due (sent to the
/// summary thread, `summary::Worker`, never waited for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunChanged {
    pub run_id: String,
    pub path: std::path::PathBuf,
    /// Its writer has closed the DB for good (the input ended): backfill's summary thread
    /// computes it now, beside the writers' other closes, instead of after them all.
    pub closed: bool,
}

/// A batch being filled, before its span exists. Public for `dlq replay`, which must give a
/// replayed line exactly the identity (`key`, `pos`) it gets when read from its file.
#[derive(Default)]
pub(crate) struct BatchBuilder {
    arena: String,
    recs: Vec<Rec>,
}

impl BatchBuilder {
    /// Adds a parsed line; `bytes` is the whole line (valid UTF-8: `parse_line` accepted it),
    /// `day` its file's [`parse::file_day`].
    pub(crate) fn push(
        &mut self,
        record: &parse::Parsed<'_>,
        meta: LineMeta,
        bytes: &[u8],
        day: u32,
    ) {
        // parse_line only returns records for valid UTF-8.
        let data = std::str::from_utf8(bytes).expect("parsed lines are UTF-8");
        let arena = &mut self.arena;
        let run_id = push_text(arena, &record.run_id);
        let key = match (&record.event_id, record.kind) {
            (Some(id), Kind::Event) => Key::EventId(push_text(arena, id)),
            _ => Key::Line(parse::line_key(day, meta.line_no, &parse::digest(bytes))),
        };
        let data = push_text(arena, data);
        let event_type = push_value(arena, &record.event_type);
        let ts = push_value(arena, &record.ts);
        self.recs.push(Rec {
            kind: record.kind,
            run_id,
            key,
            data,
            event_type,
            ts,
            offset: meta.offset,
            line_no: meta.line_no,
            pos: parse::stream_pos(day, meta.line_no),
            span: 0,
        });
    }

    /// A builder that reuses a spent batch's allocations.
    pub(crate) fn reusing(mut batch: Batch) -> BatchBuilder {
        batch.clear();
        BatchBuilder { arena: batch.arena, recs: batch.recs }
    }

    /// The records so far, all belonging to `span`.
    pub(crate) fn into_batch(self, span: Arc<Span>) -> Batch {
        let n = self.recs.len();
        Batch { spans: vec![(span, n)], arena: self.arena, recs: self.recs }
    }
}

/// Spent batches on their way back from the writers to the readers, and a writer's spent run
/// buffers: reused rather than freed, so that filling the next one writes into pages already
/// mapped. Allocations of 128 KiB and more are `mmap`s (see `commands::tune_malloc`); freeing
/// and mapping them again cost page faults and unmaps on every batch: 18 % of the reader's
/// CPU and 9 % of the writers' at 50 runs (perf). Only batches of at most this size are kept.
pub(crate) const MAX_SPARE_BYTES: usize = 16 << 20;

/// The way back for spent batches (bounded; a full one frees the batch instead).
#[derive(Debug, Clone)]
pub(crate) struct Spares {
    tx: crossbeam_channel::Sender<Batch>,
    rx: crossbeam_channel::Receiver<Batch>,
}

impl Spares {
    /// Keeps at most `cap` spent batches.
    pub(crate) fn new(cap: usize) -> Spares {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        Spares { tx, rx }
    }

    /// Hands a spent batch back (emptied first: its spans are released now).
    pub(crate) fn give(&self, mut batch: Batch) {
        if batch.memory_bytes() <= MAX_SPARE_BYTES {
            batch.clear();
            let _ = self.tx.try_send(batch);
        }
    }

    /// A builder reusing a spent batch if one is back, else a new one.
    pub(crate) fn builder(&self) -> BatchBuilder {
        self.rx.try_recv().map(BatchBuilder::reusing).unwrap_or_default()
    }
}

/// One dead letter before it is written (`at` is stamped at write time).
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub source: Arc<str>,
    pub offset: u64,
    pub line_no: u64,
    pub reason: DeadReason,
    pub error: String,
    pub raw: String,
    pub raw_len: u64,
    /// Identity of the line (file day, line number, content hash), as for events without
    /// `event_id`.
    pub key: Vec<u8>,
}

impl DeadLetter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        file: &FileEntry,
        meta: LineMeta,
        reason: DeadReason,
        error: String,
        raw: &[u8],
        raw_len: u64,
        digest: &[u8; 32],
        max_raw_bytes: usize,
    ) -> DeadLetter {
        // Cut after the lossy conversion, at a character boundary: each invalid byte becomes a
        // 3-byte U+FFFD, so cutting the input instead could triple `raw`.
        let mut lossy =
            String::from_utf8_lossy(&raw[..raw.len().min(max_raw_bytes + 3)]).into_owned();
        lossy.truncate(crate::parse::floor_char_boundary(&lossy, max_raw_bytes));
        let key = crate::parse::line_key(file.day, meta.line_no, digest).to_vec();
        DeadLetter {
            source: file.source.clone(),
            offset: meta.offset,
            line_no: meta.line_no,
            reason,
            error,
            raw: lossy,
            raw_len,
            key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FileId;

    fn span() -> Arc<Span> {
        let file = Arc::new(FileEntry {
            path: PathBuf::from("/src/events_20240301.ndjson"),
            source: "/src/events_20240301.ndjson".into(),
            id: FileId { dev: 1, ino: 2 },
            gzip: false,
            day: 20240301,
        });
        Arc::new(Span::new(file, 100, 2, 2, Fingerprint::default(), None, Instant::now()))
    }

    fn batch_of(builder: BatchBuilder, span: &Arc<Span>, lines: &[&str]) -> Batch {
        let mut builder = builder;
        let mapping = crate::config::Config::for_base(std::path::Path::new("/nonexistent")).mapping;
        for (i, line) in lines.iter().enumerate() {
            let parse::Outcome::Record(record) = parse::parse_line(line.as_bytes(), &mapping)
            else {
                panic!("{line} is a record")
            };
            let meta = LineMeta { offset: 0, line_no: i as u64 + 1, end_offset: 0 };
            builder.push(&record, meta, line.as_bytes(), 20240301);
        }
        builder.into_batch(span.clone())
    }

    /// A spent batch handed back lets go of its spans at once, and the next batch is built in
    /// its allocations, holding only its own records.
    #[test]
    fn spares_release_their_spans_and_are_built_in_again() {
        let spares = Spares::new(1);
        let first = span();
        let batch = batch_of(spares.builder(), &first, &[r#"{"run_id":"a","n":1}"#; 2]);
        let capacity = batch.memory_bytes();
        assert_eq!(Arc::strong_count(&first), 2);
        spares.give(batch);
        assert_eq!(Arc::strong_count(&first), 1, "the spare holds no span");
        let second = span();
        let batch = batch_of(spares.builder(), &second, &[r#"{"run_id":"b"}"#]);
        assert_eq!(batch.memory_bytes(), capacity, "built in the spare's allocations");
        assert_eq!(batch.recs.len(), 1);
        assert_eq!(batch.text(batch.recs[0].run_id), "b");
        assert_eq!(batch.spans().len(), 1);
        assert!(Arc::ptr_eq(&batch.spans()[0].0, &second));
        assert!(batch.used_bytes() < capacity);
        // None back: a new one.
        assert_eq!(spares.builder().into_batch(second).memory_bytes(), 0);
    }
}
