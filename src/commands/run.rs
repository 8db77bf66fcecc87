//! `run`: the daemon. Discovers files by periodic glob rescans (the source of truth), wakes
//! early on inotify events (a hint only), tails every matching file from its checkpoint,
//! reloads its config on SIGHUP and drains gracefully on SIGTERM/SIGINT.
//!
//! The file lifecycle itself (follow, park, reopen, finish) is [`crate::follow`].

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::{bounded, select};

use crate::cli::ConfigArgs;
use crate::config::Config;
use crate::follow::{SystemClock, Tailer, Watch};
use crate::metrics::Counters;
use crate::pipeline::{Mode, Pipeline};
use crate::shutdown::{Signal, Signals};

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
    let mut watch = Watch::start();
    let mut first_start = true;
    // Files rotated away or deleted that the last configuration's tailer was finishing.
    let mut finishing = None;
    let held = Arc::new(std::sync::Mutex::new(Default::default()));
    loop {
        let pipeline = Pipeline::start(config.clone(), Mode::Daemon, counters.clone())?;
        let clock = SystemClock;
        let mut tailer = Tailer::new(
            pipeline.opener().never_blocking(),
            pipeline.router(),
            &config,
            &counters,
            &clock,
            first_start,
        );
        if let Some(finishing) = finishing.take() {
            tailer.adopt_finishing(finishing);
        }
        tailer.rescan(watch.as_mut());
        if first_start {
            tracing::info!(
                files = tailer.files(),
                patterns = ?config.sources.paths,
                output = %config.output.dir.display(),
                "jsonl-shipper running"
            );
        }
        let status = crate::systemd::status_line(
            counters.files_watched.get(),
            counters.lag_bytes.get(),
            None,
            counters.dlq_total(),
        );
        crate::systemd::ready(&status); // ops: READY=1 (ends a reload), STATUS= with the lag
        first_start = false;
        let retention =
            Retention::spawn(config.clone(), counters.clone(), pipeline.releases(), held.clone())?;
        let sink = start_sink(&config, &counters);
        let exit = main_loop(&mut tailer, &signals, watch.as_mut(), &counters, &args);
        if matches!(exit, Exit::Shutdown) {
            crate::systemd::stopping(); // ops: STOPPING=1 before the drain
        }
        retention.stop();
        // The sink first: it may be waiting for the pipeline's checkpoints, never the reverse.
        if let Some(Err(error)) = sink.map(crate::clickhouse::Sink::stop) {
            tracing::error!(error = format!("{error:#}"), "the clickhouse sink failed");
        }
        tailer.flush_stalled();
        if matches!(exit, Exit::Reload(_)) {
            finishing = Some(tailer.into_finishing());
        } else {
            drop(tailer);
        }
        pipeline.finish()?;
        match exit {
            Exit::Shutdown => break,
            Exit::Reload(new) => {
                let new = Arc::new(fit_fd_limit(*new));
                if new.metrics != config.metrics {
                    ops = restart_ops(ops, &config, &new, &counters)?;
                }
                let changed = match config.changed_keys(&new) {
                    Some(keys) => format!("{keys:?}"),
                    None => "unknown (the configs could not be compared)".into(),
                };
                tracing::info!(%changed, patterns = ?new.sources.paths, "config reloaded; resuming from the checkpoints just written");
                config = new;
            }
        }
    }
    drop(watch);
    tracing::info!(
        lines = counters.lines_read.get(),
        events = counters.events_written.get(),
        dead_letters = counters.dlq_total(),
        "drained; exiting"
    );
    drop(ops); // ops: /metrics answers until the drain is done
    Ok(ExitCode::SUCCESS)
}

/// The ClickHouse sink over the configured globs, if configured. One that cannot start (an
/// unreadable password file) is an ERROR, not a stop: the run DBs are shipped regardless.
fn start_sink(config: &Arc<Config>, counters: &Arc<Counters>) -> Option<crate::clickhouse::Sink> {
    let files = crate::clickhouse::Files::Globs(config.sources.paths.clone());
    match crate::clickhouse::Sink::start(
        config,
        files,
        counters.clone(),
        crate::clickhouse::Priority::Normal,
    ) {
        Ok(sink) => sink,
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "the clickhouse sink cannot start; shipping to the run DBs only"
            );
            None
        }
    }
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
    mut watch: Option<&mut Watch>,
    counters: &Counters,
    args: &ConfigArgs,
) -> Exit {
    let never = crossbeam_channel::never();
    loop {
        if signals.is_stopping() {
            return Exit::Shutdown;
        }
        counters.reader_alive(); // ops: the watchdog's proof that this loop turns
        let wait = tailer.turn(watch.as_deref_mut(), &|| signals.is_stopping());
        let wake = watch.as_ref().map_or(&never, |w| &w.wake);
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
            recv(wake) -> _ => tailer.woken(),
            default(wait) => {},
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
    /// `held`: what retention said it keeps for the sink, remembered across reloads.
    fn spawn(
        config: Arc<Config>,
        counters: Arc<Counters>,
        releases: Arc<crate::sink::Releases>,
        held: Arc<std::sync::Mutex<crate::maintain::retention::HeldForSink>>,
    ) -> anyhow::Result<Retention> {
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
                    Some(&releases),
                ) {
                    Ok(report) => {
                        if let Ok(mut held) = held.lock() {
                            held.update(&report.retention.held_for_sink);
                        }
                        counters.retention_deleted.add(report.deleted());
                    }
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
