//! `jsonl-shipper catalog rebuild`: recreates the catalog from the run DBs.
//!
//! Every run DB of `output.dir` is read in full, read-only, into a temporary table of this
//! connection, without holding the catalog's lock; then one transaction replaces every row.
//! The one write to a run DB: the summary of a run that has ended, when the stored one is not
//! current (`summarize`: `summary::refresh_stored`, as the `summary` command does); no run DB
//! is created. Readers and the daemon's catalog thread see
//! the old catalog or the new one, never a mix; updates the daemon makes meanwhile merge into
//! the new rows (a row never goes back: see `keeper`). A catalog SQLite finds corrupt is moved
//! aside (kept) and a new one built.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::params;

use super::scan::read_run_db;
use super::{path_text, run_db_files, Catalog, FileState};
use crate::config::Config;

/// What a rebuild did.
#[derive(Debug, Default)]
pub(crate) struct Rebuilt {
    /// Rows written.
    pub runs: u64,
    /// Their `events`, summed.
    pub events: u64,
    /// Run DB files without a run yet (created, nothing committed).
    pub empty: u64,
    /// Run DBs that could not be read (path, why); they have no row.
    pub skipped: Vec<(PathBuf, String)>,
    pub seconds: f64,
}

/// Rebuilds the catalog of `config`; `summarize(db_path, status)` gives a run's current
/// summary (the metrics' JSON object) or None to keep the stored one (`commands::catalog`
/// passes the summary module's, which itself writes to the catalog: a closure keeps the two
/// modules from importing each other); `progress(done, total)` is called after each run DB.
pub(crate) fn rebuild(
    config: &Config,
    mut summarize: impl FnMut(&Path, &rusqlite::types::Value) -> Option<String>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Rebuilt> {
    use anyhow::Context;
    let started = Instant::now();
    let path = &config.output.catalog;
    let files = run_db_files(&config.output.dir)
        .with_context(|| format!("listing run DBs in {}", config.output.dir.display()))?;
    let mut catalog = open_or_replace_corrupt(path, config)
        .with_context(|| format!("opening catalog {}", path.display()))?;
    let conn = &mut catalog.conn;
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.rebuilt;
         CREATE TEMP TABLE rebuilt AS SELECT * FROM main.runs WHERE 0;
         CREATE UNIQUE INDEX temp.rebuilt_run_id ON rebuilt (run_id);",
    )?;
    let mut out = Rebuilt::default();
    {
        // The temp table is this connection's own: filling it takes no lock on the catalog.
        let tx = conn.transaction()?;
        let mut insert = tx.prepare(
            "INSERT INTO temp.rebuilt (run_id, db_path, status, started_at, ended_at, events,
                first_ts, last_ts, db_bytes, last_write_at, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (run_id) DO NOTHING",
        )?;
        let total = files.len() as u64;
        for (i, file_path) in files.iter().enumerate() {
            match read_one(file_path, &mut summarize) {
                Ok(Some((state, file))) => {
                    let n = insert.execute(params![
                        state.run_id,
                        path_text(file_path),
                        state.committed.status,
                        state.committed.started_at,
                        state.committed.ended_at,
                        state.committed.events,
                        state.ts.min.unwrap_or(rusqlite::types::Value::Null),
                        state.ts.max.unwrap_or(rusqlite::types::Value::Null),
                        file.bytes as i64,
                        file.last_write_at,
                        state.summary,
                    ])?;
                    if n == 0 {
                        // File names are an injective escaping of the run_id: only a file
                        // copied in by hand gets here.
                        let why = format!("run {:?} is already in another run DB", state.run_id);
                        out.skipped.push((file_path.clone(), why));
                    } else {
                        out.runs += 1;
                        out.events += state.committed.events.max(0) as u64;
                    }
                }
                Ok(None) => out.empty += 1,
                Err(error) => {
                    tracing::warn!(path = %file_path.display(), %error, "cannot read run DB; it has no catalog row");
                    out.skipped.push((file_path.clone(), error.to_string()));
                }
            }
            progress(i as u64 + 1, total);
        }
        drop(insert);
        tx.commit()?;
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Summaries the run DBs do not store (yet) are kept from the old rows.
    tx.execute_batch(
        "UPDATE temp.rebuilt SET summary =
            (SELECT summary FROM main.runs WHERE main.runs.run_id = rebuilt.run_id)
            WHERE summary IS NULL;
         DELETE FROM main.runs;
         INSERT INTO main.runs SELECT * FROM temp.rebuilt;",
    )?;
    tx.commit()?;
    conn.execute_batch("DROP TABLE temp.rebuilt")?;
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One run DB's row: its committed state, with the summary `summarize` gives (else the
/// stored one), stat'ed after it (storing a summary writes the file).
fn read_one(
    path: &Path,
    summarize: &mut impl FnMut(&Path, &rusqlite::types::Value) -> Option<String>,
) -> rusqlite::Result<Option<(super::scan::RunDbState, FileState)>> {
    let Some(mut state) = read_run_db(path, None)? else { return Ok(None) };
    // Storing a summary changes neither the events nor the runs row read above.
    if let Some(summary) = summarize(path, &state.committed.status) {
        state.summary = Some(summary);
    }
    // Gone since listed (retention): no row.
    Ok(FileState::of(path).map(|file| (state, file)))
}

/// Opens the catalog; one SQLite reports corrupt is moved aside (kept, one WARN) and a new
/// one created: it is derived data, and this command is how it comes back.
fn open_or_replace_corrupt(path: &Path, config: &Config) -> rusqlite::Result<Catalog> {
    let opened = Catalog::open(path, &config.sqlite).and_then(|catalog| {
        catalog.conn.query_row("SELECT count(*) FROM runs", [], |_| Ok(())).map(|()| catalog)
    });
    match opened {
        Err(error) if crate::sqlite::is_corrupt(&error) => {
            let moved = crate::sqlite::quarantine(path)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tracing::warn!(path = %path.display(), moved_to = %moved.display(), %error, "catalog is corrupt; moved it aside and building a new one");
            Catalog::open(path, &config.sqlite)
        }
        other => other,
    }
}
