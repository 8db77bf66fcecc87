//! Benchmark harness for the `jsonl-shipper` binary.
//!
//! ```text
//! cargo run --release --example bench -- backfill [--runs 1,50,5000] [--events 1000000] [--reps 3]
//!                                                [--jobs N] [--keep] [--dir D] [--bin PATH]
//! cargo run --release --example bench -- gen      [--runs 50] [--events N] [--validate]
//! cargo run --release --example bench -- tail     [--producers 4] [--rate 5000] [--duration 20]
//!                                                [--files 1000 [--active 500]] ...
//! ```
//!
//! # `backfill`
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
//!
//! # `tail`
//! Starts `jsonl-shipper run --base <dir>/tail`, then `--producers` threads append lines
//! (one `write(2)` per line, `O_APPEND`) to today's `raw/events_YYYYMMDD.ndjson` at a steady
//! total `--rate`. Each line carries `"ts_ns"`: the bench's monotonic clock just before the
//! write. The bench polls every run DB read-only for new rows (`rowid > last seen`) and takes,
//! per row, *poll start time − ts_ns*: an upper bound of append-to-committed latency, coarse by
//! up to one poll interval (`--poll-ms`). It also reports the daemon's CPU % while loaded and
//! while idle afterwards (from `/proc/<pid>/stat`), its peak RSS, and whether the rows committed
//! equal the lines sent (each line has a unique `event_id`, so a lost line shows as fewer rows,
//! a line stored twice under different keys as more). The daemon is stopped with SIGTERM and
//! must exit 0. Needs a rowid `events` table (rows are found by `rowid > last seen`).
//!
//! With `--files N` (N > 1) the daemon watches N files `raw/events_YYYYMMDD_NNNNN.ndjson`, each
//! holding one line before it starts (counted in the rows expected); the producers append
//! across the first `--active` of them (each file has one producer, which keeps it open), the
//! others stay idle. Peak RSS and idle CPU are then those of a daemon watching N files.
//!
//! The release binary is built with `cargo build --release --bin jsonl-shipper` before a run
//! (a no-op when it is up to date) unless `--bin PATH` or `--no-build` is given.

// The crate denies `unsafe_code`; this example needs a few libc calls std does not expose:
// `wait4(2)` for the child's own rusage (CPU and peak RSS), `kill(2)` to send SIGTERM and
// `sysconf(_SC_CLK_TCK)`. Each `unsafe` block is one such call with its safety argument beside it.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

/// Bump when the generated data changes, so cached data sets are regenerated.
const GENERATOR_VERSION: u32 = 1;
/// 2024-03-01T00:00:00Z: the first day of the generated data.
const BASE_EPOCH_MS: i64 = 1_709_251_200_000;
const DAYS: i64 = 3;
const DAY_MS: i64 = 86_400_000;

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks for the jsonl-shipper binary")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Time `jsonl-shipper backfill` on generated data sets and verify the output.
    Backfill(BackfillArgs),
    /// Only generate (or reuse) the data set of one set-up; optionally validate it.
    Gen(GenArgs),
    /// Measure append-to-committed latency and CPU of `jsonl-shipper run` under steady load.
    Tail(TailArgs),
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Event lines per data set (run records come on top).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// At most this many runs are active at once; events go to a random active run.
    /// Default: all runs interleaved at once (the worst case for the shipper).
    #[arg(long, default_value_t = u32::MAX)]
    concurrent: u32,
    /// Percentage of events with an `event_id` that are producer retries (same line again).
    #[arg(long, default_value_t = 1.0)]
    dup_pct: f64,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Parent work dir; each set-up lives in `<dir>/<runs>runs-<events>/`
    /// [default: <cargo target dir>/bench-data].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct BinArgs {
    /// The jsonl-shipper binary [default: <cargo target dir>/release/jsonl-shipper, built first].
    #[arg(long = "bin")]
    bin: Option<PathBuf>,
    /// Do not run `cargo build --release --bin jsonl-shipper` first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
struct BackfillArgs {
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

#[derive(Args)]
struct GenArgs {
    /// Number of runs in the data set.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Parse every line again and recount the distinct events independently of the generator.
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Args)]
struct TailArgs {
    /// Producer threads, each appending to today's file with its own O_APPEND descriptor.
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Total lines per second over all producers.
    #[arg(long, default_value_t = 5000)]
    rate: u32,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before measuring (start-up, file discovery).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of idle time measured after the load has drained.
    #[arg(long, default_value_t = 5)]
    idle: u64,
    /// Files watched: 1 = today's daily file only; N > 1 = N files of one line each, the
    /// producers appending across `--active` of them.
    #[arg(long, default_value_t = 1)]
    files: u32,
    /// With `--files N`: how many of the files the producers append to [default: N / 2].
    #[arg(long)]
    active: Option<u32>,
    /// Number of runs the events are spread over.
    #[arg(long, default_value_t = 8)]
    runs: u32,
    /// Poll interval of the run DBs, in milliseconds (the latency's resolution).
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Seconds to wait for the last lines to be committed after the load stops.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Parent work dir; the daemon's base is `<dir>/tail/` (wiped at start)
    /// [default: <cargo target dir>/bench-data].
    #[arg(long)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    bin: BinArgs,
    /// Extra arguments appended to the `jsonl-shipper run` command line (after `--`).
    #[arg(last = true)]
    extra: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: the bench is built without --release; generation will be slow");
    }
    let ok = match cli.mode {
        Mode::Backfill(a) => backfill(a)?,
        Mode::Gen(a) => generate_cmd(a)?,
        Mode::Tail(a) => tail(a)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Paths and the binary under test
// ---------------------------------------------------------------------------------------------

/// The cargo target dir this example was built into: `<target>/<profile>/examples/bench`.
fn target_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("cannot derive the target dir from the bench's own path")
}

fn data_root(dir: &Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.clone()),
        None => Ok(target_dir()?.join("bench-data")),
    }
}

/// The binary to benchmark; builds the release binary unless told otherwise.
fn resolve_bin(b: &BinArgs) -> Result<PathBuf> {
    if let Some(p) = &b.bin {
        ensure!(p.exists(), "--bin {} does not exist", p.display());
        return Ok(p.clone());
    }
    let target = target_dir()?;
    let bin = target.join("release").join("jsonl-shipper");
    if !b.no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!("building: cargo build --release --bin jsonl-shipper");
        let st = Command::new(cargo)
            .args(["build", "--release", "--bin", "jsonl-shipper"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .context("running cargo build")?;
        ensure!(st.success(), "cargo build --release --bin jsonl-shipper failed: {st}");
    }
    ensure!(bin.exists(), "{} does not exist (build it or pass --bin)", bin.display());
    Ok(bin)
}

/// `git describe`-like identification of the source tree, for comparing results across runs.
fn git_rev() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(dir)
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        rev.push_str("-dirty");
    }
    Some(rev)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG (SplitMix64)
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by multiply-high.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
struct GenParams {
    version: u32,
    runs: u32,
    events: u64,
    concurrent: u32,
    dup_pct: f64,
    seed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct FileInfo {
    name: String,
    bytes: u64,
    lines: u64,
}

/// What a data set contains; written to `<base>/manifest.json` after the files.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Manifest {
    params: GenParams,
    files: Vec<FileInfo>,
    /// All lines (events and run records).
    lines: u64,
    input_bytes: u64,
    /// Event lines, retries included (= params.events).
    event_lines: u64,
    run_records: u64,
    events_with_event_id: u64,
    /// Event lines that repeat an earlier line's `event_id` (producer retries).
    retries: u64,
    /// Distinct events = rows expected in `events` over all run DBs.
    expected_rows: u64,
    /// Run DBs expected (one per run).
    expected_runs: u64,
}

fn base_dir(root: &Path, runs: u32, events: u64) -> PathBuf {
    root.join(format!("{runs}runs-{events}"))
}

/// Returns the data set's manifest, generating the data set unless a matching one exists.
fn ensure_data(base: &Path, params: &GenParams) -> Result<Manifest> {
    let mpath = base.join("manifest.json");
    if let Ok(text) = fs::read_to_string(&mpath) {
        if let Ok(m) = serde_json::from_str::<Manifest>(&text) {
            let files_ok = m.files.iter().all(|f| {
                fs::metadata(base.join("raw").join(&f.name)).is_ok_and(|md| md.len() == f.bytes)
            });
            if m.params == *params && files_ok {
                eprintln!("reusing data set {}", base.display());
                return Ok(m);
            }
        }
        eprintln!("data set {} does not match; regenerating", base.display());
    }
    fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    if mpath.exists() {
        fs::remove_file(&mpath)?;
    }
    let raw = base.join("raw");
    let tmp = base.join("raw.tmp");
    for d in [&raw, &tmp] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    fs::create_dir_all(&tmp)?;
    let t0 = Instant::now();
    let m = generate(&tmp, params)?;
    fs::rename(&tmp, &raw)?;
    fs::write(&mpath, serde_json::to_string_pretty(&m)? + "\n")?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "generated {} lines, {:.1} MB in {:.1} s ({:.0} bytes/line avg) -> {}",
        fmt_int(m.lines),
        m.input_bytes as f64 / 1e6,
        secs,
        m.input_bytes as f64 / m.lines.max(1) as f64,
        raw.display()
    );
    Ok(m)
}

/// Per-run generator state.
struct Run {
    id: String,
    host: &'static str,
    remaining: u64,
    emitted: u64,
    /// The last line that carried an `event_id`, resent verbatim by a retry.
    last_with_id: Option<Vec<u8>>,
}

/// Writes the daily files; switches file when the day of the timeline changes.
struct DayWriter {
    dir: PathBuf,
    day: i64,
    out: Option<BufWriter<File>>,
    files: Vec<FileInfo>,
}

impl DayWriter {
    fn write(&mut self, day: i64, line: &[u8]) -> Result<()> {
        if self.out.is_none() || day != self.day {
            self.finish()?;
            let name = format!("events_{}.ndjson", ymd(BASE_EPOCH_MS + day * DAY_MS, ""));
            let f = File::create(self.dir.join(&name))?;
            self.out = Some(BufWriter::with_capacity(4 << 20, f));
            self.files.push(FileInfo { name, bytes: 0, lines: 0 });
            self.day = day;
        }
        let fi = self.files.last_mut().expect("file pushed above");
        fi.bytes += line.len() as u64;
        fi.lines += 1;
        self.out.as_mut().expect("opened above").write_all(line)?;
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        if let Some(mut w) = self.out.take() {
            w.flush()?;
        }
        Ok(())
    }
}

fn generate(dir: &Path, p: &GenParams) -> Result<Manifest> {
    ensure!(p.runs > 0, "--runs must be > 0");
    ensure!(p.concurrent > 0, "--concurrent must be > 0");
    let mut rng = Rng::new(p.seed);

    // Run sizes vary ±50 % around the mean; they add up to exactly `events`.
    let weights: Vec<f64> = (0..p.runs).map(|_| 0.5 + rng.f64()).collect();
    let wsum: f64 = weights.iter().sum();
    let mut quotas: Vec<u64> =
        weights.iter().map(|w| (p.events as f64 * w / wsum).floor() as u64).collect();
    let mut short = p.events - quotas.iter().sum::<u64>();
    let (mut i, n) = (0, quotas.len());
    while short > 0 {
        quotas[i % n] += 1;
        short -= 1;
        i += 1;
    }

    let mut runs: Vec<Run> = Vec::with_capacity(p.runs as usize);
    let mut w = DayWriter { dir: dir.to_path_buf(), day: -1, out: None, files: Vec::new() };
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut active: Vec<usize> = Vec::new();
    let (mut with_id, mut retries, mut run_records) = (0u64, 0u64, 0u64);
    let span = DAYS * DAY_MS;
    let step = (span / p.events.max(1) as i64).max(1);

    // Starts runs until `concurrent` are active; runs without events start and finish at once.
    let start_runs = |runs: &mut Vec<Run>,
                      active: &mut Vec<usize>,
                      rng: &mut Rng,
                      w: &mut DayWriter,
                      line: &mut Vec<u8>,
                      ts: i64,
                      run_records: &mut u64|
     -> Result<()> {
        while active.len() < p.concurrent as usize && runs.len() < p.runs as usize {
            let idx = runs.len();
            let run = Run {
                id: format!("crawl-{}-{:04}-{:06x}", ymd(ts, ""), idx, rng.next_u64() & 0xff_ffff),
                host: rng.pick(HOSTS),
                remaining: quotas[idx],
                emitted: 0,
                last_with_id: None,
            };
            line.clear();
            write_run_start(line, rng, &run, ts)?;
            w.write(day_of(ts), line)?;
            *run_records += 1;
            if run.remaining == 0 {
                line.clear();
                write_run_end(line, &run, ts)?;
                w.write(day_of(ts), line)?;
                *run_records += 1;
            } else {
                active.push(idx);
            }
            runs.push(run);
        }
        Ok(())
    };

    start_runs(
        &mut runs,
        &mut active,
        &mut rng,
        &mut w,
        &mut line,
        BASE_EPOCH_MS,
        &mut run_records,
    )?;
    for i in 0..p.events {
        let ts =
            BASE_EPOCH_MS + (i as i64 * span) / p.events as i64 + rng.below(step as u64) as i64;
        let slot = rng.below(active.len() as u64) as usize;
        let r = active[slot];
        let run = &mut runs[r];
        line.clear();
        let has_id = rng.chance(0.5);
        if has_id && run.last_with_id.is_some() && rng.chance(p.dup_pct / 100.0) {
            // A producer retry: the same line again, later.
            line.extend_from_slice(run.last_with_id.as_deref().expect("checked"));
            retries += 1;
            with_id += 1;
        } else {
            let id = has_id.then(|| (rng.next_u64(), rng.next_u64()));
            write_event(&mut line, &mut rng, run, ts, id)?;
            if has_id {
                with_id += 1;
                match &mut run.last_with_id {
                    Some(v) => {
                        v.clear();
                        v.extend_from_slice(&line);
                    }
                    None => run.last_with_id = Some(line.clone()),
                }
            }
        }
        w.write(day_of(ts), &line)?;
        run.emitted += 1;
        run.remaining -= 1;
        if run.remaining == 0 {
            line.clear();
            write_run_end(&mut line, run, ts)?;
            w.write(day_of(ts), &line)?;
            run_records += 1;
            run.last_with_id = None;
            active.swap_remove(slot);
            start_runs(&mut runs, &mut active, &mut rng, &mut w, &mut line, ts, &mut run_records)?;
        }
    }
    w.finish()?;
    ensure!(runs.len() == p.runs as usize && active.is_empty(), "generator bug: runs left over");

    let lines = w.files.iter().map(|f| f.lines).sum();
    let input_bytes = w.files.iter().map(|f| f.bytes).sum();
    Ok(Manifest {
        params: p.clone(),
        files: w.files,
        lines,
        input_bytes,
        event_lines: p.events,
        run_records,
        events_with_event_id: with_id,
        retries,
        expected_rows: p.events - retries,
        expected_runs: u64::from(p.runs),
    })
}

fn day_of(ts_ms: i64) -> i64 {
    ((ts_ms - BASE_EPOCH_MS) / DAY_MS).clamp(0, DAYS - 1)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn ymd(ts_ms: i64, sep: &str) -> String {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    format!("{y:04}{sep}{m:02}{sep}{d:02}")
}

/// `2024-03-01T12:00:00.123Z`
fn write_iso(out: &mut Vec<u8>, ts_ms: i64) -> io::Result<()> {
    let (y, mo, d) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    let ms = ts_ms.rem_euclid(DAY_MS);
    let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
}

const HOSTS: &[&str] = &["crawler-01", "crawler-02", "crawler-03", "crawler-07", "crawler-12"];
const SITES: &[&str] =
    &["shop", "news", "blog", "forum", "docs", "wiki", "store", "media", "travel", "jobs"];
const TLDS: &[&str] = &["com", "de", "co.uk", "fr", "io", "net", "org", "es"];
const SECTIONS: &[&str] =
    &["products", "articles", "category", "tag", "search", "p", "item", "en/help", "de/angebote"];
const SLUGS: &[&str] = &[
    "blue-widget",
    "summer-sale",
    "how-to-fix-it",
    "release-notes",
    "gift-ideas",
    "best-of-2023",
    "privacy",
    "contact",
    "faq",
    "lightweight-jacket",
    "news-roundup",
];
const TAGS: &[&str] = &[
    "\"retail\"",
    "\"news\"",
    "\"de\"",
    "\"en\"",
    "\"js-heavy\"",
    "\"sitemap\"",
    "\"priority\"",
    "\"paywall\"",
    "\"amp\"",
];
const CTYPES: &[&str] =
    &["text/html; charset=utf-8", "text/html", "application/json", "text/html; charset=ISO-8859-1"];
/// Titles with non-ASCII text and JSON escapes, as real pages have.
const TITLES: &[&str] = &[
    "Angebote der Woche – Schnäppchen",
    "Caf\\u00e9 \\\"Le Petit\\\" – menu",
    "Summer Sale | Up to 50% off",
    "日本語のページ",
    "Home",
    "Ошибка 404",
];
const ERRORS: &[&str] = &[
    "timeout after 30000ms",
    "connection reset by peer",
    "dns: no such host",
    "tls: handshake failure",
    "too many redirects",
];

fn write_url(out: &mut Vec<u8>, rng: &mut Rng) -> io::Result<()> {
    write!(
        out,
        "https://{}{}.example.{}/{}/{}-{}",
        rng.pick(SITES),
        rng.below(40),
        rng.pick(TLDS),
        rng.pick(SECTIONS),
        rng.pick(SLUGS),
        rng.range(100, 99_999)
    )?;
    if rng.chance(0.3) {
        write!(out, "?page={}", rng.range(2, 40))?;
    }
    Ok(())
}

fn write_tags(out: &mut Vec<u8>, rng: &mut Rng) -> io::Result<()> {
    out.extend_from_slice(b"\"tags\":[");
    for k in 0..rng.range(0, 3) {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(rng.pick(TAGS).as_bytes());
    }
    out.push(b']');
    Ok(())
}

/// One event line, ~300–350 bytes depending on its type.
fn write_event(
    out: &mut Vec<u8>,
    rng: &mut Rng,
    run: &Run,
    ts: i64,
    id: Option<(u64, u64)>,
) -> io::Result<()> {
    let roll = rng.below(100);
    let etype = match roll {
        0..=54 => "page_fetched",
        55..=74 => "link_discovered",
        75..=84 => "page_failed",
        85..=92 => "screenshot_taken",
        _ => "robots_checked",
    };
    write!(out, "{{\"run_id\":\"{}\",\"event_type\":\"{etype}\",\"ts\":\"", run.id)?;
    write_iso(out, ts)?;
    out.push(b'"');
    if let Some((a, b)) = id {
        write!(
            out,
            ",\"event_id\":\"{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}\"",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )?;
    }
    match etype {
        "page_fetched" => {
            out.extend_from_slice(b",\"url\":\"");
            write_url(out, rng)?;
            let status = *rng.pick(&[&200, &200, &200, &200, &200, &301, &304]);
            let dns = rng.range(0, 40);
            let connect = dns + rng.range(5, 80);
            let ttfb = connect + rng.range(20, 900);
            let len = rng.range(800, 250_000);
            write!(
                out,
                "\",\"status\":{status},\"timing\":{{\"dns_ms\":{dns},\"connect_ms\":{connect},\
                 \"ttfb_ms\":{ttfb}}},\"headers\":{{\"content_type\":\"{}\",\
                 \"content_length\":{len}}},",
                rng.pick(CTYPES),
            )?;
            if rng.chance(0.1) {
                write!(out, "\"title\":\"{}\",", rng.pick(TITLES))?;
            }
            write_tags(out, rng)?;
            write!(out, ",\"depth\":{}", rng.range(0, 6))?;
        }
        "link_discovered" => {
            out.extend_from_slice(b",\"url\":\"");
            write_url(out, rng)?;
            out.extend_from_slice(b"\",\"from\":\"");
            write_url(out, rng)?;
            write!(
                out,
                "\",\"rel\":\"{}\",\"depth\":{}",
                rng.pick(&["", "nofollow", "canonical", "next"]),
                rng.range(1, 7),
            )?;
        }
        "page_failed" => {
            out.extend_from_slice(b",\"url\":\"");
            write_url(out, rng)?;
            let status = *rng.pick(&[&0, &404, &404, &429, &500, &503]);
            write!(
                out,
                "\",\"status\":{status},\"error\":{{\"kind\":\"{}\",\"message\":\"{}\",\
                 \"retryable\":{}}},\"attempt\":{}",
                if status == 0 { "network" } else { "http" },
                rng.pick(ERRORS),
                status != 404,
                rng.range(1, 4),
            )?;
        }
        "screenshot_taken" => {
            out.extend_from_slice(b",\"url\":\"");
            write_url(out, rng)?;
            writeln!(
                out,
                "\",\"image\":{{\"width\":{},\"height\":{},\"format\":\"{}\",\"bytes\":{}}},\
                 \"viewport\":\"{}\",\"render_ms\":{}}}",
                *rng.pick(&[&1280, &1366, &1920, &390]),
                rng.range(600, 12_000),
                rng.pick(&["png", "webp", "jpeg"]),
                rng.range(20_000, 4_000_000),
                rng.pick(&["desktop", "mobile"]),
                rng.range(200, 9000)
            )?;
            return Ok(());
        }
        _ => {
            write!(
                out,
                ",\"site\":\"{}{}.example.{}\",\"robots\":{{\"allowed\":{},\
                 \"crawl_delay_ms\":{},\"cache_hit\":{},\"sitemaps\":{}}},\"fetch_ms\":{},\
                 \"user_agent\":\"ExampleBot/2.1 (+https://bot.example.com)\"",
                rng.pick(SITES),
                rng.below(40),
                rng.pick(TLDS),
                rng.chance(0.9),
                rng.range(0, 10) * 250,
                rng.chance(0.6),
                rng.range(0, 4),
                rng.range(5, 900)
            )?;
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

fn write_run_start(out: &mut Vec<u8>, rng: &mut Rng, run: &Run, ts: i64) -> io::Result<()> {
    write!(
        out,
        "{{\"record_type\":\"run\",\"run_id\":\"{}\",\"status\":\"running\",\"start_time\":\"",
        run.id
    )?;
    write_iso(out, ts)?;
    writeln!(
        out,
        "\",\"host\":\"{}\",\"crawler_version\":\"3.{}.{}\",\"config\":{{\"max_depth\":{},\
         \"concurrency\":{},\"respect_robots\":true,\"seeds\":[\"https://{}{}.example.com/\"]}}}}",
        run.host,
        rng.range(0, 9),
        rng.range(0, 20),
        rng.range(2, 8),
        rng.range(4, 64),
        rng.pick(SITES),
        rng.below(40)
    )
}

fn write_run_end(out: &mut Vec<u8>, run: &Run, ts: i64) -> io::Result<()> {
    write!(
        out,
        "{{\"record_type\":\"run\",\"run_id\":\"{}\",\"status\":\"finished\",\"end_time\":\"",
        run.id
    )?;
    write_iso(out, ts)?;
    writeln!(out, "\",\"stats\":{{\"events\":{}}}}}", run.emitted)
}

/// Re-reads a data set with serde_json and recounts everything the manifest claims.
fn validate(base: &Path, m: &Manifest) -> Result<()> {
    let t0 = Instant::now();
    let mut keys: HashSet<(String, String)> = HashSet::new();
    let mut started: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let (mut lines, mut bytes, mut events) = (0u64, 0u64, 0u64);
    for f in &m.files {
        let path = base.join("raw").join(&f.name);
        let mut r = BufReader::with_capacity(1 << 20, File::open(&path)?);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            lines += 1;
            bytes += n as u64;
            ensure!(buf.last() == Some(&b'\n'), "{}:{line_no}: no newline", f.name);
            let v: serde_json::Value = serde_json::from_slice(&buf)
                .with_context(|| format!("{}:{line_no}: invalid JSON", f.name))?;
            let run_id = v["run_id"].as_str().context("run_id")?.to_string();
            if v["record_type"] == "run" {
                match v["status"].as_str() {
                    Some("running") => ensure!(started.insert(run_id), "run started twice"),
                    Some("finished") => ensure!(finished.insert(run_id), "run finished twice"),
                    s => bail!("{}:{line_no}: unexpected run status {s:?}", f.name),
                }
                continue;
            }
            ensure!(started.contains(&run_id), "{}:{line_no}: event before its run", f.name);
            ensure!(!finished.contains(&run_id), "{}:{line_no}: event after its run", f.name);
            events += 1;
            let key = match v["event_id"].as_str() {
                Some(id) => format!("id:{id}"),
                None => format!("line:{}:{line_no}", f.name),
            };
            keys.insert((run_id, key));
        }
    }
    ensure!(lines == m.lines, "lines {lines} != manifest {}", m.lines);
    ensure!(bytes == m.input_bytes, "bytes {bytes} != manifest {}", m.input_bytes);
    ensure!(events == m.event_lines, "events {events} != manifest {}", m.event_lines);
    ensure!(
        keys.len() as u64 == m.expected_rows,
        "distinct {} != manifest {}",
        keys.len(),
        m.expected_rows
    );
    ensure!(started.len() as u64 == m.expected_runs && finished.len() as u64 == m.expected_runs);
    eprintln!(
        "validated {} lines in {:.1} s: {} distinct events, {} runs, all JSON objects",
        fmt_int(lines),
        t0.elapsed().as_secs_f64(),
        fmt_int(keys.len() as u64),
        started.len()
    );
    Ok(())
}

fn gen_params(runs: u32, d: &DataArgs) -> GenParams {
    GenParams {
        version: GENERATOR_VERSION,
        runs,
        events: d.events,
        concurrent: d.concurrent,
        dup_pct: d.dup_pct,
        seed: d.seed,
    }
}

fn generate_cmd(a: GenArgs) -> Result<bool> {
    let base = base_dir(&data_root(&a.data.dir)?, a.runs, a.data.events);
    let m = ensure_data(&base, &gen_params(a.runs, &a.data))?;
    print_manifest(&base, &m);
    if a.validate {
        validate(&base, &m)?;
    }
    Ok(true)
}

fn print_manifest(base: &Path, m: &Manifest) {
    println!(
        "data set {}: {} runs, {} lines ({} events, {} run records), {:.1} MB, \
         {} with event_id, {} retries -> expect {} rows in {} run DBs",
        base.display(),
        m.params.runs,
        fmt_int(m.lines),
        fmt_int(m.event_lines),
        fmt_int(m.run_records),
        m.input_bytes as f64 / 1e6,
        fmt_int(m.events_with_event_id),
        fmt_int(m.retries),
        fmt_int(m.expected_rows),
        m.expected_runs
    );
}

// ---------------------------------------------------------------------------------------------
// Measuring a child process
// ---------------------------------------------------------------------------------------------

/// Resource usage of one finished child, from `wait4(2)`.
#[derive(Clone, Copy, Debug)]
struct Usage {
    status: ExitStatus,
    wall: f64,
    user: f64,
    sys: f64,
    maxrss_kib: i64,
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Waits for `pid` with `wait4`; `Ok(None)` if `nohang` and it is still running.
fn wait4_pid(pid: u32, nohang: bool) -> Result<Option<(ExitStatus, libc::rusage)>> {
    let pid = libc::pid_t::try_from(pid)?;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: all-zero bytes are a valid `rusage` (a struct of integers and timevals).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: `status` and `ru` are valid, writable, exclusively borrowed locals that live
        // across the call; `pid` is our own child, which std does not reap behind our back
        // (we never call `Child::wait`/`try_wait` on it).
        let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if r == pid {
            return Ok(Some((ExitStatus::from_raw(status), ru)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
}

/// Runs `cmd` to completion; stdout and stderr go to `log`.
fn run_measured(cmd: &mut Command, log: &Path) -> Result<Usage> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let t0 = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let (status, ru) = wait4_pid(child.id(), false)?.expect("blocking wait4 returns the child");
    let wall = t0.elapsed().as_secs_f64();
    Ok(Usage {
        status,
        wall,
        user: tv_secs(ru.ru_utime),
        sys: tv_secs(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss,
    })
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[start..].join("\n")
}

/// Reads every input file once so the timed runs find it in the page cache.
fn warm_cache(base: &Path, m: &Manifest) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for f in &m.files {
        let mut file = File::open(base.join("raw").join(&f.name))?;
        while file.read(&mut buf)? > 0 {}
    }
    Ok(())
}

fn remove_outputs(base: &Path) -> Result<()> {
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

fn sqlite_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "sqlite") {
                v.push(p);
            }
        }
    }
    v.sort();
    Ok(v)
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
fn verify(base: &Path, m: &Manifest, u: &Usage) -> Result<Vec<String>> {
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
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(xs: &[f64]) -> Stat {
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
fn round3(x: f64) -> f64 {
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

fn fmt_int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
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

fn backfill(a: BackfillArgs) -> Result<bool> {
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

// ---------------------------------------------------------------------------------------------
// tail mode
// ---------------------------------------------------------------------------------------------

/// utime + stime of a live process, in seconds, from `/proc/<pid>/stat`.
fn proc_cpu_secs(pid: u32) -> Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')').context("malformed stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf only reads a configuration value; no pointers involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

struct RunDb {
    conn: Connection,
    last_rowid: i64,
}

/// One producer: appends lines at `rate` lines/s until `stop`; returns the lines sent. With no
/// `targets`, to today's daily file; otherwise to a random one of `targets` per line.
#[allow(clippy::too_many_arguments)]
fn producer(
    idx: u32,
    raw: PathBuf,
    targets: Vec<PathBuf>,
    rate_per_producer: f64,
    runs: u32,
    clock: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Result<()> {
    let mut rng = Rng::new(0xbe7c_0000 + u64::from(idx));
    let interval = Duration::from_secs_f64(1.0 / rate_per_producer);
    let mut next = clock.elapsed() + interval.mul_f64(f64::from(idx) / 8.0);
    let mut day = -1i64;
    let mut file: Option<File> = None;
    let mut open: Vec<Option<File>> = targets.iter().map(|_| None).collect();
    let mut line = Vec::with_capacity(512);
    let mut seq = 0u64;
    let pad = "x".repeat(120);
    while !stop.load(Ordering::Relaxed) {
        let now = clock.elapsed();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let out = if targets.is_empty() {
            if wall_ms.div_euclid(DAY_MS) != day || file.is_none() {
                day = wall_ms.div_euclid(DAY_MS);
                let name = format!("events_{}.ndjson", ymd(wall_ms, ""));
                file = Some(OpenOptions::new().create(true).append(true).open(raw.join(name))?);
            }
            file.as_mut().expect("opened above")
        } else {
            let i = rng.below(targets.len() as u64) as usize;
            if open[i].is_none() {
                open[i] = Some(OpenOptions::new().append(true).open(&targets[i])?);
            }
            open[i].as_mut().expect("opened above")
        };
        seq += 1;
        line.clear();
        write!(
            line,
            "{{\"run_id\":\"tail-run-{:02}\",\"event_type\":\"page_fetched\",\"ts\":\"",
            rng.below(u64::from(runs))
        )?;
        write_iso(&mut line, wall_ms)?;
        // ts_ns last before the write: the latency's starting point.
        let ts_ns = clock.elapsed().as_nanos() as u64;
        writeln!(
            line,
            "\",\"event_id\":\"p{idx}-{seq}\",\"ts_ns\":{ts_ns},\"status\":200,\
             \"timing\":{{\"dns_ms\":{},\"total_ms\":{}}},\"pad\":\"{pad}\"}}",
            rng.range(0, 40),
            rng.range(50, 900)
        )?;
        out.write_all(&line)?;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Joins the producer threads (after `stop` was set); returns the first failure.
fn join_producers(handles: &mut Vec<std::thread::JoinHandle<Result<()>>>) -> Option<String> {
    let mut failure = None;
    for h in handles.drain(..) {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(format!("producer failed: {e:#}"))),
            Err(_) => failure = failure.or(Some("producer panicked".to_string())),
        }
    }
    failure
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1e6
}

fn tail(a: TailArgs) -> Result<bool> {
    ensure!(a.producers > 0 && a.rate > 0 && a.runs > 0, "producers, rate, runs must be > 0");
    let base = data_root(&a.dir)?.join("tail");
    let bin = resolve_bin(&a.bin)?;
    if base.exists() {
        fs::remove_dir_all(&base)?;
    }
    let raw = base.join("raw");
    fs::create_dir_all(&raw)?;
    // Today's file exists before the daemon starts, so it is found at start-up.
    let today = ymd(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64, "");
    let active = a.active.unwrap_or(a.files / 2).min(a.files);
    // Per producer, the files it appends to (none: today's daily file).
    let mut targets: Vec<Vec<PathBuf>> = vec![Vec::new(); a.producers as usize];
    let mut prefilled = 0u64;
    if a.files <= 1 {
        File::create(raw.join(format!("events_{today}.ndjson")))?;
    } else {
        ensure!(active >= a.producers, "--active must be at least --producers");
        for i in 0..a.files {
            let path = raw.join(format!("events_{today}_{i:05}.ndjson"));
            let line = format!("{{\"run_id\":\"tail-run-00\",\"event_id\":\"pre-{i}\"}}\n");
            fs::write(&path, line)?;
            prefilled += 1;
            if i < active {
                // One producer per file, so that each holds only its share of descriptors.
                targets[(i % a.producers) as usize].push(path);
            }
        }
    }

    let log = base.join("run.log");
    let out = File::create(&log)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("run").arg("--base").arg(&base).args(&a.extra);
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    let clock = Instant::now();
    let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let pid = child.id();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let per = f64::from(a.rate) / f64::from(a.producers);
    let mut handles: Vec<_> = (0..a.producers)
        .map(|i| {
            let (raw, stop, sent) = (raw.clone(), stop.clone(), sent.clone());
            let targets = std::mem::take(&mut targets[i as usize]);
            std::thread::spawn(move || producer(i, raw, targets, per, a.runs, clock, stop, sent))
        })
        .collect();

    let warm_end = Duration::from_secs(a.warmup);
    let load_end = warm_end + Duration::from_secs(a.duration);
    let poll = Duration::from_millis(a.poll_ms);
    let runs_dir = base.join("db").join("runs");
    let mut dbs: Vec<(PathBuf, RunDb)> = Vec::new();
    let mut lat_ns: Vec<u64> = Vec::new();
    let mut committed = 0u64;
    let (mut polls, mut cpu_start, mut cpu_load) = (0u64, None, None);
    let mut failure: Option<String> = None;
    let mut drain_deadline = None;
    let mut sent_total = None;
    let mut exit: Option<(ExitStatus, libc::rusage)> = None;
    let mut stopped_at = None;

    loop {
        let now = clock.elapsed();
        if cpu_start.is_none() && now >= warm_end {
            cpu_start = Some((now, proc_cpu_secs(pid)?));
        }
        if sent_total.is_none() && now >= load_end {
            cpu_load = Some((now, proc_cpu_secs(pid)?));
            // Stop and join the producers so that `sent` is final.
            stop.store(true, Ordering::Relaxed);
            if let Some(f) = join_producers(&mut handles) {
                failure = Some(f);
                break;
            }
            sent_total = Some(sent.load(Ordering::Relaxed));
            stopped_at = Some(clock.elapsed());
            drain_deadline = Some(now + Duration::from_secs(a.drain_timeout));
        }
        if let Some(st) = wait4_pid(pid, true)? {
            failure = Some(format!("daemon exited early: {}", st.0));
            exit = Some(st);
            break;
        }
        // New run DBs appear as the daemon meets new runs.
        for p in sqlite_files(&runs_dir)? {
            if dbs.iter().all(|(q, _)| *q != p) {
                if let Ok(conn) = Connection::open_with_flags(
                    &p,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                ) {
                    dbs.push((p, RunDb { conn, last_rowid: 0 }));
                }
            }
        }
        for (_, db) in &mut dbs {
            let t_poll = clock.elapsed().as_nanos() as u64;
            let mut stmt = match db.conn.prepare_cached(
                "SELECT rowid, json_extract(data, '$.ts_ns') FROM events WHERE rowid > ?1",
            ) {
                Ok(s) => s,
                // A `WITHOUT ROWID` events table cannot be polled incrementally.
                Err(e) if e.to_string().contains("rowid") => {
                    failure = Some(format!("cannot poll events by rowid: {e}"));
                    break;
                }
                // Schema not created yet.
                Err(_) => continue,
            };
            let rows = stmt.query_map([db.last_rowid], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<i64>>(1)?))
            })?;
            for row in rows {
                let (rowid, ts) = row?;
                db.last_rowid = db.last_rowid.max(rowid);
                committed += 1;
                if let Some(ts) = ts {
                    let ts = ts as u64;
                    let in_window =
                        ts >= warm_end.as_nanos() as u64 && ts < load_end.as_nanos() as u64;
                    if in_window {
                        lat_ns.push(t_poll.saturating_sub(ts));
                    }
                }
            }
        }
        if failure.is_some() {
            break;
        }
        polls += 1;
        if let (Some(total), Some(deadline)) = (sent_total, drain_deadline) {
            if committed >= total + prefilled {
                break;
            }
            if clock.elapsed() >= deadline {
                failure = Some(format!(
                    "only {committed} of {} lines committed {} s after the load stopped",
                    total + prefilled,
                    a.drain_timeout
                ));
                break;
            }
        }
        std::thread::sleep(poll);
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = join_producers(&mut handles) {
        failure.get_or_insert(f);
    }
    let sent_total = sent_total.unwrap_or_else(|| sent.load(Ordering::Relaxed));

    // Idle CPU: nothing is written any more.
    let mut idle_pct = f64::NAN;
    if failure.is_none() {
        std::thread::sleep(Duration::from_secs(1));
        let (t0, c0) = (clock.elapsed(), proc_cpu_secs(pid)?);
        std::thread::sleep(Duration::from_secs(a.idle));
        let (t1, c1) = (clock.elapsed(), proc_cpu_secs(pid)?);
        idle_pct = 100.0 * (c1 - c0) / (t1 - t0).as_secs_f64();
    }
    drop(dbs);

    // Graceful stop: SIGTERM, then SIGKILL after 30 s.
    if exit.is_none() {
        let pid_t = libc::pid_t::try_from(pid)?;
        // SAFETY: plain syscall on our own, not yet reaped, child's pid.
        unsafe { libc::kill(pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while exit.is_none() {
            exit = wait4_pid(pid, true)?;
            if exit.is_none() && Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid_t, libc::SIGKILL) };
                failure.get_or_insert("daemon did not exit within 30 s of SIGTERM".into());
                exit = wait4_pid(pid, false)?;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(child);

    lat_ns.sort_unstable();
    let load_pct = match (cpu_start, cpu_load) {
        (Some((t0, c0)), Some((t1, c1))) => 100.0 * (c1 - c0) / (t1 - t0).as_secs_f64(),
        _ => f64::NAN,
    };
    let (status, rss_mib) = match exit {
        Some((st, ru)) => (Some(st), ru.ru_maxrss as f64 / 1024.0),
        None => (None, f64::NAN),
    };
    if let Some(st) = status {
        if !st.success() {
            failure.get_or_insert(format!("daemon exit status after SIGTERM: {st}"));
        }
    }
    let expected = sent_total + prefilled;
    if failure.is_none() && committed != expected {
        failure = Some(format!("{committed} rows committed for {expected} lines written"));
    }
    let wall = stopped_at.unwrap_or_else(|| clock.elapsed()).as_secs_f64();
    println!(
        "tail: {} producers, {} lines/s target, {:.1} lines/s achieved, {} s load after {} s warm-up",
        a.producers,
        a.rate,
        sent_total as f64 / wall,
        a.duration,
        a.warmup
    );
    if a.files > 1 {
        println!("  {} files watched, {active} of them appended to", a.files);
    }
    println!(
        "  latency (write -> visible to a reader, upper bound, resolution ~{} ms; {} samples): \
         p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        a.poll_ms,
        lat_ns.len(),
        percentile(&lat_ns, 50.0),
        percentile(&lat_ns, 90.0),
        percentile(&lat_ns, 99.0),
        percentile(&lat_ns, 100.0)
    );
    println!(
        "  daemon CPU: {load_pct:.1} % under load, {idle_pct:.2} % idle; peak RSS {rss_mib:.1} MiB; \
         {committed} of {expected} lines committed; {polls} polls"
    );
    if let Some(f) = &failure {
        println!("  FAILED: {f}\n  log {} ends with:\n{}", log.display(), log_tail(&log, 15));
    }
    let json = serde_json::json!({
        "mode": "tail",
        "producers": a.producers,
        "rate": a.rate,
        "duration_s": a.duration,
        "runs": a.runs,
        "poll_ms": a.poll_ms,
        "sent": sent_total,
        "files": a.files,
        "active_files": if a.files > 1 { active } else { 1 },
        "committed": committed,
        "latency_ms": {
            "p50": percentile(&lat_ns, 50.0),
            "p90": percentile(&lat_ns, 90.0),
            "p99": percentile(&lat_ns, 99.0),
            "max": percentile(&lat_ns, 100.0),
            "samples": lat_ns.len(),
        },
        "cpu_pct_load": load_pct,
        "cpu_pct_idle": idle_pct,
        "rss_mib": rss_mib,
        "ok": failure.is_none(),
        "git": git_rev(),
        "bin": bin.display().to_string(),
        "nproc": nproc(),
        "unix_time": unix_now(),
    });
    println!("BENCH {json}");
    Ok(failure.is_none())
}
