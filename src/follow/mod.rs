//! The daemon's file lifecycle: which files are followed, parked, reopened, finished and let
//! go, and when the globs are rescanned.
//!
//! A matching file is opened at its checkpoint (verified by fingerprints, [`open`]) and
//! followed. One idle for `close_inactive`, or pushed out by `max_open_files`, is *parked*: its
//! descriptor is closed and its position remembered; a rescan that sees it grow (or shrink:
//! truncation) reopens it. One rotated away or deleted is read to its end through the open
//! descriptor, its unterminated tail shipped per the contract once it has been idle for
//! `close_inactive`, and then closed.
//!
//! Discovery is by periodic glob rescans (the source of truth); inotify ([`watch`]) only wakes
//! the loop early. The [`Tailer`] reads the clock through a [`Clock`] it is given, and is
//! driven one [`Tailer::turn`] at a time, so that a test can drive it in-process, with a
//! manual clock, against real files (`tests.rs`, a model-based test).

mod open;
mod watch;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) use open::{Opened, Opener};
pub(crate) use watch::Watch;

use crate::checkpoint::Checkpoint;
use crate::config::{Config, ReadFrom};
use crate::discover;
use crate::identity::{FileId, Fingerprint};
use crate::metrics::Counters;
use crate::route::{is_corrupt_gzip, Routed, Router};

/// Rescans triggered by inotify (a new file, a rename) are at most this frequent, so a storm
/// of events costs little while tomorrow's file is still found within ~100 ms.
const MIN_EVENT_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

/// While the writers hold the reader up, the glob rescan runs this rarely.
const HELD_UP_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// How long a read pass waits for a held-up writer to take what was already read before the
/// loop turns to its other duties (signals, rescans, closing deleted files).
const UNSTALL_WAIT: Duration = Duration::from_millis(100);

/// Where the tailer reads the time: the system's, or a test's.
pub(crate) trait Clock {
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A file being followed.
struct Tailed {
    opened: Opened,
    /// Where the file was last seen (a rename changes it; identity is the inode).
    path: PathBuf,
    last_data: Instant,
    /// Fingerprints of the content already read (first and last KiB before the read position):
    /// a file rewritten in place (copytruncate refilled past our position before we looked)
    /// no longer matches them. Two small reads after each read pass that made progress.
    seen: Option<Checkpoint>,
    /// The modification time when last looked at.
    modified: Option<std::time::SystemTime>,
    /// Since when the file has had bytes we have not read (None: read up to its size).
    unread_since: Option<Instant>,
    /// The file's size when last looked at (a rescan's stat, `read_all`'s fstat, or at open).
    size: u64,
    /// The last read ended with no complete line left in the reader's buffer (false after a
    /// read pass stopped by backpressure): "no new bytes" then means "nothing to read".
    drained: bool,
    /// The last rescan found it under a glob; rotated-away files are visited by every pass.
    in_glob: bool,
    /// When a rescan first missed it in the globs: its producer may write on through the
    /// descriptor it holds, so it is finished only once idle for close_inactive since then too.
    gone_since: Option<Instant>,
    /// The last read failed: not read again before `retry_at`.
    read_error: Option<ReadError>,
    /// A `.gz` given up as corrupt (`Router::give_up`): its dead letter is sealed, nothing
    /// more can be read.
    corrupt: bool,
}

/// Files a tailer was finishing when its configuration was reloaded, with their descriptors.
pub(crate) struct Finishing(Vec<Tailed>);

/// Backing off after a read error (EIO or ESTALE on NFS or FUSE, a bad gzip member).
#[derive(Debug, Clone, Copy)]
struct ReadError {
    retry_at: Instant,
    backoff: Duration,
}

impl Tailed {
    /// Something to read as of the size last seen: new (or fewer: truncated) bytes, lines left
    /// in the buffer by a pass that backpressure stopped, or a `.gz` (its size says nothing).
    fn has_news(&self) -> bool {
        let reader = &self.opened.reader;
        self.opened.file.gzip
            || !self.drained
            || self.size != reader.offset() + reader.pending_bytes()
    }

    /// Whether the plain file was truncated or rewritten since we read it (`meta` is its
    /// fstat): then what we hold is stale and its new content must be read from 0.
    fn changed_under_us(&mut self, meta: &std::fs::Metadata) -> Option<&'static str> {
        let reader = &self.opened.reader;
        if meta.len() < reader.offset() {
            return Some("it shrank below our position");
        }
        // New bytes: first check that what we read is still there (copytruncate can refill a
        // file past our position before we look). Or rewritten to the very size we read: only
        // the modification time tells, and a changed one costs two small reads.
        let grew = meta.len() > reader.offset() + reader.pending_bytes();
        let modified = meta.modified().ok();
        let touched = grew || modified != self.modified;
        self.modified = modified;
        let stale =
            |seen: &Checkpoint| matches!(seen.verify(&self.opened.handle, false), Ok(Err(_)));
        (touched && self.seen.as_ref().is_some_and(stale)).then_some("the content we read changed")
    }

    /// Read up to the size last seen, no complete line left in the buffer: parking it loses
    /// no progress (an unterminated line is read again when the file is reopened; it cannot
    /// keep a descriptor forever while other files wait for one).
    fn caught_up(&self) -> bool {
        let reader = &self.opened.reader;
        if self.opened.file.gzip {
            reader.at_eof() && reader.pending_bytes() == 0
        } else {
            self.drained && reader.offset() + reader.pending_bytes() >= self.size
        }
    }
}

/// Fingerprints what `opened` has taken from the file so far, a partial line in its buffer
/// included (None for `.gz` or nothing read yet).
fn content_seen(opened: &Opened, key: FileId, path: &Path) -> Option<Checkpoint> {
    let offset = opened.reader.offset() + opened.reader.pending_bytes();
    if opened.file.gzip || offset == 0 {
        return None;
    }
    let fp = Fingerprint::compute(&opened.handle, false, offset).ok()?;
    Some(Checkpoint::at(key, path, offset, opened.reader.line_no(), fp))
}

/// A file known but closed: everything up to `offset` was read when it was parked.
struct Parked {
    offset: u64,
    line_no: u64,
    /// What `offset` was read from: a file that changed under the same inode (truncated and
    /// regrown, or a new file reusing the inode) is read from 0 when it is reopened.
    fingerprint: Fingerprint,
    /// The size when parked: a rescan reopens the file when its size differs. (A `.gz`: its
    /// compressed size once read to its end, else `u64::MAX`, never a size: reopened.)
    size_seen: u64,
    /// Offsets are in the decompressed stream: no lag from sizes.
    gzip: bool,
    /// Where it was when parked (a glob match).
    path: PathBuf,
    /// When it was parked: changed files wait for a descriptor oldest first.
    parked_at: Instant,
    /// When a rescan first missed it in the globs (renamed away).
    gone_since: Option<Instant>,
    /// Its modification time when parked (None: unknown): one truncated and refilled to the
    /// size it had is reopened, and its new content read from 0.
    modified: Option<std::time::SystemTime>,
    /// Never opened, so not registered with the state thread: opened like a new file.
    unread: bool,
    /// Bytes its saved checkpoint knew past its position (size at the last seal minus the
    /// offset): said if the file turns out to be gone.
    unshipped: u64,
}

impl Parked {
    /// Where a saved checkpoint says the file was read to.
    fn at_checkpoint(cp: &Checkpoint, now: Instant) -> Parked {
        Parked {
            offset: cp.offset,
            line_no: cp.line_no,
            fingerprint: cp.fingerprint.clone(),
            size_seen: cp.offset,
            gzip: cp.gzip,
            path: cp.path.clone(),
            parked_at: now,
            gone_since: None,
            modified: None,
            unread: false,
            unshipped: cp.size.map_or(0, |size| size.saturating_sub(cp.offset)),
        }
    }

    /// A file not read yet.
    fn unread(path: &Path, now: Instant) -> Parked {
        Parked {
            offset: 0,
            line_no: 0,
            fingerprint: Fingerprint::default(),
            size_seen: 0,
            gzip: false,
            path: path.to_path_buf(),
            parked_at: now,
            gone_since: None,
            modified: None,
            unread: true,
            unshipped: 0,
        }
    }
}

/// A file a rescan found new or changed, not open.
struct Changed {
    /// Its saved checkpoint is at its end: opening it reads nothing.
    caught_up: bool,
    /// None for a file not parked (new to this process).
    parked_at: Option<Instant>,
    path: PathBuf,
    key: FileId,
}

/// The daemon's reader: follows every file the globs match. See the module docs.
pub(crate) struct Tailer<'a> {
    opener: Opener,
    router: Router,
    config: &'a Config,
    counters: &'a Counters,
    clock: &'a dyn Clock,
    open: HashMap<FileId, Tailed>,
    parked: HashMap<FileId, Parked>,
    /// The last rescan found more new or changed files than `max_open_files`: rescan again
    /// as soon as the ones it opened are read.
    backlog: bool,
    /// The last rescan reopened parked files that had grown.
    parked_grew: bool,
    /// Files seen by the first scan with `read_from = "end"` but left for a later one.
    from_end_deferred: HashSet<FileId>,
    from_end_at_first_scan: bool,
    /// Where the last read pass stopped because the pipeline was held up: the next pass
    /// starts there, so every file gets its turn under sustained backpressure.
    resume_at: Option<FileId>,
    /// The open files' keys, sorted: the order of read passes (rebuilt when `open` changes).
    order: Vec<FileId>,
    order_stale: bool,
    /// When `note_unread` last looked (it fstats every open file: not on every held-up pass).
    unread_noted: Option<Instant>,
    last_rescan: Instant,
    last_close: Instant,
    /// A pass fstats every open file; one after a timeout (no inotify event) need only visit
    /// the files the rescan saw grow. Without inotify every pass is full.
    full_pass: bool,
    /// How long a held-up read pass waits for room ([`UNSTALL_WAIT`]; zero in tests).
    unstall_wait: Duration,
    /// The first rescan is done.
    scanned: bool,
}

impl<'a> Tailer<'a> {
    /// A tailer that has opened nothing yet: call [`Tailer::rescan`] first. With
    /// `first_start`, `read_from = "end"` applies to the files the first scan finds (not to
    /// those found after a reload).
    pub(crate) fn new(
        opener: Opener,
        router: Router,
        config: &'a Config,
        counters: &'a Counters,
        clock: &'a dyn Clock,
        first_start: bool,
    ) -> Tailer<'a> {
        let now = clock.now();
        Tailer {
            opener,
            router,
            config,
            counters,
            clock,
            open: HashMap::new(),
            parked: HashMap::new(),
            backlog: false,
            parked_grew: false,
            from_end_deferred: HashSet::new(),
            from_end_at_first_scan: first_start && config.sources.read_from == ReadFrom::End,
            resume_at: None,
            order: Vec::new(),
            order_stale: true,
            unread_noted: None,
            last_rescan: now,
            last_close: now,
            full_pass: true,
            unstall_wait: UNSTALL_WAIT,
            scanned: false,
        }
    }

    /// Hands over the files being finished (rotated away or deleted, still open) for the
    /// tailer of the next configuration: a reload must not forget them (a deleted one can be
    /// found by no name, and what its producer still writes goes to its descriptor).
    pub(crate) fn into_finishing(mut self) -> Finishing {
        let keys: Vec<FileId> =
            self.open.iter().filter(|(_, t)| !t.in_glob).map(|(k, _)| *k).collect();
        Finishing(keys.into_iter().filter_map(|k| self.open.remove(&k)).collect())
    }

    /// Takes over the files an earlier tailer was finishing (see [`Tailer::into_finishing`]),
    /// registering each with this pipeline's state thread where its reader is. Call before the
    /// first rescan.
    pub(crate) fn adopt_finishing(&mut self, finishing: Finishing) {
        for tailed in finishing.0 {
            let key = tailed.opened.file.id;
            if let Err(error) = self.opener.register(&tailed.opened) {
                tracing::error!(path = %tailed.path.display(), error = format!("{error:#}"), "cannot keep following a rotated file across the reload; it is looked for by its checkpoint");
                continue;
            }
            self.order_stale = true;
            self.open.insert(key, tailed);
        }
    }

    /// Files known: followed or parked.
    pub(crate) fn files(&self) -> usize {
        self.open.len() + self.parked.len()
    }

    /// An inotify event arrived: the next pass visits every open file.
    pub(crate) fn woken(&mut self) {
        self.full_pass = true;
    }

    /// One turn of the daemon's loop: a read pass, then a rescan or the closing of inactive
    /// files when due. Returns how long the caller may wait (for a signal or an inotify
    /// wake-up, see [`Tailer::woken`]) before the next turn.
    pub(crate) fn turn(
        &mut self,
        mut watch: Option<&mut Watch>,
        stop: &dyn Fn() -> bool,
    ) -> Duration {
        let rescan_interval = self.config.sources.rescan_interval;
        let full = self.full_pass || watch.is_none();
        let blocked = self.read_all(stop, full);
        self.full_pass = blocked; // a held-up pass resumes where it stopped
        let since = self.clock.now() - self.last_rescan;
        // A backlog (more changed files than max_open_files) is worked through at that many
        // files per MIN_EVENT_RESCAN_INTERVAL. While parked files are being appended to (more
        // active files than max_open_files), an append is a reason to rescan too: inotify does
        // not say which file grew, and waiting for the periodic rescan would delay them by up
        // to rescan_interval.
        let parked_growing = self.parked_grew && watch.as_ref().is_some_and(|w| w.appended());
        if blocked && since >= rescan_interval && since < HELD_UP_RESCAN_INTERVAL {
            // Held up: files found now could not be read yet, and a rescan of thousands of
            // files would burn the CPU the writers need; discovery slows down (it still runs,
            // for a pipeline saturated for hours). Deleted files still go on time.
            if self.clock.now() - self.last_close >= rescan_interval {
                self.close_inactive();
            }
        } else if since >= rescan_interval
            || (!blocked
                && since >= MIN_EVENT_RESCAN_INTERVAL
                && (self.backlog
                    || parked_growing
                    || watch.as_ref().is_some_and(|w| w.take_structural())))
        {
            let opened = self.rescan(watch.as_deref_mut());
            self.close_inactive();
            if opened || self.open.values().any(Tailed::has_news) {
                return Duration::ZERO; // what this rescan found is read now
            }
        }
        if blocked {
            // read_all already waited for the writers; just look at the signals.
            return Duration::ZERO;
        }
        // A pending event-triggered rescan is due MIN_EVENT_RESCAN_INTERVAL after the last one.
        let due = if self.backlog || parked_growing || watch.is_some_and(|w| w.structural()) {
            MIN_EVENT_RESCAN_INTERVAL
        } else {
            rescan_interval
        };
        // Turn at least twice per `unhealthy_after`, so a long rescan interval cannot look stuck.
        let since = self.clock.now() - self.last_rescan;
        due.saturating_sub(since).min(self.config.metrics.unhealthy_after / 2)
    }

    /// Finds files matching the globs: opens new ones, reopens parked ones that changed.
    /// Returns whether it opened any file.
    pub(crate) fn rescan(&mut self, mut watch: Option<&mut Watch>) -> bool {
        self.last_rescan = self.clock.now();
        if let Some(w) = watch.as_deref_mut() {
            w.clear_appended();
        }
        for tailed in self.open.values_mut() {
            tailed.in_glob = false;
        }
        let mut seen = HashSet::new();
        let mut changed: Vec<Changed> = Vec::new();
        for pattern in &self.config.sources.paths {
            let dir = discover::glob_base(pattern);
            if let Some(w) = watch.as_deref_mut() {
                w.watch(dir);
            }
            let Ok(paths) = glob::glob(pattern) else { continue };
            for path in paths.filter_map(Result::ok) {
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                // A file matched twice (two globs, hard links) is one file.
                if !meta.is_file() || !seen.insert(FileId::of(&meta)) {
                    continue;
                }
                let key = FileId::of(&meta);
                if let Some(tailed) = self.open.get_mut(&key) {
                    tailed.size = meta.len();
                    tailed.in_glob = true;
                    if tailed.path != path {
                        tracing::info!(from = %tailed.path.display(), to = %path.display(), "file renamed; following it");
                        tailed.path = path;
                    }
                    continue;
                }
                match self.parked.get(&key) {
                    Some(p)
                        if p.size_seen == meta.len()
                            && p.modified.is_none_or(|m| meta.modified().ok() == Some(m)) => {}
                    Some(p) => changed.push(Changed {
                        caught_up: false,
                        parked_at: Some(p.parked_at),
                        path,
                        key,
                    }),
                    None => {
                        // Its checkpoint is at its end (most files at startup): nothing to read.
                        let caught_up = self
                            .opener
                            .checkpoint(key)
                            .is_some_and(|cp| !cp.gzip && cp.offset == meta.len());
                        changed.push(Changed { caught_up, parked_at: None, path, key });
                    }
                }
            }
        }
        // Open at most `max_open_files` per scan: a file opened here and pushed out by the next
        // one before read_all reached it would be parked unread and reopened by every scan, and
        // with more changed files than descriptors some would never be read. Files with bytes
        // to read first; new files, then parked ones by how long they waited (the sort is
        // stable: glob order otherwise).
        changed.sort_by_key(|c| (c.caught_up, c.parked_at));
        self.parked_grew = changed.iter().any(|c| c.parked_at.is_some());
        // Room: free slots plus open files read to their end. An open file with bytes left is
        // never pushed out for another (it would be reopened by the next scan, thrashing, most
        // of all while the writers hold the reader up).
        let max_open = self.config.sources.max_open_files.max(1);
        let parkable = self.open.values().filter(|t| t.caught_up()).count();
        let room = max_open.saturating_sub(self.open.len()) + parkable;
        let (mut opened, mut backlog) = (0, false);
        for Changed { path, key, .. } in changed {
            if opened == room {
                // Left for the next scan. read_from = "end" is for files there at startup,
                // however late they are opened.
                backlog = true;
                if self.from_end_at_first_scan {
                    self.from_end_deferred.insert(key);
                } else if !self.from_end_deferred.contains(&key) {
                    // Known from now on, parked at its checkpoint: one rotated away before its
                    // turn is still found by inode and read to its end.
                    let now = self.clock.now();
                    let parked = match self.opener.checkpoint(key) {
                        Some(cp) => Parked::at_checkpoint(cp, now),
                        None => Parked::unread(&path, now),
                    };
                    self.parked.entry(key).or_insert(parked);
                }
                continue;
            }
            // Only files opened count: unreadable ones must not keep the others waiting.
            let started = match self.parked.remove(&key) {
                Some(parked) => {
                    let started = self.start(&path, |pl| match parked.unread {
                        true => pl.open(&path, false),
                        false => {
                            let (offset, line_no) = (parked.offset, parked.line_no);
                            pl.reopen(
                                &path,
                                &path,
                                key,
                                offset,
                                line_no,
                                parked.fingerprint.clone(),
                            )
                        }
                    });
                    if !started {
                        // Kept where it was: not opened now is not forgotten.
                        self.parked.insert(key, parked);
                    }
                    started
                }
                None => {
                    let from_end =
                        self.from_end_at_first_scan || self.from_end_deferred.remove(&key);
                    self.start(&path, |pl| pl.open(&path, from_end))
                }
            };
            opened += usize::from(started);
        }
        // No room at all (every open file has bytes left): the next scan comes on time; a
        // quick one would find no room either.
        self.backlog = backlog && room > 0;
        if !backlog {
            self.from_end_deferred.clear();
        }
        self.from_end_at_first_scan = false;
        let now = self.clock.now();
        for tailed in self.open.values_mut().filter(|t| !t.in_glob) {
            tailed.gone_since.get_or_insert(now);
        }
        if !self.scanned {
            self.scanned = true;
            self.adopt_rotated_checkpointed(&seen);
        }
        self.follow_renamed_parked(&seen);
        tracing::debug!(files = seen.len(), "rescanned");
        self.counters.files_watched.set((self.open.len() + self.parked.len()) as u64);
        // ops: jsonl_shipper_lag_bytes = bytes appended to plain files but not read yet.
        // (Sizes as read_all last saw them: no fstat per open file here.)
        let lag = |t: &Tailed| {
            let size = if t.opened.file.gzip { 0 } else { t.size };
            size.saturating_sub(t.opened.reader.offset())
        };
        let parked_lag = |p: &Parked| if p.gzip { 0 } else { p.size_seen.saturating_sub(p.offset) };
        self.counters.lag_bytes.set(
            self.open.values().map(lag).sum::<u64>()
                + self.parked.values().map(parked_lag).sum::<u64>(),
        );
        opened > 0
    }

    /// After a restart or reload: files checkpointed in the globs' directories that the globs
    /// no longer match were rotated away (or deleted) while this process, or the one before,
    /// followed them. They are taken as parked where their checkpoint is, so that one still
    /// there with bytes past it is found by inode and read to its end like any rotated file.
    fn adopt_rotated_checkpointed(&mut self, seen: &HashSet<FileId>) {
        let dirs: HashSet<PathBuf> =
            self.config.sources.paths.iter().map(|p| discover::glob_base(p)).collect();
        let now = self.clock.now();
        for cp in self.opener.checkpoints() {
            let key = cp.id;
            let in_our_dirs = cp.path.parent().is_some_and(|dir| dirs.contains(dir));
            if cp.gzip || !in_our_dirs || seen.contains(&key) || self.open.contains_key(&key) {
                continue;
            }
            self.parked.entry(key).or_insert_with(|| Parked::at_checkpoint(cp, now));
        }
    }

    /// Parked files the globs no longer match were deleted or renamed away (logrotate). A
    /// renamed one may still be written through its producer's descriptor, so it is looked
    /// up by inode in the globs' directories: with new bytes it is reopened as a rotated file
    /// (read to its end, finished after `close_inactive`); otherwise, and if gone, forgotten
    /// (its checkpoint row stays in the state DB).
    fn follow_renamed_parked(&mut self, seen: &HashSet<FileId>) {
        // A set: it is probed once per directory entry, and thousands of files can go at once.
        let missing: HashSet<FileId> =
            self.parked.keys().filter(|key| !seen.contains(key)).copied().collect();
        if missing.is_empty() {
            return;
        }
        let mut found: HashMap<FileId, (PathBuf, u64)> = HashMap::new();
        let dirs: HashSet<PathBuf> =
            self.config.sources.paths.iter().map(|p| discover::glob_base(p)).collect();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let key = FileId::of(&meta);
                if meta.is_file() && missing.contains(&key) {
                    found.insert(key, (entry.path(), meta.len()));
                }
            }
        }
        let now = self.clock.now();
        let close_inactive = self.config.sources.close_inactive;
        for key in missing {
            let Some(mut parked) = self.parked.remove(&key) else { continue };
            let Some((new_path, size)) = found.remove(&key) else {
                self.opener.let_go(key); // deleted
                if parked.unshipped > 0 {
                    // Known only from its checkpoint (a restart): nothing can read it now.
                    self.counters.deleted_unread_bytes.add(parked.unshipped);
                    tracing::warn!(
                        path = %parked.path.display(),
                        offset = parked.offset,
                        unshipped_bytes = parked.unshipped,
                        "a file was deleted before it was read to its end (while the agent was down?); its unread bytes, at least unshipped_bytes, are not shipped"
                    );
                }
                continue;
            };
            if size == parked.size_seen {
                // Its producer may still write through the descriptor it holds: watch it by
                // inode for close_inactive, as a followed file would be, then let it go.
                let gone_since = *parked.gone_since.get_or_insert(now);
                if now - gone_since < close_inactive {
                    self.parked.insert(key, parked);
                    continue;
                }
                if size == parked.offset {
                    self.opener.let_go(key);
                    continue; // read to its end: forgotten
                }
                // Its unterminated tail is still to be shipped: reopened, it is finished.
            }
            // A descriptor for it must not come from another rotated file, which would then be
            // parked before it is finished, and so on in turn, for ever: it waits for one.
            let max_open = self.config.sources.max_open_files.max(1);
            let room = self.open.len() < max_open
                || self.open.values().any(|t| t.in_glob && t.caught_up());
            if !room {
                self.parked.insert(key, parked);
                continue;
            }
            tracing::info!(from = %parked.path.display(), to = %new_path.display(), "an idle file was renamed away with bytes left to ship; reading it to its end");
            let (offset, line_no, fingerprint) =
                (parked.offset, parked.line_no, parked.fingerprint.clone());
            let known_as = parked.path.clone();
            let started = self.start(&new_path, |pl| match parked.unread {
                true => pl.open(&new_path, false),
                false => pl.reopen(&new_path, &known_as, key, offset, line_no, fingerprint),
            });
            if !started {
                self.parked.insert(key, parked); // tried again by the next rescan
                continue;
            }
            // Keep the old (glob) path: the file counts as rotated away, so it is finished and
            // closed once idle instead of being parked again.
            if let Some(tailed) = self.open.get_mut(&key) {
                tailed.path = parked.path;
                tailed.in_glob = false;
            }
        }
    }

    /// Opens a file and follows it; false if it could not be opened (vanished, or an error).
    fn start(
        &mut self,
        path: &Path,
        open: impl FnOnce(&Opener) -> anyhow::Result<Option<Opened>>,
    ) -> bool {
        match open(&self.opener) {
            Ok(Some(opened)) => {
                let key = opened.file.id;
                tracing::debug!(path = %path.display(), offset = opened.start_offset, "following file");
                self.make_room();
                let meta = opened.handle.metadata().ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let modified = meta.and_then(|m| m.modified().ok());
                let seen = content_seen(&opened, key, path);
                self.order_stale = true;
                self.open.insert(
                    key,
                    Tailed {
                        opened,
                        path: path.to_path_buf(),
                        last_data: self.clock.now(),
                        seen,
                        modified,
                        unread_since: None,
                        size,
                        drained: true,
                        in_glob: true,
                        gone_since: None,
                        read_error: None,
                        corrupt: false,
                    },
                );
                true
            }
            Ok(None) => false,
            Err(error) if error.is::<open::StateBusy>() => {
                tracing::debug!(path = %path.display(), "state thread busy; opening the file later");
                self.backlog = true;
                false
            }
            Err(error) => {
                tracing::error!(path = %path.display(), error = format!("{error:#}"), "cannot open file; will retry at the next rescan");
                false
            }
        }
    }

    /// Keeps at most `max_open_files` descriptors: parks the longest-idle file, preferring one
    /// read to its end (one with bytes left would only be reopened to read them).
    fn make_room(&mut self) {
        while self.open.len() >= self.config.sources.max_open_files.max(1) {
            // A rotated-away file last: it is finished after close_inactive and closed anyway,
            // and parked with an unterminated tail it would be reopened again and again.
            let lru = self.open.iter().min_by_key(|(_, t)| {
                let partial = t.opened.reader.pending_bytes() > 0;
                (!t.in_glob, !t.caught_up(), partial, t.last_data)
            });
            let Some(key) = lru.map(|(k, _)| *k) else {
                return;
            };
            self.park(key);
        }
    }

    /// Stops following a file (the read order is rebuilt for the next pass).
    fn unfollow(&mut self, key: FileId) -> Option<Tailed> {
        self.order_stale = true;
        self.open.remove(&key)
    }

    fn park(&mut self, key: FileId) {
        // The position is saved with a fingerprint of the file as it is now: first make sure
        // it still holds what was read (truncated and refilled since, it is read again).
        if let Some(tailed) = self.open.get_mut(&key).filter(|t| !t.opened.file.gzip) {
            let meta = tailed.opened.handle.metadata();
            if let Some(why) = meta.ok().and_then(|m| tailed.changed_under_us(&m)) {
                let path = tailed.path.clone();
                self.restart_from_zero(key, &path, why);
                return;
            }
        }
        if let Some(tailed) = self.unfollow(key) {
            let reader = &tailed.opened.reader;
            let file = &tailed.opened.file;
            // Reopening resumes after the last complete line; a partial line is read again.
            let offset = reader.offset();
            let fingerprint =
                Fingerprint::compute(&tailed.opened.handle, file.gzip, offset).unwrap_or_default();
            tracing::debug!(path = %tailed.path.display(), offset, "parked file");
            // Parked at what it took from the file (a partial line included), not its size:
            // a file pushed out by max_open_files before it was read to its end must be
            // reopened, one waiting for the end of a line must not be until the file grows.
            let taken = offset + reader.pending_bytes();
            // A `.gz` read to its end (or given up as corrupt) is reopened only if it changes:
            // reopening means decompressing its whole prefix again.
            let gz_done = reader.at_eof() && reader.pending_bytes() == 0;
            let size_seen = match file.gzip {
                false => taken,
                true if gz_done => tailed.opened.handle.metadata().map_or(u64::MAX, |m| m.len()),
                true => u64::MAX,
            };
            self.parked.insert(
                key,
                Parked {
                    offset,
                    line_no: reader.line_no(),
                    fingerprint,
                    size_seen,
                    gzip: file.gzip,
                    modified: tailed.modified,
                    unread: false,
                    unshipped: 0,
                    path: tailed.path.clone(),
                    parked_at: self.clock.now(),
                    gone_since: None,
                },
            );
        }
    }

    /// Reads every complete line available in every open file. Returns true if the pipeline
    /// is held up (a full writer inbox: a locked DB, a full disk, or just a busy writer): the
    /// pass stops there and the next one starts with the file it stopped at.
    /// With `full` false, only files the last rescan saw change (and rotated-away ones) are
    /// looked at: the others had no inotify event since the last full pass.
    fn read_all(&mut self, stop: &dyn Fn() -> bool, full: bool) -> bool {
        match self.router.unstall(self.unstall_wait) {
            Ok(true) => {}
            Ok(false) => {
                self.note_unread();
                return true;
            }
            Err(_closed) => return false,
        }
        // Under backpressure a pass may route one span and stop: keep its cost O(1), not
        // O(open files), by reusing the order and starting where the last pass stopped.
        if self.order_stale {
            self.order = self.open.keys().copied().collect();
            self.order.sort_unstable();
            self.order_stale = false;
        }
        let start = self.resume_at.take().map_or(0, |at| self.order.partition_point(|k| *k < at));
        let n = self.order.len();
        let mut restart = Vec::new();
        let mut blocked = false;
        let now = self.clock.now();
        for i in 0..n {
            let key = self.order[(start + i) % n];
            let Some(tailed) = self.open.get_mut(&key) else { continue };
            if !full && tailed.in_glob && !tailed.has_news() {
                continue; // the rescan's stat saw nothing new
            }
            if tailed.read_error.is_some_and(|e| now < e.retry_at) || tailed.corrupt {
                continue; // backing off after a read error, or nothing more can be read
            }
            let mut size = None;
            if !tailed.opened.file.gzip {
                if let Ok(meta) = tailed.opened.handle.metadata() {
                    if let Some(why) = tailed.changed_under_us(&meta) {
                        restart.push((key, tailed.path.clone(), why));
                        continue;
                    }
                    let opened = &tailed.opened;
                    let grew = meta.len() > opened.reader.offset() + opened.reader.pending_bytes();
                    if grew {
                        tailed.unread_since.get_or_insert(now);
                    }
                    size = Some(meta.len());
                    tailed.size = meta.len();
                    if !tailed.has_news() {
                        continue; // nothing new: spare the read(2)
                    }
                }
            }
            let opened = &mut tailed.opened;
            let before = opened.reader.offset() + opened.reader.pending_bytes();
            match self.router.route(&opened.file, &opened.handle, &mut opened.reader, false, stop) {
                Ok(Routed::Drained) => tailed.drained = true,
                Ok(Routed::Blocked) => {
                    blocked = true;
                    tailed.drained = false;
                    self.resume_at = Some(key);
                }
                Ok(Routed::Closed) => return false,
                Err(error)
                    if is_corrupt_gzip(&opened.file, &error)
                        && now - tailed.last_data >= self.config.sources.close_inactive =>
                {
                    // Retried for close_inactive without a byte more: corrupt for good, not
                    // a `.gz` still being written. One dead letter, and the file is done.
                    tailed.read_error = None;
                    tailed.corrupt = true;
                    match self.router.give_up(
                        &opened.file,
                        &opened.handle,
                        &mut opened.reader,
                        &error,
                    ) {
                        Routed::Drained => tailed.drained = true,
                        Routed::Blocked => {
                            blocked = true;
                            self.resume_at = Some(key);
                        }
                        Routed::Closed => return false,
                    }
                }
                Err(error) => {
                    // What was read before the error is sealed (route); the rest is read again
                    // from there, after 1 s, doubling up to a minute: one line per attempt.
                    let backoff = tailed.read_error.map_or(Duration::from_secs(1), |e| {
                        (e.backoff * 2).min(Duration::from_secs(60))
                    });
                    tailed.read_error = Some(ReadError { retry_at: now + backoff, backoff });
                    tracing::error!(
                        path = %tailed.path.display(),
                        offset = opened.reader.offset(),
                        %error,
                        retry_in = ?backoff,
                        "read error; nothing after this offset is skipped, will retry"
                    );
                }
            }
            if !matches!(tailed.read_error, Some(e) if e.retry_at > now) {
                tailed.read_error = None;
            }
            let after = opened.reader.offset() + opened.reader.pending_bytes();
            if tailed.drained && size.is_some_and(|size| after >= size) {
                tailed.unread_since = None;
            }
            if after != before {
                tailed.last_data = self.clock.now();
                if !opened.file.gzip {
                    tailed.seen = content_seen(opened, key, &tailed.path);
                }
            }
            if blocked {
                break;
            }
        }
        for (key, path, why) in restart {
            self.restart_from_zero(key, &path, why);
        }
        if blocked {
            self.note_unread();
        } else {
            self.publish_oldest_unread();
        }
        blocked
    }

    /// While held up: marks files with bytes not read yet (a stat each), so the age of the
    /// oldest unshipped byte keeps growing in `/metrics` instead of freezing.
    fn note_unread(&mut self) {
        let now = self.clock.now();
        if self.unread_noted.is_some_and(|t| now - t < Duration::from_millis(250)) {
            return;
        }
        self.unread_noted = Some(now);
        for tailed in self.open.values_mut() {
            let opened = &tailed.opened;
            if opened.file.gzip {
                continue;
            }
            let read_to = opened.reader.offset() + opened.reader.pending_bytes();
            if opened.handle.metadata().is_ok_and(|m| m.len() > read_to) {
                tailed.unread_since.get_or_insert(now);
            }
        }
        self.publish_oldest_unread();
    }

    /// ops: the reader's share of `jsonl_shipper_oldest_unshipped_age_seconds`.
    fn publish_oldest_unread(&self) {
        let oldest = self.open.values().filter_map(|t| t.unread_since).min();
        self.counters.oldest_unread.set_since(oldest);
    }

    /// Hands on what a held-up pipeline left in the router, waiting as long as it takes (the
    /// drain at shutdown or reload must not drop data that was already read).
    pub(crate) fn flush_stalled(&mut self) {
        while let Ok(false) = self.router.unstall(Duration::from_secs(1)) {}
    }

    /// A file truncated or rewritten under us: its new content is read from 0.
    fn restart_from_zero(&mut self, key: FileId, path: &Path, why: &str) {
        let Some(old) = self.unfollow(key) else { return };
        let (offset, handle) = (old.opened.reader.offset(), old.opened.handle.try_clone());
        let (in_glob, gone_since) = (old.in_glob, old.gone_since);
        drop(old);
        self.counters.truncations.add(1);
        tracing::warn!(
            path = %path.display(),
            offset,
            why,
            "file truncated or rewritten (copytruncate?); reading its new content from the start"
        );
        self.start(path, |opener| opener.open_from_start(handle?, path));
        // Still rotated away (or not): it is finished as it would have been.
        if let Some(tailed) = self.open.get_mut(&key) {
            (tailed.in_glob, tailed.gone_since) = (in_glob, gone_since);
        }
    }

    /// Handles files idle for `close_inactive`: rotated-away or deleted ones are finished
    /// (their unterminated tail shipped per the contract) and closed; others are parked.
    fn close_inactive(&mut self) {
        let now = self.clock.now();
        self.last_close = now;
        let close_inactive = self.config.sources.close_inactive;
        let idle: Vec<FileId> = self
            .open
            .iter()
            .filter(|(_, t)| {
                now - t.last_data.max(t.gone_since.unwrap_or(t.last_data)) >= close_inactive
            })
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            let Some(tailed) = self.open.get(&key) else { continue };
            let at_its_name =
                || std::fs::metadata(&tailed.path).is_ok_and(|m| FileId::of(&m) == key);
            let deleted = || tailed.opened.handle.metadata().is_ok_and(|m| m.nlink() == 0);
            // The last rescan may be old (the writers hold the reader up): a file it matched
            // that is not at its name any more was deleted (finish it now), or renamed, within
            // the globs or out of them: the next rescan tells, and it waits until then.
            if tailed.in_glob && !at_its_name() && !deleted() {
                continue;
            }
            let still_there = tailed.in_glob && at_its_name();
            if still_there {
                // A partial line stays open: if the file is deleted or rotated next, its tail
                // must still be shippable through this descriptor.
                if self.open.get(&key).is_some_and(|t| t.opened.reader.pending_bytes() == 0) {
                    self.park(key);
                }
                continue;
            }
            let Some(tailed) = self.open.get_mut(&key) else { continue };
            // Truncated or rewritten since the last pass: its new content is read first.
            let meta = tailed.opened.handle.metadata();
            if let Some(why) = meta
                .ok()
                .filter(|_| !tailed.opened.file.gzip)
                .and_then(|m| tailed.changed_under_us(&m))
            {
                let path = tailed.path.clone();
                self.restart_from_zero(key, &path, why);
                continue;
            }
            let Some(tailed) = self.open.get_mut(&key) else { continue };
            let opened = &mut tailed.opened;
            let before = opened.reader.offset() + opened.reader.pending_bytes();
            let routed = if tailed.corrupt {
                Ok(Routed::Drained)
            } else {
                self.router.route(&opened.file, &opened.handle, &mut opened.reader, true, &|| false)
            };
            match routed {
                Ok(Routed::Blocked) => {
                    tailed.drained = false;
                    if opened.reader.offset() + opened.reader.pending_bytes() != before {
                        tailed.last_data = self.clock.now();
                        continue;
                    }
                    let Ok(meta) = opened.handle.metadata() else { continue };
                    let unread = meta.len().saturating_sub(opened.reader.offset());
                    if unread > 0 && meta.nlink() > 0 {
                        continue; // renamed: it costs no disk space, keep it until it is read
                    }
                    if unread > 0 {
                        // Deleted, but held open it keeps its disk space: after close_inactive
                        // without progress it is let go, unread rest and all, said loudly.
                        self.counters.deleted_unread_bytes.add(unread);
                        tracing::warn!(
                            path = %tailed.path.display(),
                            offset = opened.reader.offset(),
                            unread_bytes = unread,
                            "closed a deleted file before reading it to its end: the writers \
                             have been held up (locked DB or full disk?) for \
                             sources.close_inactive; its unread bytes are not shipped"
                        );
                        self.unfollow(key);
                        self.opener.let_go(key);
                        continue;
                    }
                }
                Ok(Routed::Drained | Routed::Closed) => {}
                Err(error) if is_corrupt_gzip(&opened.file, &error) => {
                    // Idle for close_inactive already: corrupt for good.
                    tailed.corrupt = true;
                    let routed = self.router.give_up(
                        &opened.file,
                        &opened.handle,
                        &mut opened.reader,
                        &error,
                    );
                    if routed != Routed::Drained {
                        continue; // its letter is sealed and waits for room: closed next time
                    }
                }
                Err(error) => {
                    // Not finished: closing now would abandon the rest. Tried again at the
                    // next close_inactive.
                    tracing::error!(path = %tailed.path.display(), %error, "read error while finishing a rotated or deleted file; will retry");
                    continue;
                }
            }
            let Some(tailed) = self.unfollow(key) else { continue };
            self.opener.let_go(key);
            self.counters.rotations.add(1);
            tracing::info!(
                path = %tailed.path.display(),
                offset = tailed.opened.reader.offset(),
                "closed a rotated or deleted file after reading it to its end"
            );
        }
        self.counters.files_watched.set((self.open.len() + self.parked.len()) as u64);
    }
}
