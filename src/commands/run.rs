//! `run`: the daemon. Discovers files by periodic glob rescans (the source of truth), wakes
//! early on inotify events (a hint only), tails every matching file from its checkpoint, and
//! drains gracefully on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
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

pub(super) fn run(config: Config, _args: ConfigArgs) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    let signals = Signals::install().context("installing signal handlers")?;
    let counters = Arc::new(Counters::default());
    let config = Arc::new(config);
    let pipeline = Pipeline::start(config.clone(), Mode::Daemon, counters.clone())?;
    let (wake_tx, wake_rx) = bounded::<()>(1);
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        // Coalesce: one pending wake-up is enough, the reader looks at every file anyway.
        let _ = wake_tx.try_send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
    .ok();
    let mut tailer = Tailer {
        router: pipeline.router(),
        pipeline: &pipeline,
        config: &config,
        counters: &counters,
        files: HashMap::new(),
        watched_dirs: Vec::new(),
        first_scan: true,
    };
    tailer.rescan(watcher.as_mut());
    tracing::info!(
        files = tailer.files.len(),
        patterns = ?config.sources.paths,
        output = %config.output.dir.display(),
        "jsonl-shipper running"
    );
    let mut last_rescan = Instant::now();
    loop {
        if signals.is_stopping() {
            break;
        }
        tailer.read_all(&|| signals.is_stopping());
        if last_rescan.elapsed() >= config.sources.rescan_interval {
            last_rescan = Instant::now();
            tailer.rescan(watcher.as_mut());
            tailer.close_finished();
        }
        let timeout = config.sources.rescan_interval.saturating_sub(last_rescan.elapsed());
        if wait(&signals.rx, &wake_rx, timeout) == Some(Signal::Shutdown) {
            break;
        }
    }
    drop(tailer);
    drop(watcher);
    pipeline.finish()?;
    tracing::info!(
        lines = counters.lines_read.get(),
        events = counters.events_written.get(),
        dead_letters = counters.dlq_total(),
        "drained; exiting"
    );
    Ok(ExitCode::SUCCESS)
}

/// Sleeps until a signal, a file-system event, or the timeout.
fn wait(signals: &Receiver<Signal>, wake: &Receiver<()>, timeout: Duration) -> Option<Signal> {
    select! {
        recv(signals) -> sig => match sig {
            Ok(Signal::Reload) => {
                tracing::warn!("SIGHUP: config reload is not implemented yet; restart to apply changes");
                None
            }
            Ok(sig) => Some(sig),
            Err(_) => Some(Signal::Shutdown),
        },
        recv(wake) -> _ => None,
        default(timeout) => None,
    }
}

struct Tailed {
    opened: Opened,
    last_data: Instant,
}

struct Tailer<'a> {
    pipeline: &'a Pipeline,
    router: Router,
    config: &'a Config,
    counters: &'a Counters,
    files: HashMap<(u64, u64), Tailed>,
    watched_dirs: Vec<PathBuf>,
    first_scan: bool,
}

impl Tailer<'_> {
    /// Finds files matching the globs and starts tailing new ones.
    fn rescan(&mut self, mut watcher: Option<&mut notify::RecommendedWatcher>) {
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
                if !meta.is_file() || self.files.contains_key(&(meta.dev(), meta.ino())) {
                    continue;
                }
                let from_end = self.first_scan && self.config.sources.read_from == ReadFrom::End;
                self.start(&path, from_end);
            }
        }
        self.first_scan = false;
        self.counters.files_watched.set(self.files.len() as u64);
    }

    fn start(&mut self, path: &Path, from_end: bool) {
        match self.pipeline.open(path, from_end) {
            Ok(Some(opened)) => {
                tracing::info!(path = %path.display(), offset = opened.start_offset, "following file");
                let key = (opened.file.dev, opened.file.ino);
                self.files.insert(key, Tailed { opened, last_data: Instant::now() });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(path = %path.display(), error = format!("{error:#}"), "cannot open file")
            }
        }
    }

    /// Reads every complete line available in every file.
    fn read_all(&mut self, stop: &dyn Fn() -> bool) {
        let mut truncated = Vec::new();
        for (key, tailed) in &mut self.files {
            let file = &tailed.opened.file;
            if !file.gzip {
                if let Ok(meta) = file.handle.metadata() {
                    if meta.len() < tailed.opened.reader.offset() {
                        truncated.push((*key, file.path.clone(), meta.len()));
                        continue;
                    }
                }
            }
            let before = tailed.opened.reader.offset() + tailed.opened.reader.pending_bytes();
            match self.router.route(&tailed.opened.file, &mut tailed.opened.reader, false, stop) {
                Ok(Routed::Drained) => {}
                Ok(Routed::Closed) => return,
                Err(error) => tracing::error!(
                    path = %file.path.display(),
                    offset = tailed.opened.reader.offset(),
                    %error,
                    "read error; will retry"
                ),
            }
            if tailed.opened.reader.offset() + tailed.opened.reader.pending_bytes() != before {
                tailed.last_data = Instant::now();
            }
        }
        for (key, path, size) in truncated {
            let old = self.files.remove(&key).map(|t| t.opened.reader.offset());
            tracing::warn!(path = %path.display(), size, offset = old, "file truncated; reading its new content from the start");
            self.restart_at_zero(&path);
        }
    }

    fn restart_at_zero(&mut self, path: &Path) {
        match self.pipeline.open_from_start(path) {
            Ok(Some(opened)) => {
                let key = (opened.file.dev, opened.file.ino);
                self.files.insert(key, Tailed { opened, last_data: Instant::now() });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(path = %path.display(), error = format!("{error:#}"), "cannot reopen file")
            }
        }
    }

    /// Closes files that were rotated away or deleted and have been idle for
    /// `close_inactive`, shipping their unterminated tail per the contract.
    fn close_finished(&mut self) {
        let close_inactive = self.config.sources.close_inactive;
        let done: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(key, t)| {
                let still_there = std::fs::metadata(&t.opened.file.path)
                    .is_ok_and(|m| (m.dev(), m.ino()) == **key);
                !still_there && t.last_data.elapsed() >= close_inactive
            })
            .map(|(key, _)| *key)
            .collect();
        for key in done {
            let Some(mut tailed) = self.files.remove(&key) else { continue };
            let path = tailed.opened.file.path.clone();
            if let Err(error) =
                self.router.route(&tailed.opened.file, &mut tailed.opened.reader, true, &|| false)
            {
                tracing::error!(path = %path.display(), %error, "read error while closing");
            }
            tracing::info!(path = %path.display(), offset = tailed.opened.reader.offset(), "closed rotated or deleted file");
        }
        self.counters.files_watched.set(self.files.len() as u64);
    }
}
