//! `backfill`: ship historic files (plain or `.gz`) to their end, with `--jobs N` readers in
//! parallel, a progress bar on a terminal and a summary line; then exit.
//!
//! Files are read oldest day first. Parallel readers do not change the result: run merges and
//! event upserts are ordered by stream position (file day, line number), not arrival order.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::discover;
use crate::flow::Rebuild;
use crate::metrics::Counters;
use crate::pipeline::{Mode, Pipeline};
use crate::route;
use crate::shutdown::Signals;

use super::progress::Progress;

/// Without a progress bar, the ClickHouse pass after the run DBs says how far it is this often
/// (as the run DBs' pass does).
const SINK_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Files named one by one in the closing WARN about bytes the sink has not shipped.
const UNSHIPPED_NAMED: usize = 10;

pub(super) fn backfill(
    config: Config,
    jobs: usize,
    rebuild: Option<Rebuild>,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    let files = discover::backfill_files(&config.sources.paths, args)
        .map_err(|e| super::UsageError(e.to_string()))?;
    let total_bytes: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let signals = Signals::install().context("installing signal handlers")?;
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let config = Arc::new(config);
    let mut pipeline = Pipeline::start(config.clone(), Mode::Backfill, counters.clone())?;
    if let Some(rebuild) = rebuild.clone() {
        // Checkpoints and dead letters are left alone, so this may run beside the daemon and
        // be repeated: the writes are upserts.
        tracing::info!(
            run = rebuild.run.as_deref().unwrap_or("(all)"),
            "rebuilding from the start of every source"
        );
        pipeline = pipeline.rebuilding(rebuild);
    }
    tracing::info!(files = files.len(), bytes = total_bytes, jobs, "backfill started");
    // Its own cursor over the same files (not for a rebuild, which moves no cursor).
    let mut sink_failed = false;
    let sink_files = crate::clickhouse::Files::List(files.clone());
    // `sinks.clickhouse.backfill`: beside the run DBs as a background job
    // (`clickhouse::run_in_background`), or once they are complete.
    let sink_after = config.sinks.clickhouse.as_ref().is_some_and(|ch| ch.backfill.after());
    let cannot_start = |error: anyhow::Error, failed: &mut bool| {
        tracing::error!(
            error = format!("{error:#}"),
            "the clickhouse sink cannot start; shipping to the run DBs only"
        );
        *failed = true;
    };
    let start_sink = |priority, failed: &mut bool| {
        crate::clickhouse::Sink::start(&config, sink_files.clone(), counters.clone(), priority)
            .unwrap_or_else(|error| {
                cannot_start(error, failed);
                None
            })
    };
    let sink = match (&rebuild, &config.sinks.clickhouse) {
        (Some(_), _) | (None, None) => None,
        (None, Some(ch)) if sink_after => {
            // Started once the run DBs are complete; what would stop it then is said now
            // (through anyhow, so that `{:#}` prints the OS error it carries too).
            if let Err(error) = ch.password() {
                cannot_start(error.into(), &mut sink_failed);
            }
            None
        }
        (None, Some(_)) => start_sink(crate::clickhouse::Priority::Background, &mut sink_failed),
    };

    let queue = {
        let (tx, rx) = crossbeam_channel::unbounded();
        for file in &files {
            tx.send(file.clone()).expect("receiver alive");
        }
        rx
    };
    let failed = AtomicBool::new(false);
    let stopping = signals.stopping.clone();
    let progress = Progress::new(
        total_bytes,
        "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    );
    let close_inactive = config.sources.close_inactive;
    std::thread::scope(|scope| {
        let mut readers = Vec::new();
        for i in 0..jobs.min(files.len()).max(1) {
            let mut router = pipeline.router();
            let opener = pipeline.opener();
            let (queue, failed, stopping) = (&queue, &failed, &stopping);
            let reader = std::thread::Builder::new().name(format!("reader-{i}")).spawn_scoped(
                scope,
                move || {
                    let stop = || stopping.load(Ordering::SeqCst);
                    while let Ok(path) = queue.try_recv() {
                        if stop() {
                            break;
                        }
                        let result = opener.open(&path, false).and_then(|opened| {
                            let Some(mut opened) = opened else {
                                tracing::warn!(path = %path.display(), "file vanished before it was read");
                                return Ok(());
                            };
                            let idle = is_idle(&opened, close_inactive);
                            let finished = opened.file.gzip || idle;
                            match router.route(&opened.file, &opened.handle, &mut opened.reader, finished, &stop) {
                                Ok(_) => Ok(()),
                                // Not a .gz being written (that one is retried by a later run).
                                Err(e) if route::is_corrupt_gzip(&opened.file, &e) && idle => {
                                    router.give_up(&opened.file, &opened.handle, &mut opened.reader, &e);
                                    Ok(())
                                }
                                Err(e) => Err(e).with_context(|| {
                                    format!("{}: read error at offset {}", path.display(), opened.reader.offset())
                                }),
                            }
                        });
                        if let Err(error) = result {
                            tracing::error!(path = %path.display(), error = format!("{error:#}"), "cannot read file; skipping it");
                            failed.store(true, Ordering::SeqCst);
                        }
                    }
                },
            );
            readers.push(reader);
        }
        while readers.iter().any(|r| r.as_ref().is_ok_and(|r| !r.is_finished())) {
            show_progress(&progress, pipeline.disk_bytes.get(), &counters, started);
            std::thread::sleep(Duration::from_millis(100));
        }
        for reader in readers {
            match reader {
                Ok(handle) => {
                    if handle.join().is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot spawn reader thread");
                    failed.store(true, Ordering::SeqCst);
                }
            }
        }
    });
    if let Some(bar) = progress.bar() {
        bar.set_message("committing the last batches");
    }
    pipeline.finish()?;
    let run_dbs_done = started.elapsed().as_secs_f64();
    // What the summary line says of ClickHouse (None: no sink, or a rebuild).
    let mut clickhouse: Option<String> = None;
    // The run DBs are complete. A sink that ran beside them shipped what they held as it
    // read (each file up to its SQLite checkpoint); it is stopped (at a safe point: it goes on
    // from its cursor) or joined, and a last pass at normal priority ships the rest: on a host
    // that is never idle a background job would crawl, and an unprivileged thread cannot take
    // its priority back.
    let beside = match sink {
        Some(sink) if sink.is_finished() => sink.join(),
        Some(sink) => sink.stop(),
        None => Ok(()),
    };
    if let Err(error) = beside {
        // Gave up on a failing server: the minute is not spent again.
        tracing::error!(error = format!("{error:#}"), "clickhouse sink");
        sink_failed = true;
    }
    if rebuild.is_none()
        && config.sinks.clickhouse.is_some()
        && !sink_failed
        && !signals.is_stopping()
    {
        // Said, with the time, before the sink starts, so that a wait for the server is not
        // taken for the run DBs' (and `bench clickhouse` times the SQLite path by it).
        tracing::info!(
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "the run DBs are complete; waiting for the clickhouse sink"
        );
        if let Some(bar) = progress.bar() {
            bar.set_message("shipping to ClickHouse");
        }
        if let Some(sink) = start_sink(crate::clickhouse::Priority::Normal, &mut sink_failed) {
            let mut said = Instant::now();
            while !sink.is_finished() && !signals.is_stopping() {
                std::thread::sleep(Duration::from_millis(100));
                let (rows, lag) = (counters.sink_rows.get(), counters.sink_lag_bytes.get());
                if let Some(bar) = progress.bar() {
                    bar.set_message(format!("shipping to ClickHouse: {rows} rows"));
                } else if said.elapsed() >= SINK_PROGRESS_EVERY {
                    said = Instant::now();
                    tracing::info!(rows, lag_bytes = lag, "clickhouse sink: shipping");
                }
            }
            let finished = sink.is_finished();
            let result = if finished { sink.join() } else { sink.stop() };
            if let Err(error) = result {
                tracing::error!(error = format!("{error:#}"), "clickhouse sink");
                sink_failed = true;
            } else if finished {
                let left = crate::clickhouse::unshipped(&config.output.state_db, &files);
                for (path, bytes) in left.iter().take(UNSHIPPED_NAMED) {
                    tracing::warn!(
                        path = %path.display(),
                        bytes,
                        "clickhouse sink: not in the run DBs yet (a file still being written), \
                         so not in ClickHouse either; the daemon ships it to both if its globs \
                         match it, or run backfill again"
                    );
                }
                if left.len() > UNSHIPPED_NAMED {
                    let more = left.len() - UNSHIPPED_NAMED;
                    tracing::warn!(more, "clickhouse sink: more files not shipped to their end");
                }
            }
        }
    }
    if rebuild.is_none() && config.sinks.clickhouse.is_some() {
        let rows = counters.sink_rows.get();
        clickhouse = Some(match sink_failed {
            true => format!("clickhouse: {rows} rows, FAILED (said above; run backfill again)"),
            false => format!("clickhouse: {rows} rows"),
        });
    }
    progress.clear();

    let elapsed = started.elapsed().as_secs_f64();
    let events = counters.events_written.get();
    let interrupted = signals.is_stopping();
    let outcome = if interrupted { "interrupted (resume by running it again)" } else { "done" };
    let (unchanged, seconds) = (counters.events_unchanged.get(), elapsed);
    // The run DBs' rate: a wait for ClickHouse after them is not theirs.
    let rate = (events + unchanged) as f64 / run_dbs_done.max(1e-9);
    if config.log.format == crate::config::LogFormat::Json {
        // A log pipeline gets the summary as one more JSON line, not as text it cannot parse.
        tracing::info!(
            outcome,
            files = files.len(),
            lines = counters.lines_read.get(),
            events,
            unchanged,
            runs = counters.runs_touched.get(),
            dead_letters = counters.dlq_total(),
            blank_lines = counters.blank_lines.get(),
            seconds,
            events_per_second = rate.round(),
            clickhouse_rows = clickhouse.as_ref().map(|_| counters.sink_rows.get()),
            clickhouse_failed = clickhouse.as_ref().map(|_| sink_failed),
            output = %config.output.dir.display(),
            "backfill summary"
        );
    } else {
        eprintln!(
            "backfill {outcome}: {} files, {} lines, {events} events written ({unchanged} already stored), {} runs, {} dead letters, {} blank lines, {seconds:.1}s, {rate:.0} events/s{}",
            files.len(),
            counters.lines_read.get(),
            counters.runs_touched.get(),
            counters.dlq_total(),
            counters.blank_lines.get(),
            clickhouse.map(|c| format!("; {c}")).unwrap_or_default(),
        );
        eprintln!(
            "run DBs are in {dir} (one per run); try: sqlite3 {dir}/<run>.sqlite 'SELECT event_type, count(*) FROM events GROUP BY 1'; dead letters: jsonl-shipper dlq list",
            dir = config.output.dir.display()
        );
    }
    if failed.load(Ordering::SeqCst) || sink_failed {
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a file was not modified for `close_inactive`: then it is complete (a `.gz` always
/// is), and unterminated trailing bytes are a record (or an `incomplete_line`). The tail of a
/// file still being written is left for the daemon (its writer will end the line).
fn is_idle(opened: &crate::follow::Opened, close_inactive: Duration) -> bool {
    opened
        .handle
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= close_inactive))
}

/// The bar's position is the bytes read from disk; its message, and the line logged off a
/// terminal, the lines read and their rate.
fn show_progress(progress: &Progress, disk_bytes: u64, counters: &Counters, started: Instant) {
    let lines = counters.lines_read.get();
    let rate = lines as f64 / started.elapsed().as_secs_f64().max(1e-9);
    match progress.bar() {
        Some(bar) => {
            bar.set_position(disk_bytes);
            bar.set_message(format!("{lines} lines, {rate:.0} lines/s"));
        }
        None if progress.log_due() => {
            tracing::info!(disk_bytes, lines, lines_per_sec = rate as u64, "backfill progress");
        }
        None => {}
    }
}
