//! `summary`: times `jsonl-shipper summary RUN_ID --json` on one run of `--events` events
//! (issue 11's bound: 1,000,000 events, 5 metrics of which two percentiles, ≤ 3 s).
//!
//! 1. generates (or reuses) the 1-run data set of `backfill` and ships it once with
//!    `jsonl-shipper backfill` into `<dir>/summary-<events>/` (reused while its run DB holds
//!    the expected rows);
//! 2. per repetition: deletes the stored summary (so the command computes it), runs
//!    `summary RUN_ID --json` with the metrics below (or `--config F`'s), takes wall time,
//!    CPU and peak RSS, and checks `events` in its output;
//! 3. prints median/min/max and a `BENCH {json}` line.
//!
//! The default metrics (built-in columns only, until typed columns are configured):
//! a count by type, the share of 429s among failures and an average under a JSON condition,
//! and two percentiles whose `where` extracts a JSON field from every row — the per-row cost
//! a typed (generated, `json_extract`) column adds.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use clap::Args;

use crate::common::{data_root, resolve_bin, run_measured, sqlite_files, BinArgs};
use crate::gen::{base_dir, ensure_data, gen_params, DataArgs};

const METRICS: &str = r#"
[[summary]]
name = "fetched"
agg = "count"
where = "event_type = 'page_fetched'"

[[summary]]
name = "ratio_429"
agg = "ratio"
where = "json_extract(data, '$.status') = 429"
of = "event_type = 'page_failed'"

[[summary]]
name = "avg_line_slow"
agg = "avg"
column = "line_no"
where = "json_extract(data, '$.timing.ttfb_ms') > 500"

[[summary]]
name = "p50_line"
agg = "p50"
column = "line_no"
where = "json_extract(data, '$.timing.ttfb_ms') IS NOT NULL"

[[summary]]
name = "p95_pos"
agg = "p95"
column = "pos"
where = "json_extract(data, '$.timing.ttfb_ms') IS NOT NULL"
"#;

#[derive(Args)]
pub(crate) struct SummaryArgs {
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// A TOML file with the [[summary]] sections to time instead of the default five.
    #[arg(long)]
    metrics: Option<std::path::PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

pub(crate) fn summary(a: SummaryArgs) -> Result<bool> {
    let bin = resolve_bin(&a.bin)?;
    let root = data_root(&a.data.dir)?;
    let raw_base = base_dir(&root, 1, a.data.events);
    let manifest = ensure_data(&raw_base, &gen_params(1, &a.data))?;
    let base = root.join(format!("summary-{}", a.data.events));
    fs::create_dir_all(&base)?;
    let metrics = match &a.metrics {
        Some(path) => fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
        None => METRICS.to_string(),
    };
    let config = base.join("config.toml");
    let raw = raw_base.join("raw").join("events_*.ndjson");
    fs::write(
        &config,
        format!("base = {:?}\n[sources]\npaths = [{:?}]\n{metrics}", base, raw.to_string_lossy()),
    )?;
    let dbs = base.join("db/runs");
    let shipped = sqlite_files(&dbs).map(|f| f.len() == 1).unwrap_or(false)
        && events_in(&dbs)? == manifest.expected_rows;
    if !shipped {
        eprintln!("shipping the data set once into {}", base.display());
        let _ = fs::remove_dir_all(base.join("db"));
        let usage = run_measured(
            Command::new(&bin).args(["backfill", "--config"]).arg(&config),
            &base.join("backfill.log"),
        )?;
        ensure!(usage.status.success(), "backfill failed; see {}/backfill.log", base.display());
    }
    let db = sqlite_files(&dbs)?.pop().context("no run DB")?;
    let run_id: String =
        rusqlite::Connection::open(&db)?.query_row("SELECT run_id FROM runs", [], |r| r.get(0))?;
    let mut walls = Vec::new();
    for rep in 0..a.reps {
        rusqlite::Connection::open(&db)?.execute("DELETE FROM summary", [])?;
        let log = base.join(format!("summary-{rep}.log"));
        let usage = run_measured(
            Command::new(&bin).args(["summary", &run_id, "--json", "--config"]).arg(&config),
            &log,
        )?;
        let out = fs::read_to_string(&log)?;
        ensure!(usage.status.success(), "summary failed: {out}");
        let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))?;
        ensure!(
            json["metrics"]["events"].as_u64() == Some(manifest.expected_rows),
            "unexpected output: {out}"
        );
        eprintln!(
            "rep {}: {:.2} s wall, {:.2} s CPU, {} MiB peak RSS",
            rep + 1,
            usage.wall,
            usage.user + usage.sys,
            usage.maxrss_kib / 1024
        );
        walls.push(usage.wall);
        if rep + 1 == a.reps {
            eprintln!("{}", json["metrics"]);
        }
    }
    walls.sort_by(f64::total_cmp);
    let median = walls[walls.len() / 2];
    let met = median <= 3.0;
    println!(
        "summary of {} events: median {median:.2} s (min {:.2}, max {:.2}) over {} reps; goal <= 3 s: {}",
        manifest.expected_rows,
        walls[0],
        walls[walls.len() - 1],
        walls.len(),
        if met { "met" } else { "missed" }
    );
    println!(
        "BENCH {}",
        serde_json::json!({"bench": "summary", "events": manifest.expected_rows,
            "median_s": median, "min_s": walls[0], "max_s": walls[walls.len() - 1]})
    );
    Ok(true)
}

fn events_in(dbs: &Path) -> Result<u64> {
    let mut n = 0;
    for db in sqlite_files(dbs)? {
        let conn = rusqlite::Connection::open(db)?;
        n += conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0))? as u64;
    }
    Ok(n)
}
