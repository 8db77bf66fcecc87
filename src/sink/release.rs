//! Letting go of a run DB on request. Retention (its own thread) deletes a run DB only under
//! SQLite's exclusive lock, which any open connection prevents, this process's own included; so
//! when a delete finds the DB in use, retention asks every writer to close its connection to
//! that DB ([`Releases::release`]), waits a bounded time for their answers, and tries again.
//! Only another process's connection (or records buffered for that very run) then keeps it.
//!
//! Writers never wait on retention: a request is answered with a `try_send` on a channel sized
//! for every answer, and retention never queues more than [`QUEUED`] requests behind a writer
//! busy with a long commit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// Close your connection to the run DB at `path` (if you hold one and have nothing buffered
/// for its run), then answer on `done`.
pub(super) struct Release {
    pub(super) path: PathBuf,
    pub(super) done: Sender<()>,
}

/// Requests one writer may have queued: a writer busy for long answers late, and retention
/// does not pile more behind it (it reports the DB as kept and tries again next round).
const QUEUED: usize = 2;

/// The request channels of this process's writers (a writer registers when it starts; one
/// that has exited is dropped at the next request).
#[derive(Debug, Default)]
pub(crate) struct Releases {
    writers: Mutex<Vec<Sender<Release>>>,
}

impl Releases {
    /// A writer's end: it polls this between batches.
    pub(super) fn register(&self) -> Receiver<Release> {
        let (tx, rx) = bounded(QUEUED);
        self.writers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Asks every writer to close its connection to the run DB at `path` and waits up to
    /// `timeout` for all of them to answer. Returns whether they all did; a writer with records
    /// buffered for that run keeps its connection (and retention then keeps the DB).
    pub(crate) fn release(&self, path: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let (done, answers) = bounded(writers.len().max(1));
        let (mut asked, mut all) = (0, true);
        writers.retain(|tx| {
            match tx.try_send(Release { path: path.to_path_buf(), done: done.clone() }) {
                Ok(()) => asked += 1,
                Err(TrySendError::Full(_)) => all = false,
                Err(TrySendError::Disconnected(_)) => return false,
            }
            true
        });
        drop(writers);
        drop(done);
        (0..asked).all(|_| answers.recv_deadline(deadline).is_ok()) && all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_writer_is_asked_and_a_busy_or_gone_one_does_not_block() {
        let releases = Releases::default();
        // No writer: nothing to wait for.
        assert!(releases.release(Path::new("/o/a.sqlite"), Duration::ZERO));
        let (one, two) = (releases.register(), releases.register());
        let answer = |rx: Receiver<Release>| {
            std::thread::spawn(move || {
                let req = rx.recv().unwrap();
                req.done.try_send(()).unwrap();
                (req.path, rx)
            })
        };
        let (a, b) = (answer(one), answer(two));
        assert!(releases.release(Path::new("/o/a.sqlite"), Duration::from_secs(30)));
        let ((path_a, one), (path_b, two)) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(path_a, Path::new("/o/a.sqlite"));
        assert_eq!(path_b, Path::new("/o/a.sqlite"));
        // A writer that does not answer: false after the timeout, and never more than QUEUED
        // requests queued behind it (then false at once).
        let started = Instant::now();
        for _ in 0..QUEUED {
            assert!(!releases.release(Path::new("/o/b.sqlite"), Duration::from_millis(10)));
        }
        assert!(!releases.release(Path::new("/o/b.sqlite"), Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(one.len(), QUEUED);
        // Writers that exited are dropped.
        drop((one, two));
        assert!(releases.release(Path::new("/o/c.sqlite"), Duration::from_secs(30)));
        assert!(releases.writers.lock().unwrap().is_empty());
    }
}
