//! `maintain [--vacuum]`: retention now, then a WAL checkpoint (TRUNCATE) and `PRAGMA
//! optimize` of every run DB (optionally VACUUM) and of the state DB; for cron or an operator. Safe while the daemon
//! runs: a DB the daemon has open is neither deleted nor waited for.

use std::collections::HashSet;
use std::process::ExitCode;

use crate::config::Config;
use crate::maintain::{self, Options};

pub(super) fn maintain(config: Config, vacuum: bool) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    let report = maintain::run_once(&config, &HashSet::new(), Options::full(vacuum), None)?;
    let r = &report.retention;
    crate::maintain::retention::HeldForSink::default().update(&r.held_for_sink);
    println!(
        "maintain: {} run DBs checkpointed{}, state DB {}; retention deleted {} run DBs, {} DLQ files, {} source files ({} bytes); {} kept (in use or changed), {} failed",
        report.maintained,
        if vacuum { " and vacuumed" } else { "" },
        if report.state_maintained { "checkpointed" } else { "not fully checkpointed" },
        r.runs.len(),
        r.dlq.len(),
        r.sources.len(),
        r.bytes,
        r.skipped.len(),
        report.failed.len()
    );
    Ok(ExitCode::SUCCESS)
}
