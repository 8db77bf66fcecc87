//! OS signals become [`Signal`] values on a channel; the second SIGTERM/SIGINT ends the process
//! at once.
//!
//! Exiting on the second signal without draining is safe by construction: checkpoints only
//! ever cover durable data, so whatever was in flight is read again on the next start.
//! Drain order (readers stop → writers flush and commit → state thread persists checkpoints →
//! threads joined → exit 0) is implemented by [`crate::pipeline::Pipeline::finish`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals as SignalIter};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Shutdown,
    Reload,
}

/// Exit code of a forced (second-signal) exit.
const FORCED_EXIT: i32 = 130;

/// The installed handlers; dropping it stops the forwarding thread.
pub(crate) struct Signals {
    pub rx: Receiver<Signal>,
    /// Set once a shutdown was requested (also read by readers between spans).
    pub stopping: Arc<AtomicBool>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP.
    pub(crate) fn install() -> std::io::Result<Signals> {
        let stopping = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            // Runs before `stopping` is set by the forwarder, so it fires on the second signal.
            signal_hook::flag::register_conditional_shutdown(sig, FORCED_EXIT, stopping.clone())?;
        }
        let mut signals = SignalIter::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = signals.handle();
        let (tx, rx) = unbounded();
        let flag = stopping.clone();
        let thread = std::thread::Builder::new().name("signals".into()).spawn(move || {
            for sig in signals.forever() {
                let signal = if sig == SIGHUP { Signal::Reload } else { Signal::Shutdown };
                if signal == Signal::Shutdown {
                    tracing::info!(
                        signal = sig,
                        "shutdown requested; draining (send again to exit at once)"
                    );
                    flag.store(true, Ordering::SeqCst);
                }
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })?;
        Ok(Signals { rx, stopping, handle, thread: Some(thread) })
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
