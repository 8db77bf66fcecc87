//! `summary RUN_ID [--json]`: a run's summary, the stored one while current, else computed
//! (read-only) and stored.

use std::io::Write;
use std::process::ExitCode;

use crate::config::Config;
use crate::summary::{self, Summary};

pub(super) fn summary(config: &Config, run_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let summary = summary_of(config, run_id)?;
    // A metric over a typed column this run DB does not have yet is null; say why (stderr:
    // `--json` stays one object).
    let path = summary::runs::path_of(config, run_id);
    let missing = crate::sink::columns::survey(&path, &config.schema)
        .map(|survey| survey.missing_columns)
        .unwrap_or_default();
    for m in &config.summary {
        let Some(column) = &m.column else { continue };
        if missing.iter().any(|c| c.eq_ignore_ascii_case(column)) {
            eprintln!(
                "note: {}: column {column:?} is not in this run DB yet (it is added when run or \
                 backfill next writes it, or now by `jsonl-shipper maintain`)",
                m.name
            );
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", summary.to_json())?;
    } else {
        out.write_all(table(&summary).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The summary of `run_id`'s run DB; a missing one is an error naming the run.
pub(super) fn summary_of(config: &Config, run_id: &str) -> anyhow::Result<Summary> {
    let path = summary::runs::path_of(config, run_id);
    match summary::refresh(&path, config, false) {
        Err(summary::SummaryError::NoRunDb { path, .. }) => {
            anyhow::bail!("run {run_id:?}: no run DB {}", path.display())
        }
        other => Ok(other?),
    }
}

/// Two columns: the run and its status, then one metric a line (`events_by_type` as
/// `type=count` pairs).
fn table(summary: &Summary) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => {
            let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.join(" ")
        }
        other => other.to_string(),
    };
    let mut rows = vec![("run_id".to_string(), summary.run_id.clone())];
    rows.push(("status".into(), text(&summary.status)));
    rows.extend(summary.metrics.iter().map(|m| (m.name.clone(), text(&m.value))));
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:width$}  {v}\n")).collect()
}
