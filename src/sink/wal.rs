//! WAL checkpoints of run DBs (not to be confused with `checkpoint`, the file offsets): the
//! WAL hook that counts pages, a writer's background checkpoint thread, and the checkpoint and
//! close helpers the writer and its pool share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use rusqlite::Connection;

use crate::config::SqliteConfig;
use crate::metrics::Counters;
use crate::sqlite::{wal_checkpoint, WalCheckpoint};

thread_local! {
    /// Pages in the WAL after this thread's last commit (see `note_wal_pages`).
    pub(super) static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The WAL hook of writer connections: SQLite calls it on the committing thread after each
/// commit. Installing it replaces SQLite's own autocheckpoint, which would checkpoint inline.
pub(super) fn note_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// A writer's background checkpoint thread: PASSIVE checkpoints of the DBs whose WAL passed
/// `sqlite.wal_autocheckpoint`, each through a short-lived connection of its own, so that on a
/// single hot run the copy into the DB and its fsync use the other core.
pub(super) struct WalCheckpointer {
    requests: Option<Sender<PathBuf>>,
    /// Held while the thread has a DB open; see `pause`.
    busy: Arc<std::sync::Mutex<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WalCheckpointer {
    pub(super) fn spawn(
        shard: usize,
        sqlite: &SqliteConfig,
        counters: &Arc<Counters>,
    ) -> WalCheckpointer {
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
                        checkpoint_wal_in_background(&path, &sqlite, &counters);
                    }
                }
            })
            .map_err(|error| tracing::warn!(%error, "no checkpoint thread; writers checkpoint"))
            .ok();
        WalCheckpointer { requests: thread.is_some().then_some(tx), busy, thread }
    }

    /// Asks for a checkpoint of `path`; dropped if requests are queued already (the next
    /// commit asks again). Without the thread, the writer's 4x fallback does the work.
    pub(super) fn request(&self, path: PathBuf) {
        if let Some(tx) = &self.requests {
            let _ = tx.try_send(path);
        }
    }

    /// Keeps the thread from opening a DB while the guard lives.
    pub(super) fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finishes the queued checkpoints and joins the thread.
    pub(super) fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the checkpoint thread panicked");
            }
        }
    }
}

fn checkpoint_wal_in_background(path: &Path, sqlite: &SqliteConfig, counters: &Counters) {
    // A DB retention deleted meanwhile is simply skipped.
    match open_existing(path, sqlite) {
        Ok(conn) => {
            checkpoint_wal(&conn, "PASSIVE", path, counters, true);
            close(conn, path);
        }
        Err(error) => tracing::debug!(path = %path.display(), %error, "no background checkpoint"),
    }
}

/// Opens a run DB to checkpoint it, never creating one: checkpointing or closing a DB that
/// retention deleted must not bring it back empty. A missing DB is an error
/// (`SQLITE_CANTOPEN`; see [`is_gone`]). No schema work: a DB the pool wrote is migrated.
///
/// The checkpoint's fsyncs follow this connection's `synchronous`; closing it does not
/// checkpoint again or delete the WAL unless the caller asks (`checkpoint_wal_and_close`).
pub(super) fn open_existing(path: &Path, sqlite: &SqliteConfig) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.busy_timeout(sqlite.busy_timeout)?;
    conn.execute_batch(&format!("PRAGMA synchronous = {}", sqlite.synchronous.as_pragma()))?;
    Ok(conn)
}

/// Whether [`open_existing`] failed because the DB is not there (deleted meanwhile).
pub(super) fn is_gone(error: &rusqlite::Error, path: &Path) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) && !path.exists()
}

/// Runs `PRAGMA wal_checkpoint(mode)`; reports a checkpoint that readers kept from finishing
/// (an analyst's long read transaction pins the WAL, which then keeps growing).
/// With `busy_ok`, another checkpoint running (ours, on another connection) is no failure: it
/// is skipped without a word.
pub(super) fn checkpoint_wal(
    conn: &Connection,
    mode: &str,
    path: &Path,
    counters: &Counters,
    busy_ok: bool,
) -> bool {
    match wal_checkpoint(conn, mode) {
        Ok(c) if c.busy && busy_ok => false,
        Ok(WalCheckpoint { busy, wal_frames: log, checkpointed: done }) => {
            counters.wal_checkpoints.add(1);
            if busy || done < log {
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

/// What SQLite itself cuts a writer connection's WAL file back to when the WAL restarts (its
/// `journal_size_limit`), if `sqlite.journal_size_limit` is smaller: cutting at every restart
/// would have a burst, whose WAL restarts every few MiB, grow the file again each time (measured
/// on 16 MiB cycles of 1 MiB commits: 20-30 % more time per commit). The checkpoint loop cuts it
/// to `sqlite.journal_size_limit` instead (`cut_back_wal`), once per `checkpoint_interval`.
pub(super) const RESTART_WAL_LIMIT: usize = 64 << 20;

/// After a checkpoint of `conn` that completed: cuts a WAL file larger than
/// `sqlite.journal_size_limit` back to nothing (TRUNCATE), so that a WAL grown by a burst does
/// not stay at its peak while the run keeps being written (SQLite only truncates a WAL when it
/// restarts, down to `RESTART_WAL_LIMIT`). Only waits for nobody: a reader or another process's
/// writer makes it give up until the next round, silently (PASSIVE reports blocked readers).
/// One `stat` per open DB per round; never on the commit path.
pub(super) fn cut_back_wal(
    conn: &Connection,
    path: &Path,
    sqlite: &SqliteConfig,
    counters: &Counters,
) {
    let wal_len = std::fs::metadata(crate::sqlite::sibling(path, "-wal")).map_or(0, |m| m.len());
    if wal_len <= sqlite.journal_size_limit as u64 {
        return;
    }
    let result = conn
        .busy_timeout(std::time::Duration::ZERO)
        .and_then(|()| wal_checkpoint(conn, "TRUNCATE"));
    if let Err(error) = conn.busy_timeout(sqlite.busy_timeout) {
        tracing::debug!(path = %path.display(), %error, "cannot restore the busy timeout");
    }
    match result {
        Ok(c) if !c.busy => counters.wal_checkpoints.add(1),
        Ok(_) => tracing::debug!(path = %path.display(), wal_len, "WAL in use; cut back later"),
        Err(error) => tracing::debug!(path = %path.display(), %error, "cannot cut back the WAL"),
    }
}

pub(super) fn checkpoint_wal_and_close(conn: Connection, path: &Path, counters: &Counters) {
    checkpoint_wal(&conn, "TRUNCATE", path, counters, false);
    // Let SQLite remove the (now empty) WAL and shm files when this last connection closes.
    if let Err(error) =
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
    {
        tracing::debug!(path = %path.display(), %error, "cannot re-enable checkpoint on close");
    }
    close(conn, path);
}

pub(super) fn close(conn: Connection, path: &Path) {
    if let Err((_, error)) = conn.close() {
        tracing::warn!(path = %path.display(), %error, "closing run DB failed");
    }
}
