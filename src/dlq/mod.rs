//! The dead-letter queue: `<dlq.dir>/dlq_YYYYMMDD.ndjson`, one JSON object per bad line.
//!
//! Appends are exactly-once through the state DB, under an exclusive `flock` on
//! `<dlq.dir>/.lock` shared by every process (daemon, backfill, `dlq replay`, `maintain`):
//! 1. roll forward any interrupted rewrite (below), then cut each DLQ file back to its committed
//!    length (bytes past it were written by a process that died before committing; their lines
//!    will be replayed);
//! 2. skip dead letters whose key is already recorded (a replay of a committed span, or the
//!    same line read again from a copy);
//! 3. append, fsync;
//! 4. record keys and the new committed length in the *same* state transaction that advances
//!    the checkpoints, then release the lock.
//!
//! ## Rewrites (`dlq replay`)
//!
//! Replay removes letters that now ship. SQLite cannot commit a run DB and the state DB
//! atomically, so the order makes every crash point safe:
//! 1. **ship** the letters into their run DBs (idempotent upserts keyed like a read from the
//!    file, so shipping twice is a no-op);
//! 2. under the lock, write each changed file's kept lines to `.<name>.rewrite`, fsync it and
//!    the directory;
//! 3. one state transaction: an **intent** row `dlq_rewrites(name, tmp, new_len)` per file,
//!    and the shipped keys marked `replayed` in `dlq_keys` (kept, not deleted: a later re-read
//!    of the line under a mapping that rejects it must not dead-letter it again; they go when
//!    retention deletes the file they were in, with its other keys);
//! 4. rename each temp file over its file, fsync the directory;
//! 5. one state transaction: `committed_len = new_len`, intent deleted.
//!
//! Crash before 3: the DLQ is unchanged (stray temp files are deleted by `recover`); the
//! shipped letters are both in a run DB and still in the DLQ until the next `dlq replay`, which
//! ships them again (no-op) and removes them: nothing is lost, no row is doubled. Crash after 3:
//! whoever takes the lock next — `recover` at any start, the daemon's next `append`, the next
//! replay or retention — renames the temp file if it still exists and finishes step 5. Rolling
//! forward before any append matters: the daemon must never append to the old file and then have
//! a stale `new_len` cut its letters off.

pub(crate) mod index;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rusqlite::Transaction;
use serde::{Deserialize, Serialize};

use crate::checkpoint::StateDb;
use crate::flow::{DeadLetter, Span};
use crate::parse::DeadReason;

/// The on-disk form (the contract's fields, in its order).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct DlqLine {
    pub at: String,
    pub source: String,
    pub offset: u64,
    pub line_no: u64,
    pub reason: String,
    pub error: String,
    pub raw: String,
    pub raw_len: u64,
}

impl DlqLine {
    /// The identity of the line this letter holds, if `raw` is the whole line: the key it was
    /// recorded under (see [`crate::parse::line_key`]).
    pub(crate) fn key(&self) -> [u8; 24] {
        let digest = crate::parse::digest(self.raw.as_bytes());
        crate::parse::line_key(crate::parse::source_day(&self.source), self.line_no, &digest)
    }
}

/// Name of the DLQ file for a moment: `dlq_YYYYMMDD.ndjson` (UTC).
pub(crate) fn file_name_for(at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    format!("dlq_{}{}{}.ndjson", &stamp[0..4], &stamp[5..7], &stamp[8..10])
}

/// Holds the cross-process DLQ lock while it lives.
pub(crate) struct DlqLock {
    file: File,
}

impl DlqLock {
    /// Takes the exclusive lock, waiting for other processes.
    pub(crate) fn acquire(dir: &Path) -> io::Result<DlqLock> {
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
pub(crate) fn append(
    dir: &Path,
    tx: &Transaction<'_>,
    letters: &[(DeadLetter, Arc<Span>)],
    now: SystemTime,
) -> io::Result<BTreeMap<DeadReason, u64>> {
    // An interrupted replay's rewrite must land before anything is appended (module docs).
    roll_forward(dir, tx)?;
    let name = file_name_for(now);
    let at = humantime::format_rfc3339_millis(now).to_string();
    let mut out = Vec::new();
    let mut new_by_reason = BTreeMap::new();
    let mut seen_in_batch = std::collections::HashSet::new();
    for (letter, _) in letters {
        if !seen_in_batch.insert(letter.key.as_slice())
            || index::has_key(tx, &letter.key).map_err(io::Error::other)?
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
        index::add_key(tx, &letter.key, &name, letter.reason.as_str()).map_err(io::Error::other)?;
        *new_by_reason.entry(letter.reason).or_insert(0) += 1;
    }
    if out.is_empty() {
        return Ok(new_by_reason);
    }
    // Every file, not only today's: letters whose state commit failed are retried into the
    // file of the day of the retry, and the day before must not keep their uncommitted copy.
    for (other, want) in index::committed(tx).map_err(io::Error::other)? {
        cut_to_committed(&dir.join(other), want)?;
    }
    let path = dir.join(&name);
    let committed = index::committed_len(tx, &name).map_err(io::Error::other)?.unwrap_or(0);
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
    crate::crash::point("dlq.before_fsync");
    file.sync_data()?;
    if created {
        File::open(dir)?.sync_all()?;
    }
    index::set_committed_len(tx, &name, base + out.len() as u64).map_err(io::Error::other)?;
    crate::crash::point("dlq.after_fsync");
    Ok(new_by_reason)
}

/// Finishes interrupted rewrites and cuts every DLQ file back to its committed length: run
/// under the lock at startup, so lines appended by a process that died before committing do
/// not stay visible. Files this state DB never recorded were not written under it (the state
/// DB was replaced, e.g. after it was found corrupt; `append` records a file before creating
/// it, and retention forgets one only after deleting it): they are adopted as they are (see
/// [`adopt`]), never cut to 0 by the next append. Returns the files cut: `(path, from, to)`.
pub(crate) fn recover(dir: &Path, state: &StateDb) -> io::Result<Vec<(PathBuf, u64, u64)>> {
    let tx = state.transaction_shared().map_err(|e| state_error(state, e))?;
    let rolled = roll_forward(dir, &tx)?;
    if index::rekey_pending(&tx).map_err(|e| state_error(state, e))? {
        let (rekeyed, left) = rekey(dir, &tx)?;
        index::rekey_done(&tx).map_err(|e| state_error(state, e))?;
        tracing::info!(rekeyed, left, "dead-letter keys now carry their source file's day");
    }
    tx.commit().map_err(|e| state_error(state, e))?;
    for name in rolled {
        tracing::warn!(file = %dir.join(name).display(), "finished a DLQ rewrite interrupted by a crash");
    }
    remove_stray_temp_files(dir)?;
    let committed = index::committed(state.conn()).map_err(|e| state_error(state, e))?;
    let mut cut = Vec::new();
    for (name, len) in dlq_files(dir)? {
        let Some(&want) = committed.get(&name) else {
            adopt(dir, state, &name)?;
            continue;
        };
        let path = dir.join(&name);
        if cut_to_committed(&path, want)? {
            cut.push((path, len, want));
        }
    }
    Ok(cut)
}

/// Cuts a DLQ file longer than its committed length back to it (bytes past it are letters
/// whose state commit never happened: they are appended again, maybe to another day's file).
/// Shorter or missing: rewritten (replay) or deleted (retention) meanwhile, left as it is.
/// Returns whether it cut.
fn cut_to_committed(path: &Path, want: u64) -> io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(file_error(path, "reading its length", e)),
    };
    if len <= want {
        return Ok(false);
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(want))
        .map_err(|e| file_error(path, "cutting to its committed length", e))?;
    Ok(true)
}

/// State DB schema 3: every recorded dead-letter key (line number and hash, see
/// [`crate::parse::legacy_line_key`]) becomes the day of its letter's source file followed by
/// its first 20 bytes. The day is found through the letter: in the key's DLQ file, the letter
/// with that line number (and, when its `raw` is whole, that very key). A key whose letter
/// cannot be found (its file deleted) is left as it was: it matches nothing any more, so such
/// a line, read again, is dead-lettered again, once. Returns (rekeyed, left).
/// A letter's source day, and its legacy key when its `raw` is the whole line.
type LetterDay = (u32, Option<[u8; 24]>);

fn rekey(dir: &Path, tx: &Transaction<'_>) -> io::Result<(u64, u64)> {
    use std::collections::HashMap;
    use std::io::BufRead;
    let err = |e: rusqlite::Error| io::Error::other(format!("rekeying dead letters: {e}"));
    let mut by_file: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (key, file) in index::all_keys(tx).map_err(err)? {
        by_file.entry(file).or_default().push(key);
    }
    let (mut rekeyed, mut left) = (0, 0);
    for (file, keys) in by_file {
        let mut letters: HashMap<u64, Vec<LetterDay>> = HashMap::new();
        let path = dir.join(&file);
        match File::open(&path) {
            Ok(f) => {
                for line in io::BufReader::new(f).lines() {
                    let line = line.map_err(|e| file_error(&path, "reading", e))?;
                    let Ok(letter) = serde_json::from_str::<DlqLine>(&line) else { continue };
                    let whole = letter.raw.len() as u64 == letter.raw_len;
                    let digest = crate::parse::digest(letter.raw.as_bytes());
                    let legacy =
                        whole.then(|| crate::parse::legacy_line_key(letter.line_no, &digest));
                    let day = crate::parse::source_day(&letter.source);
                    letters.entry(letter.line_no).or_default().push((day, legacy));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(&path, "opening", e)),
        }
        for key in keys {
            let Ok(head) = <[u8; 8]>::try_from(key.get(..8).unwrap_or_default()) else {
                left += 1;
                continue;
            };
            let candidates = letters.get(&u64::from_be_bytes(head)).map_or(&[][..], |c| &c[..]);
            let exact =
                candidates.iter().find(|(_, legacy)| legacy.is_some_and(|l| l[..] == key[..]));
            let Some((day, _)) = exact.or(candidates.first()) else {
                left += 1;
                continue;
            };
            let mut new_key = day.to_be_bytes().to_vec();
            new_key.extend_from_slice(&key[..20]);
            index::replace_key(tx, &key, &new_key).map_err(err)?;
            rekeyed += 1;
        }
    }
    Ok((rekeyed, left))
}

/// Records a DLQ file this state DB has no row for: its committed length is its length up to
/// its last complete line (a torn last line is what a crashed append leaves; it is cut by the
/// next append like any uncommitted tail), and the key of every letter whose `raw` is the whole
/// line, so that re-reading the sources (a new state DB starts every file from 0) does not
/// dead-letter those lines a second time. Letters with a cut or lossy `raw` cannot be keyed and
/// may be written again. Call under the lock.
fn adopt(dir: &Path, state: &StateDb, name: &str) -> io::Result<()> {
    use std::io::BufRead;
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| file_error(&path, "opening", e))?;
    let mut reader = io::BufReader::new(file);
    let tx = state.transaction_shared().map_err(|e| state_error(state, e))?;
    let (mut complete, mut letters, mut keyed) = (0u64, 0u64, 0u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(|e| file_error(&path, "reading", e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete += n as u64;
        letters += 1;
        let Ok(letter) = serde_json::from_slice::<DlqLine>(&line[..n - 1]) else { continue };
        if letter.raw.len() as u64 != letter.raw_len || letter.raw.contains('\u{FFFD}') {
            continue;
        }
        let key = letter.key();
        index::add_key(&tx, &key, name, &letter.reason).map_err(|e| state_error(state, e))?;
        keyed += 1;
    }
    index::set_committed_len(&tx, name, complete).map_err(|e| state_error(state, e))?;
    tx.commit().map_err(|e| state_error(state, e))?;
    tracing::warn!(
        path = %path.display(),
        letters,
        keyed,
        "adopted a DLQ file the state DB had no record of (a new or replaced state DB); its letters are kept and those keyed are not written again"
    );
    Ok(())
}

fn state_error(state: &StateDb, e: rusqlite::Error) -> io::Error {
    io::Error::other(format!("state DB {}: {e}", state.path().display()))
}

fn file_error(path: &Path, doing: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {doing}: {e}", path.display()))
}

/// The temp file a rewrite of DLQ file `name` goes through: hidden, so no reader lists it.
fn temp_name(name: &str) -> String {
    format!(".{name}.rewrite")
}

/// Renames the temp files of committed intents over their files (a missing temp file means
/// the rename already happened) and records the new lengths in `tx`. Returns the names.
fn roll_forward(dir: &Path, tx: &Transaction<'_>) -> io::Result<Vec<String>> {
    let rewrites = index::rewrites(tx).map_err(io::Error::other)?;
    if rewrites.is_empty() {
        return Ok(Vec::new());
    }
    for (name, tmp, _) in &rewrites {
        // Names come from our own intents; refuse anything that is not a plain file name.
        if name.contains('/') || tmp.contains('/') {
            return Err(io::Error::other(format!("bad DLQ rewrite intent {name:?} -> {tmp:?}")));
        }
        match std::fs::rename(dir.join(tmp), dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(&dir.join(tmp), "renaming over its DLQ file", e)),
        }
    }
    sync_dir(dir)?;
    for (name, _, new_len) in &rewrites {
        index::finish_rewrite(tx, name, *new_len).map_err(io::Error::other)?;
    }
    Ok(rewrites.into_iter().map(|(name, _, _)| name).collect())
}

/// Deletes rewrite temp files no intent refers to (a replay died before step 3). Call after
/// [`roll_forward`] committed, under the lock.
fn remove_stray_temp_files(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_error(dir, "listing", e)),
    };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(".dlq_") && name.ends_with(".rewrite") {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(|e| file_error(&path, "removing", e))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| file_error(dir, "fsync", e))
}

/// The identity of a dead letter, if its `raw` is the whole line: the key it was recorded
/// under, which is also the identity its line has in a run DB. None when `raw` was cut, or
/// when it holds U+FFFD that may stand for invalid bytes and the state DB does not know the
/// key (the line cannot be reproduced, so it must stay in the DLQ).
pub(crate) fn faithful_key(letter: &DlqLine, state: &StateDb) -> io::Result<Option<[u8; 24]>> {
    if letter.raw.len() as u64 != letter.raw_len {
        return Ok(None);
    }
    let key = letter.key();
    if letter.raw.contains('\u{FFFD}')
        && !index::key_known(state, &key).map_err(|e| state_error(state, e))?
    {
        return Ok(None);
    }
    Ok(Some(key))
}

/// What [`remove_letters`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub letters: u64,
    pub files: Vec<String>,
}

/// Removes from the DLQ every letter whose key is in `keys`, by the rewrite protocol in the
/// module docs. Call with the lock held; the letters must be durably shipped already.
pub(crate) fn remove_letters(
    dir: &Path,
    state: &StateDb,
    keys: &HashSet<[u8; 24]>,
) -> io::Result<Removed> {
    recover(dir, state)?;
    let mut removed = Removed::default();
    let mut rewrites = Vec::new();
    let mut marks = Vec::new();
    for (name, _) in dlq_files(dir)? {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| file_error(&path, "reading", e))?;
        let mut kept = Vec::with_capacity(bytes.len());
        let mut dropped = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let key = (line.last() == Some(&b'\n'))
                .then(|| serde_json::from_slice::<DlqLine>(&line[..line.len() - 1]).ok())
                .flatten()
                .filter(|l| l.raw.len() as u64 == l.raw_len)
                .map(|l| l.key());
            match key {
                Some(key) if keys.contains(&key) => {
                    dropped += 1;
                    marks.push((key, name.clone()));
                }
                // Lines we do not understand are kept byte for byte.
                _ => kept.extend_from_slice(line),
            }
        }
        if dropped == 0 {
            continue;
        }
        let tmp = temp_name(&name);
        let tmp_path = dir.join(&tmp);
        write_synced(&tmp_path, &kept).map_err(|e| file_error(&tmp_path, "writing", e))?;
        removed.letters += dropped;
        rewrites.push((name, tmp, kept.len() as u64));
    }
    if rewrites.is_empty() {
        return Ok(removed);
    }
    // The temp files' names must be durable before an intent can refer to them.
    sync_dir(dir)?;
    let tx = state.transaction_shared().map_err(|e| state_error(state, e))?;
    for (name, tmp, new_len) in &rewrites {
        index::add_rewrite(&tx, name, tmp, *new_len).map_err(|e| state_error(state, e))?;
    }
    for (key, name) in &marks {
        index::mark_replayed(&tx, key, name).map_err(|e| state_error(state, e))?;
    }
    tx.commit().map_err(|e| state_error(state, e))?;
    crate::crash::point("replay.after_intent");
    let tx = state.transaction_shared().map_err(|e| state_error(state, e))?;
    let names = roll_forward(dir, &tx)?;
    tx.commit().map_err(|e| state_error(state, e))?;
    removed.files = names;
    Ok(removed)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file =
        OpenOptions::new().create(true).write(true).truncate(true).mode(0o640).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Deletes whole DLQ files (retention, `maintain`), under the lock, and forgets their
/// committed lengths and the keys of their letters in one state transaction (see
/// [`index::forget_file`]). Returns the bytes deleted.
pub(crate) fn delete_files(dir: &Path, state: &StateDb, names: &[String]) -> io::Result<u64> {
    recover(dir, state)?;
    let mut bytes = 0;
    for name in names {
        let path = dir.join(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(file_error(&path, "stat", e)),
        };
        std::fs::remove_file(&path).map_err(|e| file_error(&path, "deleting", e))?;
        bytes += len;
    }
    sync_dir(dir)?;
    let tx = state.transaction_shared().map_err(|e| state_error(state, e))?;
    for name in names {
        index::forget_file(&tx, name).map_err(|e| state_error(state, e))?;
    }
    tx.commit().map_err(|e| state_error(state, e))?;
    Ok(bytes)
}

/// The DLQ files in `dir` with their sizes, oldest first.
pub(crate) fn dlq_files(dir: &Path) -> io::Result<Vec<(String, u64)>> {
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
pub(crate) fn read_all(dir: &Path) -> io::Result<Vec<DlqLine>> {
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

    /// One `invalid_json` letter as a DLQ line.
    fn letter_line(source: &str, line_no: u64, raw: &str, raw_len: u64) -> String {
        let line = DlqLine {
            at: "2024-01-01T00:00:00.000Z".into(),
            source: source.into(),
            offset: 0,
            line_no,
            reason: "invalid_json".into(),
            error: "e".into(),
            raw: raw.into(),
            raw_len,
        };
        format!("{}\n", serde_json::to_string(&line).unwrap())
    }

    /// A state DB and DLQ dir where `dlq_20240101.ndjson` holds `old`, all committed.
    fn setup(old: &[u8]) -> (tempfile::TempDir, StateDb, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let state = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
        let dlq = dir.path().join("dlq");
        std::fs::create_dir(&dlq).unwrap();
        std::fs::write(dlq.join("dlq_20240101.ndjson"), old).unwrap();
        let tx = state.transaction_shared().unwrap();
        index::set_committed_len(&tx, "dlq_20240101.ndjson", old.len() as u64).unwrap();
        tx.commit().unwrap();
        (dir, state, dlq)
    }

    /// State DB schema 3: keys recorded without a day gain their letter's source day, found
    /// by the whole key when `raw` is whole and by the line number when it was cut, once.
    #[test]
    fn recover_gives_old_keys_their_source_day_once() {
        use crate::parse::{digest, legacy_line_key, line_key};
        let letter = letter_line;
        // The same bad line at line 1 of two days' files, and a cut one at line 7.
        let bytes = letter("/raw/events_20240301.ndjson", 1, "{bad", 4)
            + &letter("/raw/events_20240302.ndjson", 1, "{bad", 4)
            + &letter("/raw/events_20240302.ndjson", 7, "{cu", 99);
        let (_dir, state, dlq) = setup(bytes.as_bytes());
        let name = "dlq_20240101.ndjson";
        let legacy = legacy_line_key(1, &digest(b"{bad"));
        let cut_legacy = legacy_line_key(7, &digest(b"{cut whole line"));
        let tx = state.transaction_shared().unwrap();
        index::add_key(&tx, &legacy, name, "invalid_json").unwrap();
        index::add_key(&tx, &cut_legacy, name, "invalid_json").unwrap();
        tx.commit().unwrap();

        recover(&dlq, &state).unwrap();
        let known = |key: &[u8]| index::key_known(&state, key).unwrap();
        // One legacy key stood for both days' lines (the bug): it goes to the first letter.
        assert!(known(&line_key(20240301, 1, &digest(b"{bad"))));
        assert!(!known(&legacy), "rekeyed");
        let mut cut_new = 20240302u32.to_be_bytes().to_vec();
        cut_new.extend_from_slice(&cut_legacy[..20]);
        assert!(known(&cut_new), "a cut letter is found by its line number");
        assert!(!known(&cut_legacy));
        // Once: a key recorded after the migration is not touched again.
        let later = legacy_line_key(3, &digest(b"x"));
        let tx = state.transaction_shared().unwrap();
        index::add_key(&tx, &later, name, "invalid_json").unwrap();
        tx.commit().unwrap();
        recover(&dlq, &state).unwrap();
        assert!(known(&later));
    }

    fn intent(state: &StateDb, new_len: u64) {
        let tx = state.transaction_shared().unwrap();
        let name = "dlq_20240101.ndjson";
        index::add_rewrite(&tx, name, &temp_name(name), new_len).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn recover_adopts_a_file_the_state_db_never_recorded_without_cutting_it() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let state = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
        let dlq = dir.path().join("dlq");
        std::fs::create_dir(&dlq).unwrap();
        let letter = |line_no, raw: &str, raw_len| {
            letter_line("/raw/events_20240101.ndjson", line_no, raw, raw_len)
        };
        // A whole letter, one whose raw was cut (no key can be derived), a torn last line.
        let (whole, cut) = (letter(1, "{bad", 4), letter(2, "{cu", 99));
        let bytes = format!("{whole}{cut}{{\"at\":");
        let name = "dlq_20240101.ndjson";
        std::fs::write(dlq.join(name), &bytes).unwrap();

        assert!(recover(&dlq, &state).unwrap().is_empty(), "an unrecorded file is never cut");
        assert_eq!(std::fs::read_to_string(dlq.join(name)).unwrap(), bytes);
        let complete = (whole.len() + cut.len()) as u64;
        assert_eq!(index::committed(state.conn()).unwrap()[name], complete);
        let key = |n: u64, raw: &str| {
            crate::parse::line_key(20240101, n, &crate::parse::digest(raw.as_bytes()))
        };
        assert!(index::key_known(&state, &key(1, "{bad")).unwrap());
        assert!(!index::key_known(&state, &key(2, "{cu")).unwrap());
        // Adopted once: a second recover cuts the torn line like any uncommitted tail.
        let cut_files = recover(&dlq, &state).unwrap();
        assert_eq!(cut_files, vec![(dlq.join(name), bytes.len() as u64, complete)]);
    }

    /// Issue 10 #13: deleting a DLQ file (retention, `maintain`) prunes its keys, replayed
    /// ones too, and only its own.
    #[test]
    fn delete_files_prunes_the_keys_of_the_deleted_files_only() {
        let (old, kept) = ("dlq_20240101.ndjson", "dlq_20240102.ndjson");
        let (_d, state, dlq) = setup(b"x\n");
        std::fs::write(dlq.join(kept), b"y\n").unwrap();
        let key = |n: u8| [n; 24];
        let tx = state.transaction_shared().unwrap();
        index::set_committed_len(&tx, kept, 2).unwrap();
        index::add_key(&tx, &key(1), old, "invalid_json").unwrap();
        index::add_key(&tx, &key(2), old, "invalid_json").unwrap();
        index::mark_replayed(&tx, &key(2), old).unwrap();
        index::add_key(&tx, &key(3), kept, "not_object").unwrap();
        tx.commit().unwrap();

        assert_eq!(delete_files(&dlq, &state, &[old.to_string()]).unwrap(), 2);
        assert!(!dlq.join(old).exists());
        let keys: Vec<(Vec<u8>, String)> = state
            .conn()
            .prepare("SELECT key, file FROM dlq_keys ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(keys, vec![(key(3).to_vec(), kept.to_string())]);
        let committed = index::committed(state.conn()).unwrap();
        assert_eq!(committed.into_iter().collect::<Vec<_>>(), vec![(kept.to_string(), 2)]);
    }

    #[test]
    fn recover_rolls_an_interrupted_rewrite_forward_from_any_step() {
        let name = "dlq_20240101.ndjson";
        let (old, new) = (&b"one\ntwo\nthree\n"[..], &b"one\nthree\n"[..]);
        // Killed after the intent, before the rename: the temp file replaces the file.
        let (_d, state, dlq) = setup(old);
        std::fs::write(dlq.join(temp_name(name)), new).unwrap();
        intent(&state, new.len() as u64);
        recover(&dlq, &state).unwrap();
        assert_eq!(std::fs::read(dlq.join(name)).unwrap(), new);
        assert!(!dlq.join(temp_name(name)).exists());
        assert_eq!(index::committed(state.conn()).unwrap()[name], new.len() as u64);
        let tx = state.transaction_shared().unwrap();
        assert!(index::rewrites(&tx).unwrap().is_empty());
        drop(tx);
        // Killed after the rename, before the final commit: only the length is recorded.
        let (_d, state, dlq) = setup(old);
        std::fs::write(dlq.join(name), new).unwrap();
        intent(&state, new.len() as u64);
        assert!(recover(&dlq, &state).unwrap().is_empty(), "nothing to cut");
        assert_eq!(std::fs::read(dlq.join(name)).unwrap(), new);
        assert_eq!(index::committed(state.conn()).unwrap()[name], new.len() as u64);
        // Killed before the intent: the temp file is dropped, the file stays whole.
        let (_d, state, dlq) = setup(old);
        std::fs::write(dlq.join(temp_name(name)), new).unwrap();
        recover(&dlq, &state).unwrap();
        assert_eq!(std::fs::read(dlq.join(name)).unwrap(), old);
        assert!(!dlq.join(temp_name(name)).exists());
        assert_eq!(index::committed(state.conn()).unwrap()[name], old.len() as u64);
    }

    /// Issue 10 #6: letters appended (and fsynced) on day 1 whose state commit failed are
    /// retried after UTC midnight into day 2's file; day 1's file is cut back to its committed
    /// length first, so the uncommitted copy does not stay there as a duplicate.
    #[test]
    fn an_append_cuts_every_dlq_file_back_to_its_committed_length_first() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let mut state = StateDb::open(&dir.path().join("state.sqlite"), &sqlite).unwrap();
        let dlq = dir.path().join("dlq");
        std::fs::create_dir(&dlq).unwrap();
        let file = Arc::new(crate::flow::FileEntry {
            path: "/raw/events_20231114.ndjson".into(),
            source: "/raw/events_20231114.ndjson".into(),
            id: crate::identity::FileId { dev: 1, ino: 2 },
            gzip: false,
            day: 20231114,
        });
        let span = Arc::new(Span::new(
            file.clone(),
            100,
            2,
            2,
            Default::default(),
            Some(100),
            std::time::Instant::now(),
        ));
        let letter = |line_no: u64, raw: &str| {
            let meta = crate::tail::LineMeta { offset: line_no * 10, line_no, end_offset: 0 };
            let digest = crate::parse::digest(raw.as_bytes());
            let reason = DeadReason::InvalidJson;
            let letter =
                DeadLetter::new(&file, meta, reason, "e".into(), raw.as_bytes(), 4, &digest, 64);
            vec![(letter, span.clone())]
        };
        let mut append_on = |at: SystemTime, letters: &[(DeadLetter, Arc<Span>)], commit: bool| {
            index::ensure_file(&mut state, &file_name_for(at)).unwrap();
            let tx = state.transaction().unwrap();
            append(&dlq, &tx, letters, at).unwrap();
            if commit {
                tx.commit().unwrap();
            }
        };
        let day1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day2 = day1 + Duration::from_secs(86_400);
        let line = |at: &str, line_no: u64, raw: &str| {
            format!(
                "{{\"at\":\"{at}\",\"source\":\"/raw/events_20231114.ndjson\",\"offset\":{},\
                 \"line_no\":{line_no},\"reason\":\"invalid_json\",\"error\":\"e\",\
                 \"raw\":\"{raw}\",\"raw_len\":4}}\n",
                line_no * 10
            )
        };
        // Day 1: one letter committed, then one appended whose state commit fails.
        append_on(day1, &letter(1, "{one"), true);
        let committed_day1 = line("2023-11-14T22:13:20.000Z", 1, "{one");
        append_on(day1, &letter(2, "{two"), false);
        let (name1, name2) = ("dlq_20231114.ndjson", "dlq_20231115.ndjson");
        let read = |name: &str| std::fs::read_to_string(dlq.join(name)).unwrap();
        assert_eq!(
            read(name1),
            committed_day1.clone() + &line("2023-11-14T22:13:20.000Z", 2, "{two")
        );
        // Day 2: the retry lands in day 2's file; day 1's keeps only what was committed.
        append_on(day2, &letter(2, "{two"), true);
        assert_eq!(read(name1), committed_day1);
        assert_eq!(read(name2), line("2023-11-15T22:13:20.000Z", 2, "{two"));
        let committed = index::committed(state.conn()).unwrap();
        assert_eq!(committed[name1], committed_day1.len() as u64);
        assert_eq!(committed[name2], read(name2).len() as u64);
    }
}
