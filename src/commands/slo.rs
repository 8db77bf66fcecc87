//! `slo RUN_ID | --last N [--json]`: the SLO gate, for people (a table) and CI (exit 1 when
//! any SLO fails or its metric is missing; `--json`).

use std::io::Write;
use std::process::ExitCode;

use crate::config::Config;
use crate::summary::slo::{judge, RunVerdict};

pub(super) fn slo(
    config: &Config,
    run_id: Option<&str>,
    last: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if config.slo.is_empty() {
        return Err(super::UsageError("no [[slo]] in the config: nothing to judge".into()).into());
    }
    let run_ids: Vec<String> = match (run_id, last) {
        (Some(run_id), _) => vec![run_id.to_string()],
        (None, n) => {
            let n = n.unwrap_or(1);
            let ended = crate::summary::runs::last_ended(config, n)?;
            if ended.is_empty() {
                anyhow::bail!("no ended run in {}", config.output.dir.display());
            }
            ended.into_iter().map(|e| e.run_id).collect()
        }
    };
    let mut verdicts = Vec::new();
    for run_id in &run_ids {
        let summary = super::summary::summary_of(config, run_id)?;
        verdicts.push(judge(&summary, &config.slo));
    }
    let ok = verdicts.iter().all(|v| v.ok);
    let mut out = std::io::stdout().lock();
    if json {
        let runs: Vec<serde_json::Value> = verdicts.iter().map(RunVerdict::to_json).collect();
        writeln!(out, "{}", serde_json::json!({"ok": ok, "runs": runs}))?;
    } else {
        out.write_all(table(&verdicts).as_bytes())?;
    }
    out.flush()?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILURE) })
}

/// One line per run and SLO, then a verdict line.
fn table(verdicts: &[RunVerdict]) -> String {
    let mut rows = vec![["RUN", "SLO", "METRIC", "VALUE", "BOUND", ""].map(String::from)];
    for run in verdicts {
        for v in &run.slos {
            let bound = match v.op {
                "max" => format!("<= {}", v.threshold),
                _ => format!(">= {}", v.threshold),
            };
            let value = if v.value.is_null() { "missing".into() } else { v.value.to_string() };
            let ok = if v.ok { "ok" } else { "FAIL" };
            rows.push([&run.run_id, &v.name, &v.metric, &value, &bound, ok].map(|s| s.to_string()));
        }
    }
    let widths: Vec<usize> =
        (0..6).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let (failed, total) = (
        verdicts.iter().flat_map(|r| &r.slos).filter(|v| !v.ok).count(),
        verdicts.iter().map(|r| r.slos.len()).sum::<usize>(),
    );
    match failed {
        0 => out.push_str(&format!("all {total} SLOs hold\n")),
        _ => out.push_str(&format!("{failed} of {total} SLOs failed\n")),
    }
    out
}
