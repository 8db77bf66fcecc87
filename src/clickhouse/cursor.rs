//! The sink thread: its own cursor over the source files, batches of rows, inserts retried
//! until acknowledged, then the cursor saved (state DB `sink_files`).
//!
//! One pass every `batch_max_delay`: every file the globs match (or backfill's list, each file
//! only up to its SQLite checkpoint: see `Thread::main`) is read
//! from the sink's cursor (verified by fingerprints through `follow::Opener`, so a truncated or
//! replaced file is read again from 0) with `tail::LineReader`, each line parsed by `parse`
//! with the configured mapping. Bad lines are skipped (the SQLite path dead-letters them).
//! A batch (at most `batch_max_rows` rows and `batch_max_bytes` of TabSeparated rows, across
//! files) is sent when full and at the end of every pass: events first, then one `runs` row per
//! run in the batch, then the cursors of every file it covers move, in one state-DB
//! transaction.
//!
//! The `runs` row is the run DB's own row (the SQLite path's merge, not a second one), read
//! once the SQLite checkpoint of each file holding run records of the batch has passed them,
//! with `version` = the number of run records merged into it (it grows with every merge, and
//! the same row read twice has the same version). A run with only events in the batch gets a
//! row of version 0 (status NULL, data `{}`), which any merged row replaces.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use sha2::{Digest, Sha256};

use super::client::{Client, ClientError};
use super::rows::{self, EventRow, Row, RunRow};
use super::{Files, SINK};
use crate::checkpoint::{SinkCursor, StateDb};
use crate::config::{ClickHouseConfig, Config, ReadFrom};
use crate::follow::{Opened, Opener};
use crate::identity::{FileId, Fingerprint};
use crate::metrics::Counters;
use crate::parse::{self, Kind, Outcome};
use crate::tail::Line;

/// First wait after a failed request; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A failing sink says so at most this often (with the server's message), not per attempt.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Backfill gives up on a server that has failed for this long (its SQLite output is done
/// and kept; running backfill again ships the rest, from the sink's cursor).
const BACKFILL_GIVE_UP: Duration = Duration::from_secs(60);
/// How often the SQLite checkpoint is looked at while a batch waits for it.
const SQLITE_POLL: Duration = Duration::from_millis(100);

/// Why a step of the thread did not complete: the stop channel closed (a safe point: nothing
/// acknowledged was left unsaved, nothing unacknowledged was saved).
struct Stopped;

/// The sink thread's body.
pub(super) fn run(
    config: Arc<Config>,
    password: Option<String>,
    files: Files,
    counters: Arc<Counters>,
    background: bool,
    until_stopped: bool,
    stop: Receiver<()>,
) -> anyhow::Result<()> {
    let ch = config.sinks.clickhouse.clone().expect("started only when configured");
    let state = StateDb::open(&config.output.state_db, &config.sqlite)
        .with_context(|| format!("opening state DB {}", config.output.state_db.display()))?;
    let cursors = state.sink_cursors(SINK).context("loading the clickhouse sink's cursors")?;
    let give_up = matches!(files, Files::List(_)).then_some(BACKFILL_GIVE_UP);
    let opener = Opener::detached(
        config.sources.max_line_bytes,
        config.dlq.max_raw_bytes,
        Arc::new(Default::default()),
    );
    let mut thread = Thread {
        background,
        client: Client::new(&ch, password),
        events_table: format!("{}.events", ch.database),
        config: config.clone(),
        ch,
        state,
        cursors,
        drained: HashMap::new(),
        opener,
        batch: Batch::default(),
        counters,
        stop,
        failing: Failing::default(),
        give_up,
        first_pass: true,
        pass_paths: Vec::new(),
        capped: matches!(files, Files::List(_)),
        until_stopped,
        caps: HashMap::new(),
        cap_unknown: false,
        cap_warned: None,
    };
    match thread.main(files) {
        Ok(()) | Err(Failure::Stopped) => Ok(()),
        Err(Failure::GaveUp(error)) => Err(error),
    }
}

/// How the thread ends early.
enum Failure {
    Stopped,
    /// Backfill's server failed for [`BACKFILL_GIVE_UP`].
    GaveUp(anyhow::Error),
}

impl From<Stopped> for Failure {
    fn from(_: Stopped) -> Failure {
        Failure::Stopped
    }
}

/// Failure bookkeeping for the rate-limited WARN and the backoff.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    last_warn: Option<Instant>,
    since_warn: u64,
    backoff: Duration,
}

/// The rows not yet acknowledged, and the cursors they move.
#[derive(Default)]
struct Batch {
    events: Vec<u8>,
    n_events: usize,
    /// Runs with events in the batch.
    runs: BTreeSet<String>,
    /// Runs with run records in the batch, and where each file's run records end.
    merged_runs: BTreeSet<String>,
    run_records_end: HashMap<FileId, u64>,
    /// The cursor of each file after the batch's lines, with where the batch started in it.
    cursors: HashMap<FileId, (u64, SinkCursor)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.cursors.is_empty() && self.n_events == 0 && self.runs.is_empty()
    }

    /// Derived from the files and byte ranges the batch covers: the same lines read again
    /// after a crash, cut the same way, carry the same token. Often they are cut another way
    /// (a batch that ended at a pass's end, or at backfill's cap, ends elsewhere the next time):
    /// then the server stores them again and ReplacingMergeTree collapses them (`FINAL`).
    fn token(&self, table: &str) -> String {
        let mut ranges: Vec<_> =
            self.cursors.iter().map(|(id, (s, c))| (*id, *s, c.offset)).collect();
        ranges.sort();
        let mut hash = Sha256::new();
        hash.update(table.as_bytes());
        for (id, start, end) in ranges {
            for n in [id.dev, id.ino, start, end] {
                hash.update(n.to_be_bytes());
            }
        }
        hash.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

struct Thread {
    config: Arc<Config>,
    ch: ClickHouseConfig,
    client: Client,
    events_table: String,
    state: StateDb,
    cursors: HashMap<FileId, SinkCursor>,
    /// Files read to their end, with their size and mtime then: not opened again until
    /// either changes.
    drained: HashMap<FileId, (u64, Option<SystemTime>)>,
    opener: Opener,
    batch: Batch,
    counters: Arc<Counters>,
    stop: Receiver<()>,
    failing: Failing,
    give_up: Option<Duration>,
    first_pass: bool,
    /// This thread runs as a background job (`SCHED_IDLE`).
    background: bool,
    /// The files of the current pass (for the lag gauge).
    pass_paths: Vec<PathBuf>,
    /// Backfill: each file is read only up to its SQLite checkpoint (see [`Thread::main`]).
    capped: bool,
    /// Backfill beside the run DBs: passes go on until stopped, as the checkpoints move.
    until_stopped: bool,
    /// The last pass's caps, read once per file ([`Thread::cap`]).
    caps: HashMap<FileId, u64>,
    /// A cap could not be read this pass, and when that was last said.
    cap_unknown: bool,
    cap_warned: Option<Instant>,
}

impl Thread {
    fn main(&mut self, files: Files) -> Result<(), Failure> {
        // Known before connecting: a server down at the start shows as lag at once.
        self.pass_paths = self.paths(&files);
        self.retry("connecting", |thread| {
            let version = thread.client.check_version()?;
            let created = super::ddl::ensure(&thread.client, &thread.ch.database)?;
            tracing::info!(
                server = %thread.ch.url,
                version,
                database = %thread.ch.database,
                created = ?created,
                dedup_tokens = thread.client.dedup_tokens(),
                background = thread.background,
                "clickhouse sink connected"
            );
            Ok(())
        })?;
        // The server answers: an error `status` still shows (from before a restart, a reload
        // or a backfill that gave up) is a past one.
        if let Err(error) = self.state.sink_recovered(SINK) {
            tracing::debug!(%error, "recording the sink's recovery for status");
        }
        loop {
            let started = Instant::now();
            self.pass_paths = self.paths(&files);
            let mut lag = 0;
            for path in self.pass_paths.clone() {
                lag += self.ship_file(&path)?;
            }
            self.flush(false)?;
            self.first_pass = false;
            // Acknowledged: what the pass read is what the cursors passed.
            self.counters.sink_lag_bytes.set(lag);
            // Backfill ships what its run DBs hold: each file up to its SQLite checkpoint
            // (beside them, as far as they are committed; a file still growing may hold run
            // records the SQLite path will not read, and waiting for those would never end).
            // Beside the run DBs it passes until stopped (the checkpoints move on); once they
            // are complete, backfill starts a last pass, which reads every file to its cap
            // (read once) and ends, unless a cap could not be read.
            let cap_unknown = std::mem::take(&mut self.cap_unknown);
            if matches!(files, Files::List(_)) && !self.until_stopped && !cap_unknown {
                return Ok(());
            }
            self.sleep(self.ch.batch_max_delay.saturating_sub(started.elapsed()))?;
        }
    }

    /// `jsonl_shipper_sink_lag_bytes` after a failed request: the bytes of this pass's files
    /// past the saved cursors (acknowledged by the server), as `status` counts them, so that it
    /// grows during an outage, when no pass ends (a stat and a 2-byte read per file, once per
    /// backoff step; a pass that ends sets it from what it read, without them).
    fn update_lag(&self) {
        let lag = self.pass_paths.iter().filter_map(|p| super::file_lag(p, &self.cursors)).sum();
        self.counters.sink_lag_bytes.set(lag);
    }

    /// The files of this pass, deduplicated, in a stable order.
    fn paths(&self, files: &Files) -> Vec<PathBuf> {
        let mut paths = match files {
            Files::List(list) => list.clone(),
            Files::Globs(globs) => globs
                .iter()
                .flat_map(|g| {
                    let mut found = crate::discover::glob_files(g).unwrap_or_default();
                    found.extend(
                        crate::discover::glob_files(&format!("{g}.gz")).unwrap_or_default(),
                    );
                    found
                })
                .collect(),
        };
        paths.sort();
        paths.dedup();
        paths
    }

    /// Reads one file from the sink's cursor to its end into the batch (sending full batches
    /// on the way). Returns its lag after this pass.
    fn ship_file(&mut self, path: &Path) -> Result<u64, Failure> {
        let Ok(meta) = std::fs::metadata(path) else { return Ok(0) };
        if !meta.is_file() {
            return Ok(0);
        }
        let id = FileId::of(&meta);
        let mtime = meta.modified().ok();
        if self.drained.get(&id) == Some(&(meta.len(), mtime)) {
            return Ok(0);
        }
        let cursor = self.batch.cursors.get(&id).map(|(_, c)| c).or(self.cursors.get(&id)).cloned();
        let cap = match self.capped {
            false => u64::MAX,
            true => {
                let gz = is_gz_path(path);
                let lag = super::lag_bytes(meta.len(), gz, cursor.as_ref());
                let Some(cap) = self.cap(id) else { return Ok(lag) };
                // Nothing new below the cap: not even opened (a .gz would be decompressed
                // from its start). Beside the run DBs a .gz is left to the last pass: followed
                // as the SQLite path reads it, it would be decompressed again every pass.
                if cursor.as_ref().map_or(0, |c| c.offset) >= cap || (gz && self.until_stopped) {
                    return Ok(lag);
                }
                cap
            }
        };
        let opened = match &cursor {
            Some(c)
                if c.size == Some(meta.len()) && (c.offset >= meta.len() || is_gz_path(path)) =>
            {
                self.drained.insert(id, (meta.len(), mtime));
                return Ok(0);
            }
            Some(c) => {
                self.opener.reopen(path, &c.path, id, c.offset, c.line_no, c.fingerprint.clone())
            }
            None => {
                let from_end = self.first_pass
                    && self.config.sources.read_from == ReadFrom::End
                    && self.give_up.is_none();
                self.opener.open(path, from_end)
            }
        };
        let mut opened = match opened {
            Ok(Some(opened)) => opened,
            Ok(None) => return Ok(0),
            Err(error) => {
                tracing::warn!(path = %path.display(), error = format!("{error:#}"), "clickhouse sink: cannot open the file; trying again next pass");
                return Ok(meta.len());
            }
        };
        let idle = mtime
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= self.config.sources.close_inactive);
        let finished = opened.file.gzip || idle;
        let mut range_start = opened.reader.offset();
        if cursor.as_ref().is_some_and(|c| c.offset != range_start) {
            // Read again from 0 (the content changed), or from a line's start.
            self.batch.cursors.remove(&id);
        }
        let read = self.read_file(&mut opened, finished, &mut range_start, cap);
        let at_end = match read {
            Ok(at_end) => at_end,
            Err(ReadError::Stopped) => return Err(Failure::Stopped),
            Err(ReadError::GaveUp(e)) => return Err(Failure::GaveUp(e)),
            Err(ReadError::Io(error)) => {
                tracing::warn!(path = %path.display(), offset = opened.reader.offset(), error = %error, "clickhouse sink: read error; shipping what was read, trying again when the file changes");
                true
            }
        };
        self.note_cursor(&opened, range_start, at_end);
        if at_end {
            self.drained.insert(id, (meta.len(), mtime));
        }
        let size = opened.handle.metadata().map_or(meta.len(), |m| m.len());
        let lag = if opened.file.gzip {
            if at_end {
                0
            } else {
                size
            }
        } else {
            size.saturating_sub(opened.reader.offset())
        };
        Ok(lag)
    }

    /// Backfill: the file's SQLite checkpoint, the most of it the sink reads. Read once per
    /// file in the last pass (a daemon running beside would move it for as long as producers
    /// write, and the pass would never end), at every pass beside the run DBs (it follows
    /// them). None when the state DB cannot say now: the pass is then not a last one.
    fn cap(&mut self, id: FileId) -> Option<u64> {
        if !self.until_stopped {
            if let Some(&cap) = self.caps.get(&id) {
                return Some(cap);
            }
        }
        match self.state.shipped_offset(id) {
            Ok(offset) => {
                let cap = offset.unwrap_or(0);
                if !self.until_stopped {
                    self.caps.insert(id, cap);
                }
                Some(cap)
            }
            Err(error) => {
                self.cap_unknown = true;
                if self.cap_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    self.cap_warned = Some(Instant::now());
                    tracing::warn!(%error, "clickhouse sink: cannot read the SQLite checkpoints; trying again next pass");
                }
                None
            }
        }
    }

    /// Adds the file's lines to the batch, sending it whenever it is full. Returns whether
    /// the file was read to its end (no partial line left).
    fn read_file(
        &mut self,
        opened: &mut Opened,
        finished: bool,
        range_start: &mut u64,
        cap: u64,
    ) -> Result<bool, ReadError> {
        let file = opened.file.clone();
        let mut buf = (String::new(), String::new(), String::new());
        // A complete line past the cap is given back, and the file left there for now.
        let past_cap = |line: &Line<'_>| match line {
            Line::Complete(meta, _) if meta.end_offset > cap => Some(*meta),
            _ => None,
        };
        loop {
            let mut got_line = false;
            loop {
                let line = match opened.reader.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => return Err(ReadError::Io(e)),
                };
                if let Some(meta) = past_cap(&line) {
                    opened.reader.unread(meta);
                    return Ok(false);
                }
                got_line = true;
                self.add(&file, line, &mut buf);
                if self.is_full() {
                    self.note_cursor(opened, *range_start, false);
                    *range_start = opened.reader.offset();
                    self.flush(true).map_err(ReadError::from)?;
                }
            }
            if !finished {
                return Ok(opened.reader.pending_bytes() == 0);
            }
            let got_tail = match opened.reader.finish() {
                Ok(Some(line)) => {
                    if let Some(meta) = past_cap(&line) {
                        opened.reader.unread(meta);
                        return Ok(false);
                    }
                    self.add(&file, line, &mut buf);
                    true
                }
                Ok(None) => false,
                Err(e) => return Err(ReadError::Io(e)),
            };
            if !got_tail && !got_line && opened.reader.at_eof() {
                return Ok(true);
            }
            if opened.reader.at_eof() && opened.reader.pending_bytes() == 0 {
                return Ok(true);
            }
        }
    }

    fn is_full(&self) -> bool {
        self.batch.n_events >= self.ch.batch_max_rows
            || self.batch.events.len() >= self.ch.batch_max_bytes
    }

    /// One line into the batch: an event row, or a run to send the merged row of.
    fn add(
        &mut self,
        file: &crate::flow::FileEntry,
        line: Line<'_>,
        (key, event_type, ts): &mut (String, String, String),
    ) {
        // A too-long line is the SQLite path's dead letter.
        let Line::Complete(meta, bytes) = line else { return };
        let Outcome::Record(record) = parse::parse_line(bytes, &self.config.mapping) else {
            return;
        };
        match record.kind {
            Kind::Run => {
                self.batch.merged_runs.insert(record.run_id.into_owned());
                let end = self.batch.run_records_end.entry(file.id).or_default();
                *end = (*end).max(meta.end_offset);
            }
            Kind::Event => {
                let key = match &record.event_id {
                    Some(id) => id.as_ref(),
                    None => {
                        let line_key =
                            parse::line_key(file.day, meta.line_no, &parse::digest(bytes));
                        rows::hex_key(&line_key, key);
                        key.as_str()
                    }
                };
                let row = EventRow {
                    host: &self.ch.host_label,
                    run_id: &record.run_id,
                    event_key: key,
                    event_type: rows::scalar_text(&record.event_type, event_type),
                    ts: rows::scalar_text(&record.ts, ts),
                    data: bytes,
                    source: &file.source,
                    line_no: meta.line_no,
                    pos: parse::stream_pos(file.day, meta.line_no) as u64,
                };
                rows::push(&mut self.batch.events, &row);
                self.batch.n_events += 1;
                if !self.batch.runs.contains(record.run_id.as_ref()) {
                    self.batch.runs.insert(record.run_id.into_owned());
                }
            }
        }
    }

    /// Records where the batch leaves this file (moved only once the batch is acknowledged).
    fn note_cursor(&mut self, opened: &Opened, range_start: u64, at_end: bool) {
        let file = &opened.file;
        let offset = opened.reader.offset();
        let previous = self.batch.cursors.get(&file.id).map(|(s, _)| *s);
        let saved = self.cursors.get(&file.id);
        let size = at_end.then(|| opened.handle.metadata().ok().map(|m| m.len())).flatten();
        if previous.is_none()
            && saved.is_some_and(|c| c.offset == offset && c.size == size && c.path == file.path)
        {
            return; // nothing new
        }
        let fingerprint =
            Fingerprint::compute(&opened.handle, file.gzip, offset).unwrap_or_default();
        let cursor = SinkCursor {
            id: file.id,
            path: file.path.clone(),
            offset,
            line_no: opened.reader.line_no(),
            fingerprint,
            size,
        };
        self.batch.cursors.insert(file.id, (previous.unwrap_or(range_start), cursor));
    }

    /// Sends the batch (events, then runs rows), then saves the cursors it moves. A full
    /// batch leaves its buffer to the next (backfill or a catch-up sends one after another:
    /// no regrowth and page faults each time); the pass's last one frees it, so an idle
    /// daemon holds no batch-sized buffer.
    fn flush(&mut self, keep_buffer: bool) -> Result<(), Failure> {
        if self.batch.is_empty() {
            if !keep_buffer {
                // A full batch's buffer, kept, may end the pass with nothing in it.
                self.batch.events = Vec::new();
            }
            return Ok(());
        }
        if !matches!(self.stop.try_recv(), Err(TryRecvError::Empty)) {
            return Err(Failure::Stopped);
        }
        let batch = std::mem::take(&mut self.batch);
        if batch.n_events > 0 {
            let token = batch.token("events");
            let table = self.events_table.clone();
            self.retry("inserting events", |t| {
                t.client.insert(&table, EventRow::COLUMNS, &batch.events, Some(&token))
            })?;
        }
        let mut n_runs = 0;
        if !batch.runs.is_empty() || !batch.merged_runs.is_empty() {
            self.wait_for_sqlite(&batch)?;
            let mut body = Vec::new();
            for run_id in batch.runs.difference(&batch.merged_runs) {
                rows::push(&mut body, &self.unmerged_row(run_id));
                n_runs += 1;
            }
            for run_id in &batch.merged_runs {
                match self.merged_row(run_id) {
                    Ok(Some(row)) => {
                        rows::push(&mut body, &row);
                        n_runs += 1;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(run_id, error = %error, "clickhouse sink: cannot read the run's row from its run DB; its runs row is sent with its next run record")
                    }
                }
            }
            let token = batch.token("runs");
            let table = format!("{}.runs", self.ch.database);
            if !body.is_empty() {
                self.retry("inserting runs", |t| {
                    t.client.insert(&table, RunRow::COLUMNS, &body, Some(&token))
                })?;
            }
        }
        // Acknowledged; the cursors have not moved (a crash here replays the batch).
        crate::crash::point("clickhouse.after_insert");
        let cursors: Vec<&SinkCursor> = batch.cursors.values().map(|(_, c)| c).collect();
        let inserted = batch.n_events + n_runs > 0;
        loop {
            match self.state.save_sink_cursors(SINK, &cursors, inserted) {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "clickhouse sink: cannot save its cursors in the state DB; retrying");
                    self.sleep(Duration::from_secs(1))?;
                }
            }
        }
        for cursor in cursors {
            self.cursors.insert(cursor.id, cursor.clone());
        }
        self.counters.sink_rows.add((batch.n_events + n_runs) as u64);
        if keep_buffer {
            let mut events = batch.events;
            events.clear();
            debug_assert!(self.batch.events.is_empty(), "nothing is added during a flush");
            self.batch.events = events;
        }
        Ok(())
    }

    /// Waits until the SQLite path has durably stored the batch's run records (its checkpoint
    /// passed them), so that the run DB's row includes them.
    fn wait_for_sqlite(&mut self, batch: &Batch) -> Result<(), Stopped> {
        let mut warned = Instant::now();
        for (id, end) in &batch.run_records_end {
            loop {
                match self.state.shipped_offset(*id) {
                    Ok(Some(offset)) if offset >= *end => break,
                    Ok(_) => {}
                    Err(error) => tracing::debug!(error = %error, "reading the SQLite checkpoint"),
                }
                if warned.elapsed() >= WARN_EVERY {
                    warned = Instant::now();
                    tracing::warn!(dev = id.dev, ino = id.ino, offset = end, "clickhouse sink: waiting for the SQLite path to store run records before sending their runs rows");
                }
                self.sleep(SQLITE_POLL)?;
            }
        }
        Ok(())
    }

    fn unmerged_row(&self, run_id: &str) -> RunRow {
        RunRow {
            host: self.ch.host_label.clone(),
            run_id: run_id.to_owned(),
            status: None,
            started_at: None,
            ended_at: None,
            data: "{}".into(),
            version: 0,
        }
    }

    /// The run's row as its run DB holds it; None if the run has no DB (nothing stored).
    fn merged_row(&self, run_id: &str) -> rusqlite::Result<Option<RunRow>> {
        use rusqlite::types::ValueRef;
        let path = self.config.output.dir.join(crate::sink::run_path::db_file_name(run_id));
        if !path.exists() {
            return Ok(None);
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.config.sqlite.busy_timeout)?;
        let text = |v: ValueRef<'_>| match v {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(x) => Some(x.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        };
        use rusqlite::OptionalExtension;
        conn.query_row(
            "SELECT status, started_at, ended_at, data, (SELECT count(*) FROM run_records)
             FROM runs WHERE run_id = ?1",
            [run_id],
            |r| {
                Ok(RunRow {
                    host: self.ch.host_label.clone(),
                    run_id: run_id.to_owned(),
                    status: text(r.get_ref(0)?),
                    started_at: text(r.get_ref(1)?),
                    ended_at: text(r.get_ref(2)?),
                    data: r.get(3)?,
                    version: r.get::<_, i64>(4)? as u64,
                })
            },
        )
        .optional()
    }

    /// Runs `request` until it succeeds; failures back off, are counted, and are logged once a
    /// minute with the server's message. Backfill gives up after [`BACKFILL_GIVE_UP`].
    fn retry<T>(
        &mut self,
        what: &str,
        mut request: impl FnMut(&mut Thread) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        loop {
            match request(self) {
                Ok(value) => {
                    if let Some(since) = self.failing.since.take() {
                        tracing::info!(server = %self.ch.url, failed_for = ?since.elapsed(), "clickhouse sink: the server answers again; catching up");
                        if let Err(error) = self.state.sink_recovered(SINK) {
                            tracing::debug!(%error, "recording the sink's recovery for status");
                        }
                    }
                    self.failing.backoff = Duration::ZERO;
                    return Ok(value);
                }
                Err(error) => {
                    let message = error.to_string();
                    self.counters.sink_errors.add(1);
                    self.update_lag();
                    let _ = self.state.sink_failed(SINK, &message);
                    let since = *self.failing.since.get_or_insert_with(Instant::now);
                    self.failing.since_warn += 1;
                    if self.failing.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            server = %self.ch.url,
                            failures = self.failing.since_warn,
                            error = %message,
                            "clickhouse sink: {what} failed; retrying with backoff (the SQLite path is not affected)"
                        );
                        self.failing.last_warn = Some(Instant::now());
                        self.failing.since_warn = 0;
                    }
                    if let Some(limit) = self.give_up {
                        if since.elapsed() >= limit {
                            return Err(Failure::GaveUp(anyhow::anyhow!(
                                "clickhouse sink: {what} failed for {}s, giving up: {message}; the run DBs are complete, run backfill again to ship the rest to ClickHouse",
                                limit.as_secs()
                            )));
                        }
                    }
                    self.failing.backoff =
                        (self.failing.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                    self.sleep(self.failing.backoff)?;
                }
            }
        }
    }

    /// Waits, or returns [`Stopped`] as soon as the stop channel closes.
    fn sleep(&self, wait: Duration) -> Result<(), Stopped> {
        match self.stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => Ok(()),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => Err(Stopped),
        }
    }
}

/// Why reading a file stopped early.
enum ReadError {
    Io(std::io::Error),
    Stopped,
    GaveUp(anyhow::Error),
}

impl From<Failure> for ReadError {
    fn from(failure: Failure) -> ReadError {
        match failure {
            Failure::Stopped => ReadError::Stopped,
            Failure::GaveUp(e) => ReadError::GaveUp(e),
        }
    }
}

fn is_gz_path(path: &Path) -> bool {
    std::fs::File::open(path).and_then(|f| crate::tail::is_gzip(&f)).unwrap_or(false)
}
