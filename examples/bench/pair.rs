//! `pair`: issue 13's yardstick in one command: `../shared/limit/pair.py` (the limit program
//! against `jsonl-shipper backfill` on the same files, interleaved) at 1, 50 and 5,000 runs,
//! with the limit set up as the goal says, and one table of ratios and peak RSS at the end.
//!
//! | runs | limit | goal |
//! | --- | --- | --- |
//! | 1 | 1 writer, synchronous=NORMAL | ratio ≥ 1.2 |
//! | 50 | 2 writers, synchronous=NORMAL | ratio ≥ 1.0, RSS ≤ 100 MiB |
//! | 5,000 | 1 and 2 writers (the faster counts) | ratio ≥ 1.2, RSS ≤ 200 MiB |
//!
//! The shipper runs at its defaults (synchronous=FULL). A ratio > 1 means the shipper is
//! faster. The data sets are `backfill`'s (generated once under `--dir`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::common::{data_root, git_rev, resolve_bin, unix_now, BinArgs};
use crate::gen::{base_dir, ensure_data, gen_params, DataArgs};

#[derive(Args)]
pub(crate) struct PairArgs {
    /// Set-ups (numbers of runs); comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 50, 5000])]
    runs: Vec<u32>,
    /// Pairs per comparison (pair.py's --n; its first, warm-up pair comes on top).
    #[arg(long, default_value_t = 3)]
    n: u32,
    /// pair.py [default: ../shared/limit/pair.py beside the repo].
    #[arg(long)]
    pair_py: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

#[derive(Serialize)]
struct Comparison {
    runs: u32,
    writers: u32,
    ratio: f64,
    shipper_s: f64,
    shipper_rss_mib: u64,
    limit_s: f64,
}

#[derive(Serialize)]
struct SetUp {
    runs: u32,
    /// The comparison that counts (at 5,000 runs, against the faster limit).
    ratio: f64,
    rss_mib: u64,
    goal_ratio: f64,
    goal_rss_mib: Option<u64>,
    met: bool,
    comparisons: Vec<Comparison>,
}

/// The goal per number of runs: (limit writers to pair against, ratio, RSS bound).
fn goal(runs: u32) -> (&'static [u32], f64, Option<u64>) {
    match runs {
        1 => (&[1], 1.2, None),
        50 => (&[2], 1.0, Some(100)),
        5000 => (&[1, 2], 1.2, Some(200)),
        _ => (&[2], 1.0, None),
    }
}

pub(crate) fn pair(a: PairArgs) -> Result<bool> {
    let root = data_root(&a.data.dir)?;
    let bin = resolve_bin(&a.bin)?;
    let pair_py = match &a.pair_py {
        Some(p) => p.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/limit/pair.py"),
    };
    if !pair_py.exists() {
        bail!("{} not found (--pair-py)", pair_py.display());
    }
    let mut setups = Vec::new();
    for &runs in &a.runs {
        let base = base_dir(&root, runs, a.data.events);
        ensure_data(&base, &gen_params(runs, &a.data))?;
        let (writers, goal_ratio, goal_rss) = goal(runs);
        let mut comparisons = Vec::new();
        for &w in writers {
            eprintln!("[pair] {runs} runs against the limit with {w} writer(s)");
            comparisons.push(compare(&pair_py, &bin, &base.join("raw"), runs, w, a.n)?);
        }
        // The faster limit is the one with the smaller ratio.
        let counted = comparisons
            .iter()
            .min_by(|x, y| x.ratio.total_cmp(&y.ratio))
            .context("no comparison")?;
        let ratio = counted.ratio;
        let rss_max = comparisons.iter().map(|c| c.shipper_rss_mib).max().unwrap_or(0);
        let met = ratio >= goal_ratio && goal_rss.is_none_or(|g| rss_max <= g);
        setups.push(SetUp {
            runs,
            ratio,
            rss_mib: rss_max,
            goal_ratio,
            goal_rss_mib: goal_rss,
            met,
            comparisons,
        });
    }
    println!("| runs | ratio (shipper / limit) | shipper peak RSS | goal | |");
    println!("| --- | --- | --- | --- | --- |");
    for s in &setups {
        let against: Vec<String> = s
            .comparisons
            .iter()
            .map(|c| format!("{:.2} vs {} writer(s)", c.ratio, c.writers))
            .collect();
        let rss_goal = s.goal_rss_mib.map(|g| format!(", RSS ≤ {g} MiB")).unwrap_or_default();
        println!(
            "| {} | {} | {} MiB | ≥ {:.1}{rss_goal} | {} |",
            s.runs,
            against.join("; "),
            s.rss_mib,
            s.goal_ratio,
            if s.met { "met" } else { "MISSED" }
        );
    }
    let all = setups.iter().all(|s| s.met);
    println!(
        "BENCH {}",
        serde_json::json!({
            "mode": "pair", "setups": setups, "git": git_rev(), "unix_time": unix_now(),
        })
    );
    Ok(all)
}

/// One pair.py run; parses its last line.
fn compare(
    pair_py: &Path,
    bin: &Path,
    raw: &Path,
    runs: u32,
    writers: u32,
    n: u32,
) -> Result<Comparison> {
    let out = Command::new("python3")
        .arg(pair_py)
        .arg(bin)
        .arg(raw)
        .args(["--n", &n.to_string(), "--writers", &writers.to_string(), "--sync", "normal"])
        .output()
        .context("running python3 pair.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    if !out.status.success() {
        bail!("pair.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // "shipper/limit speed ratio (median of 3): 0.91; shipper median 7.20s, peak 98 MiB;
    //  limit (2 writers, synchronous=normal) median 6.58s"
    let last = stdout.lines().last().unwrap_or("");
    let number_after = |key: &str| -> Result<f64> {
        let at = last.find(key).with_context(|| format!("no {key:?} in {last:?}"))?;
        let rest = &last[at + key.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        rest[..end].parse().with_context(|| format!("a number after {key:?} in {last:?}"))
    };
    Ok(Comparison {
        runs,
        writers,
        ratio: number_after("): ")?,
        shipper_s: number_after("shipper median ")?,
        shipper_rss_mib: number_after("peak ")? as u64,
        limit_s: number_after(") median ")?,
    })
}
