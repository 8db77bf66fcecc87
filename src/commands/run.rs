//! `run`: the daemon. Discovers files by periodic glob rescans (the source of truth), wakes
//! early on inotify events (a hint only), tails every matching file from its checkpoint,
//! reloads its config on SIGHUP and drains gracefully on SIGTERM/SIGINT.
//!
//! File lifecycle: a matching file is opened at its checkpoint (verified by fingerprints) and
//! followed. One idle for `close_inactive`, or pushed out by `max_open_files`, is *parked*: its
//! descriptor is closed and its position remembered; a rescan that sees it grow (or shrink:
//! truncation) reopens it. One rotated away or deleted is read to its end through the open
//! descriptor, its unterminated tail shipped per the contract once it has been idle for
//! `close_inactive`, and then closed.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{bounded, select, Receiver};
use notify::Watcher;

use crate::cli::ConfigArgs;
use crate::config::{Config, ReadFrom};
use crate::discover;
use crate::metrics::Counters;
use crate::pipeline::{Mode, Opened, Pipeline};
use crate::route::{Routed, Router};
use crate::shutdown::{Signal, Signals};

/// Rescans triggered by inotify (a new file, a rename) are at most this frequent, so a storm
/// of events costs little while tomorrow's file is still found within ~100 ms.
const MIN_EVENT_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

/// While the writers hold the reader up, the glob rescan runs this rarely.
const HELD_UP_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// How long a read pass waits for a held-up writer to take what was already read before the
/// loop turns to its other duties (signals, rescans, closing deleted files).
const UNSTALL_WAIT: Duration = Duration::from_millis(100);

/// Why the inner loop returned.
enum Exit {
    Shutdown,
    Reload(Box<Config>),
}

pub(super) fn run(config: Config, args: ConfigArgs) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    let config = fit_fd_limit(config);
    let signals = Signals::install().context("installing signal handlers")?;
    let counters = Arc::new(Counters::default());
    let mut config = Arc::new(config);
    let mut ops = crate::monitor::Ops::start(&config, counters.clone())?; // ops: /metrics, watchdog
    let (wake_tx, wake_rx) = bounded::<()>(1);
    let structural = Arc::new(AtomicBool::new(true));
    let structural_flag = structural.clone();
    let appended = Arc::new(AtomicBool::new(false));
    let appended_flag = appended.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        use notify::EventKind;
        let structural_change = match &event {
            // Opens and closes change no name or size (a write is also a Modify(Data)). Our
            // own rescans open the watched directory, which inotify reports: acting on that
            // made every rescan trigger the next one 100 ms later, forever.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => return,
            Ok(event) => {
                !matches!(event.kind, EventKind::Modify(notify::event::ModifyKind::Data(_)))
            }
            // An error (e.g. the inotify queue overflowed): rescan to be safe.
            Err(_) => true,
        };
        if structural_change {
            structural_flag.store(true, Ordering::Relaxed);
        } else {
            appended_flag.store(true, Ordering::Relaxed);
        }
        // Coalesce: one pending wake-up is enough, the reader looks at every file anyway.
        let _ = wake_tx.try_send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
    .ok();
    let mut first_start = true;
    loop {
        let pipeline = Pipeline::start(config.clone(), Mode::Daemon, counters.clone())?;
        let mut tailer = Tailer {
            router: pipeline.router(),
            pipeline: &pipeline,
            config: &config,
            counters: &counters,
            open: HashMap::new(),
            parked: HashMap::new(),
            backlog: false,
            parked_grew: false,
            from_end_deferred: HashSet::new(),
            watched_dirs: Vec::new(),
            // read_from = "end" applies to files first seen at startup, not after a reload.
            from_end_at_first_scan: first_start && config.sources.read_from == ReadFrom::End,
            resume_at: None,
            order: Vec::new(),
            order_stale: true,
            unread_noted: None,
        };
        tailer.rescan(watcher.as_mut());
        if first_start {
            tracing::info!(
                files = tailer.open.len() + tailer.parked.len(),
                patterns = ?config.sources.paths,
                output = %config.output.dir.display(),
                "jsonl-shipper running"
            );
        }
        let files = tailer.open.len() + tailer.parked.len();
        crate::systemd::ready(&format!("following {files} files")); // ops: READY=1 (ends a reload)
        first_start = false;
        let retention = Retention::spawn(config.clone(), counters.clone())?;
        let flags = (&*structural, &*appended);
        let exit = main_loop(&mut tailer, &signals, &wake_rx, flags, watcher.as_mut(), &args);
        if matches!(exit, Exit::Shutdown) {
            crate::systemd::stopping(); // ops: STOPPING=1 before the drain
        }
        retention.stop();
        tailer.flush_stalled();
        drop(tailer);
        pipeline.finish()?;
        match exit {
            Exit::Shutdown => break,
            Exit::Reload(new) => {
                let new = Arc::new(fit_fd_limit(*new));
                if new.metrics != config.metrics {
                    ops = restart_ops(ops, &config, &new, &counters)?;
                }
                tracing::info!(patterns = ?new.sources.paths, "config reloaded; resuming from the checkpoints just written");
                config = new;
            }
        }
    }
    drop(watcher);
    tracing::info!(
        lines = counters.lines_read.get(),
        events = counters.events_written.get(),
        dead_letters = counters.dlq_total(),
        "drained; exiting"
    );
    drop(ops); // ops: /metrics answers until the drain is done
    Ok(ExitCode::SUCCESS)
}

/// Applies changed `[metrics]` settings: the endpoint moves, the monitor takes the new
/// thresholds. If the new endpoint cannot start (its address is taken), the old settings are
/// kept, loudly: the watchdog must never be left without its monitor.
fn restart_ops(
    ops: crate::monitor::Ops,
    old: &Arc<Config>,
    new: &Arc<Config>,
    counters: &Arc<Counters>,
) -> anyhow::Result<crate::monitor::Ops> {
    drop(ops); // frees the listening socket, which the new settings may reuse
    match crate::monitor::Ops::start(new, counters.clone()) {
        Ok(ops) => {
            tracing::info!(listen = ?new.metrics.listen, "metrics settings applied");
            Ok(ops)
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "SIGHUP: cannot apply the new [metrics] settings; keeping the previous ones"
            );
            crate::monitor::Ops::start(old, counters.clone())
                .context("restarting the metrics endpoint with the previous settings")
        }
    }
}

/// Lowers `sources.max_open_files` (one descriptor each) and `output.max_open_dbs` (three
/// each: db, wal, shm) so that both, plus slack, fit under the process's open-files limit:
/// running out of descriptors would stall shipping; fewer open files only means more reopening.
fn fit_fd_limit(mut config: Config) -> Config {
    let Some(limit) = super::fd_limit() else { return config };
    let usable = limit.saturating_sub(64);
    let (files, dbs) = (config.sources.max_open_files as u64, config.output.max_open_dbs as u64);
    if files + 3 * dbs <= usable {
        return config;
    }
    // Half the descriptors for sources, half for run DBs.
    let fit_files = files.min(usable / 2).max(8) as usize;
    let fit_dbs = dbs.min(usable / 2 / 3).max(2) as usize;
    tracing::warn!(
        limit,
        max_open_files = fit_files,
        max_open_dbs = fit_dbs,
        "the open-files limit (ulimit -n / LimitNOFILE) is low; following fewer files and keeping fewer run DBs open at once"
    );
    config.sources.max_open_files = fit_files;
    config.output.max_open_dbs = fit_dbs;
    config
}

fn main_loop(
    tailer: &mut Tailer<'_>,
    signals: &Signals,
    wake: &Receiver<()>,
    (structural, appended): (&AtomicBool, &AtomicBool),
    mut watcher: Option<&mut notify::RecommendedWatcher>,
    args: &ConfigArgs,
) -> Exit {
    let rescan_interval = tailer.config.sources.rescan_interval;
    let mut last_rescan = Instant::now();
    let mut last_close = Instant::now();
    // A pass fstats every open file; one after a timeout (no inotify event) need only visit
    // the files the rescan saw grow. Without inotify every pass is full.
    let mut full_pass = true;
    loop {
        if signals.is_stopping() {
            return Exit::Shutdown;
        }
        tailer.counters.reader_alive(); // ops: the watchdog's proof that this loop turns
        let blocked = tailer.read_all(&|| signals.is_stopping(), full_pass || watcher.is_none());
        full_pass = blocked; // a held-up pass resumes where it stopped
        let since = last_rescan.elapsed();
        // A backlog (more changed files than max_open_files) is worked through at that many
        // files per MIN_EVENT_RESCAN_INTERVAL. While parked files are being appended to (more
        // active files than max_open_files), an append is a reason to rescan too: inotify does
        // not say which file grew, and waiting for the periodic rescan would delay them by up
        // to rescan_interval.
        let parked_growing = tailer.parked_grew && appended.load(Ordering::Relaxed);
        if blocked && since >= rescan_interval && since < HELD_UP_RESCAN_INTERVAL {
            // Held up: files found now could not be read yet, and a rescan of thousands of
            // files would burn the CPU the writers need; discovery slows down (it still runs,
            // for a pipeline saturated for hours). Deleted files still go on time.
            if last_close.elapsed() >= rescan_interval {
                last_close = Instant::now();
                tailer.close_inactive();
            }
        } else if since >= rescan_interval
            || (!blocked
                && since >= MIN_EVENT_RESCAN_INTERVAL
                && (tailer.backlog || parked_growing || structural.swap(false, Ordering::Relaxed)))
        {
            appended.store(false, Ordering::Relaxed);
            last_rescan = Instant::now();
            let opened = tailer.rescan(watcher.as_deref_mut());
            last_close = Instant::now();
            tailer.close_inactive();
            if opened || tailer.open.values().any(Tailed::has_news) {
                continue; // what this rescan found is read now, not after the next wake-up
            }
        }
        // A pending event-triggered rescan is due MIN_EVENT_RESCAN_INTERVAL after the last one.
        let due = if tailer.backlog || parked_growing || structural.load(Ordering::Relaxed) {
            MIN_EVENT_RESCAN_INTERVAL
        } else {
            rescan_interval
        };
        // Held up: read_all already waited for the writers; just look at the signals.
        // Turn at least twice per `unhealthy_after`, so a long rescan interval cannot look stuck.
        let timeout = if blocked {
            Duration::ZERO
        } else {
            due.saturating_sub(last_rescan.elapsed()).min(tailer.config.metrics.unhealthy_after / 2)
        };
        select! {
            recv(signals.rx) -> sig => match sig {
                Ok(Signal::Reload) => match super::load_config(args)
                    .and_then(|new| super::prepare_dirs(&new).map(|()| new))
                {
                    Ok(new) => {
                        crate::systemd::reloading(); // ops: RELOADING=1
                        return Exit::Reload(Box::new(new));
                    }
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "SIGHUP: the new config is invalid; keeping the running one"
                    ),
                },
                Ok(Signal::Shutdown) | Err(_) => return Exit::Shutdown,
            },
            recv(wake) -> _ => full_pass = true,
            default(timeout) => {},
        }
    }
}

/// The retention loop: every `retention.check_interval`, one round of `maintain::run_once`
/// (retention only: the writers checkpoint their own DBs). A plain thread, because the round
/// is blocking file and SQLite work; run DBs the writers hold open are skipped by the round
/// itself (it deletes a DB only while holding SQLite's exclusive lock on it).
struct Retention {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Retention {
    fn spawn(config: Arc<Config>, counters: Arc<Counters>) -> anyhow::Result<Retention> {
        let (stop, stopped) = bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("retention".into())
            .spawn(move || loop {
                select! {
                    recv(stopped) -> _ => return,
                    default(config.retention.check_interval) => {}
                }
                match crate::maintain::run_once(
                    &config,
                    &HashSet::new(),
                    crate::maintain::Options::periodic(),
                ) {
                    Ok(report) => counters.retention_deleted.add(report.deleted()),
                    Err(error) => tracing::error!(
                        error = format!("{error:#}"),
                        "retention round failed; will retry"
                    ),
                }
            })
            .context("spawning the retention thread")?;
        Ok(Retention { stop, thread })
    }

    fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("the retention thread panicked");
        }
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
    seen: Option<crate::checkpoint::Checkpoint>,
    /// Since when the file has had bytes we have not read (None: read up to its size).
    unread_since: Option<Instant>,
    /// The file's size when last looked at (a rescan's stat, `read_all`'s fstat, or at open).
    size: u64,
    /// The last read ended with no complete line left in the reader's buffer (false after a
    /// read pass stopped by backpressure): "no new bytes" then means "nothing to read".
    drained: bool,
    /// The last rescan found it under a glob; rotated-away files are visited by every pass.
    in_glob: bool,
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

    /// Read up to the size last seen, nothing buffered: parking it loses no progress.
    fn caught_up(&self) -> bool {
        let reader = &self.opened.reader;
        if self.opened.file.gzip {
            reader.at_eof() && reader.pending_bytes() == 0
        } else {
            reader.pending_bytes() == 0 && reader.offset() >= self.size
        }
    }
}

/// Fingerprints what `opened` has read so far (None for `.gz` or nothing read yet).
fn content_seen(
    opened: &Opened,
    key: (u64, u64),
    path: &Path,
) -> Option<crate::checkpoint::Checkpoint> {
    let offset = opened.reader.offset();
    if opened.file.gzip || offset == 0 {
        return None;
    }
    let fp = crate::checkpoint::Fingerprint::compute(&opened.handle, false, offset).ok()?;
    Some(crate::checkpoint::Checkpoint::at(key, path, offset, opened.reader.line_no(), fp))
}

/// A file known but closed: everything up to `offset` was read when it was parked.
struct Parked {
    offset: u64,
    line_no: u64,
    /// What `offset` was read from: a file that changed under the same inode (truncated and
    /// regrown, or a new file reusing the inode) is read from 0 when it is reopened.
    fingerprint: crate::checkpoint::Fingerprint,
    /// The size when parked: a rescan reopens the file when its size differs.
    size_seen: u64,
    /// Where it was when parked (a glob match).
    path: PathBuf,
    /// When it was parked: changed files wait for a descriptor oldest first.
    parked_at: Instant,
}

/// A file a rescan found new or changed, not open.
struct Changed {
    /// Its saved checkpoint is at its end: opening it reads nothing.
    caught_up: bool,
    /// None for a file not parked (new to this process).
    parked_at: Option<Instant>,
    path: PathBuf,
    key: (u64, u64),
}

struct Tailer<'a> {
    pipeline: &'a Pipeline,
    router: Router,
    config: &'a Config,
    counters: &'a Counters,
    open: HashMap<(u64, u64), Tailed>,
    parked: HashMap<(u64, u64), Parked>,
    /// The last rescan found more new or changed files than `max_open_files`: rescan again
    /// as soon as the ones it opened are read.
    backlog: bool,
    /// The last rescan reopened parked files that had grown.
    parked_grew: bool,
    /// Files seen by the first scan with `read_from = "end"` but left for a later one.
    from_end_deferred: HashSet<(u64, u64)>,
    watched_dirs: Vec<PathBuf>,
    from_end_at_first_scan: bool,
    /// Where the last read pass stopped because the pipeline was held up: the next pass
    /// starts there, so every file gets its turn under sustained backpressure.
    resume_at: Option<(u64, u64)>,
    /// The open files' keys, sorted: the order of read passes (rebuilt when `open` changes).
    order: Vec<(u64, u64)>,
    order_stale: bool,
    /// When `note_unread` last looked (it fstats every open file: not on every held-up pass).
    unread_noted: Option<Instant>,
}

impl Tailer<'_> {
    /// Finds files matching the globs: opens new ones, reopens parked ones that changed.
    /// Returns whether it opened any file.
    fn rescan(&mut self, mut watcher: Option<&mut notify::RecommendedWatcher>) -> bool {
        for tailed in self.open.values_mut() {
            tailed.in_glob = false;
        }
        let mut seen = HashSet::new();
        let mut changed: Vec<Changed> = Vec::new();
        for pattern in &self.config.sources.paths {
            let dir = discover::glob_base(pattern);
            if let Some(w) = watcher.as_deref_mut() {
                if !self.watched_dirs.contains(&dir)
                    && dir.is_dir()
                    && w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
                {
                    self.watched_dirs.push(dir);
                }
            }
            let Ok(paths) = glob::glob(pattern) else { continue };
            for path in paths.filter_map(Result::ok) {
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                // A file matched twice (two globs, hard links) is one file.
                if !meta.is_file() || !seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                let key = (meta.dev(), meta.ino());
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
                    Some(p) if p.size_seen == meta.len() => {}
                    Some(p) => changed.push(Changed {
                        caught_up: false,
                        parked_at: Some(p.parked_at),
                        path,
                        key,
                    }),
                    None => {
                        // Its checkpoint is at its end (most files at startup): nothing to read.
                        let caught_up = self
                            .pipeline
                            .checkpoint(key.0, key.1)
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
                }
                continue;
            }
            // Only files opened count: unreadable ones must not keep the others waiting.
            let started = match self.parked.remove(&key) {
                Some(parked) => self.start(&path, |pl| {
                    let (offset, line_no) = (parked.offset, parked.line_no);
                    pl.reopen(&path, &path, key, offset, line_no, parked.fingerprint)
                }),
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
        self.follow_renamed_parked(&seen);
        tracing::debug!(files = seen.len(), "rescanned");
        self.counters.files_watched.set((self.open.len() + self.parked.len()) as u64);
        // ops: jsonl_shipper_lag_bytes = bytes appended to plain files but not read yet.
        // (Sizes as read_all last saw them: no fstat per open file here.)
        let lag = |t: &Tailed| {
            let size = if t.opened.file.gzip { 0 } else { t.size };
            size.saturating_sub(t.opened.reader.offset())
        };
        let parked_lag = |p: &Parked| p.size_seen.saturating_sub(p.offset);
        self.counters.lag_bytes.set(
            self.open.values().map(lag).sum::<u64>()
                + self.parked.values().map(parked_lag).sum::<u64>(),
        );
        opened > 0
    }

    /// Parked files the globs no longer match were deleted or renamed away (logrotate). A
    /// renamed one may still be written through its producer's descriptor, so it is looked
    /// up by inode in the globs' directories: with new bytes it is reopened as a rotated file
    /// (read to its end, finished after `close_inactive`); otherwise, and if gone, forgotten
    /// (its checkpoint row stays in the state DB).
    fn follow_renamed_parked(&mut self, seen: &HashSet<(u64, u64)>) {
        // A set: it is probed once per directory entry, and thousands of files can go at once.
        let missing: HashSet<(u64, u64)> =
            self.parked.keys().filter(|key| !seen.contains(key)).copied().collect();
        if missing.is_empty() {
            return;
        }
        let mut found: HashMap<(u64, u64), (PathBuf, u64)> = HashMap::new();
        let dirs: HashSet<PathBuf> =
            self.config.sources.paths.iter().map(|p| discover::glob_base(p)).collect();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let key = (meta.dev(), meta.ino());
                if meta.is_file() && missing.contains(&key) {
                    found.insert(key, (entry.path(), meta.len()));
                }
            }
        }
        for key in missing {
            let Some(parked) = self.parked.remove(&key) else { continue };
            let Some((new_path, size)) = found.remove(&key) else { continue };
            if size == parked.size_seen {
                continue;
            }
            tracing::info!(from = %parked.path.display(), to = %new_path.display(), "an idle file was renamed away and written again; reading it to its end");
            let (offset, line_no, fingerprint) =
                (parked.offset, parked.line_no, parked.fingerprint);
            let known_as = parked.path.clone();
            self.start(&new_path, |pl| {
                pl.reopen(&new_path, &known_as, key, offset, line_no, fingerprint)
            });
            // Keep the old (glob) path: the file counts as rotated away, so it is finished and
            // closed once idle instead of being parked again.
            if let Some(tailed) = self.open.get_mut(&key) {
                tailed.path = parked.path;
            }
        }
    }

    /// Opens a file and follows it; false if it could not be opened (vanished, or an error).
    fn start(
        &mut self,
        path: &Path,
        open: impl FnOnce(&Pipeline) -> anyhow::Result<Option<Opened>>,
    ) -> bool {
        match open(self.pipeline) {
            Ok(Some(opened)) => {
                let key = (opened.file.dev, opened.file.ino);
                tracing::debug!(path = %path.display(), offset = opened.start_offset, "following file");
                self.make_room();
                let size = opened.handle.metadata().map_or(0, |m| m.len());
                self.order_stale = true;
                self.open.insert(
                    key,
                    Tailed {
                        opened,
                        path: path.to_path_buf(),
                        last_data: Instant::now(),
                        seen: None,
                        unread_since: None,
                        size,
                        drained: true,
                        in_glob: true,
                    },
                );
                true
            }
            Ok(None) => false,
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
            let lru = self.open.iter().min_by_key(|(_, t)| (!t.caught_up(), t.last_data));
            let Some(key) = lru.map(|(k, _)| *k) else {
                return;
            };
            self.park(key);
        }
    }

    /// Stops following a file (the read order is rebuilt for the next pass).
    fn unfollow(&mut self, key: (u64, u64)) -> Option<Tailed> {
        self.order_stale = true;
        self.open.remove(&key)
    }

    fn park(&mut self, key: (u64, u64)) {
        if let Some(tailed) = self.unfollow(key) {
            let reader = &tailed.opened.reader;
            let file = &tailed.opened.file;
            // Reopening resumes after the last complete line; a partial line is read again.
            let offset = reader.offset();
            let fingerprint =
                crate::checkpoint::Fingerprint::compute(&tailed.opened.handle, file.gzip, offset)
                    .unwrap_or_default();
            // Parked at its read position, not its size: a file pushed out by
            // max_open_files before it was read to its end must be reopened.
            let size_seen = if file.gzip { u64::MAX } else { offset };
            self.parked.insert(
                key,
                Parked {
                    offset,
                    line_no: reader.line_no(),
                    fingerprint,
                    size_seen,
                    path: tailed.path.clone(),
                    parked_at: Instant::now(),
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
        match self.router.unstall(UNSTALL_WAIT) {
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
        let now = Instant::now();
        for i in 0..n {
            let key = self.order[(start + i) % n];
            let Some(tailed) = self.open.get_mut(&key) else { continue };
            if !full && tailed.in_glob && !tailed.has_news() {
                continue; // the rescan's stat saw nothing new
            }
            let mut size = None;
            if !tailed.opened.file.gzip {
                let opened = &tailed.opened;
                if let Ok(meta) = opened.handle.metadata() {
                    let read_to = opened.reader.offset();
                    if meta.len() < read_to {
                        restart.push((key, tailed.path.clone(), "it shrank below our position"));
                        continue;
                    }
                    // New bytes: first check that what we read is still there (copytruncate
                    // can refill a file past our position before we look).
                    let grew = meta.len() > read_to + opened.reader.pending_bytes();
                    if grew
                        && tailed.seen.as_ref().is_some_and(|seen| {
                            matches!(seen.verify(&opened.handle, false), Ok(Err(_)))
                        })
                    {
                        restart.push((key, tailed.path.clone(), "the content we read changed"));
                        continue;
                    }
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
                Err(error) => tracing::error!(
                    path = %tailed.path.display(),
                    offset = opened.reader.offset(),
                    %error,
                    "read error; will retry"
                ),
            }
            let after = opened.reader.offset() + opened.reader.pending_bytes();
            if tailed.drained && size.is_some_and(|size| after >= size) {
                tailed.unread_since = None;
            }
            if after != before {
                tailed.last_data = Instant::now();
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
        let now = Instant::now();
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
    fn flush_stalled(&mut self) {
        while let Ok(false) = self.router.unstall(Duration::from_secs(1)) {}
    }

    /// A file truncated or rewritten under us: its new content is read from 0.
    fn restart_from_zero(&mut self, key: (u64, u64), path: &Path, why: &str) {
        let old = self.unfollow(key).map(|t| t.opened.reader.offset());
        self.counters.truncations.add(1);
        tracing::warn!(
            path = %path.display(),
            offset = old,
            why,
            "file truncated or rewritten (copytruncate?); reading its new content from the start"
        );
        self.start(path, |pl| pl.open_from_start(path));
    }

    /// Handles files idle for `close_inactive`: rotated-away or deleted ones are finished
    /// (their unterminated tail shipped per the contract) and closed; others are parked.
    fn close_inactive(&mut self) {
        let close_inactive = self.config.sources.close_inactive;
        let idle: Vec<(u64, u64)> = self
            .open
            .iter()
            .filter(|(_, t)| t.last_data.elapsed() >= close_inactive)
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            let still_there = self.open.get(&key).is_some_and(|t| {
                std::fs::metadata(&t.path).is_ok_and(|m| (m.dev(), m.ino()) == key)
            });
            if still_there {
                // A partial line stays open: if the file is deleted or rotated next, its tail
                // must still be shippable through this descriptor.
                if self.open.get(&key).is_some_and(|t| t.opened.reader.pending_bytes() == 0) {
                    self.park(key);
                }
                continue;
            }
            let Some(tailed) = self.open.get_mut(&key) else { continue };
            let opened = &mut tailed.opened;
            let before = opened.reader.offset() + opened.reader.pending_bytes();
            match self
                .router
                .route(&opened.file, &opened.handle, &mut opened.reader, true, &|| false)
            {
                Ok(Routed::Blocked) => {
                    tailed.drained = false;
                    if opened.reader.offset() + opened.reader.pending_bytes() != before {
                        tailed.last_data = Instant::now(); // progress: finish it later
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
                        continue;
                    }
                }
                Ok(Routed::Drained | Routed::Closed) => {}
                Err(error) => {
                    tracing::error!(path = %tailed.path.display(), %error, "read error while closing")
                }
            }
            let Some(tailed) = self.unfollow(key) else { continue };
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
