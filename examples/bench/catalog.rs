//! `catalog`: times `jsonl-shipper catalog rebuild` over the run DBs of a backfilled data set
//! (issue 11: ≤ 30 s over 5,000 run DBs).
//!
//! 1. Generates (or reuses) the data set of `--runs` runs (default 5,000; the same data set as
//!    `backfill --runs 5000`) and backfills it once (kept: `db/.bench-backfilled` marks it;
//!    `backfill` benches delete it);
//! 2. per repetition: deletes the catalog (`db/catalog.sqlite` and its `-wal`/`-shm`), runs
//!    `jsonl-shipper catalog rebuild --base <base>` and takes wall time, CPU and peak RSS;
//! 3. verifies: exit 0, one row per run, `sum(events)` = the expected distinct events, every
//!    run `finished` with its `first_ts` ≤ `last_ts`;
//! 4. prints median/min/max beside the goal and a `BENCH {json}` line.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use clap::Args;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::common::{data_root, fmt_int, git_rev, log_tail, resolve_bin, run_measured, BinArgs};
use crate::gen::{base_dir, ensure_data, gen_params, print_manifest, DataArgs, Manifest};

/// The bound for 5,000 run DBs.
const GOAL_S: f64 = 30.0;

#[derive(Args)]
pub(crate) struct CatalogArgs {
    /// Runs in the data set (one run DB each).
    #[arg(long, default_value_t = 5000)]
    runs: u32,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    runs: u32,
    events: u64,
    reps: Vec<f64>,
    median_wall_s: f64,
    median_cpu_s: f64,
    max_rss_mib: f64,
    goal_s: f64,
    ok: bool,
    git: Option<String>,
}

pub(crate) fn catalog(a: CatalogArgs) -> Result<bool> {
    ensure!(a.reps > 0, "--reps must be > 0");
    let root = data_root(&a.data.dir)?;
    let bin = resolve_bin(&a.bin)?;
    let base = base_dir(&root, a.runs, a.data.events);
    let m = ensure_data(&base, &gen_params(a.runs, &a.data))?;
    print_manifest(&base, &m);
    let logs = base.join("logs");
    fs::create_dir_all(&logs)?;
    let marker = base.join("db/.bench-backfilled");
    if !marker.exists() {
        for d in ["db", "dlq"] {
            let _ = fs::remove_dir_all(base.join(d));
        }
        println!("[{} runs] backfilling once (kept for later catalog benches) ...", a.runs);
        let log = logs.join("catalog-backfill.log");
        let u = run_measured(Command::new(&bin).arg("backfill").arg("--base").arg(&base), &log)?;
        ensure!(u.status.success(), "backfill failed: {}\n{}", u.status, log_tail(&log, 20));
        println!("    backfill took {:.1} s", u.wall);
        fs::write(&marker, b"")?;
    }
    let catalog = base.join("db/catalog.sqlite");
    let (mut walls, mut cpus, mut rss) = (Vec::new(), Vec::new(), 0f64);
    let mut ok = true;
    for rep in 1..=a.reps {
        for suffix in ["", "-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", catalog.display()));
        }
        let log = logs.join(format!("catalog-rebuild-rep{rep}.log"));
        let u = run_measured(
            Command::new(&bin).args(["catalog", "rebuild", "--base"]).arg(&base),
            &log,
        )?;
        let problems = if u.status.success() {
            verify(&catalog, &m)?
        } else {
            vec![format!("{}: {}", u.status, log_tail(&log, 10))]
        };
        ok &= problems.is_empty();
        println!(
            "[{} runs] rep {rep}/{}: {:.2} s wall, CPU {:.2} s, peak RSS {:.1} MiB, {}",
            a.runs,
            a.reps,
            u.wall,
            u.user + u.sys,
            u.maxrss_kib as f64 / 1024.0,
            if problems.is_empty() { "catalog verified".into() } else { problems.join("; ") }
        );
        walls.push(u.wall);
        cpus.push(u.user + u.sys);
        rss = rss.max(u.maxrss_kib as f64 / 1024.0);
    }
    let median_wall = median(&walls);
    println!(
        "catalog rebuild, {} run DBs, {} events: median {median_wall:.2} s (min {:.2}, max {:.2}); goal ≤ {GOAL_S} s: {}",
        fmt_int(m.expected_runs),
        fmt_int(m.expected_rows),
        walls.iter().copied().fold(f64::INFINITY, f64::min),
        walls.iter().copied().fold(0.0, f64::max),
        if median_wall <= GOAL_S { "met" } else { "missed" }
    );
    let report = Report {
        bench: "catalog-rebuild",
        runs: a.runs,
        events: m.expected_rows,
        reps: walls,
        median_wall_s: median_wall,
        median_cpu_s: median(&cpus),
        max_rss_mib: rss,
        goal_s: GOAL_S,
        ok,
        git: git_rev(),
    };
    println!("BENCH {}", serde_json::to_string(&report)?);
    Ok(ok)
}

fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Problems with the rebuilt catalog; empty if it is as expected.
fn verify(catalog: &Path, m: &Manifest) -> Result<Vec<String>> {
    let conn = Connection::open_with_flags(catalog, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", catalog.display()))?;
    let (runs, events, finished, ordered): (u64, u64, u64, u64) = conn.query_row(
        "SELECT count(*), sum(events), sum(status = 'finished'), sum(first_ts <= last_ts) FROM runs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            problems.push(format!("{what}: {got}, expected {want}"));
        }
    };
    expect("rows", runs, m.expected_runs);
    expect("events", events, m.expected_rows);
    expect("finished runs", finished, m.expected_runs);
    expect("runs with first_ts <= last_ts", ordered, m.expected_runs);
    Ok(problems)
}
