//! The dead-letter queue: `<dlq.dir>/dlq_YYYYMMDD.ndjson`, one JSON object per bad line.
//!
//! Appends are exactly-once through the state DB, under an exclusive `flock` on
//! `<dlq.dir>/.lock` shared by every process (daemon, backfill, `dlq replay`):
//! 1. cut each DLQ file back to its committed length (bytes past it were written by a process
//!    that died before committing; their lines will be replayed);
//! 2. skip dead letters whose key is already recorded (a replay of a committed span, or the
//!    same line read again from a copy);
//! 3. append, fsync;
//! 4. record keys and the new committed length in the *same* state transaction that advances
//!    the checkpoints, then release the lock.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::Transaction;
use serde::{Deserialize, Serialize};

use crate::checkpoint::StateDb;
use crate::parse::DeadReason;
use crate::route::{FileEntry, Span};
use crate::tail::LineMeta;

/// One dead letter before it is written (`at` is stamped at write time).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub source: Arc<str>,
    pub offset: u64,
    pub line_no: u64,
    pub reason: DeadReason,
    pub error: String,
    pub raw: String,
    pub raw_len: u64,
    /// Identity of the line (line number + content hash), as for events without `event_id`.
    pub key: Vec<u8>,
}

impl DeadLetter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
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
        let key = crate::parse::line_key(meta.line_no, digest).to_vec();
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

/// The on-disk form (the contract's fields, in its order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqLine {
    pub at: String,
    pub source: String,
    pub offset: u64,
    pub line_no: u64,
    pub reason: String,
    pub error: String,
    pub raw: String,
    pub raw_len: u64,
}

/// Name of the DLQ file for a moment: `dlq_YYYYMMDD.ndjson` (UTC).
pub fn file_name_for(at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    format!("dlq_{}{}{}.ndjson", &stamp[0..4], &stamp[5..7], &stamp[8..10])
}

/// Holds the cross-process DLQ lock while it lives.
pub struct DlqLock {
    file: File,
}

impl DlqLock {
    /// Takes the exclusive lock, waiting for other processes.
    pub fn acquire(dir: &Path) -> io::Result<DlqLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o640)
            .open(dir.join(".lock"))?;
        file.lock()?;
        Ok(DlqLock { file })
    }
}

impl Drop for DlqLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Appends dead letters per the protocol in the module docs. Call with the lock held and a
/// state transaction open; the caller commits (together with the checkpoints) and then drops
/// the lock. Returns how many were new, by reason.
pub fn append(
    dir: &Path,
    tx: &Transaction<'_>,
    letters: &[(DeadLetter, Arc<Span>)],
    now: SystemTime,
) -> io::Result<BTreeMap<DeadReason, u64>> {
    let name = file_name_for(now);
    let at = humantime::format_rfc3339_millis(now).to_string();
    let mut out = Vec::new();
    let mut new_by_reason = BTreeMap::new();
    let mut seen_in_batch = std::collections::HashSet::new();
    for (letter, _) in letters {
        if !seen_in_batch.insert(letter.key.as_slice())
            || StateDb::dlq_has_key(tx, &letter.key).map_err(io::Error::other)?
        {
            continue;
        }
        let line = DlqLine {
            at: at.clone(),
            source: letter.source.to_string(),
            offset: letter.offset,
            line_no: letter.line_no,
            reason: letter.reason.as_str().to_string(),
            error: letter.error.clone(),
            raw: letter.raw.clone(),
            raw_len: letter.raw_len,
        };
        serde_json::to_writer(&mut out, &line).map_err(io::Error::other)?;
        out.push(b'\n');
        StateDb::dlq_add_key(tx, &letter.key, &name, letter.reason.as_str())
            .map_err(io::Error::other)?;
        *new_by_reason.entry(letter.reason).or_insert(0) += 1;
    }
    if out.is_empty() {
        return Ok(new_by_reason);
    }
    let path = dir.join(&name);
    let committed = StateDb::dlq_committed_len(tx, &name).map_err(io::Error::other)?.unwrap_or(0);
    let created = !path.exists();
    let mut file =
        OpenOptions::new().create(true).write(true).truncate(false).mode(0o640).open(&path)?;
    // Longer than committed: a dead process's uncommitted tail, cut it. Shorter: the file was
    // rewritten (replay) or removed (retention) meanwhile; append to what is there.
    let len = file.metadata()?.len();
    let base = if len > committed {
        file.set_len(committed)?;
        committed
    } else {
        len
    };
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(base))?;
    file.write_all(&out)?;
    file.sync_data()?;
    if created {
        File::open(dir)?.sync_all()?;
    }
    StateDb::dlq_set_committed_len(tx, &name, base + out.len() as u64).map_err(io::Error::other)?;
    Ok(new_by_reason)
}

/// Cuts every DLQ file back to its committed length: run under the lock at startup, so lines
/// appended by a process that died before committing do not stay visible. Files this state DB
/// never recorded are left alone: they were not written under it (e.g. the state DB was reset),
/// and cutting them would destroy dead letters. (`append` records a file before creating it.)
pub fn recover(dir: &Path, state: &StateDb) -> io::Result<Vec<(PathBuf, u64, u64)>> {
    let committed = state.dlq_committed().map_err(io::Error::other)?;
    let mut cut = Vec::new();
    for (name, len) in dlq_files(dir)? {
        let Some(&want) = committed.get(&name) else { continue };
        if len > want {
            let path = dir.join(&name);
            OpenOptions::new().write(true).open(&path)?.set_len(want)?;
            cut.push((path, len, want));
        }
    }
    Ok(cut)
}

/// The DLQ files in `dir` with their sizes, oldest first.
pub fn dlq_files(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("dlq_") && name.ends_with(".ndjson") {
            files.push((name, entry.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every dead letter in `dir` (for `status` and `dlq list`), skipping lines that do not
/// parse (there should be none).
pub fn read_all(dir: &Path) -> io::Result<Vec<DlqLine>> {
    use std::io::BufRead;
    let mut out = Vec::new();
    for (name, _) in dlq_files(dir)? {
        let file = File::open(dir.join(name))?;
        for line in io::BufReader::new(file).lines() {
            if let Ok(parsed) = serde_json::from_str::<DlqLine>(&line?) {
                out.push(parsed);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_utc_days() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(file_name_for(t), "dlq_20231114.ndjson");
    }
}
