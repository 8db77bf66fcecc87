//! The summary thread of `run` and `backfill`: computes the summary of each run that reached a
//! terminal status, off the write path, and sets the SLI gauges from it.
//!
//! Writers tell it after a commit to a terminal run (`flow::RunChanged`, `try_send` on a
//! bounded channel: a full inbox drops the request and counts it, never holds a writer). It
//! coalesces requests per run: the daemon computes a run once it has been quiet for
//! [`QUIET`] (at most [`MAX_WAIT`] after the first request), so events that keep coming after
//! the end record recompute it, once per burst; backfill computes every requested run once,
//! when its writers are done. A summary reads through its own read-only connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::config::Config;
use crate::flow::RunChanged;
use crate::metrics::{Counters, SliSnapshot};

/// Requests in flight to the thread; it drains them into its own map at once.
const INBOX: usize = 1024;
/// Runs waiting for their summary, at most (an entry is a run_id and a path). Beyond, a
/// request is dropped and counted like a full inbox.
const MAX_PENDING: usize = 16 * 1024;
/// The daemon computes a run's summary once no commit touched it for this long…
pub(crate) const QUIET: Duration = Duration::from_secs(2);
/// …or this long after the first commit that asked, whichever comes first.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often the daemon looks again at the run the SLI gauges show: retention may have deleted
/// it, or another process (`summary`, `maintain`, `dlq replay`) changed its summary.
pub(crate) const SLI_RECHECK: Duration = Duration::from_secs(30);

/// When the thread computes what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timing {
    /// After [`QUIET`] / [`MAX_WAIT`]; also loads the latest ended run's SLIs at start.
    Daemon,
    /// Everything once the writers are done (a long backfill would otherwise summarise a big
    /// run over and over).
    AtEnd,
}

/// The running thread; [`Worker::finish`] (or dropping it) computes what is pending and joins.
pub(crate) struct Worker {
    tx: Option<Sender<RunChanged>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn spawn(
        config: Arc<Config>,
        counters: Arc<Counters>,
        timing: Timing,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = bounded(INBOX);
        let thread = std::thread::Builder::new().name("summary".into()).spawn(move || {
            Thread { config, counters, timing, pending: HashMap::new(), early: Vec::new() }.run(rx)
        })?;
        Ok(Worker { tx: Some(tx), thread: Some(thread) })
    }

    /// For a writer: where to say that a terminal run changed.
    pub(crate) fn notifier(&self) -> Sender<RunChanged> {
        self.tx.clone().expect("until finish")
    }

    /// Once every notifier is dropped (the writers joined): computes what is pending, joins.
    pub(crate) fn finish(mut self) {
        self.join();
    }

    fn join(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the summary thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.join();
    }
}

struct Pending {
    path: PathBuf,
    first: Instant,
    last: Instant,
    /// Its writer closed it for good (see `RunChanged::closed`).
    closed: bool,
}

impl Pending {
    fn due(&self) -> Instant {
        (self.last + QUIET).min(self.first + MAX_WAIT)
    }
}

struct Thread {
    config: Arc<Config>,
    counters: Arc<Counters>,
    timing: Timing,
    pending: HashMap<String, Pending>,
    /// Backfill: summaries computed while the writers closed their DBs, copied into the
    /// catalog again at the end, once the catalog thread has written every run's row (a copy
    /// before the row exists changes nothing).
    early: Vec<(super::Summary, PathBuf)>,
}

impl Thread {
    fn run(mut self, rx: Receiver<RunChanged>) {
        if self.timing == Timing::Daemon {
            self.load_latest();
        }
        let mut last_full_warning: Option<Instant> = None;
        let mut next_recheck = Instant::now() + SLI_RECHECK;
        loop {
            let next = match self.timing {
                Timing::Daemon => {
                    let due = self.pending.values().map(Pending::due).min();
                    Some(due.map_or(next_recheck, |due| due.min(next_recheck)))
                }
                Timing::AtEnd => self.pending.values().any(|p| p.closed).then(Instant::now),
            };
            let timer = next.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            select! {
                recv(rx) -> msg => match msg {
                    Ok(changed) => self.note(changed, &mut last_full_warning),
                    Err(_) => break,
                },
                recv(timer) -> _ => {}
            }
            // The inbox emptied before each summary, so the writers never find it full.
            while let Ok(changed) = rx.try_recv() {
                self.note(changed, &mut last_full_warning);
            }
            let now = Instant::now();
            if self.timing == Timing::Daemon && now >= next_recheck {
                self.recheck_shown();
                next_recheck = now + SLI_RECHECK;
            }
            let due: Vec<String> = match self.timing {
                Timing::Daemon => (self.pending.iter())
                    .filter(|(_, p)| p.due() <= now)
                    .map(|(run_id, _)| run_id.clone())
                    .collect(),
                // One at a time, reading the inbox between them.
                Timing::AtEnd => (self.pending.iter())
                    .find(|(_, p)| p.closed)
                    .map(|(run_id, _)| run_id.clone())
                    .into_iter()
                    .collect(),
            };
            for run_id in due {
                if let Some(p) = self.pending.remove(&run_id) {
                    let summary = self.summarise(&run_id, &p.path);
                    if let (Timing::AtEnd, Some(summary)) = (self.timing, summary) {
                        self.early.push((summary, p.path));
                    }
                }
            }
        }
        // The writers and the catalog thread are done (`Pipeline::finish`).
        for (summary, path) in std::mem::take(&mut self.early) {
            super::copy_to_catalog(&self.config, &summary, &path);
        }
        // The writers are done: what is pending is computed now (a run that ended just before
        // a shutdown, every run of a backfill).
        let mut left: Vec<(String, Pending)> = self.pending.drain().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        let started = Instant::now();
        let n = left.len();
        // The writers are gone, so their cores are free: one summary per core at a time (a
        // backfill of 50 runs spent 1.2 s here on one thread, 15 % of its wall time).
        let threads =
            std::thread::available_parallelism().map_or(1, |c| c.get()).clamp(1, n.max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while let Some((run_id, p)) =
                        left.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        self.summarise(run_id, &p.path);
                    }
                });
            }
        });
        if n > 0 {
            tracing::info!(
                runs = n,
                seconds = started.elapsed().as_secs_f64(),
                "summaries of ended runs computed"
            );
        }
    }

    /// Notes a request: a run to summarise (when: see [`Timing`]).
    fn note(&mut self, changed: RunChanged, last_full_warning: &mut Option<Instant>) {
        let now = Instant::now();
        let full = self.pending.len() >= MAX_PENDING;
        match self.pending.get_mut(&changed.run_id) {
            Some(p) => {
                p.last = now;
                p.closed |= changed.closed;
            }
            None if full => {
                self.counters.summaries_dropped.add(1);
                if last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last_full_warning = Some(now);
                    tracing::warn!(pending = MAX_PENDING, "too many runs waiting for their summary; dropping requests (`jsonl-shipper summary RUN_ID` computes one)");
                }
            }
            None => {
                let closed = changed.closed;
                let p = Pending { path: changed.path, first: now, last: now, closed };
                self.pending.insert(changed.run_id, p);
            }
        }
    }

    /// Computes and stores one run's summary, then offers its SLIs to the gauges.
    fn summarise(&self, run_id: &str, path: &std::path::Path) -> Option<super::Summary> {
        let started = Instant::now();
        match super::refresh(path, &self.config, true) {
            Ok(summary) if summary.is_terminal() => {
                let verdict = super::slo::judge(&summary, &self.config.slo);
                let failed: Vec<&str> =
                    verdict.slos.iter().filter(|v| !v.ok).map(|v| v.name.as_str()).collect();
                let took_ms = started.elapsed().as_millis() as u64;
                if self.timing == Timing::Daemon {
                    tracing::info!(run_id, events = summary.get("events").map(|v| v.to_string()), took_ms, slos_failed = ?failed, "run summary computed");
                } else {
                    tracing::debug!(run_id, took_ms, slos_failed = ?failed, "run summary computed");
                }
                self.counters.slis.offer(snapshot(path, &summary, &verdict));
                Some(summary)
            }
            // Back to "running" cannot happen (the merge keeps a terminal status); a
            // replaced DB might be anything.
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(
                    run_id,
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "cannot compute the run's summary"
                );
                None
            }
        }
    }

    /// Every [`SLI_RECHECK`]: the gauges follow what other processes did to the run they show.
    /// Its DB deleted (retention): the latest ended run left takes its place. Its stored summary
    /// replaced, or no longer current (a typed column redefined by `maintain`): read again.
    fn recheck_shown(&self) {
        let Some(shown) = self.counters.slis.get() else { return };
        if !shown.path.exists() {
            self.counters.slis.forget(&shown.path);
        }
        self.load_latest();
    }

    /// At the daemon's start (or a reload): the gauges show the latest ended run's SLIs under
    /// the current config, so a restart does not blank a dashboard until the next run ends.
    fn load_latest(&self) {
        let shown = self.counters.slis.get().map(|s| s.path);
        let latest = match shown {
            Some(path) => Some(path),
            None => match super::runs::last_ended(&self.config, 1) {
                Ok(mut ended) => ended.pop().map(|e| e.path),
                Err(error) => {
                    tracing::warn!(%error, "cannot list the run DBs for the latest summary");
                    None
                }
            },
        };
        if let Some(path) = latest {
            match super::refresh_stored(&path, &self.config, false) {
                Ok(summary) => {
                    let verdict = super::slo::judge(&summary, &self.config.slo);
                    let snapshot = snapshot(&path, &summary, &verdict);
                    // Unchanged since shown (a recheck finds that nearly always): no catalog
                    // write every `SLI_RECHECK`.
                    let same = |s: &SliSnapshot| {
                        (&s.run_id, &s.values, &s.slos)
                            == (&snapshot.run_id, &snapshot.values, &snapshot.slos)
                    };
                    if self.counters.slis.get().is_some_and(|shown| same(&shown)) {
                        return;
                    }
                    super::copy_to_catalog(&self.config, &summary, &path);
                    self.counters.slis.offer(snapshot);
                }
                Err(error) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(error)),
                    "cannot load the latest run's summary"
                ),
            }
        }
    }
}

/// The gauges' view of a summary: its numeric metrics and its SLO verdicts.
fn snapshot(
    path: &std::path::Path,
    summary: &super::Summary,
    verdict: &super::slo::RunVerdict,
) -> SliSnapshot {
    let ended = summary.ended_at.as_str().and_then(super::rfc3339).unwrap_or_else(|| {
        // No RFC 3339 end time: it ended as far as we know now.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    SliSnapshot {
        run_id: summary.run_id.clone(),
        path: path.to_path_buf(),
        ended,
        values: (summary.metrics.iter())
            .filter_map(|m| m.value.as_f64().map(|v| (m.name.clone(), v)))
            .collect(),
        slos: verdict.slos.iter().map(|v| (v.name.clone(), v.ok)).collect(),
    }
}
