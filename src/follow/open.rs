//! Opening a source file at its resume point: the saved checkpoint (verified by fingerprints),
//! where this process left it, 0, or the end of its last complete line (`read_from = "end"`),
//! and registering it with the state thread. Used by the daemon's tailer and by backfill.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::{Sender, TrySendError};

use crate::checkpoint::Checkpoint;
use crate::flow::{FileEntry, Opening, StateMsg};
use crate::identity::{FileId, Fingerprint};
use crate::metrics::Counter;
use crate::tail::{LineReader, Source};

/// Where reading a file starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    Checkpoint,
    /// No checkpoint: start after the last complete line.
    End,
    Zero,
    /// Where this process left a file (verified like a saved checkpoint).
    At(Box<Checkpoint>),
}

/// A source file opened at its resume point.
pub(crate) struct Opened {
    pub file: Arc<FileEntry>,
    pub reader: LineReader<Source>,
    /// Where reading starts (the checkpoint, or 0).
    pub start_offset: u64,
    /// The reader's descriptor (shared, not a second one): metadata and fingerprints.
    pub handle: Arc<File>,
}

/// Opens files at their resume points. Cheap to clone: one per reader thread.
#[derive(Clone)]
pub(crate) struct Opener {
    /// The checkpoints saved when the pipeline started.
    checkpoints: Arc<HashMap<FileId, Checkpoint>>,
    /// None for a remote sink's reader ([`Opener::detached`]): nothing to register.
    state: Option<Sender<StateMsg>>,
    max_line_bytes: usize,
    max_raw_bytes: usize,
    /// Bytes read from disk by every reader (compressed for `.gz`): drives progress bars.
    disk_bytes: Arc<Counter>,
    /// Files this reader let go of: their saved checkpoints are not used.
    let_go: HashSet<FileId>,
    /// (The daemon.) Never wait for room in the state thread's inbox: an open that finds it
    /// full fails with [`StateBusy`] and is tried again by a later rescan.
    never_block: bool,
    /// (`backfill --from-start`.) Every file from 0, registered nowhere: see `flow::Rebuild`.
    rebuild: bool,
}

/// The state thread's inbox is full (a long `dlq replay` holds the DLQ lock, a slow disk):
/// the file was not opened, nothing was registered.
#[derive(Debug, thiserror::Error)]
#[error("the state thread is busy")]
pub(crate) struct StateBusy;

impl Opener {
    pub(crate) fn new(
        checkpoints: Arc<HashMap<FileId, Checkpoint>>,
        state: Sender<StateMsg>,
        max_line_bytes: usize,
        max_raw_bytes: usize,
        disk_bytes: Arc<Counter>,
    ) -> Opener {
        Opener::with(checkpoints, Some(state), max_line_bytes, max_raw_bytes, disk_bytes)
    }

    /// For a remote sink (the `clickhouse` module), which keeps its own cursors: opens at the
    /// position given to [`Opener::reopen`] (verified like a checkpoint) or as
    /// [`Opener::open`] does without a saved checkpoint, and registers nothing.
    pub(crate) fn detached(
        max_line_bytes: usize,
        max_raw_bytes: usize,
        disk_bytes: Arc<Counter>,
    ) -> Opener {
        Opener::with(Arc::default(), None, max_line_bytes, max_raw_bytes, disk_bytes)
    }

    fn with(
        checkpoints: Arc<HashMap<FileId, Checkpoint>>,
        state: Option<Sender<StateMsg>>,
        max_line_bytes: usize,
        max_raw_bytes: usize,
        disk_bytes: Arc<Counter>,
    ) -> Opener {
        Opener {
            checkpoints,
            state,
            max_line_bytes,
            max_raw_bytes,
            disk_bytes,
            let_go: HashSet::new(),
            never_block: false,
            rebuild: false,
        }
    }

    /// For a rebuild (see `flow::Rebuild`).
    pub(crate) fn rebuilding(mut self) -> Opener {
        self.rebuild = true;
        self
    }

    /// Registers a file another pipeline opened (a reload) with this one's state thread, where
    /// its reader is now. Waits for room: a reload is not the reader's loop.
    pub(crate) fn register(&self, opened: &Opened) -> anyhow::Result<()> {
        let (offset, line_no) = (opened.reader.offset(), opened.reader.line_no());
        let opening = Opening { file: opened.file.clone(), offset, line_no, reset: false };
        match &self.state {
            Some(state) => state
                .send(StateMsg::Open(opening))
                .map_err(|_| anyhow::anyhow!("state thread stopped")),
            None => Ok(()),
        }
    }

    /// For the daemon's reader, whose loop must never wait on another thread.
    pub(crate) fn never_blocking(mut self) -> Opener {
        self.never_block = true;
        self
    }

    /// The checkpoint saved for a file identity when the pipeline started.
    pub(crate) fn checkpoint(&self, key: FileId) -> Option<&Checkpoint> {
        self.checkpoints.get(&key).filter(|_| !self.let_go.contains(&key))
    }

    /// The reader let go of this file for good (finished after a rotation or deletion): its
    /// saved checkpoint no longer says where a file with this identity is. The inode of a
    /// deleted file is reused by a new one, whose content may even share the first bytes the
    /// fingerprint covers; such a file is read from 0 (a no-op downstream for one seen again).
    pub(crate) fn let_go(&mut self, key: FileId) {
        self.let_go.insert(key);
    }

    /// Every checkpoint saved when the pipeline started.
    pub(crate) fn checkpoints(&self) -> impl Iterator<Item = &Checkpoint> {
        self.checkpoints.values()
    }

    /// Opens `path` at its checkpoint (or at 0, or at the end of its last complete line with
    /// `from_end`), and registers it with the state thread. None if the file vanished.
    pub(crate) fn open(&self, path: &Path, from_end: bool) -> anyhow::Result<Option<Opened>> {
        let start = match (self.rebuild, from_end) {
            (true, _) => Start::Zero,
            (false, true) => Start::End,
            (false, false) => Start::Checkpoint,
        };
        self.open_with(path, start)
    }

    /// Reads an open file again from 0 whatever its checkpoint says (it was truncated or
    /// rewritten under us), through `file`, a descriptor of it: its name may be gone already
    /// (rotated away or deleted), its content is still to be read.
    pub(crate) fn open_from_start(
        &self,
        file: File,
        path: &Path,
    ) -> anyhow::Result<Option<Opened>> {
        self.open_file(file, path, Start::Zero).map(Some)
    }

    /// Reopens a file this process already read up to `offset` (it was closed while idle).
    /// Falls back to the saved checkpoint if `path` is now another file, and to 0 if it shrank.
    pub(crate) fn reopen(
        &self,
        path: &Path,
        known_as: &Path,
        key: FileId,
        offset: u64,
        line_no: u64,
        fingerprint: Fingerprint,
    ) -> anyhow::Result<Option<Opened>> {
        let checkpoint = Checkpoint::at(key, known_as, offset, line_no, fingerprint);
        self.open_with(path, Start::At(Box::new(checkpoint)))
    }

    fn open_with(&self, path: &Path, start: Start) -> anyhow::Result<Option<Opened>> {
        match File::open(path) {
            Ok(handle) => self.open_file(handle, path, start).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }

    fn open_file(&self, handle: File, path: &Path, start: Start) -> anyhow::Result<Opened> {
        let meta = handle.metadata().with_context(|| format!("stat {}", path.display()))?;
        let gzip =
            crate::tail::is_gzip(&handle).with_context(|| format!("reading {}", path.display()))?;
        let (mut offset, mut line_no, mut reset) = (0, 0, true);
        let key = FileId::of(&meta);
        let checkpoint = match &start {
            Start::Zero => None,
            Start::At(cp) if cp.id == key => Some(&**cp),
            Start::Checkpoint | Start::End | Start::At(_) => self.checkpoint(key),
        };
        if let Some(cp) = checkpoint {
            match cp.verify(&handle, gzip).with_context(|| format!("reading {}", path.display()))? {
                Ok(()) => (offset, line_no, reset) = (cp.offset, cp.line_no, false),
                Err(mismatch) => tracing::warn!(
                    path = %path.display(),
                    checkpoint = cp.offset,
                    size = meta.len(),
                    ?mismatch,
                    "checkpoint does not match the file any more; reading it from the start"
                ),
            }
        } else if matches!(start, Start::End) && !gzip {
            (offset, line_no) =
                last_line_end(&handle).with_context(|| format!("reading {}", path.display()))?;
        }
        if !gzip && offset > 0 {
            // A position inside a line: that line's unterminated tail was shipped as the end
            // of a finished file (backfill takes an idle file for finished), and the file
            // went on. Reading on from there would make a half line of the rest: the line is
            // read again from its start, whole, as soon as it ends.
            let start = line_start(&handle, offset, self.max_line_bytes as u64)
                .with_context(|| format!("reading {}", path.display()))?;
            if start < offset {
                tracing::info!(
                    path = %path.display(),
                    checkpoint = offset,
                    line_start = start,
                    "the checkpoint is inside a line whose start was shipped as a finished file's tail; reading that line again from its start"
                );
                (offset, line_no) = (start, line_no.saturating_sub(1));
            }
        }
        // Read through the descriptor just identified and verified, not a fresh open of `path`.
        let (source, handle) = Source::from_file(handle, offset, Some(self.disk_bytes.clone()))
            .with_context(|| format!("{}: opening at offset {offset}", path.display()))?;
        // A file reopened after a rename keeps the name its earlier lines were shipped under.
        let known_as = match &start {
            Start::At(cp) if cp.id == key => cp.path.clone(),
            _ => path.to_path_buf(),
        };
        let file_name = known_as.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let file = Arc::new(FileEntry {
            path: known_as.clone(),
            source: Arc::from(known_as.to_string_lossy().as_ref()),
            id: key,
            gzip,
            day: crate::parse::file_day(&file_name),
        });
        let reader =
            LineReader::new(source, offset, line_no, self.max_line_bytes, self.max_raw_bytes);
        let msg = StateMsg::Open(Opening { file: file.clone(), offset, line_no, reset });
        let Some(state) = &self.state else {
            return Ok(Opened { file, reader, start_offset: offset, handle });
        };
        if self.rebuild {
            // Registering would reset the file's checkpoint to 0.
        } else if self.never_block {
            match state.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(StateBusy.into()),
                Err(TrySendError::Disconnected(_)) => anyhow::bail!("state thread stopped"),
            }
        } else if state.send(msg).is_err() {
            anyhow::bail!("state thread stopped");
        }
        Ok(Opened { file, reader, start_offset: offset, handle })
    }
}

/// Where the line holding the byte before `offset` starts: `offset` itself when that byte is a
/// `\n` (or the line is longer than `max_line` back, which is read on as it always was).
fn line_start(file: &File, offset: u64, max_line: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    // Almost always the byte before is a newline: one byte read, no 64 KiB buffer per open.
    let mut last = [0u8];
    file.read_exact_at(&mut last, offset - 1)?;
    if last[0] == b'\n' {
        return Ok(offset);
    }
    let mut end = offset;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 && offset - end < max_line {
        let len = (end.min(buf.len() as u64)) as usize;
        let chunk = &mut buf[..len];
        file.read_exact_at(chunk, end - len as u64)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            let start = end - len as u64 + i as u64 + 1;
            return Ok(start);
        }
        end -= len as u64;
    }
    Ok(if end == 0 { 0 } else { offset })
}

/// The offset just past the last `\n` and the number of lines before it: where `read_from =
/// "end"` starts, so that line numbers (part of event keys) match a later full read.
fn last_line_end(file: &File) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file.try_clone()?);
    let (mut pos, mut end, mut lines) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok((end, lines));
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            lines += 1;
            end = pos + i as u64 + 1;
        }
        pos += n as u64;
    }
}
