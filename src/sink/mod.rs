//! The writers: OS threads that own every run-DB connection, one thread per shard of run_ids.
//!
//! A writer takes [`Batch`]es from its bounded inbox and sorts their records into per-run
//! buffers. A run is committed when it holds `batch_max_events` rows; the biggest runs are
//! committed when the buffers hold `batch_max_bytes`; every run when the oldest record has waited
//! `batch_max_delay` (daemon only; backfill flushes by size), or when the inbox closes. Each
//! commit is one IMMEDIATE transaction for one run; only after it are the spans acked. A locked or full database is retried with backoff, forever, never dead-lettered;
//! a record that fails on its own (too big) becomes a `write_failed` dead letter.
//!
//! No other module opens a run DB for writing.

pub mod merge;
pub mod run_db;
pub mod run_path;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use crate::config::{Mapping, SqliteConfig};
use crate::dlq::DeadLetter;
use crate::metrics::Counters;
use crate::parse::DeadReason;
use crate::route::{Batch, Span, StateMsg};
use crate::tail::LineMeta;

/// Page cache per writer, shared by its open connections (see `Pool::share_cache`).
const CACHE_BUDGET: usize = 16 << 20;

/// When writers checkpoint their databases.
#[derive(Debug, Clone, Copy)]
pub struct Maintenance {
    /// `sqlite.checkpoint_interval`: how often open DBs are checkpointed.
    pub interval: Duration,
    /// `output.idle_close_after`: DBs not written for this long are checkpointed (TRUNCATE)
    /// and closed.
    pub idle_close_after: Duration,
}

/// What a writer needs to know; shared by all writers.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub output_dir: PathBuf,
    pub sqlite: SqliteConfig,
    pub mapping: Mapping,
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

/// Starts writer thread `shard`.
pub fn spawn(
    shard: usize,
    config: Arc<WriterConfig>,
    inbox: Receiver<Batch>,
    state: Sender<StateMsg>,
    counters: Arc<Counters>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("writer-{shard}")).spawn(move || {
        let seen_runs = config.linger.is_none().then(Default::default);
        let checkpointer = Checkpointer::spawn(shard, &config.sqlite, &counters);
        let mut writer = Writer {
            seen_runs,
            pool: Pool::new(
                config.output_dir.clone(),
                config.sqlite.clone(),
                config.max_open,
                counters.clone(),
            ),
            config,
            state,
            counters,
            checkpointer,
            runs: HashMap::new(),
            n_bytes: 0,
            oldest: None,
        };
        writer.run(inbox);
    })
}

struct Writer {
    config: Arc<WriterConfig>,
    pool: Pool,
    checkpointer: Checkpointer,
    state: Sender<StateMsg>,
    counters: Arc<Counters>,
    /// Buffered records, per run.
    runs: HashMap<String, Batch>,
    n_bytes: usize,
    /// When the oldest buffered record arrived.
    oldest: Option<Instant>,
    /// Runs written so far, for the backfill summary (None in the daemon: it would grow forever).
    seen_runs: Option<HashSet<String>>,
}

impl Writer {
    fn run(&mut self, inbox: Receiver<Batch>) {
        let mut next_maintenance = self.config.maintenance.map(|m| Instant::now() + m.interval);
        loop {
            let flush_at = match (self.oldest, self.config.linger) {
                (Some(t), Some(linger)) => Some(t + linger),
                _ => None,
            };
            let deadline = match (flush_at, next_maintenance) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let received = match deadline {
                Some(d) => inbox.recv_deadline(d),
                None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(batch) => self.buffer(batch),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush_all();
                    self.checkpointer.stop();
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
                    let _quiet = self.checkpointer.pause();
                    self.pool.maintain(m.idle_close_after, &self.counters);
                    next_maintenance = Some(Instant::now() + m.interval);
                }
            }
        }
    }

    /// Sorts a batch's records into the per-run buffers, then commits the runs that have
    /// `max_events` rows, and everything if the buffers hold `max_bytes`.
    fn buffer(&mut self, batch: Batch) {
        let mut full: Vec<String> = Vec::new();
        for rec in &batch.recs {
            let run_id = batch.text(rec.run_id);
            let buf = match self.runs.get_mut(run_id) {
                Some(buf) => buf,
                None => self.runs.entry(run_id.to_string()).or_default(),
            };
            let before = buf.memory_bytes();
            buf.push_from(&batch, rec);
            self.n_bytes = self.n_bytes + buf.memory_bytes() - before;
            if buf.recs.len() == self.config.max_events {
                full.push(run_id.to_string());
            }
        }
        self.oldest.get_or_insert_with(Instant::now);
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
    }

    /// Writes one run's records, retrying database-level failures (locked, full disk, I/O)
    /// with capped exponential backoff until they succeed.
    fn write_with_retry(&mut self, run_id: &str, batch: &Batch) -> run_db::WriteOutcome {
        let mut attempt: u32 = 0;
        let mut last_log: Option<Instant> = None;
        let _pending = self.counters.write_started(); // ops: /healthz and watchdog signal
        loop {
            let attempt_started = Instant::now(); // ops: jsonl_shipper_batch_commit_seconds
            let result = self.pool.get(run_id).and_then(|conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let outcome = run_db::write_run(&tx, run_id, batch, &self.config.mapping)?;
                tx.commit()?;
                Ok(outcome)
            });
            match result {
                Ok(outcome) => {
                    self.counters.commit_succeeded(attempt_started.elapsed()); // ops: metrics
                    self.after_commit(run_id);
                    if attempt > 0 {
                        tracing::info!(
                            run_id,
                            attempts = attempt + 1,
                            "run DB write succeeded after retries"
                        );
                    }
                    return outcome;
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
    /// `sqlite.wal_autocheckpoint`, moved off this thread: past the threshold the checkpointer
    /// copies the WAL into the DB while this thread goes on writing (a PASSIVE checkpoint runs
    /// beside a writer). The WAL restarts only once a checkpoint has caught up with every
    /// commit, which a busy writer rarely lets the checkpointer do; so at 4x the threshold this
    /// thread checkpoints itself, copying only what the checkpointer has not.
    fn after_commit(&self, run_id: &str) {
        let pages = WAL_PAGES.with(|p| p.replace(0));
        let threshold = self.config.sqlite.wal_autocheckpoint as i32;
        if threshold <= 0 || pages < threshold {
            return;
        }
        let path = self.pool.path_of(run_id);
        if pages >= threshold.saturating_mul(4) {
            // Waits for a background checkpoint in progress, which would make this one skip.
            let _quiet = self.checkpointer.pause();
            if let Some(conn) = self.pool.conns.get(run_id) {
                checkpoint(&conn.0, "PASSIVE", &path, &self.counters, false);
            }
        } else {
            self.checkpointer.request(path);
        }
    }
}

thread_local! {
    /// Pages in the WAL after this thread's last commit (see `note_wal_pages`).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The WAL hook of writer connections: SQLite calls it on the committing thread after each
/// commit. Installing it replaces SQLite's own autocheckpoint, which would checkpoint inline.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// A writer's background checkpoint thread: PASSIVE checkpoints of the DBs whose WAL passed
/// `sqlite.wal_autocheckpoint`, each through a short-lived connection of its own, so that on a
/// single hot run the copy into the DB and its fsync use the other core.
struct Checkpointer {
    requests: Option<Sender<PathBuf>>,
    /// Held while the thread has a DB open; see `pause`.
    busy: Arc<std::sync::Mutex<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(shard: usize, sqlite: &SqliteConfig, counters: &Arc<Counters>) -> Checkpointer {
        let (tx, rx) = crossbeam_channel::bounded::<PathBuf>(16);
        let busy = Arc::new(std::sync::Mutex::new(()));
        let (sqlite, counters, held) = (sqlite.clone(), counters.clone(), busy.clone());
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint-{shard}"))
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Requests repeat while a checkpoint runs: do each DB once.
                    let mut paths = vec![first];
                    paths.extend(rx.try_iter());
                    paths.sort();
                    paths.dedup();
                    for path in paths {
                        let _held = held.lock().unwrap_or_else(|e| e.into_inner());
                        background_checkpoint(&path, &sqlite, &counters);
                    }
                }
            })
            .map_err(|error| tracing::warn!(%error, "no checkpoint thread; writers checkpoint"))
            .ok();
        Checkpointer { requests: thread.is_some().then_some(tx), busy, thread }
    }

    /// Asks for a checkpoint of `path`; dropped if requests are queued already (the next
    /// commit asks again). Without the thread, the writer's 4x fallback does the work.
    fn request(&self, path: PathBuf) {
        if let Some(tx) = &self.requests {
            let _ = tx.try_send(path);
        }
    }

    /// Keeps the thread from opening a DB while the guard lives.
    fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finishes the queued checkpoints and joins the thread.
    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

fn background_checkpoint(path: &Path, sqlite: &SqliteConfig, counters: &Counters) {
    use rusqlite::OpenFlags;
    // Never creates: a DB retention deleted meanwhile is simply skipped.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let result = Connection::open_with_flags(path, flags).and_then(|conn| {
        // The checkpoint's fsyncs follow this connection's `synchronous`; and closing it must
        // not checkpoint again or delete the writer's WAL.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        conn.execute_batch(&format!("PRAGMA synchronous = {}", sqlite.synchronous.as_pragma()))?;
        Ok(conn)
    });
    match result {
        Ok(conn) => {
            checkpoint(&conn, "PASSIVE", path, counters, true);
            close(conn, path);
        }
        Err(error) => tracing::debug!(path = %path.display(), %error, "no background checkpoint"),
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

/// Open run-DB connections of one writer, least recently used closed first.
struct Pool {
    counters: Arc<Counters>,
    dir: PathBuf,
    sqlite: SqliteConfig,
    cap: usize,
    /// Open connections with the tick and the time of their last use.
    conns: HashMap<String, (Connection, u64, Instant)>,
    tick: u64,
    /// Runs closed without a checkpoint since (their WAL may hold commits).
    uncheckpointed: HashSet<String>,
    /// The page cache each connection currently gets (see `share_cache`).
    cache_share: usize,
}

impl Pool {
    fn new(dir: PathBuf, sqlite: SqliteConfig, cap: usize, counters: Arc<Counters>) -> Pool {
        Pool {
            counters,
            dir,
            sqlite,
            cap: cap.max(1),
            conns: HashMap::new(),
            tick: 0,
            uncheckpointed: HashSet::new(),
            cache_share: 0,
        }
    }

    fn path_of(&self, run_id: &str) -> PathBuf {
        self.dir.join(run_path::db_file_name(run_id))
    }

    fn get(&mut self, run_id: &str) -> rusqlite::Result<&mut Connection> {
        self.tick += 1;
        let tick = self.tick;
        if !self.conns.contains_key(run_id) {
            if self.conns.len() >= self.cap {
                let lru = self.conns.iter().min_by_key(|(_, (_, t, _))| *t).map(|(k, _)| k.clone());
                if let Some(lru) = lru {
                    self.evict(&lru);
                }
            }
            let conn = run_db::open(&self.path_of(run_id), &self.sqlite)?;
            if self.sqlite.wal_autocheckpoint > 0 {
                conn.wal_hook(Some(note_wal_pages));
            }
            self.conns.insert(run_id.to_string(), (conn, tick, Instant::now()));
            self.counters.open_run_dbs.inc();
            self.share_cache();
        }
        let entry = self.conns.get_mut(run_id).expect("inserted above");
        entry.1 = tick;
        entry.2 = Instant::now();
        Ok(&mut entry.0)
    }

    /// Splits `CACHE_BUDGET` over the open connections (never below `sqlite.cache_size`): one
    /// big run gets a cache that holds its random-key index (measured: with 512KiB, a 1M-row
    /// run spends a third of its time spilling and re-reading pages), many runs get little
    /// each. Re-applied only when the share changes by 2x, so opens stay cheap.
    fn share_cache(&mut self) {
        let share = (CACHE_BUDGET / self.conns.len().max(1)).max(self.sqlite.cache_size);
        let share = share.next_power_of_two();
        if share == self.cache_share {
            return;
        }
        self.cache_share = share;
        for (conn, _, _) in self.conns.values() {
            if let Err(error) = conn.pragma_update(None, "cache_size", -((share / 1024) as i64)) {
                tracing::debug!(%error, "cannot resize the page cache");
            }
        }
    }

    fn is_open(&self, run_id: &str) -> bool {
        self.conns.contains_key(run_id)
    }

    /// Closes a DB without checkpointing; it is remembered and checkpointed by `close_all`.
    fn evict(&mut self, run_id: &str) {
        if let Some((conn, _, _)) = self.conns.remove(run_id) {
            self.counters.open_run_dbs.dec();
            close(conn, &self.path_of(run_id));
            self.uncheckpointed.insert(run_id.to_string());
        }
    }

    /// Checkpoints (TRUNCATE) and closes every DB this pool wrote, open or not, so that a
    /// finished writer leaves each run as one file.
    fn close_all(&mut self, counters: &Counters) {
        for (run_id, (conn, _, _)) in std::mem::take(&mut self.conns) {
            counters.open_run_dbs.dec();
            // Cheap unless the query planner's statistics are stale; helps analysts' queries.
            if let Err(error) = conn.execute_batch("PRAGMA optimize") {
                tracing::debug!(run_id, %error, "PRAGMA optimize failed");
            }
            checkpoint_and_close(conn, &self.path_of(&run_id), counters);
            self.uncheckpointed.remove(&run_id);
        }
        self.checkpoint_closed(counters);
    }

    /// The WAL checkpoint loop's work: PASSIVE for DBs written recently, TRUNCATE and close for
    /// DBs idle for `idle_close_after`, TRUNCATE for DBs closed without a checkpoint.
    fn maintain(&mut self, idle_close_after: Duration, counters: &Counters) {
        let idle: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, (_, _, used))| used.elapsed() >= idle_close_after)
            .map(|(run_id, _)| run_id.clone())
            .collect();
        for run_id in idle {
            if let Some((conn, _, _)) = self.conns.remove(&run_id) {
                counters.open_run_dbs.dec();
                checkpoint_and_close(conn, &self.path_of(&run_id), counters);
                self.uncheckpointed.remove(&run_id);
            }
        }
        for (run_id, (conn, _, _)) in &self.conns {
            checkpoint(conn, "PASSIVE", &self.path_of(run_id), counters, false);
        }
        self.checkpoint_closed(counters);
    }

    fn checkpoint_closed(&mut self, counters: &Counters) {
        for run_id in std::mem::take(&mut self.uncheckpointed) {
            let path = self.path_of(&run_id);
            match run_db::open(&path, &self.sqlite) {
                Ok(conn) => checkpoint_and_close(conn, &path, counters),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot open run DB to checkpoint it")
                }
            }
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)`; reports a checkpoint that readers kept from finishing
/// (an analyst's long read transaction pins the WAL, which then keeps growing).
/// With `busy_ok`, another checkpoint running (ours, on another connection) is no failure: it
/// is skipped without a word.
fn checkpoint(
    conn: &Connection,
    mode: &str,
    path: &Path,
    counters: &Counters,
    busy_ok: bool,
) -> bool {
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match result {
        Ok((busy, _, _)) if busy != 0 && busy_ok => false,
        Ok((busy, log, done)) => {
            counters.wal_checkpoints.add(1);
            if busy != 0 || done < log {
                counters.checkpoints_blocked.add(1);
                tracing::warn!(
                    path = %path.display(),
                    wal_frames = log,
                    checkpointed = done,
                    "WAL checkpoint blocked by a reader; the WAL grows until the reader finishes"
                );
                return false;
            }
            true
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "WAL checkpoint failed");
            false
        }
    }
}

fn checkpoint_and_close(conn: Connection, path: &Path, counters: &Counters) {
    checkpoint(&conn, "TRUNCATE", path, counters, false);
    // Let SQLite remove the (now empty) WAL and shm files when this last connection closes.
    if let Err(error) =
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
    {
        tracing::debug!(path = %path.display(), %error, "cannot re-enable checkpoint on close");
    }
    close(conn, path);
}

fn close(conn: Connection, path: &Path) {
    if let Err((_, error)) = conn.close() {
        tracing::warn!(path = %path.display(), %error, "closing run DB failed");
    }
}
