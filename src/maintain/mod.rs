//! Upkeep that is not on the shipping path: retention ([`retention`]), DLQ replay
//! ([`replay`]), and one-off WAL checkpoints, `PRAGMA optimize` and VACUUM of every run DB,
//! and a checkpoint and optimize of the state DB ([`run_once`], the `maintain` command).
//!
//! For a periodic loop in the daemon, call [`run_once`] with [`Options::periodic`] every
//! `retention.check_interval`, passing the writers' [`crate::sink::Releases`] (they close a run
//! DB retention deletes), and add [`Report::deleted`] to `jsonl_shipper_retention_deleted_total`.

pub(crate) mod replay;
pub(crate) mod retention;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use crate::checkpoint::StateDb;
use crate::config::Config;
use crate::sink::run_db;

/// What [`run_once`] does besides retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `wal_checkpoint(TRUNCATE)` and `PRAGMA optimize` on every run DB not in `busy`.
    pub checkpoint: bool,
    /// VACUUM every run DB not in `busy` (rewrites each file: slow, needs free space).
    pub vacuum: bool,
}

impl Options {
    /// Retention only: what a daemon loop runs every `check_interval` (its writers checkpoint
    /// their own DBs).
    pub(crate) fn periodic() -> Options {
        Options::default()
    }

    /// Everything, as `jsonl-shipper maintain` does.
    pub(crate) fn full(vacuum: bool) -> Options {
        Options { checkpoint: true, vacuum }
    }
}

/// What [`run_once`] did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub retention: retention::Applied,
    /// Run DBs checkpointed and optimized (and vacuumed with `vacuum`).
    pub maintained: u64,
    /// Whether the state DB was checkpointed (TRUNCATE) and optimized.
    pub state_maintained: bool,
    /// DBs (run DBs, the state DB) whose maintenance failed or was partial (path, why); not
    /// fatal.
    pub failed: Vec<(PathBuf, String)>,
}

impl Report {
    /// Files deleted by retention (run DBs, DLQ files, sources).
    pub(crate) fn deleted(&self) -> u64 {
        self.retention.deleted()
    }
}

/// One round: retention now (plan, then apply), then checkpoint/optimize/VACUUM per
/// `options` (of the run DBs, and of the state DB when `checkpoint`). `busy`: run DB paths (`<output.dir>/<name>.sqlite`, see [`run_db_path`]) being
/// written by the caller's process; they are neither deleted nor checkpointed. Errors are only
/// returned for what stops the whole round (the state DB cannot be opened, a directory cannot
/// be listed); a single file that cannot be handled is logged and reported. `releases`: the
/// caller's writers, asked to close a run DB retention deletes (see [`retention::apply`]).
pub(crate) fn run_once(
    config: &Config,
    busy: &HashSet<PathBuf>,
    options: Options,
    releases: Option<&crate::sink::Releases>,
) -> anyhow::Result<Report> {
    let state_path = &config.output.state_db;
    let state = StateDb::open(state_path, &config.sqlite)
        .with_context(|| format!("opening state DB {}", state_path.display()))?;
    let inputs = retention::gather(config, Some(&state), busy)?;
    let plan = retention::plan(&inputs, &retention::Policy::from_config(config), SystemTime::now());
    let mut report = Report {
        retention: retention::apply(&plan, config, Some(&state), releases),
        ..Report::default()
    };
    if !(options.checkpoint || options.vacuum) {
        return Ok(report);
    }
    let deleted: HashSet<&PathBuf> = report.retention.runs.iter().collect();
    for run in inputs.runs.iter().filter(|r| !busy.contains(&r.path) && !deleted.contains(&r.path))
    {
        match maintain_db(&run.path, config, options) {
            Ok(()) => report.maintained += 1,
            Err(e) => {
                tracing::warn!(path = %run.path.display(), error = %e, "maintain: run DB not fully maintained");
                report.failed.push((run.path.clone(), e.to_string()));
            }
        }
    }
    // The state DB too: a daemon that never stops would otherwise only ever run PASSIVE
    // autocheckpoints on it, and its -wal keeps its high-water size.
    match state.checkpoint_and_optimize() {
        Ok(true) => report.state_maintained = true,
        Ok(false) => {
            let why = "WAL checkpoint incomplete: another connection is reading or writing";
            tracing::warn!(path = %state_path.display(), why, "maintain: state DB not fully maintained");
            report.failed.push((state_path.clone(), why.into()));
        }
        Err(e) => {
            tracing::warn!(path = %state_path.display(), error = %e, "maintain: state DB not fully maintained");
            report.failed.push((state_path.clone(), e.to_string()));
        }
    }
    Ok(report)
}

fn maintain_db(path: &Path, config: &Config, options: Options) -> rusqlite::Result<()> {
    let conn = run_db::open(path, &config.sqlite, &config.schema)?;
    if options.vacuum {
        conn.execute_batch("VACUUM")?;
    }
    // Optimize before the checkpoint: it may write (ANALYZE), which would otherwise leave
    // frames in the WAL just truncated.
    conn.execute_batch("PRAGMA optimize")?;
    if crate::sqlite::wal_checkpoint(&conn, "TRUNCATE")?.busy {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("WAL checkpoint incomplete: another connection is reading or writing".into()),
        ));
    }
    Ok(())
}
