//! The catalog thread: keeps the catalog current while `run` or `backfill` writes run DBs,
//! without ever making a writer wait.
//!
//! ```text
//! writer-N ──commit──▶ read_committed (its own connection, O(log n)) ──┐
//!   (and its pool: DB created/replaced, closed)                        ▼
//!                       pending: one entry per run, coalesced (bounded, under a mutex held
//!                       only to merge one entry) ──every 1 s──▶ catalog thread: one
//!                       transaction for every pending run (stat of its files inside it)
//! ```
//!
//! A writer posts after its commit (never before: nothing uncommitted reaches the catalog)
//! and goes on; the catalog thread takes the whole pending map every [`FLUSH_INTERVAL`] and
//! writes it in one transaction. A catalog that is locked or failing is retried every
//! interval with the updates kept (coalesced, so a stuck catalog costs one entry per run, at
//! most [`MAX_PENDING`]), one WARN a minute; the run DBs never wait for it.
//!
//! What the catalog guarantees: after a graceful stop of `run` or the end of a `backfill`, the
//! row of every run they wrote equals the run DB's committed state (`events`, the runs row,
//! the `ts` range; `db_bytes`/`last_write_at` as of the writers' final close). While they run,
//! a row lags its run DB by at most about [`FLUSH_INTERVAL`]. What it does not: after kill -9
//! (or a power loss) the commits of the last interval are missing from it until the next start
//! of `run` or `backfill`, which reconciles it first ([`reconcile`]: every run DB whose size or
//! last write differs from its row is read again; rows of run DBs that are gone are removed).
//! The numbers always come from a run DB's committed state (`events` is an absolute count,
//! the `ts` range a min/max), so a replayed batch can never count twice.
//!
//! Known approximation: the `ts` range only widens while the process runs. An event replaced
//! by a later upsert (a repeated `event_id`) with another `ts` leaves its old `ts` in the range
//! until `catalog rebuild`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rusqlite::params;

use super::scan::{read_run_db, Committed, TsRange};
use super::{path_text, run_db_files, upsert, Catalog, FileState, Refresh};
use crate::config::SqliteConfig;

/// How often the catalog thread writes what the writers posted.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs waiting to be written to the catalog. Past it, updates are dropped and the catalog
/// thread reconciles from the files instead (only a catalog stuck while this many runs were
/// written gets there).
const MAX_PENDING: usize = 65_536;

/// How long a graceful stop keeps trying to write the last updates to a locked catalog.
const FINAL_WAIT: Duration = Duration::from_secs(5);

/// How often a failing catalog is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What writers hold to post to the catalog thread. Cheap to clone; posting never blocks
/// beyond merging one map entry.
#[derive(Clone)]
pub(crate) struct Keeper {
    /// None: a keeper that drops everything (tests of the sink without a catalog).
    shared: Option<Arc<Shared>>,
}

struct Shared {
    pending: Mutex<HashMap<String, Pending>>,
    /// Set when an update was dropped at [`MAX_PENDING`]: the thread then reconciles.
    overflowed: AtomicBool,
}

/// What is waiting to be written for one run.
#[derive(Debug, Default)]
struct Pending {
    db_path: PathBuf,
    /// The run DB was created or replaced (a corrupt one moved aside): forget the row first.
    reset: bool,
    /// The committed state after the latest commit.
    committed: Option<Committed>,
    /// The `ts` range of every commit since the last write.
    ts: TsRange,
    summary: Option<String>,
}

impl Pending {
    /// `self` followed by the newer `next`.
    fn then(mut self, next: Pending) -> Pending {
        if next.reset {
            return next;
        }
        self.db_path = next.db_path;
        self.committed = next.committed.or(self.committed);
        self.ts.merge(&next.ts);
        self.summary = next.summary.or(self.summary);
        self
    }
}

impl Keeper {
    /// A keeper whose posts go nowhere.
    #[cfg(test)]
    pub(crate) fn disabled() -> Keeper {
        Keeper { shared: None }
    }

    /// Whether posts go anywhere (lets a writer skip reading what nobody will write).
    pub(crate) fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// A writer committed to `run_id`'s DB: its committed state now, and the `ts` range of
    /// the events of that commit.
    pub(crate) fn committed(
        &self,
        run_id: &str,
        db_path: &Path,
        committed: Committed,
        ts: TsRange,
    ) {
        let pending = Pending {
            db_path: db_path.into(),
            committed: Some(committed),
            ts,
            ..Pending::default()
        };
        self.post(run_id, pending);
    }

    /// The run's DB file is a new one (created, or put in place of one moved aside): its row
    /// starts afresh.
    pub(crate) fn replaced(&self, run_id: &str, db_path: &Path) {
        self.post(run_id, Pending { db_path: db_path.into(), reset: true, ..Pending::default() });
    }

    /// A writer closed the run's DB (checkpointed): its size and last write are read again.
    pub(crate) fn closed(&self, run_id: &str, db_path: &Path) {
        self.post(run_id, Pending { db_path: db_path.into(), ..Pending::default() });
    }

    fn post(&self, run_id: &str, pending: Pending) {
        let Some(shared) = &self.shared else { return };
        let mut map = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(run_id) {
            Some(earlier) => {
                map.insert(run_id.to_string(), earlier.then(pending));
            }
            None if map.len() >= MAX_PENDING => shared.overflowed.store(true, Ordering::Relaxed),
            None => {
                map.insert(run_id.to_string(), pending);
            }
        }
    }
}

/// The catalog thread; [`KeeperThread::finish`] writes the last updates and joins it.
pub(crate) struct KeeperThread {
    keeper: Keeper,
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl KeeperThread {
    /// Starts the catalog thread of `catalog`, for the run DBs of `output_dir`. It opens the
    /// catalog itself (a catalog that cannot be opened is retried, never fatal: the run DBs
    /// are the data) and first reconciles it with the run DBs.
    pub(crate) fn spawn(
        catalog: PathBuf,
        output_dir: PathBuf,
        sqlite: SqliteConfig,
    ) -> std::io::Result<KeeperThread> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            overflowed: AtomicBool::new(false),
        });
        let keeper = Keeper { shared: Some(shared.clone()) };
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let mut thread =
            Thread { path: catalog, output_dir, sqlite, catalog: None, last_warn: None };
        let handle = std::thread::Builder::new()
            .name("catalog".into())
            .spawn(move || thread.run(&shared, &stopped))?;
        Ok(KeeperThread { keeper, stop: Some(stop), handle: Some(handle) })
    }

    /// What the writers post to.
    pub(crate) fn keeper(&self) -> Keeper {
        self.keeper.clone()
    }

    /// Writes what is pending (the writers must be done) and joins the thread.
    pub(crate) fn finish(mut self) {
        self.join();
    }

    fn join(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the catalog thread panicked; `jsonl-shipper catalog rebuild` recreates the catalog");
            }
        }
    }
}

impl Drop for KeeperThread {
    fn drop(&mut self) {
        self.join();
    }
}

struct Thread {
    path: PathBuf,
    output_dir: PathBuf,
    sqlite: SqliteConfig,
    catalog: Option<Catalog>,
    last_warn: Option<Instant>,
}

impl Thread {
    fn run(&mut self, shared: &Shared, stopped: &Receiver<()>) {
        let mut reconciled = false;
        loop {
            if shared.overflowed.swap(false, Ordering::Relaxed) {
                reconciled = false;
            }
            if !reconciled {
                match self.reconcile(stopped) {
                    Ok(done) => reconciled = done,
                    Err(error) => self.warn(&error),
                }
            }
            self.flush(shared);
            if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                stopped.recv_timeout(FLUSH_INTERVAL)
            {
                break;
            }
        }
        let deadline = Instant::now() + FINAL_WAIT;
        while !self.flush(shared) {
            if Instant::now() >= deadline {
                let runs = shared.pending.lock().map_or(0, |map| map.len());
                tracing::warn!(
                    path = %self.path.display(),
                    runs,
                    "catalog not updated at exit; the next start of run or backfill catches it up (or: jsonl-shipper catalog rebuild)"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn catalog(&mut self) -> rusqlite::Result<&mut Catalog> {
        if self.catalog.is_none() {
            self.catalog = Some(Catalog::open(&self.path, &self.sqlite)?);
        }
        Ok(self.catalog.as_mut().expect("opened above"))
    }

    /// One WARN a minute while the catalog fails.
    fn warn(&mut self, error: &rusqlite::Error) {
        // A connection that failed may be in a bad state: open afresh next time.
        self.catalog = None;
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last_warn = Some(Instant::now());
            tracing::warn!(
                path = %self.path.display(),
                %error,
                "cannot update the run catalog; retrying (run DBs are not affected)"
            );
        }
    }

    /// Writes every pending update in one transaction; on failure they are put back (before
    /// anything posted since). Returns whether nothing is left pending.
    fn flush(&mut self, shared: &Shared) -> bool {
        let taken = std::mem::take(&mut *shared.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return true;
        }
        match self.write(&taken) {
            Ok(()) => true,
            Err(error) => {
                self.warn(&error);
                let mut map = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
                for (run_id, earlier) in taken {
                    let merged = match map.remove(&run_id) {
                        Some(later) => earlier.then(later),
                        None => earlier,
                    };
                    map.insert(run_id, merged);
                }
                false
            }
        }
    }

    fn write(&mut self, pending: &HashMap<String, Pending>) -> rusqlite::Result<()> {
        let catalog = self.catalog()?;
        // IMMEDIATE, and the files stat'ed inside: retention deletes a DB file before its row
        // (under this lock), so a row is never written back for a file it just deleted.
        let tx =
            catalog.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (run_id, p) in pending {
            let Some(file) = FileState::of(&p.db_path) else {
                tx.prepare_cached("DELETE FROM runs WHERE run_id = ?1")?.execute([run_id])?;
                continue;
            };
            if p.reset {
                tx.prepare_cached("DELETE FROM runs WHERE run_id = ?1")?.execute([run_id])?;
            }
            match &p.committed {
                Some(committed) => upsert(
                    &tx,
                    &Refresh {
                        run_id,
                        db_path: &p.db_path,
                        committed,
                        ts: &p.ts,
                        file: &file,
                        merge: true,
                    },
                )?,
                None => {
                    tx.prepare_cached(
                        "UPDATE runs SET db_bytes = ?2, last_write_at = ?3 WHERE run_id = ?1",
                    )?
                    .execute(params![
                        run_id,
                        file.bytes as i64,
                        file.last_write_at
                    ])?;
                }
            }
            if let Some(summary) = &p.summary {
                tx.prepare_cached("UPDATE runs SET summary = ?2 WHERE run_id = ?1")?
                    .execute([run_id, summary])?;
            }
        }
        tx.commit()
    }

    /// Brings the catalog in line with the run DBs on disk: a run DB whose size or last
    /// write differs from its row (commits after the last update: a crash, another version,
    /// another tool) is read again (only `events` rows past the row's count are scanned for
    /// the `ts` range), one without a row is read in full, and rows whose file is gone are
    /// removed. Cheap when nothing changed (a stat per run DB). Returns false if stopped
    /// before the end.
    fn reconcile(&mut self, stopped: &Receiver<()>) -> rusqlite::Result<bool> {
        let started = Instant::now();
        let files = match run_db_files(&self.output_dir) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(dir = %self.output_dir.display(), %error, "cannot list run DBs to reconcile the catalog");
                return Ok(false);
            }
        };
        let mut known: HashMap<String, (i64, FileState)> = HashMap::new();
        {
            let catalog = self.catalog()?;
            let mut rows = catalog
                .conn
                .prepare("SELECT db_path, events, db_bytes, last_write_at FROM runs")?;
            let rows = rows.query_map([], |r| {
                let file = FileState {
                    bytes: r.get::<_, i64>(2)? as u64,
                    last_write_at: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                };
                Ok((r.get::<_, String>(0)?, (r.get::<_, i64>(1)?, file)))
            })?;
            for row in rows {
                let (db_path, known_row) = row?;
                known.insert(db_path, known_row);
            }
        }
        let mut n_read = 0;
        for path in &files {
            if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return Ok(false);
            }
            let Some(file) = FileState::of(path) else { continue };
            let after = match known.remove(&path_text(path)) {
                Some((_, row_file)) if row_file == file => continue,
                Some((events, _)) => Some(events),
                None => None,
            };
            n_read += 1;
            if let Err(error) = self.refresh_from_file(path, after) {
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
                    return Err(error);
                }
                tracing::warn!(path = %path.display(), %error, "cannot read run DB for the catalog; skipped");
            }
        }
        let gone: Vec<&String> =
            known.keys().filter(|db_path| !Path::new(db_path).exists()).collect();
        if !gone.is_empty() {
            let catalog = self.catalog()?;
            let tx = catalog.conn.transaction()?;
            for db_path in &gone {
                tx.execute("DELETE FROM runs WHERE db_path = ?1", [db_path])?;
            }
            tx.commit()?;
        }
        if n_read > 0 || !gone.is_empty() {
            tracing::info!(
                read = n_read,
                removed = gone.len(),
                seconds = started.elapsed().as_secs_f64(),
                "catalog reconciled with the run DBs"
            );
        }
        Ok(true)
    }

    /// Reads one run DB into its row: merged with the row when only rows past `after` were
    /// scanned, replacing it otherwise.
    fn refresh_from_file(&mut self, path: &Path, after: Option<i64>) -> rusqlite::Result<()> {
        let mut state = read_run_db(path, after)?;
        let mut merge = after.is_some();
        if let (Some(read), Some(after)) = (&state, after) {
            if read.committed.events < after {
                // Fewer rows than the row says: another file (replaced); read it all.
                state = read_run_db(path, None)?;
                merge = false;
            }
        }
        let Some(state) = state else { return Ok(()) };
        let catalog = self.catalog()?;
        let tx =
            catalog.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(file) = FileState::of(path) {
            upsert(&tx, &Refresh::of_state(&state, path, &file, merge))?;
            if let Some(summary) = &state.summary {
                tx.execute(
                    "UPDATE runs SET summary = ?2 WHERE run_id = ?1",
                    [&state.run_id, summary],
                )?;
            }
        }
        tx.commit()
    }
}
