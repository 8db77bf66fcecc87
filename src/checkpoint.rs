//! The state DB: how far each source file has been shipped (its offset checkpoints).
//!
//! The DLQ's index (keys, committed lengths, rewrite intents) lives in the same DB and its
//! tables in these migrations, so that an append commits with the offsets it covers; its
//! queries are in `dlq::index`.
//!
//! A checkpoint is keyed by [`FileId`] and resumed only while its [`Fingerprint`] still
//! matches the file (see [`crate::identity`]).
//!
//! Only the state thread writes here, and only after the data a checkpoint covers is durable.
//! `status` opens it read-only.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, Transaction};

use crate::config::SqliteConfig;
use crate::identity::{FileId, Fingerprint, Mismatch};
use crate::sqlite::{
    apply_pragmas, create_private_file, is_corrupt, migrate, unix_millis, wal_checkpoint,
};

/// Migrations by version; entry N brings a DB from version N to N+1. Never edit or remove one.
const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "CREATE TABLE files (
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        path TEXT NOT NULL,
        gzip INTEGER NOT NULL DEFAULT 0,
        offset INTEGER NOT NULL DEFAULT 0,
        line_no INTEGER NOT NULL DEFAULT 0,
        head_len INTEGER NOT NULL DEFAULT 0,
        head_hash BLOB,
        tail_hash BLOB,
        size INTEGER,
        first_seen_at INTEGER NOT NULL,
        last_read_at INTEGER,
        PRIMARY KEY (dev, ino)
    );
    CREATE TABLE dlq_files (
        name TEXT PRIMARY KEY,
        committed_len INTEGER NOT NULL
    );
    CREATE TABLE dlq_keys (
        key BLOB PRIMARY KEY,
        file TEXT NOT NULL,
        reason TEXT NOT NULL
    ) WITHOUT ROWID;",
    // 1 → 2: intents of `dlq replay` rewrites (see `dlq`), rolled forward by `dlq::recover`.
    "CREATE TABLE dlq_rewrites (
        name TEXT PRIMARY KEY,
        tmp TEXT NOT NULL,
        new_len INTEGER NOT NULL
    );",
    // 2 → 3: dead-letter keys gain the day of their source file (`parse::line_key`). The day
    // is in the letters, not in this DB: `dlq::recover` rekeys under the DLQ lock, reading the
    // DLQ files, and clears this marker in the same transaction.
    "CREATE TABLE dlq_rekey_pending (pending INTEGER NOT NULL);
    INSERT INTO dlq_rekey_pending VALUES (1);",
    // 3 → 4: the remote sinks' own cursors over the source files (`sink` = "clickhouse"),
    // written only by that sink's thread, and what `status` shows of each sink.
    "CREATE TABLE sink_files (
        sink TEXT NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        path TEXT NOT NULL,
        offset INTEGER NOT NULL,
        line_no INTEGER NOT NULL,
        head_len INTEGER NOT NULL DEFAULT 0,
        head_hash BLOB,
        tail_hash BLOB,
        size INTEGER,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (sink, dev, ino)
    );
    CREATE TABLE sink_status (
        sink TEXT PRIMARY KEY,
        last_insert_at INTEGER,
        errors INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );",
    // 4 → 5: when the last error happened, and when the sink answered again after it.
    "ALTER TABLE sink_status ADD COLUMN last_error_at INTEGER;
    ALTER TABLE sink_status ADD COLUMN recovered_at INTEGER;",
];

/// A saved position in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub id: FileId,
    pub path: PathBuf,
    pub gzip: bool,
    pub offset: u64,
    pub line_no: u64,
    /// The content `offset` was read from.
    pub fingerprint: Fingerprint,
    pub size: Option<u64>,
    pub last_read_at: Option<i64>,
}

/// A checkpoint advance, computed by the state thread once its span is durable.
#[derive(Debug, Clone)]
pub(crate) struct Advance {
    pub id: FileId,
    pub offset: u64,
    pub line_no: u64,
    pub fingerprint: Fingerprint,
    pub size: Option<u64>,
}

impl Checkpoint {
    /// A position in a plain file, as of `fingerprint` taken there (not yet saved: no size or
    /// read time).
    pub(crate) fn at(
        id: FileId,
        path: &Path,
        offset: u64,
        line_no: u64,
        fingerprint: Fingerprint,
    ) -> Checkpoint {
        Checkpoint {
            id,
            path: path.to_path_buf(),
            gzip: false,
            offset,
            line_no,
            fingerprint,
            size: None,
            last_read_at: None,
        }
    }

    /// Whether this checkpoint still describes `file` (see [`crate::identity`]).
    pub(crate) fn verify(&self, file: &File, gzip: bool) -> std::io::Result<Result<(), Mismatch>> {
        self.fingerprint.verify(file, gzip, self.offset)
    }
}

/// Why the state DB could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// SQLite reports the file corrupt or not a database: the operator's to fix (see the
    /// message), never retried, never deleted or moved by us. Only the state DB knows what was
    /// shipped, so we must not silently start a fresh one over it.
    #[error(
        "state DB {p} is corrupt or not a SQLite database ({cause}); it was left as it is. \
         Move it aside with its -wal and -shm (e.g. `mv {p} {p}.corrupt`) and start again: \
         every source file is then read again from its start, which adds no duplicate rows",
        p = .path.display()
    )]
    Corrupt { path: PathBuf, cause: rusqlite::Error },
    /// Anything else (callers name the file in their context).
    #[error("{cause}")]
    Sqlite { path: PathBuf, cause: rusqlite::Error },
}

impl OpenError {
    fn new(path: &Path, cause: rusqlite::Error) -> OpenError {
        let path = path.to_path_buf();
        if is_corrupt(&cause) {
            OpenError::Corrupt { path, cause }
        } else {
            OpenError::Sqlite { path, cause }
        }
    }
}

/// The state DB connection.
pub(crate) struct StateDb {
    conn: Connection,
    path: PathBuf,
}

impl StateDb {
    /// Opens (creating and migrating) the state DB for writing.
    pub(crate) fn open(path: &Path, sqlite: &SqliteConfig) -> Result<StateDb, OpenError> {
        create_private_file(path).map_err(|e| {
            OpenError::new(path, rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        })?;
        let open = || {
            let mut conn = Connection::open(path)?;
            apply_pragmas(&conn, sqlite)?;
            migrate(&mut conn, MIGRATIONS)?;
            check_readable(&conn)?;
            Ok::<_, rusqlite::Error>(conn)
        };
        // Two processes creating the state DB at once (the daemon starting as a backfill
        // does): SQLite answers some of the first open's steps (the switch to WAL, the first
        // migration) with SQLITE_BUSY without waiting; seen as a daemon that exited at start.
        let started = std::time::Instant::now();
        let conn = loop {
            match open() {
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && started.elapsed() < sqlite.busy_timeout =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => break result.map_err(|e| OpenError::new(path, e))?,
            }
        };
        Ok(StateDb { conn, path: path.to_path_buf() })
    }

    /// Opens an existing state DB read-only (for `status`); None if it does not exist.
    pub(crate) fn open_read_only(path: &Path) -> Result<Option<StateDb>, OpenError> {
        if !path.exists() {
            return Ok(None);
        }
        let open = || {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            // Created but not migrated yet (a writer died in between): nothing recorded.
            let version = crate::sqlite::user_version(&conn)?;
            if version == 0 {
                return Ok(None);
            }
            check_readable(&conn)?;
            Ok(Some(conn))
        };
        let conn = open().map_err(|e| OpenError::new(path, e))?;
        Ok(conn.map(|conn| StateDb { conn, path: path.to_path_buf() }))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `wal_checkpoint(TRUNCATE)` and `PRAGMA optimize`, for `maintain`. Returns false when a
    /// reader or writer kept the checkpoint from completing (the daemon keeps shipping).
    pub(crate) fn checkpoint_and_optimize(&self) -> rusqlite::Result<bool> {
        // Optimize first: it may write (ANALYZE), and those frames belong in the checkpoint.
        self.conn.execute_batch("PRAGMA optimize")?;
        Ok(!wal_checkpoint(&self.conn, "TRUNCATE")?.busy)
    }

    /// Every checkpoint, by file.
    pub(crate) fn load(&self) -> rusqlite::Result<HashMap<FileId, Checkpoint>> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, path, gzip, offset, line_no, head_len, head_hash, tail_hash, size,
                    last_read_at
             FROM files ORDER BY path",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint {
                id: file_id_at(r, 0)?,
                path: PathBuf::from(r.get::<_, String>(2)?),
                gzip: r.get(3)?,
                offset: r.get::<_, i64>(4)? as u64,
                line_no: r.get::<_, i64>(5)? as u64,
                fingerprint: fingerprint_at(r, 6)?,
                size: r.get::<_, Option<i64>>(9)?.map(|s| s as u64),
                last_read_at: r.get(10)?,
            })
        })?;
        rows.map(|r| r.map(|c| (c.id, c))).collect()
    }

    /// Starts a write transaction (IMMEDIATE: the lock is taken up front, so a busy DB shows
    /// up here and not halfway through).
    pub(crate) fn transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
    }

    /// Records a file the pipeline started reading. With `reset`, the saved position is
    /// replaced (new file, or the old checkpoint did not verify); otherwise only the path is
    /// updated (a rename keeps the inode).
    pub(crate) fn register(
        tx: &Transaction<'_>,
        file: &crate::flow::FileEntry,
        offset: u64,
        line_no: u64,
        reset: bool,
    ) -> rusqlite::Result<()> {
        let now = unix_millis();
        if reset {
            tx.prepare_cached(
                "INSERT INTO files (dev, ino, path, gzip, offset, line_no, first_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (dev, ino) DO UPDATE SET path = excluded.path,
                    gzip = excluded.gzip, offset = excluded.offset, line_no = excluded.line_no,
                    head_len = 0, head_hash = NULL, tail_hash = NULL, size = NULL,
                    first_seen_at = excluded.first_seen_at, last_read_at = NULL",
            )?
            .execute(params![
                file.id.dev as i64,
                file.id.ino as i64,
                &*file.source,
                file.gzip,
                offset as i64,
                line_no as i64,
                now
            ])?;
        } else {
            tx.prepare_cached("UPDATE files SET path = ?3 WHERE dev = ?1 AND ino = ?2")?
                .execute(params![file.id.dev as i64, file.id.ino as i64, &*file.source])?;
        }
        Ok(())
    }

    /// Moves a checkpoint forward. Never backwards: a concurrent `backfill` and daemon may both
    /// ship the same file, and the furthest durable position wins.
    pub(crate) fn advance(tx: &Transaction<'_>, a: &Advance) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "UPDATE files SET offset = ?3, line_no = ?4, head_len = ?5, head_hash = ?6,
                tail_hash = ?7, size = coalesce(?8, size), last_read_at = ?9
             WHERE dev = ?1 AND ino = ?2 AND offset <= ?3",
        )?
        .execute(params![
            a.id.dev as i64,
            a.id.ino as i64,
            a.offset as i64,
            a.line_no as i64,
            a.fingerprint.head_len as i64,
            a.fingerprint.head_hash,
            a.fingerprint.tail_hash,
            a.size.map(|s| s as i64),
            unix_millis()
        ])?;
        Ok(())
    }

    /// Deletes the checkpoints of files that are gone (their path is missing or holds another
    /// inode) and were last read before `cutoff_ms`. Safe: if such a file comes back it is read
    /// from 0, and its lines' keys make that a no-op. Returns the pruned paths.
    pub(crate) fn prune_gone(&mut self, cutoff_ms: i64) -> rusqlite::Result<Vec<PathBuf>> {
        let gone: Vec<Checkpoint> = self
            .load()?
            .into_values()
            .filter(|cp| {
                let here = std::fs::metadata(&cp.path).is_ok_and(|m| FileId::of(&m) == cp.id);
                !here && cp.last_read_at.unwrap_or(0) < cutoff_ms
            })
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.transaction()?;
        for cp in &gone {
            tx.prepare_cached("DELETE FROM files WHERE dev = ?1 AND ino = ?2")?
                .execute(params![cp.id.dev as i64, cp.id.ino as i64])?;
        }
        tx.commit()?;
        Ok(gone.into_iter().map(|cp| cp.path).collect())
    }

    /// An IMMEDIATE transaction through a shared reference, for the DLQ maintenance paths
    /// (`dlq::recover`, replay, retention) that get the state DB by `&`. The caller must not
    /// nest it in another transaction on this connection.
    pub(crate) fn transaction_shared(&self) -> rusqlite::Result<Transaction<'_>> {
        Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
    }

    /// The connection, for the DLQ index (`dlq::index`), whose tables live in this DB.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// A remote sink's position in one source file (table `sink_files`): like a [`Checkpoint`],
/// but moved by the sink's own thread once the remote end acknowledged the lines before it.
/// `size` is the file's size on disk when the sink last read it to its end (a `.gz`, whose
/// offset counts decompressed bytes, is done while its size has not changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkCursor {
    pub id: FileId,
    pub path: PathBuf,
    pub offset: u64,
    pub line_no: u64,
    pub fingerprint: Fingerprint,
    pub size: Option<u64>,
}

/// What `status` shows of a sink (table `sink_status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SinkStatus {
    /// Unix milliseconds of the last acknowledged insert.
    pub last_insert_at: Option<i64>,
    /// Failed requests since the state DB was created.
    pub errors: u64,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last failure (None from a state DB of before version 5).
    pub last_error_at: Option<i64>,
    /// Unix milliseconds of the first request that succeeded after a failure.
    pub recovered_at: Option<i64>,
}

impl SinkStatus {
    /// Whether the last request failed: no success since the last error. An error recorded
    /// before version 5 has no time: it is past once the sink has connected since (every
    /// start of the sink records that).
    pub(crate) fn failing(&self) -> bool {
        let Some(error) = self.last_error_at else {
            return self.last_error.is_some() && self.recovered_at.is_none();
        };
        let ok = self.recovered_at.max(self.last_insert_at);
        ok.is_none_or(|ok| ok < error)
    }
}

impl StateDb {
    /// Every cursor of `sink`, by file.
    pub(crate) fn sink_cursors(&self, sink: &str) -> rusqlite::Result<HashMap<FileId, SinkCursor>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT dev, ino, path, offset, line_no, head_len, head_hash, tail_hash, size
             FROM sink_files WHERE sink = ?1",
        )?;
        let rows = stmt.query_map([sink], |r| {
            Ok(SinkCursor {
                id: file_id_at(r, 0)?,
                path: PathBuf::from(r.get::<_, String>(2)?),
                offset: r.get::<_, i64>(3)? as u64,
                line_no: r.get::<_, i64>(4)? as u64,
                fingerprint: fingerprint_at(r, 5)?,
                size: r.get::<_, Option<i64>>(8)?.map(|s| s as u64),
            })
        })?;
        rows.map(|r| r.map(|c| (c.id, c))).collect()
    }

    /// Saves `sink`'s cursors after an acknowledged insert (and its time), in one transaction.
    /// A cursor is replaced whole: the sink read the file from where it says (its fingerprint
    /// verified), so a smaller offset is a file read again from 0 (truncated or replaced).
    pub(crate) fn save_sink_cursors(
        &mut self,
        sink: &str,
        cursors: &[&SinkCursor],
        inserted: bool,
    ) -> rusqlite::Result<()> {
        let tx = self.transaction()?;
        let now = unix_millis();
        for c in cursors {
            tx.prepare_cached(
                "INSERT INTO sink_files (sink, dev, ino, path, offset, line_no, head_len,
                    head_hash, tail_hash, size, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (sink, dev, ino) DO UPDATE SET path = excluded.path,
                    offset = excluded.offset, line_no = excluded.line_no,
                    head_len = excluded.head_len, head_hash = excluded.head_hash,
                    tail_hash = excluded.tail_hash, size = excluded.size,
                    updated_at = excluded.updated_at",
            )?
            .execute(params![
                sink,
                c.id.dev as i64,
                c.id.ino as i64,
                c.path.to_string_lossy(),
                c.offset as i64,
                c.line_no as i64,
                c.fingerprint.head_len as i64,
                c.fingerprint.head_hash,
                c.fingerprint.tail_hash,
                c.size.map(|s| s as i64),
                now
            ])?;
        }
        if inserted {
            tx.prepare_cached(
                "INSERT INTO sink_status (sink, last_insert_at) VALUES (?1, ?2)
                 ON CONFLICT (sink) DO UPDATE SET last_insert_at = excluded.last_insert_at",
            )?
            .execute(params![sink, now])?;
        }
        tx.commit()
    }

    /// Counts a failed request of `sink` and keeps its message (for `status`).
    pub(crate) fn sink_failed(&mut self, sink: &str, error: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO sink_status (sink, errors, last_error, last_error_at)
                 VALUES (?1, 1, ?2, ?3)
                 ON CONFLICT (sink) DO UPDATE SET errors = errors + 1,
                    last_error = excluded.last_error, last_error_at = excluded.last_error_at",
            )?
            .execute(params![sink, error, unix_millis()])?;
        Ok(())
    }

    /// Records that `sink`'s requests succeed again after a failure (once per outage, not per
    /// request), so that `status` tells a past error from a current one.
    pub(crate) fn sink_recovered(&mut self, sink: &str) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE sink_status SET recovered_at = ?2 WHERE sink = ?1")?
            .execute(params![sink, unix_millis()])?;
        Ok(())
    }

    /// What `status` shows of `sink` (defaults if it never ran).
    pub(crate) fn sink_status(&self, sink: &str) -> rusqlite::Result<SinkStatus> {
        use rusqlite::OptionalExtension;
        let row = self
            .conn
            .query_row(
                // `status` reads a state DB as its daemon left it, maybe of version 4.
                if crate::sqlite::user_version(&self.conn)? >= 5 {
                    "SELECT last_insert_at, errors, last_error, last_error_at, recovered_at
                     FROM sink_status WHERE sink = ?1"
                } else {
                    "SELECT last_insert_at, errors, last_error, NULL, NULL
                     FROM sink_status WHERE sink = ?1"
                },
                [sink],
                |r| {
                    Ok(SinkStatus {
                        last_insert_at: r.get(0)?,
                        errors: r.get::<_, i64>(1)? as u64,
                        last_error: r.get(2)?,
                        last_error_at: r.get(3)?,
                        recovered_at: r.get(4)?,
                    })
                },
            )
            .optional()?;
        Ok(row.unwrap_or_default())
    }

    /// How far the SQLite path has durably shipped a file (its `files` checkpoint), if it
    /// knows the file.
    pub(crate) fn shipped_offset(&self, id: FileId) -> rusqlite::Result<Option<u64>> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached("SELECT offset FROM files WHERE dev = ?1 AND ino = ?2")?
            .query_row(params![id.dev as i64, id.ino as i64], |r| r.get::<_, i64>(0))
            .optional()
            .map(|o| o.map(|o| o as u64))
    }
}

/// Reads the schema and walks the `files` table (one row per source file: small), so a state
/// DB that SQLite finds corrupt fails when it is opened, with its name, rather than halfway
/// through a command.
fn check_readable(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM files", [], |_| Ok(()))
}

/// A `FileId` from the row's `dev, ino` columns starting at `at` (stored as SQLite integers).
fn file_id_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<FileId> {
    Ok(FileId { dev: r.get::<_, i64>(at)? as u64, ino: r.get::<_, i64>(at + 1)? as u64 })
}

/// A `Fingerprint` from the row's `head_len, head_hash, tail_hash` columns starting at `at`.
fn fingerprint_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Fingerprint> {
    Ok(Fingerprint {
        head_len: r.get::<_, i64>(at)? as u64,
        head_hash: r.get(at + 1)?,
        tail_hash: r.get(at + 2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status` of a newer version reads a state DB its (older) daemon keeps at version 4,
    /// without the error times; the daemon of this version records and reads them.
    #[test]
    fn sink_status_reads_a_version_4_state_db_and_records_error_times_from_5_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let mut v4 = Connection::open(&path).unwrap();
        migrate(&mut v4, &MIGRATIONS[..4]).unwrap();
        v4.execute("INSERT INTO sink_status (sink, errors, last_error) VALUES ('ch', 2, 'x')", [])
            .unwrap();
        drop(v4);
        let old = StateDb::open_read_only(&path).unwrap().expect("a state DB");
        let want = SinkStatus { errors: 2, last_error: Some("x".into()), ..Default::default() };
        assert_eq!(old.sink_status("ch").unwrap(), want);
        drop(old);

        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let mut db = StateDb::open(&path, &sqlite).unwrap();
        assert_eq!(crate::sqlite::user_version(&db.conn).unwrap(), 5);
        db.sink_failed("ch", "y").unwrap();
        let failed = db.sink_status("ch").unwrap();
        assert_eq!((failed.errors, failed.last_error.as_deref()), (3, Some("y")));
        assert!(failed.last_error_at.is_some() && failed.failing(), "{failed:?}");
        db.sink_recovered("ch").unwrap();
        let answered = db.sink_status("ch").unwrap();
        assert!(answered.recovered_at >= answered.last_error_at, "{answered:?}");
        assert!(!answered.failing(), "{answered:?}");
    }

    #[test]
    fn prune_forgets_only_files_gone_for_longer_than_the_cutoff() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let mut db = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
        let present = dir.path().join("present.ndjson");
        std::fs::write(&present, b"x\n").unwrap();
        let meta = std::fs::metadata(&present).unwrap();
        let insert = |db: &StateDb, dev: u64, ino: u64, path: &Path, last_read: i64| {
            db.conn
                .execute(
                    "INSERT INTO files (dev, ino, path, first_seen_at, last_read_at)
                     VALUES (?1, ?2, ?3, 0, ?4)",
                    params![dev as i64, ino as i64, path.to_str().unwrap(), last_read],
                )
                .unwrap();
        };
        insert(&db, meta.dev(), meta.ino(), &present, 0);
        insert(&db, 1, 1, &dir.path().join("gone-long-ago.ndjson"), 1_000);
        insert(&db, 1, 2, &dir.path().join("gone-recently.ndjson"), 9_000);
        // The path exists but holds another inode: the checkpointed file is gone.
        insert(&db, 1, 3, &present, 1_000);
        let mut pruned = db.prune_gone(5_000).unwrap();
        pruned.sort();
        assert_eq!(pruned, vec![dir.path().join("gone-long-ago.ndjson"), present.clone()]);
        let left: Vec<u64> = db.load().unwrap().keys().map(|id| id.ino).collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&meta.ino()) && left.contains(&2));
    }

    /// Issue 10 #16: a burst that grew the state DB's WAL (~30 MiB in one transaction) does not
    /// leave it at its peak: the next commit after the checkpoint cuts it back to
    /// `journal_size_limit` (4 MiB by default).
    #[test]
    fn a_burst_does_not_leave_the_state_dbs_wal_at_its_peak() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let path = dir.path().join("state.sqlite");
        let mut db = StateDb::open(&path, &sqlite).unwrap();
        let wal_len = || std::fs::metadata(crate::sqlite::sibling(&path, "-wal")).unwrap().len();
        let tx = db.transaction().unwrap();
        tx.execute_batch("CREATE TABLE burst (x BLOB)").unwrap();
        for _ in 0..30 * 1024 {
            tx.execute("INSERT INTO burst VALUES (zeroblob(1024))", []).unwrap();
        }
        tx.commit().unwrap();
        let peak = wal_len();
        assert!(peak > 30 << 20, "the burst left a WAL of only {peak} bytes");
        // The state thread's next pass: one small commit.
        db.conn.execute("DELETE FROM burst WHERE rowid = 1", []).unwrap();
        let after = wal_len();
        assert!(after <= 4 << 20, "the WAL stayed at {after} bytes (peak {peak})");
    }
}
