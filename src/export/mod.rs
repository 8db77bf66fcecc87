//! `export`: copies runs out of their SQLite DBs into files analysts' tools read across runs
//! (Parquet, NDJSON or CSV): `DIR/<escaped run_id>.<ext>` per run with its events, and
//! `DIR/runs.<ext>` with the catalog rows of the runs exported.
//!
//! By job: `select` (which runs: `--run` ids or `--since/--until` over the catalog, read with
//! a small query of its own), `read` (a run DB opened read-only, its typed columns found, its
//! events streamed in one read transaction), `write` (a file written under a temp name and
//! renamed, and what every format shares: column kinds and how a SQLite value becomes one),
//! and one module per format (`parquet_writer`, `ndjson_writer`, `csv_writer`).
//!
//! Memory is bounded whatever the run's size: rows go from SQLite's cursor to the writer one
//! at a time; the NDJSON and CSV writers hold a buffered writer, the Parquet writer one Arrow
//! batch of [`parquet_writer::BATCH_ROWS`] rows plus the encoded row group it is filling (flushed
//! at [`parquet_writer::ROW_GROUP_ROWS`] rows or [`parquet_writer::ROW_GROUP_BYTES`]).
//!
//! Nothing here writes SQLite: run DBs and the catalog are opened `SQLITE_OPEN_READ_ONLY` with
//! `query_only`, never created or migrated.

mod csv_writer;
mod ndjson_writer;
mod parquet_writer;
pub(crate) mod read;
pub(crate) mod select;
mod write;

use std::path::{Path, PathBuf};

use rusqlite::types::{Value, ValueRef};

pub(crate) use write::{Column, WriteError};

/// Output format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache Parquet, ZSTD-compressed, typed columns (the default).
    Parquet,
    /// One JSON object per line; `data` embedded as a JSON value.
    Ndjson,
    /// RFC 4180 CSV with a header row; NULL is an empty field, an empty string `""`.
    Csv,
}

impl Format {
    /// The file name extension.
    pub(crate) fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// The stem of the catalog rows' file, `DIR/runs.<ext>`. A run whose escaped id is `runs`
/// would take the same name: it cannot be exported into the same DIR (see `stem_of`).
pub(crate) const RUNS_STEM: &str = "runs";

/// The file stem of a run's export: the run DB's injective escaping without `.sqlite`.
pub(crate) fn stem_of(run_id: &str) -> String {
    let name = crate::sink::run_path::db_file_name(run_id);
    name.strip_suffix(".sqlite").unwrap_or(&name).to_string()
}

/// One run to export: where its DB is and its catalog row, if the catalog has one.
#[derive(Debug, Clone)]
pub(crate) struct PlannedRun {
    pub run_id: String,
    pub db_path: PathBuf,
    /// The catalog's values, in [`select::CATALOG_COLUMNS`] order.
    pub catalog_row: Option<Vec<Value>>,
}

/// What one run's export did.
#[derive(Debug, Clone)]
pub(crate) struct RunExported {
    pub rows: u64,
    pub bytes: u64,
    pub path: PathBuf,
    /// Typed columns holding values of another type, written as NULL: (column, count).
    pub mismatched: Vec<(String, u64)>,
    /// The row for `runs.<ext>`.
    pub runs_row: Vec<Value>,
}

/// A run that could not be exported, and why (its DB unreadable).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("run {run_id:?}: cannot read its run DB {}: {source}", path.display())]
    Read {
        run_id: String,
        path: PathBuf,
        #[source]
        source: read::ReadError,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
}

impl ExportError {
    /// Whether the failure is the output's (disk full, DIR unwritable): then every later run
    /// would fail too, and the export stops.
    pub(crate) fn is_output(&self) -> bool {
        matches!(self, ExportError::Write { .. })
    }
}

/// Exports one run's events into `DIR/<stem>.<ext>`, calling `on_rows` with the rows written
/// so far every [`PROGRESS_EVERY`] rows.
pub(crate) fn export_run(
    run: &PlannedRun,
    format: Format,
    out_dir: &Path,
    on_rows: &mut dyn FnMut(u64),
) -> Result<RunExported, ExportError> {
    let read_error = |source| ExportError::Read {
        run_id: run.run_id.clone(),
        path: run.db_path.clone(),
        source,
    };
    let mut reader = read::RunReader::open(&run.db_path).map_err(read_error)?;
    let path = out_dir.join(format!("{}.{}", stem_of(&run.run_id), format.ext()));
    let write_error = |source| ExportError::Write { path: path.clone(), source };
    let mut writer = write::open(format, &path, reader.columns()).map_err(write_error)?;
    let mut rows = 0u64;
    let mut failed_write = None;
    let streamed = reader.for_each_event(&mut |cells| {
        if let Err(e) = writer.write_row(cells) {
            failed_write = Some(e);
            return false;
        }
        rows += 1;
        if rows.is_multiple_of(PROGRESS_EVERY) {
            on_rows(PROGRESS_EVERY);
        }
        true
    });
    if let Some(e) = failed_write {
        return Err(write_error(e));
    }
    streamed.map_err(read_error)?;
    on_rows(rows % PROGRESS_EVERY);
    let runs_row = match &run.catalog_row {
        Some(row) => row.clone(),
        None => reader.runs_row(&run.run_id, &run.db_path, rows).map_err(read_error)?,
    };
    // The events were read in one transaction; end it before the (slow) fsync and rename.
    drop(reader);
    let written = writer.finish().map_err(write_error)?;
    Ok(RunExported { rows, bytes: written.bytes, path, mismatched: written.mismatched, runs_row })
}

/// Writes `DIR/runs.<ext>`: one row per exported run, the catalog's columns.
pub(crate) fn export_runs_table(
    rows: &[Vec<Value>],
    columns: &[Column],
    format: Format,
    out_dir: &Path,
) -> Result<(PathBuf, u64), ExportError> {
    let path = out_dir.join(format!("{RUNS_STEM}.{}", format.ext()));
    let write_error = |source| ExportError::Write { path: path.clone(), source };
    let mut writer = write::open(format, &path, columns).map_err(write_error)?;
    for row in rows {
        let cells: Vec<ValueRef<'_>> = row.iter().map(ValueRef::from).collect();
        writer.write_row(&cells).map_err(write_error)?;
    }
    let written = writer.finish().map_err(write_error)?;
    Ok((path, written.bytes))
}

/// How often (in rows) `export_run` reports progress.
pub(crate) const PROGRESS_EVERY: u64 = 16_384;
