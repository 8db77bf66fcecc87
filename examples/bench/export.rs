//! `export`: times `jsonl-shipper export` of a shipped data set and checks its output.
//!
//! 1. generates (or reuses) the `backfill` data set of `--runs` runs and `--events` events
//!    (see `backfill.rs`) and ships it once into its own base dir
//!    `<dir>/export-<runs>runs-<events>/` (its `raw` a symlink to the data set's), then adds two
//!    typed columns to every run DB as `[columns]` does (`http_status INTEGER`, `ttfb_ms
//!    REAL`, VIRTUAL generated columns), so the export carries typed columns;
//! 2. per repetition: deletes the output dir, runs `jsonl-shipper export --base <base> --run
//!    <each run> --format <F> --out <dir>` and takes wall time, CPU and peak RSS (`wait4`);
//! 3. checks the rep: exit 0, one file per run plus `runs.<ext>`, and (Parquet) the row count
//!    of every file's footer summed equal to the expected distinct events;
//! 4. prints median/min/max and the goal (Parquet: >= 300,000 rows/s, RSS <= 128 MiB) and a
//!    `BENCH {json}` line.
//!
//! rows/s = distinct events exported / wall time.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use clap::Args;
use rusqlite::Connection;
use serde::Serialize;

use crate::common::{
    data_root, fmt_int, git_rev, log_tail, resolve_bin, run_measured, sqlite_files, unix_now,
    BinArgs,
};
use crate::gen::{base_dir, ensure_data, gen_params, print_manifest, DataArgs};

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Number of runs in the data set.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// parquet, ndjson or csv.
    #[arg(long, default_value = "parquet")]
    format: String,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

#[derive(Serialize)]
struct Rep {
    wall_s: f64,
    cpu_s: f64,
    rss_mib: f64,
    rows_per_s: f64,
    out_bytes: u64,
}

pub(crate) fn export(a: ExportArgs) -> Result<bool> {
    ensure!(a.reps > 0, "--reps must be > 0");
    let root = data_root(&a.data.dir)?;
    let bin = resolve_bin(&a.bin)?;
    let data = base_dir(&root, a.runs, a.data.events);
    let m = ensure_data(&data, &gen_params(a.runs, &a.data))?;
    print_manifest(&data, &m);

    let base = root.join(format!("export-{}runs-{}", a.runs, a.data.events));
    let shipped = base.join("shipped.ok");
    if !shipped.exists() {
        if base.exists() {
            fs::remove_dir_all(&base)?;
        }
        fs::create_dir_all(&base)?;
        std::os::unix::fs::symlink(data.join("raw"), base.join("raw"))?;
        eprintln!("shipping the data set once into {}", base.display());
        let status = Command::new(&bin)
            .arg("backfill")
            .arg("--base")
            .arg(&base)
            .status()
            .context("running backfill")?;
        ensure!(status.success(), "backfill failed: {status}");
        for db in sqlite_files(&base.join("db/runs"))? {
            let conn = Connection::open(&db)?;
            conn.execute_batch(
                "ALTER TABLE events ADD COLUMN http_status INTEGER AS (
                     CASE WHEN json_type(data, '$.status') = 'integer'
                     THEN json_extract(data, '$.status') END) VIRTUAL;
                 ALTER TABLE events ADD COLUMN ttfb_ms REAL AS (
                     CASE WHEN json_type(data, '$.timing.ttfb_ms') IN ('integer', 'real')
                     THEN json_extract(data, '$.timing.ttfb_ms') END) VIRTUAL;
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .with_context(|| format!("adding typed columns to {}", db.display()))?;
        }
        fs::write(&shipped, b"")?;
    }
    let mut run_ids = Vec::new();
    for db in sqlite_files(&base.join("db/runs"))? {
        let conn = Connection::open(&db)?;
        run_ids.push(conn.query_row("SELECT run_id FROM runs", [], |r| r.get::<_, String>(0))?);
    }
    ensure!(
        run_ids.len() as u64 == m.expected_runs,
        "{} run DBs in {}",
        run_ids.len(),
        base.display()
    );

    let out = base.join("out");
    let logs = base.join("logs");
    fs::create_dir_all(&logs)?;
    let mut reps = Vec::new();
    let mut ok = true;
    for rep in 1..=a.reps {
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        let log = logs.join(format!("export-rep{rep}.log"));
        let mut cmd = Command::new(&bin);
        cmd.arg("export").arg("--base").arg(&base).arg("--format").arg(&a.format);
        for id in &run_ids {
            cmd.arg("--run").arg(id);
        }
        cmd.arg("--out").arg(&out);
        let u = run_measured(&mut cmd, &log)?;
        let mut problems = Vec::new();
        if !u.status.success() {
            problems.push(format!("exit {}", u.status));
        }
        let files = fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        if files != run_ids.len() + 1 {
            problems.push(format!("{files} files (expected {})", run_ids.len() + 1));
        }
        if a.format == "parquet" && problems.is_empty() {
            let rows = parquet_rows(&out)?;
            if rows != m.expected_rows {
                problems.push(format!("{rows} rows (expected {})", m.expected_rows));
            }
        }
        let out_bytes = fs::read_dir(&out)
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|md| md.len()).sum())
            .unwrap_or(0);
        let r = Rep {
            wall_s: u.wall,
            cpu_s: u.user + u.sys,
            rss_mib: u.maxrss_kib as f64 / 1024.0,
            rows_per_s: (m.expected_rows as f64 / u.wall).round(),
            out_bytes,
        };
        println!(
            "[export {} runs, {}] rep {rep}/{}: {:.2} s wall, {} rows/s, CPU {:.2} s, peak RSS {:.1} MiB, {:.1} MB written, {}",
            a.runs,
            a.format,
            a.reps,
            r.wall_s,
            fmt_int(r.rows_per_s as u64),
            r.cpu_s,
            r.rss_mib,
            r.out_bytes as f64 / 1e6,
            if problems.is_empty() { "output verified".to_string() } else { problems.join("; ") }
        );
        if !problems.is_empty() {
            ok = false;
            println!("    log {} ends with:\n{}", log.display(), log_tail(&log, 15));
        }
        reps.push(r);
    }
    let median = |f: fn(&Rep) -> f64| {
        let mut v: Vec<f64> = reps.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (rate, rss) = (median(|r| r.rows_per_s), median(|r| r.rss_mib));
    let max_rss = reps.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
    let goal_met = a.format == "parquet" && rate >= 300_000.0 && max_rss <= 128.0;
    println!(
        "export {} rows ({} runs) to {}: median {} rows/s, median RSS {rss:.1} MiB (max {max_rss:.1}); goal (parquet) >= 300,000 rows/s, RSS <= 128 MiB: {}",
        fmt_int(m.expected_rows),
        a.runs,
        a.format,
        fmt_int(rate as u64),
        if a.format != "parquet" { "n/a" } else if goal_met { "met" } else { "MISSED" }
    );
    #[derive(Serialize)]
    struct Report<'a> {
        mode: &'static str,
        format: &'a str,
        runs: u32,
        rows: u64,
        rows_per_s_median: f64,
        rss_mib_median: f64,
        rss_mib_max: f64,
        ok: bool,
        git: Option<String>,
        unix_time: u64,
        per_rep: &'a [Rep],
    }
    let report = Report {
        mode: "export",
        format: &a.format,
        runs: a.runs,
        rows: m.expected_rows,
        rows_per_s_median: rate,
        rss_mib_median: rss,
        rss_mib_max: max_rss,
        ok,
        git: git_rev(),
        unix_time: unix_now(),
        per_rep: &reps,
    };
    println!("BENCH {}", serde_json::to_string(&report)?);
    Ok(ok)
}

/// Rows in the footers of the runs' Parquet files.
fn parquet_rows(out: &Path) -> Result<u64> {
    let mut rows = 0;
    for entry in fs::read_dir(out)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "runs.parquet" || !name.ends_with(".parquet") {
            continue;
        }
        let file = fs::File::open(&path)?;
        let reader = parquet::file::reader::SerializedFileReader::new(file)
            .with_context(|| format!("reading {}", path.display()))?;
        rows +=
            parquet::file::reader::FileReader::metadata(&reader).file_metadata().num_rows() as u64;
    }
    Ok(rows)
}
