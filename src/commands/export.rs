//! `export`: the runs to export (by `--run`, or by start day from the catalog), each written by
//! `crate::export` in turn, a progress bar on a terminal, a summary line, the exit code.
//!
//! Exit codes: 2 before anything is written when the selection cannot be done as asked (a
//! `--run` without a run DB, a run whose file name is the catalog file's, `--since` without a
//! catalog, DIR not creatable); 1 when a run could not be exported (its DB missing though the
//! catalog lists it, or unreadable: logged, skipped, the others exported) or writing failed
//! (the export stops there); 0 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use super::progress::Progress;
use super::UsageError;
use crate::config::Config;
use crate::export::select::{default_columns, Catalog};
use crate::export::{self as exporting, Format, PlannedRun, RUNS_STEM};

/// Which runs (`--run ...` or `--since/--until`).
#[derive(Debug)]
pub(super) enum Selection {
    Runs(Vec<String>),
    Started { since: String, until: Option<String> },
}

pub(super) fn export(
    config: &Config,
    selection: &Selection,
    format: Format,
    out_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let catalog_path = &config.output.catalog;
    let catalog = Catalog::open(catalog_path)?;
    let run_path =
        |run_id: &str| config.output.dir.join(crate::sink::run_path::db_file_name(run_id));
    let mut skipped = 0u64;
    let planned: Vec<PlannedRun> = match selection {
        Selection::Runs(ids) => {
            let mut unique: Vec<&String> = Vec::new();
            for id in ids {
                if !unique.contains(&id) {
                    unique.push(id);
                }
            }
            let mut problems = Vec::new();
            let mut planned = Vec::new();
            for run_id in unique {
                let db_path = run_path(run_id);
                if exporting::stem_of(run_id) == RUNS_STEM {
                    problems.push(format!("run {run_id:?} cannot be exported: its file would be {RUNS_STEM}.{}, the catalog rows' file", format.ext()));
                } else if !db_path.exists() {
                    problems.push(format!(
                        "run {run_id:?} has no run DB ({} does not exist)",
                        db_path.display()
                    ));
                } else {
                    let catalog_row = match &catalog {
                        Some(catalog) => catalog.row(run_id)?,
                        None => None,
                    };
                    planned.push(PlannedRun { run_id: run_id.clone(), db_path, catalog_row });
                }
            }
            if !problems.is_empty() {
                return Err(UsageError(format!("{}; nothing exported", problems.join("; "))).into());
            }
            planned
        }
        Selection::Started { since, until } => {
            if until.as_ref().is_some_and(|until| until < since) {
                return Err(UsageError(format!(
                    "--until {} is before --since {since}",
                    until.as_deref().unwrap_or_default()
                ))
                .into());
            }
            let Some(catalog) = &catalog else {
                return Err(UsageError(format!(
                    "--since reads the catalog, and {} does not exist (the daemon or backfill keep it; `jsonl-shipper catalog rebuild` makes it); name runs with --run instead",
                    catalog_path.display()
                ))
                .into());
            };
            let undated = catalog.undated()?;
            if undated > 0 {
                tracing::warn!(runs = undated, catalog = %catalog_path.display(), "runs without a start date (started_at, first_ts) are never selected by --since; export them with --run");
            }
            let mut planned = Vec::new();
            for (run_id, row) in catalog.started_between(since, until.as_deref())? {
                let db_path = run_path(&run_id);
                if exporting::stem_of(&run_id) == RUNS_STEM {
                    tracing::error!(
                        run_id,
                        "run not exported: its file would be runs.<ext>, the catalog rows' file"
                    );
                    skipped += 1;
                } else if !db_path.exists() {
                    tracing::warn!(run_id, path = %db_path.display(), "run listed in the catalog has no run DB; skipped");
                    skipped += 1;
                } else {
                    planned.push(PlannedRun { run_id, db_path, catalog_row: Some(row) });
                }
            }
            planned
        }
    };

    std::fs::create_dir_all(out_dir)
        .map_err(|e| UsageError(format!("--out {}: {e}", out_dir.display())))?;

    let progress = Progress::new(
        planned.len() as u64,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} runs {msg}",
    );
    let (mut rows, mut bytes, mut runs_rows) = (0u64, 0u64, Vec::new());
    for run in &planned {
        if let Some(bar) = progress.bar() {
            bar.set_message(run.run_id.clone());
        }
        let exported = exporting::export_run(run, format, out_dir, &mut |n| {
            rows += n;
            show_rows(&progress, rows, started);
        });
        match exported {
            Ok(exported) => {
                for (column, values) in &exported.mismatched {
                    tracing::warn!(
                        run_id = run.run_id,
                        column,
                        values,
                        "values not of the column's type written as NULL (JSON text: as a string)"
                    );
                }
                tracing::debug!(run_id = run.run_id, rows = exported.rows, path = %exported.path.display(), "run exported");
                bytes += exported.bytes;
                runs_rows.push(exported.runs_row);
            }
            Err(error) if error.is_output() => {
                progress.clear();
                return Err(error).context("export stopped");
            }
            Err(error) => {
                tracing::error!(run_id = run.run_id, "{error}; skipped");
                skipped += 1;
            }
        }
        if let Some(bar) = progress.bar() {
            bar.inc(1);
        }
    }
    let columns = catalog.as_ref().map_or_else(default_columns, |c| c.columns().to_vec());
    let (runs_path, runs_bytes) =
        exporting::export_runs_table(&runs_rows, &columns, format, out_dir)?;
    bytes += runs_bytes;
    progress.clear();

    let seconds = started.elapsed().as_secs_f64();
    let exported = runs_rows.len();
    let rate = rows as f64 / seconds.max(1e-9);
    let outcome = if skipped == 0 { "done" } else { "incomplete" };
    if config.log.format == crate::config::LogFormat::Json {
        tracing::info!(outcome, runs = exported, skipped, rows, bytes, seconds, rows_per_second = rate.round(), out = %out_dir.display(), "export summary");
    } else {
        eprintln!(
            "export {outcome}: {exported} runs, {rows} rows, {bytes} bytes, {seconds:.1}s, {rate:.0} rows/s{}; files in {} (catalog rows: {})",
            if skipped == 0 { String::new() } else { format!(", {skipped} runs skipped (see above)") },
            out_dir.display(),
            file_name(&runs_path),
        );
    }
    Ok(ExitCode::from(if skipped == 0 { super::EXIT_OK } else { super::EXIT_FAILURE }))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The bar's message, and the line logged off a terminal: the run's rows so far and their rate.
fn show_rows(progress: &Progress, rows: u64, started: Instant) {
    let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
    match progress.bar() {
        Some(bar) => bar.set_message(format!("{rows} rows, {rate:.0} rows/s")),
        None if progress.log_due() => {
            tracing::info!(rows, rows_per_second = rate as u64, "export progress");
        }
        None => {}
    }
}
