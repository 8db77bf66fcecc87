//! The DLQ's index in the state DB: the key of every dead letter (`dlq_keys`), the committed
//! length of every DLQ file (`dlq_files`) and the intents of replay rewrites (`dlq_rewrites`).
//! The tables are created by the state DB's migrations (`checkpoint`); the protocol that uses
//! them is in the [`crate::dlq`] docs.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::checkpoint::StateDb;

/// Whether a dead letter with this key is already in the DLQ.
pub(super) fn has_key(tx: &Transaction<'_>, key: &[u8]) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM dlq_keys WHERE key = ?1")?
        .query_row([key], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

pub(super) fn add_key(
    tx: &Transaction<'_>,
    key: &[u8],
    file: &str,
    reason: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO dlq_keys (key, file, reason) VALUES (?1, ?2, ?3)")?
        .execute(params![key, file, reason])?;
    Ok(())
}

/// The committed length of each DLQ file: bytes past it were appended by a process that
/// died before committing, and are cut off before the next append.
pub(super) fn committed(conn: &Connection) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached("SELECT name, committed_len FROM dlq_files")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

/// Records a DLQ file (length 0) in its own committed transaction, before the file is
/// created, so that `dlq::recover` knows every file this state DB's processes write.
pub(crate) fn ensure_file(state: &mut StateDb, name: &str) -> rusqlite::Result<()> {
    let tx = state.transaction()?;
    tx.prepare_cached("INSERT OR IGNORE INTO dlq_files (name, committed_len) VALUES (?1, 0)")?
        .execute([name])?;
    tx.commit()
}

pub(super) fn committed_len(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<Option<u64>> {
    tx.prepare_cached("SELECT committed_len FROM dlq_files WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()
        .map(|o| o.map(|v| v as u64))
}

/// Pending DLQ rewrites: `(name, tmp, new_len)`.
pub(super) fn rewrites(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let mut stmt = tx.prepare_cached("SELECT name, tmp, new_len FROM dlq_rewrites")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
    rows.collect()
}

/// Records the intent to replace DLQ file `name` by `tmp` (`new_len` bytes).
pub(super) fn add_rewrite(
    tx: &Transaction<'_>,
    name: &str,
    tmp: &str,
    new_len: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dlq_rewrites (name, tmp, new_len) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET tmp = excluded.tmp, new_len = excluded.new_len",
    )?
    .execute(params![name, tmp, new_len as i64])?;
    Ok(())
}

/// A rewrite is done (the rename happened): the file's committed length is its new length.
pub(super) fn finish_rewrite(
    tx: &Transaction<'_>,
    name: &str,
    new_len: u64,
) -> rusqlite::Result<()> {
    set_committed_len(tx, name, new_len)?;
    tx.prepare_cached("DELETE FROM dlq_rewrites WHERE name = ?1")?.execute([name])?;
    Ok(())
}

/// Marks a dead letter as shipped by `dlq replay`. The key stays: its line's fate is
/// decided (it is in a run DB now), so a later re-read of the same line under a mapping
/// that rejects it must not dead-letter it a second time.
pub(super) fn mark_replayed(tx: &Transaction<'_>, key: &[u8], file: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dlq_keys (key, file, reason) VALUES (?1, ?2, 'replayed')
         ON CONFLICT (key) DO UPDATE SET reason = 'replayed'",
    )?
    .execute(params![key, file])?;
    Ok(())
}

/// Whether a key is recorded (outside a write transaction).
pub(super) fn key_known(state: &StateDb, key: &[u8]) -> rusqlite::Result<bool> {
    state
        .conn()
        .prepare_cached("SELECT 1 FROM dlq_keys WHERE key = ?1")?
        .query_row([key], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

/// Forgets a DLQ file deleted by retention, with the keys of its letters (replayed ones
/// too), so `dlq_keys` is bounded by the DLQ kept. A line read again after its letter's file
/// was deleted may be dead-lettered again: retention's choice, as deleting the letter was.
///
/// `dlq_keys` has no index on `file`: this scans the table, once per deleted file (at most a
/// few a day), bounded by what the DLQ holds.
pub(super) fn forget_file(tx: &Transaction<'_>, name: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM dlq_files WHERE name = ?1")?.execute([name])?;
    tx.prepare_cached("DELETE FROM dlq_keys WHERE file = ?1")?.execute([name])?;
    tx.prepare_cached("DELETE FROM dlq_rewrites WHERE name = ?1")?.execute([name])?;
    Ok(())
}

pub(super) fn set_committed_len(
    tx: &Transaction<'_>,
    name: &str,
    len: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dlq_files (name, committed_len) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET committed_len = excluded.committed_len",
    )?
    .execute(params![name, len as i64])?;
    Ok(())
}

/// Whether the keys still have to gain their day (state DB schema 3, see `dlq::recover`).
pub(super) fn rekey_pending(tx: &Transaction<'_>) -> rusqlite::Result<bool> {
    tx.query_row("SELECT count(*) FROM dlq_rekey_pending", [], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
}

pub(super) fn rekey_done(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM dlq_rekey_pending", []).map(drop)
}

/// Every key with its DLQ file.
pub(super) fn all_keys(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(Vec<u8>, String)>> {
    let mut stmt = tx.prepare("SELECT key, file FROM dlq_keys")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Gives a recorded key its new form (keeping its file, reason and replayed mark).
pub(super) fn replace_key(tx: &Transaction<'_>, old: &[u8], new: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE OR IGNORE dlq_keys SET key = ?2 WHERE key = ?1")?
        .execute(params![old, new])?;
    Ok(())
}
