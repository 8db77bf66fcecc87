//! A writer's open run-DB connections: least recently used closed first, one page-cache
//! budget split over them.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::wal::{
    checkpoint_wal, checkpoint_wal_and_close, close, cut_back_wal, is_gone, note_wal_pages,
    open_existing, RESTART_WAL_LIMIT,
};
use super::{run_db, run_path};
use crate::catalog::Keeper;
use crate::config::SqliteConfig;
use crate::metrics::Counters;
use crate::schema::Schema;

/// Page cache per writer, shared by its open connections (see `Pool::share_cache`).
const CACHE_BUDGET: usize = 16 << 20;

/// An open connection of the pool.
struct Open {
    conn: Connection,
    /// `Pool::tick` at its last use: the least recently used is closed first.
    tick: u64,
    /// When it was last used, for `idle_close_after`.
    used: Instant,
    /// The `(dev, inode)` of the file opened: a corrupt DB is moved aside only if its path
    /// still names that file (another process may have replaced it with a fresh one).
    inode: Option<(u64, u64)>,
}

/// Open run-DB connections of one writer, least recently used closed first.
pub(super) struct Pool {
    counters: Arc<Counters>,
    dir: PathBuf,
    sqlite: SqliteConfig,
    /// Typed columns and indexes, applied at every open (`columns`).
    schema: Schema,
    cap: usize,
    /// By run_id.
    conns: HashMap<String, Open>,
    tick: u64,
    /// Runs closed without a WAL checkpoint since (their WAL may hold commits).
    uncheckpointed: HashSet<String>,
    /// The page cache each connection currently gets (see `share_cache`).
    cache_share: usize,
    /// The catalog thread: told when a run's DB file is new and when it is closed.
    catalog: Keeper,
}

impl Pool {
    pub(super) fn new(
        dir: PathBuf,
        sqlite: SqliteConfig,
        schema: Schema,
        cap: usize,
        counters: Arc<Counters>,
        catalog: Keeper,
    ) -> Pool {
        Pool {
            counters,
            dir,
            sqlite,
            schema,
            cap: cap.max(1),
            conns: HashMap::new(),
            tick: 0,
            uncheckpointed: HashSet::new(),
            cache_share: 0,
            catalog,
        }
    }

    pub(super) fn path_of(&self, run_id: &str) -> PathBuf {
        self.dir.join(run_path::db_file_name(run_id))
    }

    pub(super) fn get(&mut self, run_id: &str) -> rusqlite::Result<&mut Connection> {
        self.tick += 1;
        let tick = self.tick;
        if !self.conns.contains_key(run_id) {
            if self.conns.len() >= self.cap {
                let lru =
                    self.conns.iter().min_by_key(|(_, open)| open.tick).map(|(k, _)| k.clone());
                if let Some(lru) = lru {
                    self.evict(&lru);
                }
            }
            let path = self.path_of(run_id);
            let inode_before = run_db::inode(&path);
            let conn = run_db::open(&path, &self.sqlite, &self.schema)?;
            if self.sqlite.wal_autocheckpoint > 0 {
                conn.wal_hook(Some(note_wal_pages));
            }
            // SQLite cuts the WAL back only this far when it restarts; `maintain` does the rest.
            let limit = self.sqlite.journal_size_limit.max(RESTART_WAL_LIMIT) as i64;
            conn.pragma_update(None, "journal_size_limit", limit)?;
            let inode = run_db::inode(&path);
            if inode != inode_before {
                // Created, or a corrupt one moved aside: the catalog row must not carry the
                // old file's numbers over.
                self.catalog.replaced(run_id, &path);
            }
            self.conns.insert(run_id.to_string(), Open { conn, tick, used: Instant::now(), inode });
            self.counters.open_run_dbs.inc();
            self.share_cache();
        }
        let entry = self.conns.get_mut(run_id).expect("inserted above");
        entry.tick = tick;
        entry.used = Instant::now();
        Ok(&mut entry.conn)
    }

    /// Splits `CACHE_BUDGET` over the open connections (never below `sqlite.cache_size`): one
    /// big run gets a cache that holds its random-key index (measured: with 512KiB, a 1M-row
    /// run spends a third of its time spilling and re-reading pages), many runs get little
    /// each. Re-applied only when the share changes by 2x, so opens stay cheap.
    fn share_cache(&mut self) {
        // Rounded down to a power of two, so that the shares never add up past the budget
        // (rounding up gave 25 connections 1 MiB each: 25 MiB of a writer's 16).
        let share = (CACHE_BUDGET / self.conns.len().max(1)).max(self.sqlite.cache_size);
        let share = 1usize << share.ilog2();
        if share == self.cache_share {
            return;
        }
        self.cache_share = share;
        for Open { conn, .. } in self.conns.values() {
            if let Err(error) = conn.pragma_update(None, "cache_size", -((share / 1024) as i64)) {
                tracing::debug!(%error, "cannot resize the page cache");
            }
        }
    }

    /// The connection of `run_id` if it is open; does not count as a use.
    pub(super) fn open_conn(&self, run_id: &str) -> Option<&Connection> {
        self.conns.get(run_id).map(|open| &open.conn)
    }

    /// The run whose DB at `path` this pool has open.
    pub(super) fn open_run_at(&self, path: &std::path::Path) -> Option<String> {
        self.conns.keys().find(|run_id| self.path_of(run_id) == path).cloned()
    }

    pub(super) fn is_open(&self, run_id: &str) -> bool {
        self.conns.contains_key(run_id)
    }

    /// Closes a DB without checkpointing; it is remembered and checkpointed by `close_all`.
    pub(super) fn evict(&mut self, run_id: &str) {
        if let Some(Open { conn, .. }) = self.conns.remove(run_id) {
            self.counters.open_run_dbs.dec();
            close(conn, &self.path_of(run_id));
            self.uncheckpointed.insert(run_id.to_string());
        }
    }

    /// A write found the run's DB corrupt (`sqlite::is_corrupt`): drops the connection (no
    /// checkpoint: its WAL goes aside with it) and moves the DB aside, kept, with one ERROR
    /// (`run_db::quarantine_corrupt`), unless its path names another file by now (then
    /// nothing is moved). The next `get` opens a fresh DB. The caller makes sure no
    /// background checkpoint holds the DB open.
    pub(super) fn quarantine(
        &mut self,
        run_id: &str,
        error: &rusqlite::Error,
    ) -> std::io::Result<Option<PathBuf>> {
        let path = self.path_of(run_id);
        let opened = match self.conns.remove(run_id) {
            Some(Open { conn, inode, .. }) => {
                self.counters.open_run_dbs.dec();
                close(conn, &path);
                inode
            }
            None => run_db::inode(&path),
        };
        self.uncheckpointed.remove(run_id);
        if opened.is_none() || run_db::inode(&path) != opened {
            return Ok(None);
        }
        run_db::quarantine_corrupt(&path, error, "writing").map(Some)
    }

    /// Checkpoints (TRUNCATE) and closes one run's DB, if open, as [`Pool::close_all`] does.
    pub(super) fn close(&mut self, run_id: &str, counters: &Counters) {
        if let Some(open) = self.conns.remove(run_id) {
            self.close_for_good(run_id, open.conn, counters);
        } else if self.uncheckpointed.remove(run_id) {
            self.checkpoint_closed(run_id, counters);
        }
    }

    fn close_for_good(&mut self, run_id: &str, conn: Connection, counters: &Counters) {
        counters.open_run_dbs.dec();
        // Cheap unless the query planner's statistics are stale; helps analysts' queries.
        if let Err(error) = conn.execute_batch("PRAGMA optimize") {
            tracing::debug!(run_id, %error, "PRAGMA optimize failed");
        }
        checkpoint_wal_and_close(conn, &self.path_of(run_id), counters);
        self.catalog.closed(run_id, &self.path_of(run_id));
        self.uncheckpointed.remove(run_id);
    }

    /// Checkpoints (TRUNCATE) and closes every DB this pool wrote, open or not, so that a
    /// finished writer leaves each run as one file.
    pub(super) fn close_all(&mut self, counters: &Counters) {
        for (run_id, open) in std::mem::take(&mut self.conns) {
            self.close_for_good(&run_id, open.conn, counters);
        }
        self.checkpoint_wal_of_closed(counters);
    }

    /// The WAL checkpoint loop's work: PASSIVE for DBs written recently (then TRUNCATE if their
    /// WAL is still above `journal_size_limit`), TRUNCATE and close for DBs idle for
    /// `idle_close_after`, TRUNCATE for DBs closed without a checkpoint.
    pub(super) fn maintain(&mut self, idle_close_after: Duration, counters: &Counters) {
        let idle: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, open)| open.used.elapsed() >= idle_close_after)
            .map(|(run_id, _)| run_id.clone())
            .collect();
        for run_id in idle {
            if let Some(Open { conn, .. }) = self.conns.remove(&run_id) {
                counters.open_run_dbs.dec();
                checkpoint_wal_and_close(conn, &self.path_of(&run_id), counters);
                self.catalog.closed(&run_id, &self.path_of(&run_id));
                self.uncheckpointed.remove(&run_id);
            }
        }
        for (run_id, Open { conn, .. }) in &self.conns {
            let path = self.path_of(run_id);
            if checkpoint_wal(conn, "PASSIVE", &path, counters, false) {
                cut_back_wal(conn, &path, &self.sqlite, counters);
            }
        }
        self.checkpoint_wal_of_closed(counters);
    }

    /// TRUNCATE checkpoints of the DBs closed without one. Never creates a DB: one retention
    /// deleted since it was closed has nothing left to checkpoint.
    fn checkpoint_wal_of_closed(&mut self, counters: &Counters) {
        for run_id in std::mem::take(&mut self.uncheckpointed) {
            self.checkpoint_closed(&run_id, counters);
        }
    }

    /// Checkpoints (TRUNCATE) a DB this pool closed without one.
    fn checkpoint_closed(&self, run_id: &str, counters: &Counters) {
        let path = self.path_of(run_id);
        match open_existing(&path, &self.sqlite) {
            Ok(conn) => {
                checkpoint_wal_and_close(conn, &path, counters);
                self.catalog.closed(run_id, &path);
            }
            Err(error) if is_gone(&error, &path) => {
                tracing::debug!(path = %path.display(), "run DB deleted since closed; nothing to checkpoint")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot open run DB to checkpoint it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 #14: a run DB deleted (by retention) after the pool closed it without a
    /// checkpoint stays deleted: neither the checkpoint loop nor the final close recreates it.
    #[test]
    fn checkpointing_a_closed_db_that_was_deleted_does_not_recreate_it() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let counters = Arc::new(Counters::default());
        let mut pool = Pool::new(
            dir.path().to_path_buf(),
            sqlite,
            Schema::default(),
            4,
            counters.clone(),
            Keeper::disabled(),
        );
        let files = |pool: &Pool| {
            ["", "-wal", "-shm"]
                .iter()
                .map(|s| crate::sqlite::sibling(&pool.path_of("gone"), s))
                .filter(|p| p.exists())
                .collect::<Vec<_>>()
        };
        for close in ["maintain", "close_all"] {
            pool.get("gone")
                .unwrap()
                .execute_batch("INSERT INTO runs (run_id) VALUES ('gone')")
                .unwrap();
            pool.evict("gone");
            assert!(!files(&pool).is_empty());
            for path in files(&pool) {
                std::fs::remove_file(path).unwrap();
            }
            match close {
                "maintain" => pool.maintain(Duration::ZERO, &counters),
                _ => pool.close_all(&counters),
            }
            assert_eq!(files(&pool), Vec::<PathBuf>::new(), "{close}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{close}");
        }
        assert_eq!(counters.open_run_dbs.get(), 0);
    }
}
