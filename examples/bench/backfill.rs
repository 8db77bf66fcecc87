//! `backfill`: times `jsonl-shipper backfill` on generated data sets and verifies the output.
//!
//! For each set-up (number of runs; default 1, 50 and 5000 in turn) the bench
//!
//! 1. generates, once, a deterministic data set of `--events` telemetry events (~320 bytes a
//!    line, nested payloads, half with an `event_id`, ~1 % of those retried with the same
//!    `event_id`) spread over three daily files `raw/events_2024030{1,2,3}.ndjson` under the
//!    set-up's base dir `<dir>/<runs>runs-<events>/` (default `<dir>` = `target/bench-data`).
//!    Runs are interleaved: at any time up to `--concurrent` runs are active, and each event
//!    goes to a random active one; every run has a `"running"` run record before its first
//!    event and a `"finished"` one after its last. `manifest.json` records the parameters and
//!    the expected counts; a base whose manifest matches is reused, anything else regenerated;
//! 2. reads the input once so it is in the page cache (nothing is dropped from it);
//! 3. per repetition: deletes `db/` and `dlq/` (keeps `raw/`), runs
//!    `jsonl-shipper backfill --base <base> [--jobs N]` (output to `logs/`), and takes the
//!    child's wall time, user+sys CPU and peak RSS from `wait4(2)`;
//! 4. verifies the rep: exit status 0, one run DB per run with `runs.status = 'finished'`,
//!    `count(*)` of `events` summed over `db/runs/*.sqlite` equal to the expected number of
//!    distinct events, and no DLQ line;
//! 5. prints median/min/max over the reps, the goal of the issue beside it, a table at the end
//!    and one machine-readable line per set-up: `BENCH {json}`.
//!
//! `ev/s` = event lines in the input (`--events`, retries included, run records not) / wall
//! time; `MB/s` = input bytes / wall time (1 MB = 10^6 bytes). The exit code is 1 if any rep
//! failed its verification (a missed goal is reported, not an error).

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::common::{
    data_root, fmt_int, git_rev, log_tail, nproc, resolve_bin, run_measured, sqlite_files,
    unix_now, BinArgs, Usage,
};
use crate::gen::{base_dir, ensure_data, gen_params, print_manifest, DataArgs, Manifest};

#[derive(Args)]
pub(crate) struct BackfillArgs {
    /// Set-ups: number of runs in the data set; comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 50, 5000])]
    runs: Vec<u32>,
    /// Repetitions per set-up.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Passed to `jsonl-shipper backfill --jobs N`.
    #[arg(long)]
    jobs: Option<u32>,
    /// Keep the last rep's `db/` and `dlq/` (default: deleted after verification).
    #[arg(long)]
    keep: bool,
    /// Only check the exit status, not the DB contents (for testing the harness with a stand-in).
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
    /// Extra arguments appended to the `jsonl-shipper backfill` command line (after `--`).
    #[arg(last = true)]
    extra: Vec<String>,
}

/// Reads every input file once so the timed runs find it in the page cache.
pub(crate) fn warm_cache(base: &Path, m: &Manifest) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for f in &m.files {
        let mut file = File::open(base.join("raw").join(&f.name))?;
        while file.read(&mut buf)? > 0 {}
    }
    Ok(())
}

pub(crate) fn remove_outputs(base: &Path) -> Result<()> {
    for d in ["db", "dlq"] {
        let p = base.join(d);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Verification of the output
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct OutputCounts {
    run_dbs: u64,
    rows: u64,
    finished_runs: u64,
    dlq_lines: u64,
}

fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, ro).or_else(|_| {
        // A WAL database without its -shm file may refuse a read-only open.
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    })
}

fn count_output(base: &Path) -> Result<OutputCounts> {
    let mut c = OutputCounts::default();
    for p in sqlite_files(&base.join("db").join("runs"))? {
        let conn = open_ro(&p).with_context(|| format!("opening {}", p.display()))?;
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .with_context(|| format!("counting events in {}", p.display()))?;
        let fin: i64 = conn
            .query_row("SELECT count(*) FROM runs WHERE status = 'finished'", [], |r| r.get(0))
            .with_context(|| format!("reading runs in {}", p.display()))?;
        c.run_dbs += 1;
        c.rows += n as u64;
        c.finished_runs += fin as u64;
    }
    if let Ok(rd) = fs::read_dir(base.join("dlq")) {
        for e in rd {
            let p = e?.path();
            if p.is_file() {
                let data = fs::read(&p)?;
                c.dlq_lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
    }
    Ok(c)
}

/// Problems found in one rep's output; empty if it is as expected.
pub(crate) fn verify(base: &Path, m: &Manifest, u: &Usage) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    if !u.status.success() {
        problems.push(u.status.to_string());
    }
    let c = count_output(base)?;
    if c.rows != m.expected_rows {
        problems.push(format!(
            "events rows: {} (expected {}, {:+})",
            c.rows,
            m.expected_rows,
            c.rows as i64 - m.expected_rows as i64
        ));
    }
    if c.run_dbs != m.expected_runs {
        problems.push(format!("run DBs: {} (expected {})", c.run_dbs, m.expected_runs));
    }
    if c.finished_runs != m.expected_runs {
        problems.push(format!(
            "runs with status 'finished': {} (expected {})",
            c.finished_runs, m.expected_runs
        ));
    }
    if c.dlq_lines != 0 {
        problems.push(format!("DLQ lines: {} (expected 0)", c.dlq_lines));
    }
    Ok(problems)
}

// ---------------------------------------------------------------------------------------------
// Statistics and reporting
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn stat(xs: &[f64]) -> Stat {
    if xs.is_empty() {
        return Stat::default();
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Stat { median: round3(median), min: round3(v[0]), max: round3(v[n - 1]) }
}

/// Three decimals are plenty for the JSON lines.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The goals from the issue, by number of runs (they assume the default 1M events).
#[derive(Serialize, Clone, Copy)]
struct Goal {
    min_ev_per_s: f64,
    max_rss_mib: Option<f64>,
}

fn goal_for(runs: u32) -> Option<Goal> {
    match runs {
        1 => Some(Goal { min_ev_per_s: 120_000.0, max_rss_mib: None }),
        50 => Some(Goal { min_ev_per_s: 250_000.0, max_rss_mib: Some(100.0) }),
        5000 => Some(Goal { min_ev_per_s: 50_000.0, max_rss_mib: None }),
        _ => None,
    }
}

impl Goal {
    fn describe(&self) -> String {
        let mut s = format!(">= {} ev/s", fmt_int(self.min_ev_per_s as u64));
        if let Some(r) = self.max_rss_mib {
            s.push_str(&format!(", RSS <= {r:.0} MiB"));
        }
        s
    }
    /// Judged on the median throughput and the worst (max) peak RSS over the reps.
    fn met(&self, ev: &Stat, rss: &Stat) -> bool {
        ev.median >= self.min_ev_per_s && self.max_rss_mib.is_none_or(|m| rss.max <= m)
    }
}

#[derive(Serialize)]
struct RepResult {
    wall_s: f64,
    cpu_s: f64,
    user_s: f64,
    sys_s: f64,
    rss_mib: f64,
    ev_per_s: f64,
    mb_per_s: f64,
    ok: bool,
}

#[derive(Serialize)]
struct SetupReport {
    mode: &'static str,
    runs: u32,
    events: u64,
    lines: u64,
    input_bytes: u64,
    expected_rows: u64,
    reps: usize,
    jobs: Option<u32>,
    ev_per_s: Stat,
    mb_per_s: Stat,
    wall_s: Stat,
    cpu_s: Stat,
    rss_mib: Stat,
    goal: Option<Goal>,
    goal_met: Option<bool>,
    verified: bool,
    ok: bool,
    git: Option<String>,
    bin: String,
    nproc: usize,
    unix_time: u64,
    per_rep: Vec<RepResult>,
}

// ---------------------------------------------------------------------------------------------
// backfill mode
// ---------------------------------------------------------------------------------------------

pub(crate) fn backfill(a: BackfillArgs) -> Result<bool> {
    ensure!(a.reps > 0, "--reps must be > 0");
    let root = data_root(&a.data.dir)?;
    let bin = resolve_bin(&a.bin)?;
    let git = git_rev();
    let mut reports = Vec::new();
    for &runs in &a.runs {
        let base = base_dir(&root, runs, a.data.events);
        let m = ensure_data(&base, &gen_params(runs, &a.data))?;
        print_manifest(&base, &m);
        warm_cache(&base, &m)?;
        let logs = base.join("logs");
        fs::create_dir_all(&logs)?;
        let mut reps = Vec::new();
        for rep in 1..=a.reps {
            remove_outputs(&base)?;
            let log = logs.join(format!("backfill-rep{rep}.log"));
            let mut cmd = Command::new(&bin);
            cmd.arg("backfill").arg("--base").arg(&base);
            if let Some(j) = a.jobs {
                cmd.arg("--jobs").arg(j.to_string());
            }
            cmd.args(&a.extra);
            let u = run_measured(&mut cmd, &log)?;
            let t_verify = Instant::now();
            let problems = if a.no_verify {
                if u.status.success() {
                    vec![]
                } else {
                    vec![u.status.to_string()]
                }
            } else {
                verify(&base, &m, &u)?
            };
            let r = RepResult {
                wall_s: round3(u.wall),
                cpu_s: round3(u.user + u.sys),
                user_s: round3(u.user),
                sys_s: round3(u.sys),
                rss_mib: round3(u.maxrss_kib as f64 / 1024.0),
                ev_per_s: (m.event_lines as f64 / u.wall).round(),
                mb_per_s: round3(m.input_bytes as f64 / 1e6 / u.wall),
                ok: problems.is_empty(),
            };
            println!(
                "[{runs} runs] rep {rep}/{}: {:.2} s wall, {} ev/s, {:.1} MB/s, CPU {:.2} s \
                 (user {:.2} + sys {:.2}), peak RSS {:.1} MiB, {}",
                a.reps,
                r.wall_s,
                fmt_int(r.ev_per_s as u64),
                r.mb_per_s,
                r.cpu_s,
                r.user_s,
                r.sys_s,
                r.rss_mib,
                if !r.ok {
                    "FAILED"
                } else if a.no_verify {
                    "exit 0 (output not verified)"
                } else {
                    "output verified"
                }
            );
            let verify_s = t_verify.elapsed().as_secs_f64();
            if verify_s >= 1.0 {
                println!("    (verification took {verify_s:.1} s)");
            }
            let last = log_tail(&log, 1);
            if last != "(empty)" {
                println!("    last log line: {}", last.chars().take(200).collect::<String>());
            }
            for p in &problems {
                println!("    problem: {p}");
            }
            if !problems.is_empty() {
                println!("    log {} ends with:\n{}", log.display(), log_tail(&log, 15));
            }
            reps.push(r);
        }
        if !a.keep {
            remove_outputs(&base)?;
        }
        let col = |f: fn(&RepResult) -> f64| stat(&reps.iter().map(f).collect::<Vec<_>>());
        let (ev, rss) = (col(|r| r.ev_per_s), col(|r| r.rss_mib));
        let goal = goal_for(runs);
        let ok = reps.iter().all(|r| r.ok);
        let report = SetupReport {
            mode: "backfill",
            runs,
            events: m.event_lines,
            lines: m.lines,
            input_bytes: m.input_bytes,
            expected_rows: m.expected_rows,
            reps: reps.len(),
            jobs: a.jobs,
            ev_per_s: ev,
            mb_per_s: col(|r| r.mb_per_s),
            wall_s: col(|r| r.wall_s),
            cpu_s: col(|r| r.cpu_s),
            rss_mib: rss,
            goal,
            // The speed of a run whose output is wrong means nothing.
            goal_met: goal.filter(|_| ok).map(|g| g.met(&ev, &rss)),
            verified: !a.no_verify,
            ok,
            git: git.clone(),
            bin: bin.display().to_string(),
            nproc: nproc(),
            unix_time: unix_now(),
            per_rep: reps,
        };
        println!("BENCH {}", serde_json::to_string(&report)?);
        reports.push(report);
    }

    println!();
    println!(
        "backfill, {} events/set-up, {} reps, jobs {}, {} CPUs, {}",
        fmt_int(a.data.events),
        a.reps,
        a.jobs.map_or("default".to_string(), |j| j.to_string()),
        nproc(),
        git.as_deref().unwrap_or("unknown rev")
    );
    println!(
        "{:>6} {:>24} {:>8} {:>7} {:>8} {:>8}  {:<8} {:<34} verdict",
        "runs", "ev/s median [min-max]", "MB/s", "wall s", "CPU s", "RSS MiB", "output", "goal"
    );
    for r in &reports {
        let range = format!(
            "{} [{}-{}]",
            fmt_k(r.ev_per_s.median),
            fmt_k(r.ev_per_s.min),
            fmt_k(r.ev_per_s.max)
        );
        let verdict = match (r.goal_met, r.ok) {
            (Some(true), _) => "met",
            (Some(false), _) => "MISSED",
            (None, false) => "n/a",
            (None, true) => "",
        };
        println!(
            "{:>6} {:>24} {:>8.1} {:>7.2} {:>8.2} {:>8.1}  {:<8} {:<34} {}",
            r.runs,
            range,
            r.mb_per_s.median,
            r.wall_s.median,
            r.cpu_s.median,
            r.rss_mib.max,
            match (r.ok, r.verified) {
                (false, _) => "FAILED",
                (true, true) => "ok",
                (true, false) => "exit 0",
            },
            r.goal.map_or("-".to_string(), |g| g.describe()),
            verdict
        );
    }
    println!(
        "(medians over reps; RSS column = max over reps; ev/s counts event lines incl. retries)"
    );
    if a.data.events != 1_000_000 {
        println!("(note: the goals are meant for the default 1,000,000 events)");
    }
    Ok(reports.iter().all(|r| r.ok))
}

fn fmt_k(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}
