//! `catalog rebuild`: recreates the run catalog (`output.catalog`) from the run DBs, read-only
//! (see `crate::catalog::rebuild`). Safe while the daemon runs: one transaction swaps the rows.

use std::process::ExitCode;

use anyhow::Context;

use super::progress::Progress;
use crate::config::Config;

pub(super) fn rebuild(config: &Config) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(config)?;
    let progress =
        Progress::new(0, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} run DBs, ETA {eta}");
    let path = &config.output.catalog;
    // An ended run's summary, computed and stored when the stored one is not current.
    let summarize = |db_path: &std::path::Path, status: &rusqlite::types::Value| {
        if !crate::sink::run_db::is_terminal(status) {
            return None;
        }
        match summarize_ended(db_path, config) {
            Ok(summary) => Some(summary.to_json()["metrics"].to_string()),
            Err(error) => {
                tracing::warn!(path = %db_path.display(), %error, "catalog rebuild: cannot compute the run's summary; keeping the stored one");
                None
            }
        }
    };
    let rebuilt = crate::catalog::rebuild::rebuild(config, summarize, |done, total| {
        if let Some(bar) = progress.bar() {
            bar.set_length(total);
            bar.set_position(done);
        }
    })
    .with_context(|| format!("rebuilding the catalog {}", path.display()))?;
    progress.clear();
    let unreadable = rebuilt.skipped.len();
    if config.log.format == crate::config::LogFormat::Json {
        tracing::info!(
            path = %path.display(),
            runs = rebuilt.runs,
            events = rebuilt.events,
            empty = rebuilt.empty,
            unreadable,
            seconds = rebuilt.seconds,
            "catalog rebuilt"
        );
    } else {
        eprintln!(
            "catalog rebuilt: {} runs, {} events, {} run DBs without a run yet, {unreadable} unreadable (no row), {:.1}s; {}",
            rebuilt.runs,
            rebuilt.events,
            rebuilt.empty,
            rebuilt.seconds,
            path.display(),
        );
    }
    // Each unreadable run DB was logged (WARN) with its error.
    if unreadable > 0 {
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// An ended run's summary for its catalog row. A run DB of an older schema is only read (its
/// summary computed, not stored): storing would migrate it, and a migration may rewrite every
/// row, which a rebuild beside the daemon must not do; `run`, `backfill` or `summary` migrate it.
fn summarize_ended(
    db_path: &std::path::Path,
    config: &Config,
) -> Result<crate::summary::Summary, crate::summary::SummaryError> {
    let sqlite_error = |e| crate::summary::SummaryError::sqlite(db_path, e);
    let reader = crate::summary::open_read_only(db_path, &config.sqlite).map_err(sqlite_error)?;
    let version = crate::sqlite::user_version(&reader).map_err(sqlite_error)?;
    if version < crate::sink::run_db::MIGRATIONS.len() as i64 {
        return crate::summary::compute(&reader, &config.summary).map_err(sqlite_error);
    }
    // Current (nearly always): answered on this connection, not a second one.
    if let Some(summary) = crate::summary::stored(&reader, &config.summary).map_err(sqlite_error)? {
        return Ok(summary);
    }
    drop(reader);
    crate::summary::refresh_stored(db_path, config, true)
}
