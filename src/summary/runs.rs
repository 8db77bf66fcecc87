//! Finding run DBs: by run_id (the file name `sink::run_path` gives it), and the most recently
//! ended ones (for `slo --last N` and the SLI gauges at the daemon's start).

use std::path::{Path, PathBuf};

use rusqlite::OpenFlags;

use crate::config::Config;

/// The run DB of `run_id` under `output.dir` (which may not exist).
pub(crate) fn path_of(config: &Config, run_id: &str) -> PathBuf {
    config.output.dir.join(crate::sink::run_path::db_file_name(run_id))
}

/// A run DB that has ended: its file and when.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ended {
    pub path: PathBuf,
    pub run_id: String,
    /// Seconds since the epoch: `runs.ended_at` if it is RFC 3339, else the file's mtime.
    pub at: f64,
}

/// The `n` most recently ended runs (terminal status), latest first: from the catalog (one
/// small DB), or, without one, by opening every run DB.
pub(crate) fn last_ended(config: &Config, n: usize) -> std::io::Result<Vec<Ended>> {
    match crate::catalog::Catalog::open_read_only(&config.output.catalog)
        .and_then(|c| c.map(|c| c.last_ended(n)).transpose())
    {
        Ok(Some(rows)) => Ok(rows
            .into_iter()
            .map(|row| {
                let path = PathBuf::from(&row.db_path);
                let at = (row.ended_at.as_deref().and_then(super::rfc3339))
                    .unwrap_or_else(|| mtime(&path));
                Ended { path, run_id: row.run_id, at }
            })
            .collect()),
        Ok(None) => scan_last_ended(config, n),
        Err(error) => {
            tracing::warn!(catalog = %config.output.catalog.display(), %error, "cannot read the catalog; looking at every run DB instead");
            scan_last_ended(config, n)
        }
    }
}

fn scan_last_ended(config: &Config, n: usize) -> std::io::Result<Vec<Ended>> {
    let mut ended = Vec::new();
    let entries = match std::fs::read_dir(&config.output.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ended),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "sqlite") {
            continue;
        }
        match ended_run(&path, config) {
            Ok(Some(run)) => ended.push(run),
            Ok(None) => {}
            // Being created, deleted by retention, or not ours: not an ended run.
            Err(error) => tracing::debug!(path = %path.display(), %error, "skipping run DB"),
        }
    }
    ended.sort_by(|a, b| b.at.total_cmp(&a.at).then_with(|| a.run_id.cmp(&b.run_id)));
    ended.truncate(n);
    Ok(ended)
}

fn ended_run(path: &Path, config: &Config) -> rusqlite::Result<Option<Ended>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(config.sqlite.busy_timeout)?;
    let (run_id, status, ended_at): (String, rusqlite::types::Value, Option<String>) = conn
        .query_row("SELECT run_id, status, CAST(ended_at AS TEXT) FROM runs LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if !crate::sink::run_db::is_terminal(&status) {
        return Ok(None);
    }
    let at = ended_at.as_deref().and_then(super::rfc3339).unwrap_or_else(|| mtime(path));
    Ok(Some(Ended { path: path.to_path_buf(), run_id, at }))
}

fn mtime(path: &Path) -> f64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}
