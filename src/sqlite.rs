//! The SQLite plumbing every database of ours shares (run DBs, the state DB, `maintain`):
//! private file mode, the `[sqlite]` pragmas, migrations keyed on `user_version` (cargo's
//! scheme), corruption detection and quarantine, WAL checkpoints. Each kind of DB keeps its
//! own schema and its own `open` (`sink::run_db`, `checkpoint`), which puts these pieces
//! together in its own order: a run DB, for one, notes the file's inode between creating it
//! and opening it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use crate::config::SqliteConfig;

/// Creates `path` with mode 0640 if it does not exist, so SQLite (which copies the DB file's
/// mode to its `-wal` and `-shm`) never creates world-readable files whatever the umask.
pub(crate) fn create_private_file(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(0o640).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pragmas every connection of ours gets, from `[sqlite]`.
pub(crate) fn apply_pragmas(conn: &Connection, sqlite: &SqliteConfig) -> rusqlite::Result<()> {
    conn.busy_timeout(sqlite.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL could not be enabled"
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {};
         PRAGMA wal_autocheckpoint = {};
         PRAGMA journal_size_limit = {};
         PRAGMA cache_size = -{};
         PRAGMA foreign_keys = OFF;",
        sqlite.synchronous.as_pragma(),
        sqlite.wal_autocheckpoint,
        sqlite.journal_size_limit,
        (sqlite.cache_size / 1024).max(64),
    ))
}

/// `PRAGMA user_version`: the schema version (the migrations applied).
pub(crate) fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings a DB to the newest schema, in one transaction, idempotently (cargo's scheme:
/// `user_version` counts the migrations applied).
pub(crate) fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    migrate_and(conn, migrations, |_| Ok(())).map(|_| ())
}

/// [`migrate`], running `also` in the migration's transaction when there is one (a new DB's
/// further set-up then costs no second commit); returns whether it did.
pub(crate) fn migrate_and(
    conn: &mut Connection,
    migrations: &[&str],
    also: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<bool> {
    let version = user_version(conn)?;
    if version as usize >= migrations.len() {
        return Ok(false);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let version = user_version(&tx)?;
    for migration in &migrations[version.max(0) as usize..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", migrations.len() as i64)?;
    also(&tx)?;
    tx.commit()?;
    Ok(true)
}

/// What `PRAGMA wal_checkpoint` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalCheckpoint {
    /// Another connection kept it from completing (a reader or writer; for PASSIVE, also
    /// another checkpoint running).
    pub busy: bool,
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Frames of it copied into the DB.
    pub checkpointed: i64,
}

/// Runs `PRAGMA wal_checkpoint(mode)`: `PASSIVE`, `FULL`, `RESTART` or `TRUNCATE`.
pub(crate) fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<WalCheckpoint> {
    let done = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(WalCheckpoint {
            busy: r.get::<_, i64>(0)? != 0,
            wal_frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    });
    crate::crash::point("wal.after_checkpoint");
    done
}

/// Whether SQLite reports the DB corrupt or not a database.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

/// Moves a corrupt DB to `<name>.corrupt-<unix seconds>` (never deletes it), with its `-wal`
/// (which must not be replayed into the fresh DB) and `-shm`. Returns the new path of the DB
/// file; the caller logs, since only it knows what takes the DB's place.
pub(crate) fn quarantine(path: &Path) -> io::Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    // Two quarantines of one run within a second must not overwrite each other.
    let mut stem = format!(".corrupt-{secs}");
    let mut n = 1;
    while with(&stem).exists() {
        stem = format!(".corrupt-{secs}.{n}");
        n += 1;
    }
    let target = with(&stem);
    std::fs::rename(path, &target)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: moving aside: {e}", path.display())))?;
    for suffix in ["-wal", "-shm"] {
        match std::fs::rename(with(suffix), with(&format!("{stem}{suffix}"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}{suffix}: moving aside: {e}", path.display()),
                ))
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    }
    Ok(target)
}

/// Now, in milliseconds since the epoch: the timestamps our DBs store.
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A DB's companion file: `X.sqlite` + `-wal` = `X.sqlite-wal`.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
