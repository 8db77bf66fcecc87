//! Progress of a long command (`backfill`, `export`, `catalog rebuild`): a bar on a terminal,
//! a log line at most every 10 s otherwise (a journal or a CI log gets no bar to redraw).

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a progress line is logged off a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Progress {
    bar: Option<ProgressBar>,
    last_log: Cell<Instant>,
}

impl Progress {
    /// A bar of `len` drawn with indicatif's `template` when stderr is a terminal.
    pub(super) fn new(len: u64, template: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(len);
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
            bar
        });
        Progress { bar, last_log: Cell::new(Instant::now()) }
    }

    /// The bar, on a terminal.
    pub(super) fn bar(&self) -> Option<&ProgressBar> {
        self.bar.as_ref()
    }

    /// Off a terminal: whether a progress line is due now (then the next one is 10 s away).
    pub(super) fn log_due(&self) -> bool {
        let due = self.bar.is_none() && self.last_log.get().elapsed() >= LOG_EVERY;
        if due {
            self.last_log.set(Instant::now());
        }
        due
    }

    pub(super) fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
