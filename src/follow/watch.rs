//! inotify, as a hint only: it wakes the daemon's loop early and says whether what changed was
//! structural (a name: new file, rename, delete) or just an append. Rescans stay the source of
//! truth, so a lost or overflowed event costs latency, never data.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver};
use notify::Watcher;

/// The inotify watcher, the directories it watches and what its events said since last asked.
pub(crate) struct Watch {
    watcher: notify::RecommendedWatcher,
    dirs: Vec<PathBuf>,
    /// One pending wake-up (coalesced): the reader looks at every file anyway.
    pub wake: Receiver<()>,
    structural: Arc<AtomicBool>,
    appended: Arc<AtomicBool>,
}

impl Watch {
    /// None (with a WARN) where inotify is unavailable: the daemon then relies on rescans.
    pub(crate) fn start() -> Option<Watch> {
        let (wake_tx, wake) = bounded::<()>(1);
        // Starts true: the first turn rescans at once.
        let structural = Arc::new(AtomicBool::new(true));
        let appended = Arc::new(AtomicBool::new(false));
        let (structural_flag, appended_flag) = (structural.clone(), appended.clone());
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
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
            let _ = wake_tx.try_send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; relying on rescans"))
        .ok()?;
        Some(Watch { watcher, dirs: Vec::new(), wake, structural, appended })
    }

    /// Watches `dir` (not recursively) if it exists and is not watched yet.
    pub(crate) fn watch(&mut self, dir: PathBuf) {
        if !self.dirs.contains(&dir)
            && dir.is_dir()
            && self.watcher.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok()
        {
            self.dirs.push(dir);
        }
    }

    /// A name changed since the last [`Watch::take_structural`].
    pub(crate) fn structural(&self) -> bool {
        self.structural.load(Ordering::Relaxed)
    }

    /// Whether a name changed, clearing the flag.
    pub(crate) fn take_structural(&self) -> bool {
        self.structural.swap(false, Ordering::Relaxed)
    }

    /// A file was appended to since the last rescan.
    pub(crate) fn appended(&self) -> bool {
        self.appended.load(Ordering::Relaxed)
    }

    pub(crate) fn clear_appended(&self) {
        self.appended.store(false, Ordering::Relaxed);
    }
}
