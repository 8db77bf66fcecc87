//! `dlq replay`: re-runs dead letters through the current `[mapping]`, ships those that now
//! parse into their run DBs with the identity they would have had if read from their file, then
//! removes them from the DLQ by the rewrite protocol in [`crate::dlq`].
//!
//! Shipping happens without the DLQ lock (so a long replay does not stall the daemon's dead
//! letters); the rewrite takes it, and removes exactly the letters shipped, by key, whatever
//! the daemon appended meanwhile. Letters whose `raw` is cut or lossy stay: their line cannot
//! be reproduced byte for byte, so it would get another identity than the original.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::checkpoint::StateDb;
use crate::config::Config;
use crate::dlq::{self, DlqLock};
use crate::flow::{BatchBuilder, FileEntry, Span};
use crate::parse::{self, DeadReason, Outcome};
use crate::sink::{run_db, run_path};
use crate::tail::LineMeta;

/// One run's replayed records by source path, with the letter key of each record in order.
type BySource = BTreeMap<String, (BatchBuilder, Vec<[u8; 24]>)>;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayReport {
    /// Letters matching the reason filter.
    pub considered: u64,
    /// Shipped into run DBs and removed from the DLQ.
    pub shipped: u64,
    /// Still rejected by the current mapping.
    pub still_dead: u64,
    /// Rejected by SQLite again (`write_failed`, e.g. too big).
    pub write_failed: u64,
    /// Kept because `raw` is cut or lossy.
    pub not_replayable: u64,
}

/// Replays the DLQ (only letters with `reason`, if given). See the module docs.
pub(crate) fn replay(config: &Config, reason: Option<DeadReason>) -> anyhow::Result<ReplayReport> {
    let dir = &config.dlq.dir;
    let state_path = &config.output.state_db;
    let state = StateDb::open(state_path, &config.sqlite)
        .with_context(|| format!("opening state DB {}", state_path.display()))?;
    let letters = {
        let _lock =
            DlqLock::acquire(dir).with_context(|| format!("locking DLQ dir {}", dir.display()))?;
        dlq::recover(dir, &state)
            .with_context(|| format!("recovering DLQ in {}", dir.display()))?;
        dlq::read_all(dir).with_context(|| format!("reading DLQ in {}", dir.display()))?
    };
    let mut report = ReplayReport::default();
    let mut runs: BTreeMap<String, BySource> = BTreeMap::new();
    for letter in letters.iter().filter(|l| reason.is_none_or(|r| l.reason == r.as_str())) {
        report.considered += 1;
        let Some(key) = dlq::faithful_key(letter, &state)? else {
            report.not_replayable += 1;
            continue;
        };
        let bytes = letter.raw.as_bytes();
        let record = match parse::parse_line(bytes, &config.mapping) {
            Outcome::Record(record) => record,
            // A blank line is never dead-lettered; keep whatever this is.
            Outcome::Blank | Outcome::Dead(..) => {
                report.still_dead += 1;
                continue;
            }
        };
        let (builder, keys) = runs
            .entry(record.run_id.to_string())
            .or_default()
            .entry(letter.source.clone())
            .or_default();
        let meta = LineMeta { offset: letter.offset, line_no: letter.line_no, end_offset: 0 };
        builder.push(&record, meta, bytes, parse::source_day(&letter.source));
        keys.push(key);
    }

    let mut shipped = HashSet::new();
    let mut written = Vec::new();
    for (run_id, sources) in runs {
        let path = config.output.dir.join(run_path::db_file_name(&run_id));
        let before = shipped.len();
        let failed =
            ship_run(config, &path, &run_id, sources, &mut shipped).with_context(|| {
                format!("shipping dead letters of run {run_id:?} into {}", path.display())
            })?;
        report.write_failed += failed;
        if shipped.len() > before {
            written.push(path);
        }
    }
    report.shipped = shipped.len() as u64;
    crate::crash::point("replay.after_ship");
    if !shipped.is_empty() {
        let _lock =
            DlqLock::acquire(dir).with_context(|| format!("locking DLQ dir {}", dir.display()))?;
        let removed = dlq::remove_letters(dir, &state, &shipped)
            .with_context(|| format!("rewriting DLQ files in {}", dir.display()))?;
        tracing::info!(letters = removed.letters, files = ?removed.files, "dlq replay: removed shipped letters");
    }
    refresh_derived(config, &written);
    Ok(report)
}

/// Brings what is derived from the run DBs replay wrote into up to date: their catalog rows,
/// then (the row of a new run must exist for its summary to be copied) the summaries of those
/// that have ended, which the added events made stale. Best effort, after the DLQ is
/// rewritten: a failure is one WARN, and the next start of `run` or `backfill` reconciles the
/// catalog (`catalog rebuild` and `summary` recompute too).
fn refresh_derived(config: &Config, written: &[std::path::PathBuf]) {
    let catalog = &config.output.catalog;
    if let Err(error) = crate::catalog::refresh_rows(catalog, &config.sqlite, written) {
        tracing::warn!(catalog = %catalog.display(), %error, "dlq replay: cannot update the catalog; the next start of run or backfill does");
    }
    for path in written {
        if let Err(error) = crate::summary::refresh_ended(path, config) {
            tracing::warn!(path = %path.display(), %error, "dlq replay: cannot compute the summary of an ended run again; `jsonl-shipper summary` does");
        }
    }
}

/// Writes one run's replayed records in one transaction; adds the keys of the letters now
/// durable in the run DB to `shipped`. Returns how many SQLite rejected on their own.
fn ship_run(
    config: &Config,
    path: &Path,
    run_id: &str,
    sources: BySource,
    shipped: &mut HashSet<[u8; 24]>,
) -> anyhow::Result<u64> {
    let mut batches = Vec::new();
    for (source, (builder, keys)) in sources {
        // A span only carries the source path here: nothing acks it, and its file handle,
        // which the state thread uses for fingerprints, is never read. The DLQ dir stands in.
        let file = Arc::new(FileEntry {
            path: source.clone().into(),
            source: Arc::from(source.as_str()),
            id: crate::identity::FileId { dev: 0, ino: 0 },
            gzip: false,
            day: parse::source_day(&source),
        });
        let span =
            Arc::new(Span::new(file, 0, 0, keys.len(), Default::default(), None, Instant::now()));
        batches.push((builder.into_batch(span), keys));
    }
    // The daemon may be committing to the same DB: busy_timeout waits, a few retries cover
    // longer stalls before giving up (a rerun is always safe).
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = (|| -> rusqlite::Result<Vec<HashSet<usize>>> {
            let mut conn = run_db::open(path, &config.sqlite, &config.schema)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut failed = Vec::new();
            for (batch, _) in &batches {
                let outcome = run_db::write_run(&tx, run_id, batch, &config.mapping)?;
                for (i, error) in &outcome.failed {
                    tracing::warn!(run_id, source = batch.source(&batch.recs[*i]), line_no = batch.recs[*i].line_no, %error, "dlq replay: record rejected by SQLite; it stays in the DLQ");
                }
                failed.push(outcome.failed.into_iter().map(|(i, _)| i).collect());
            }
            tx.commit()?;
            Ok(failed)
        })();
        match result {
            Ok(failed) => {
                let mut n_failed = 0;
                for ((_, keys), failed) in batches.iter().zip(failed) {
                    n_failed += failed.len() as u64;
                    shipped.extend(
                        keys.iter()
                            .enumerate()
                            .filter(|(i, _)| !failed.contains(i))
                            .map(|(_, k)| *k),
                    );
                }
                return Ok(n_failed);
            }
            Err(e)
                if attempt < 5
                    && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) =>
            {
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
