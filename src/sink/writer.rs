//! A writer thread's loop: per-run buffers, when to commit them, the commit with its retries,
//! and acking the spans committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};

use super::pool::Pool;
use super::release::Release;
use super::wal::{self, WalCheckpointer};
use super::{run_db, Listeners, WriterConfig};
use crate::catalog::{Keeper, TsRange};
use crate::flow::{Batch, DeadLetter, RunChanged, Span, Spares, StateMsg, MAX_SPARE_BYTES};
use crate::metrics::Counters;
use crate::parse::DeadReason;
use crate::tail::LineMeta;

/// Rows a run holds before its share of the byte bound commits it (see `Writer::buffer`).
const SHARE_FROM_ROWS: usize = 1024;
/// Spent run buffers kept for the next runs to fill (see `flow::Spares`).
const SPARE_RUN_BUFFERS: usize = 4;

pub(super) struct Writer {
    config: Arc<WriterConfig>,
    pool: Pool,
    wal_checkpointer: WalCheckpointer,
    state: Sender<StateMsg>,
    counters: Arc<Counters>,
    /// Buffered records, per run.
    runs: HashMap<String, Batch>,
    n_bytes: usize,
    /// When the oldest buffered record arrived.
    oldest: Option<Instant>,
    /// Runs written so far, for the backfill summary (None in the daemon: it would grow forever).
    seen_runs: Option<HashSet<String>>,
    /// Retention's requests to close a run DB (see `release`).
    releases: Receiver<Release>,
    /// The catalog thread, told about every commit.
    catalog: Keeper,
    /// The summary thread: told after a commit to a terminal run, never waited for.
    summaries: Sender<RunChanged>,
    /// Where the readers' batches go once buffered.
    spares: Spares,
    /// The inbox closed: the commits now are each run's last.
    closing: bool,
    /// Terminal runs committed since `closing`: closed first, then told to the summary thread.
    ended: Vec<String>,
    /// Run buffers committed and emptied, for the next runs (at most `SPARE_RUN_BUFFERS`).
    spare_runs: Vec<Batch>,
}

impl Writer {
    pub(super) fn new(
        shard: usize,
        config: Arc<WriterConfig>,
        state: Sender<StateMsg>,
        counters: Arc<Counters>,
        releases: Receiver<Release>,
        listeners: Listeners,
    ) -> Writer {
        let Listeners { catalog, summaries, spares } = listeners;
        let seen_runs = config.linger.is_none().then(Default::default);
        let wal_checkpointer = WalCheckpointer::spawn(shard, &config.sqlite, &counters);
        Writer {
            seen_runs,
            releases,
            summaries,
            spares,
            spare_runs: Vec::new(),
            closing: false,
            ended: Vec::new(),
            pool: Pool::new(
                config.output_dir.clone(),
                config.sqlite.clone(),
                config.schema.clone(),
                config.max_open,
                counters.clone(),
                catalog.clone(),
            ),
            catalog,
            config,
            state,
            counters,
            wal_checkpointer,
            runs: HashMap::new(),
            n_bytes: 0,
            oldest: None,
        }
    }

    pub(super) fn run(&mut self, inbox: Receiver<Batch>) {
        let mut next_maintenance = self.config.maintenance.map(|m| Instant::now() + m.interval);
        let releases = self.releases.clone();
        loop {
            let flush_at = match (self.oldest, self.config.linger) {
                (Some(t), Some(linger)) => Some(t + linger),
                _ => None,
            };
            let deadline = match (flush_at, next_maintenance) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            let received = select! {
                recv(inbox) -> batch => batch.map_err(|_| RecvTimeoutError::Disconnected),
                recv(releases) -> request => {
                    if let Ok(request) = request {
                        self.release(request);
                    }
                    Err(RecvTimeoutError::Timeout)
                }
                recv(timer) -> _ => Err(RecvTimeoutError::Timeout),
            };
            match received {
                Ok(batch) => self.buffer(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.closing = true;
                    self.flush_all();
                    self.wal_checkpointer.stop();
                    // Ended runs first, each handed to the summary thread once closed: their
                    // summaries then run beside this writer's other closes, not after them
                    // all (backfill of 50 runs: they were the last 0.4 s of 5 s).
                    for run_id in std::mem::take(&mut self.ended) {
                        self.pool.close(&run_id, &self.counters);
                        self.summary_due(&run_id, true);
                    }
                    self.pool.close_all(&self.counters);
                    return;
                }
            }
            let now = Instant::now();
            if flush_at.is_some_and(|t| now >= t) {
                self.flush_all();
            }
            if let (Some(at), Some(m)) = (next_maintenance, self.config.maintenance) {
                if now >= at {
                    // No background checkpoint may hold a DB open while it is closed: the
                    // last connection's close removes the WAL and shm files.
                    let _quiet = self.wal_checkpointer.pause();
                    self.pool.maintain(m.idle_close_after, &self.counters);
                    next_maintenance = Some(Instant::now() + m.interval);
                }
            }
        }
    }

    /// Retention deletes a run DB: close this writer's connection to it (without a checkpoint:
    /// it is about to go; if it stays, the WAL loop checkpoints it later without creating it),
    /// unless records of that run are buffered, then answer. Never blocks.
    fn release(&mut self, request: Release) {
        if let Some(run_id) = self.pool.open_run_at(&request.path) {
            if !self.runs.contains_key(&run_id) {
                // No background checkpoint may hold the DB open meanwhile (as in `maintain`).
                let _quiet = self.wal_checkpointer.pause();
                self.pool.evict(&run_id);
            }
        }
        let _ = request.done.try_send(());
    }

    /// Sorts a batch's records into the per-run buffers, then commits the runs that have
    /// `max_events` rows, and everything if the buffers hold `max_bytes`.
    fn buffer(&mut self, batch: Batch) {
        let mut full: Vec<String> = Vec::new();
        // Besides `max_events`, a run is committed once it has `SHARE_FROM_ROWS` rows and its
        // share of half the byte bound: one hot run then commits up to `max_events` rows at a
        // time (one fsync per 16 Ki rows instead of per reader batch of <= 4 Ki; 1 run:
        // pair.py 1.20 -> 1.49), while 50 runs still commit about 1 Ki rows each, keeping their
        // buffers small, and thousands never reach `SHARE_FROM_ROWS` before the byte bound
        // commits the biggest.
        let share_from = SHARE_FROM_ROWS.min(self.config.max_events);
        let share = self.config.max_bytes / 2 / (self.runs.len() + 1);
        for rec in &batch.recs {
            let run_id = batch.text(rec.run_id);
            let buf = match self.runs.get_mut(run_id) {
                Some(buf) => buf,
                None => {
                    let spare = self.spare_runs.pop().unwrap_or_default();
                    self.n_bytes += spare.memory_bytes();
                    self.runs.entry(run_id.to_string()).or_insert(spare)
                }
            };
            let before = buf.memory_bytes();
            buf.push_from(&batch, rec);
            let after = buf.memory_bytes();
            self.n_bytes = self.n_bytes + after - before;
            let rows = buf.recs.len();
            // What the rows use, not the allocation: a reused buffer starts big.
            let is_full =
                rows >= self.config.max_events || (rows >= share_from && buf.used_bytes() >= share);
            if is_full && !full.iter().any(|f| f == run_id) {
                full.push(run_id.to_string());
            }
        }
        self.oldest.get_or_insert_with(Instant::now);
        self.spares.give(batch);
        for run_id in full {
            self.flush_run(&run_id);
        }
        if self.n_bytes >= self.config.max_bytes {
            self.flush_largest();
        }
    }

    /// Commits the biggest buffers until a quarter of `max_bytes` is free. With many small
    /// runs this beats committing every run: the runs left buffered keep growing, so each
    /// commit (and, beyond `max_open_dbs`, each DB open) carries about twice the rows for the
    /// same memory (bench backfill, 5000 runs: 13,963 -> 21,053 ev/s, peak RSS 159 -> 151 MiB).
    fn flush_largest(&mut self) {
        let mut by_size: Vec<(usize, String)> =
            self.runs.iter().map(|(run_id, buf)| (buf.memory_bytes(), run_id.clone())).collect();
        by_size.sort_unstable_by_key(|&(size, _)| std::cmp::Reverse(size));
        let target = self.config.max_bytes / 4 * 3;
        for (_, run_id) in by_size {
            if self.n_bytes <= target {
                break;
            }
            self.flush_run(&run_id);
        }
    }

    fn flush_all(&mut self) {
        // Runs whose DB is open first, so that opening the others does not evict DBs this
        // flush still needs.
        let mut run_ids: Vec<String> = self.runs.keys().cloned().collect();
        run_ids.sort_by_key(|run_id| !self.pool.is_open(run_id));
        for run_id in run_ids {
            self.flush_run(&run_id);
        }
        self.oldest = None;
    }

    /// Commits one run's buffered records, then acks their spans.
    fn flush_run(&mut self, run_id: &str) {
        let Some(batch) = self.runs.remove(run_id) else { return };
        self.n_bytes -= batch.memory_bytes().min(self.n_bytes);
        if self.runs.is_empty() {
            self.oldest = None;
        }
        let outcome = self.write_with_retry(run_id, &batch);
        if outcome.terminal {
            if self.closing {
                self.ended.push(run_id.to_string());
            } else {
                self.summary_due(run_id, false);
            }
        }
        self.counters.events_written.add(outcome.written);
        self.counters.events_unchanged.add(outcome.unchanged);
        if let Some(seen) = &mut self.seen_runs {
            if !seen.contains(run_id) {
                seen.insert(run_id.to_string());
                self.counters.runs_touched.add(1);
            }
        }
        let mut failed_per_span: HashMap<*const Span, usize> = HashMap::new();
        let mut dead = Vec::new();
        for (i, error) in outcome.failed {
            let rec = &batch.recs[i];
            let span = batch.span_of(rec);
            *failed_per_span.entry(Arc::as_ptr(span)).or_default() += 1;
            let data = batch.text(rec.data).as_bytes();
            let meta = LineMeta { offset: rec.offset, line_no: rec.line_no, end_offset: 0 };
            let letter = DeadLetter::new(
                &span.file,
                meta,
                DeadReason::WriteFailed,
                format!("run {run_id:?}: {error}"),
                data,
                data.len() as u64,
                &crate::parse::digest(data),
                self.config.max_raw_bytes,
            );
            dead.push((letter, span.clone()));
        }
        if !dead.is_empty() && self.state.send(StateMsg::Dead(dead)).is_err() {
            // Only during a failed shutdown; the spans stay pending, so nothing is lost.
            tracing::error!("state thread gone; write_failed dead letters will be replayed");
        }
        // The state thread acks the failed ones once they are durable in the DLQ.
        for (span, n) in batch.spans() {
            span.ack(n - failed_per_span.get(&Arc::as_ptr(span)).copied().unwrap_or(0));
        }
        // Kept outside `n_bytes`, so bounded apart: a quarter of `max_bytes` at most.
        let kept: usize = self.spare_runs.iter().map(Batch::memory_bytes).sum();
        if self.spare_runs.len() < SPARE_RUN_BUFFERS
            && batch.memory_bytes() <= MAX_SPARE_BYTES
            && kept + batch.memory_bytes() <= self.config.max_bytes / 4
        {
            let mut batch = batch;
            batch.clear();
            self.spare_runs.push(batch);
        }
    }

    /// Tells the summary thread that a terminal run changed, after the commit; a full inbox
    /// drops the request rather than wait (`summary` and `catalog rebuild` compute what is
    /// dropped).
    fn summary_due(&self, run_id: &str, closed: bool) {
        let path = self.pool.path_of(run_id);
        let changed = RunChanged { run_id: run_id.to_string(), path, closed };
        if self.summaries.try_send(changed).is_err() {
            self.counters.summaries_dropped.add(1);
        }
    }

    /// Writes one run's records, retrying database-level failures (locked, full disk, I/O)
    /// with capped exponential backoff until they succeed.
    fn write_with_retry(&mut self, run_id: &str, batch: &Batch) -> run_db::WriteOutcome {
        let mut attempt: u32 = 0;
        let mut last_log: Option<Instant> = None;
        let mut quarantined = false;
        let _pending = self.counters.write_started(); // ops: /healthz and watchdog signal
        loop {
            let attempt_started = Instant::now(); // ops: jsonl_shipper_batch_commit_seconds
            let mut lock_wait = Duration::ZERO;
            let result = self.pool.get(run_id).and_then(|conn| {
                // Waits (busy_timeout) for the write lock: what another connection costs us.
                let begin = Instant::now();
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                lock_wait = begin.elapsed();
                let outcome = run_db::write_run(&tx, run_id, batch, &self.config.mapping)?;
                tx.commit()?;
                crate::crash::point("writer.after_commit");
                Ok(outcome)
            });
            match result {
                Ok(outcome) => {
                    // ops: metrics
                    self.counters.commit_succeeded(attempt_started.elapsed(), lock_wait);
                    self.after_commit(run_id);
                    self.tell_catalog(run_id, batch, &outcome);
                    if attempt > 0 {
                        tracing::info!(
                            run_id,
                            attempts = attempt + 1,
                            "run DB write succeeded after retries"
                        );
                    }
                    return outcome;
                }
                Err(error) if crate::sqlite::is_corrupt(&error) && !quarantined => {
                    // Corrupt (found on a write, not at open): retrying it would never end
                    // and would hold up every run of this shard. Moved aside as at open,
                    // the batch goes to a fresh DB at once; nothing was acked for it.
                    quarantined = true;
                    let _quiet = self.wal_checkpointer.pause();
                    if let Err(io_error) = self.pool.quarantine(run_id, &error) {
                        tracing::error!(
                            run_id,
                            path = %self.pool.path_of(run_id).display(),
                            %error,
                            %io_error,
                            "run DB is corrupt and cannot be moved aside; retrying"
                        );
                    }
                }
                Err(error) => {
                    attempt += 1;
                    self.counters.write_retries.add(1);
                    // A failed connection may be mid-transaction or poisoned: start afresh.
                    self.pool.evict(run_id);
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_log = Some(Instant::now());
                        tracing::error!(
                            run_id,
                            path = %self.pool.path_of(run_id).display(),
                            attempt,
                            %error,
                            "cannot write run DB; retrying (nothing is lost, shipping is delayed)"
                        );
                    }
                    std::thread::sleep(backoff(attempt));
                }
            }
        }
    }
}

impl Writer {
    /// `sqlite.wal_autocheckpoint`, moved off this thread: past the threshold the WAL checkpointer
    /// copies the WAL into the DB while this thread goes on writing (a PASSIVE checkpoint runs
    /// beside a writer). The WAL restarts only once a checkpoint has caught up with every
    /// commit, which a busy writer rarely lets the WAL checkpointer do; so at 4x the threshold this
    /// thread checkpoints itself, copying only what the WAL checkpointer has not.
    fn after_commit(&self, run_id: &str) {
        let pages = wal::WAL_PAGES.with(|p| p.replace(0));
        let threshold = self.config.sqlite.wal_autocheckpoint as i32;
        if threshold <= 0 || pages < threshold {
            return;
        }
        let path = self.pool.path_of(run_id);
        if pages >= threshold.saturating_mul(4) {
            // Waits for a background checkpoint in progress, which would make this one skip.
            let _quiet = self.wal_checkpointer.pause();
            if let Some(conn) = self.pool.open_conn(run_id) {
                wal::checkpoint_wal(conn, "PASSIVE", &path, &self.counters, false);
            }
        } else {
            self.wal_checkpointer.request(path);
        }
    }
}

impl Writer {
    /// Posts the run's committed state and the `ts` range of the events just committed to the
    /// catalog thread. Cheap and never waiting: two lookups on pages the commit left in this
    /// connection's cache, a pass over the batch's `ts` values, a map merge.
    fn tell_catalog(&self, run_id: &str, batch: &Batch, outcome: &run_db::WriteOutcome) {
        if !self.catalog.is_enabled() {
            return;
        }
        let Some(conn) = self.pool.open_conn(run_id) else { return };
        let committed = match crate::catalog::read_committed(conn, run_id) {
            Ok(committed) => committed,
            Err(error) => {
                // The next commit or the next start's reconciliation catches up.
                tracing::debug!(run_id, %error, "cannot read the run's state for the catalog");
                return;
            }
        };
        let failed: HashSet<usize> = outcome.failed.iter().map(|(i, _)| *i).collect();
        let mut ts = TsRange::default();
        for (i, rec) in batch.recs.iter().enumerate() {
            if rec.kind == crate::parse::Kind::Event && !failed.contains(&i) {
                if let rusqlite::types::ToSqlOutput::Borrowed(value) = batch.value(rec.ts) {
                    ts.note(value);
                }
            }
        }
        self.catalog.committed(run_id, &self.pool.path_of(run_id), committed, ts);
    }
}

/// 50 ms doubling to 5 s, with jitter so that several writers do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    Duration::from_millis(base / 2 + nanos % (base / 2 + 1))
}
