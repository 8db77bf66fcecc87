//! The daemon's operations loop, on a `monitor` thread beside the pipeline: it reads the
//! atomics in [`Counters`] once a tick and
//! - pings the systemd watchdog only while [`Counters::health`] is `Ok` (a writer stuck on a
//!   locked DB or a full disk stops the pings, so systemd restarts the service),
//! - sends STATUS= (lag, files, events/s, dead letters) every few seconds,
//! - logs health transitions once each (not once per tick),
//! - warns, at most once per [`SLOW_WARN_EVERY`], when the p95 commit time over the last
//!   minute exceeds `metrics.slow_commit_threshold`, with a tuning hint.
//!
//! [`Ops`] bundles it with the HTTP [`Exporter`] so `run` starts and stops both in one line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::config::{Config, Synchronous};
use crate::exporter::Exporter;
use crate::metrics::{Counters, HistogramSnapshot};
use crate::systemd;

/// Window of the slow-commit p95.
const SLOW_WINDOW: Duration = Duration::from_secs(60);
/// One slow-commit warning per this long at most: a slow disk stays slow for a while.
pub(crate) const SLOW_WARN_EVERY: Duration = Duration::from_secs(10 * 60);
const STATUS_EVERY: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_secs(1);

/// The monitor thread and, with `metrics.listen`, the HTTP endpoint. Dropping it stops both.
pub(crate) struct Ops {
    /// Held for its `Drop`: the endpoint stops with the monitor.
    _exporter: Option<Exporter>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ops {
    pub(crate) fn start(config: &Arc<Config>, counters: Arc<Counters>) -> anyhow::Result<Ops> {
        let exporter = match config.metrics.listen {
            Some(listen) => {
                Some(Exporter::start(listen, counters.clone(), config.metrics.unhealthy_after)?)
            }
            None => None,
        };
        let (stop, stopped) = bounded(1);
        let mut monitor = Monitor::new(config.clone(), counters, systemd::watchdog_interval());
        let thread = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || monitor.run(&stopped))?;
        Ok(Ops { _exporter: exporter, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Monitor {
    config: Arc<Config>,
    counters: Arc<Counters>,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    healthy: bool,
    last_status: Option<(Instant, u64)>,
    slow: SlowCommits,
}

impl Monitor {
    fn new(config: Arc<Config>, counters: Arc<Counters>, watchdog: Option<Duration>) -> Monitor {
        let slow = SlowCommits::new(config.metrics.slow_commit_threshold);
        Monitor {
            config,
            counters,
            watchdog,
            last_ping: None,
            healthy: true,
            last_status: None,
            slow,
        }
    }

    fn run(&mut self, stop: &Receiver<()>) {
        // systemd recommends pinging at half the watchdog interval.
        let tick = self.watchdog.map_or(TICK, |w| (w / 2).min(TICK));
        loop {
            self.tick(Instant::now());
            match stop.recv_timeout(tick) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let health = self.counters.health(self.config.metrics.unhealthy_after);
        match (&health, self.healthy) {
            (Err(reason), true) => tracing::error!(
                reason = reason.as_str(),
                "unhealthy: /healthz answers 503 and systemd watchdog pings stop"
            ),
            (Ok(()), false) => tracing::info!("healthy again: commits are succeeding"),
            _ => {}
        }
        self.healthy = health.is_ok();
        if let Some(interval) = self.watchdog {
            if self.healthy && self.last_ping.is_none_or(|t| now - t >= interval / 2) {
                systemd::watchdog();
                self.last_ping = Some(now);
            }
        }
        self.status(now, health.err());
        let snapshot = self.counters.commit_seconds.snapshot();
        let lock_wait = self.counters.lock_wait_micros.get();
        if let Some(p95) = self.slow.observe(now, snapshot, lock_wait) {
            let window = self.slow.window_count();
            let locked = self.slow.lock_share();
            tracing::warn!(
                p95_seconds = format!("{p95:.3}"),
                threshold = %humantime::format_duration(self.config.metrics.slow_commit_threshold),
                commits_last_minute = window,
                lock_wait_share = format!("{:.0} %", locked * 100.0),
                hint = tuning_hint(&self.config, window, locked),
                "slow run-DB commits: p95 over the last minute is above metrics.slow_commit_threshold"
            );
        }
    }

    fn status(&mut self, now: Instant, unhealthy: Option<String>) {
        let events = self.counters.events_written.get();
        let Some((at, before)) = self.last_status else {
            self.last_status = Some((now, events));
            return;
        };
        if now - at < STATUS_EVERY {
            return;
        }
        let rate = events.saturating_sub(before) as f64 / (now - at).as_secs_f64();
        self.last_status = Some((now, events));
        let mut line = systemd::status_line(
            self.counters.files_watched.get(),
            self.counters.lag_bytes.get(),
            Some(rate),
            self.counters.dlq_total(),
        );
        if let Some(reason) = unhealthy {
            line = format!("UNHEALTHY: {reason}; {line}");
        }
        systemd::status(&line);
    }
}

/// A concrete next step, from where the commits' time went and what the config says.
/// `lock_share`: the part of it spent waiting for run DBs' write locks.
fn tuning_hint(config: &Config, commits_last_minute: u64, lock_share: f64) -> String {
    let mut hints = Vec::new();
    if lock_share >= LOCK_BOUND {
        // The disk is not the cause: saying "check the disk" would send the operator astray.
        return format!(
            "{:.0} % of that time was spent waiting for run DBs' write locks, held by another \
             connection (an sqlite3 or Datasette session in a write transaction, a script's \
             open transaction) under {}; find it with `fuser` or `lsof` on the run DB",
            lock_share * 100.0,
            config.output.dir.display()
        );
    }
    // More than one commit per second per writer: batches are small, each pays an fsync.
    if commits_last_minute > 60 * config.output.writer_threads as u64 {
        hints.push(format!(
            "many small commits: raise output.batch_max_events (now {}) and output.batch_max_delay \
             (now {}) so each fsync carries more rows",
            config.output.batch_max_events,
            humantime::format_duration(config.output.batch_max_delay)
        ));
    }
    hints.push(format!(
        "check the disk under {} (iostat -x: await, %util) and whether other I/O competes",
        config.output.dir.display()
    ));
    if matches!(config.sqlite.synchronous, Synchronous::Full | Synchronous::Extra) {
        hints.push(
            "sqlite.synchronous = \"normal\" saves an fsync per commit, at the risk described \
             in config.example.toml (a power loss may lose the last commits)"
                .to_string(),
        );
    }
    hints.join("; ")
}

/// From this share of the commits' time spent waiting for locks, the hint blames the lock.
const LOCK_BOUND: f64 = 0.5;

/// Decides when to warn about slow commits: keeps a minute of histogram snapshots (and of the
/// lock-wait total) and compares the p95 of their difference with the threshold.
struct SlowCommits {
    threshold: f64,
    history: VecDeque<(Instant, HistogramSnapshot, u64)>,
    last_warning: Option<Instant>,
    window: HistogramSnapshot,
    /// Lock waits within the window, µs.
    window_lock_micros: u64,
}

impl SlowCommits {
    fn new(threshold: Duration) -> SlowCommits {
        SlowCommits {
            threshold: threshold.as_secs_f64(),
            history: VecDeque::new(),
            last_warning: None,
            window: HistogramSnapshot::default(),
            window_lock_micros: 0,
        }
    }

    /// Records `now`'s snapshot and lock-wait total (µs); returns the window's p95 when a
    /// warning is due.
    fn observe(&mut self, now: Instant, snapshot: HistogramSnapshot, lock: u64) -> Option<f64> {
        self.history.push_back((now, snapshot, lock));
        while self.history.front().is_some_and(|(t, ..)| now - *t > SLOW_WINDOW) {
            self.history.pop_front();
        }
        let (_, oldest, oldest_lock) = self.history.front()?;
        self.window = snapshot.since(oldest);
        self.window_lock_micros = lock.saturating_sub(*oldest_lock);
        let p95 = self.window.quantile(0.95)?;
        if p95 <= self.threshold || self.last_warning.is_some_and(|t| now - t < SLOW_WARN_EVERY) {
            return None;
        }
        self.last_warning = Some(now);
        Some(p95)
    }

    fn window_count(&self) -> u64 {
        self.window.count()
    }

    /// The part of the window's commit time spent waiting for write locks (0 to 1).
    fn lock_share(&self) -> f64 {
        match self.window.sum_micros {
            0 => 0.0,
            sum => (self.window_lock_micros as f64 / sum as f64).min(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;

    #[test]
    fn slow_commits_warn_once_per_period_and_only_above_the_threshold() {
        let h = Histogram::default();
        let mut slow = SlowCommits::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(slow.observe(at(0), h.snapshot(), 0), None);
        for _ in 0..100 {
            h.observe(Duration::from_millis(3));
        }
        assert_eq!(slow.observe(at(1), h.snapshot(), 0), None);
        for _ in 0..20 {
            h.observe(Duration::from_secs(2));
        }
        let p95 = slow.observe(at(2), h.snapshot(), 0).expect("20 of 120 commits took 2 s");
        assert!(p95 > 1.0 && p95 <= 2.5, "{p95}");
        assert_eq!(slow.window_count(), 120);
        // Still slow, but warned already.
        h.observe(Duration::from_secs(2));
        assert_eq!(slow.observe(at(30), h.snapshot(), 0), None);
        // The slow minute has left the window: fast commits only, no warning even when allowed.
        for _ in 0..100 {
            h.observe(Duration::from_millis(3));
        }
        assert_eq!(slow.observe(at(100), h.snapshot(), 0), None);
        for _ in 0..100 {
            h.observe(Duration::from_millis(3));
        }
        assert_eq!(slow.observe(at(700), h.snapshot(), 0), None);
        for _ in 0..50 {
            h.observe(Duration::from_secs(5));
        }
        assert!(slow.observe(at(701), h.snapshot(), 0).is_some(), "a new period may warn again");
    }

    #[test]
    fn tuning_hint_names_the_keys_to_change() {
        let config = Config::for_base(std::path::Path::new("/data"));
        let hint = tuning_hint(&config, 10_000, 0.1);
        let now = format!("output.batch_max_events (now {})", config.output.batch_max_events);
        assert!(hint.contains(&now), "{hint}");
        assert!(hint.contains("sqlite.synchronous"), "{hint}");
        assert!(!tuning_hint(&config, 3, 0.0).contains("batch_max_events"));
        // Mostly lock waits: the lock is named, the disk is not blamed.
        let locked = tuning_hint(&config, 10_000, 0.8);
        assert!(locked.starts_with("80 % of that time was spent waiting for run DBs' write locks"));
        assert!(!locked.contains("disk") && !locked.contains("synchronous"), "{locked}");
    }

    #[test]
    fn the_lock_share_is_the_windows_lock_wait_over_its_commit_time() {
        let h = Histogram::default();
        let mut slow = SlowCommits::new(Duration::from_millis(500));
        let t0 = Instant::now();
        slow.observe(t0, h.snapshot(), 1_000_000);
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(2));
        // 3 s of the 4 s waited for the lock (the 1 s before the window does not count).
        assert!(slow.observe(t0 + Duration::from_secs(1), h.snapshot(), 4_000_000).is_some());
        assert!((slow.lock_share() - 0.75).abs() < 1e-9, "{}", slow.lock_share());
    }
}
