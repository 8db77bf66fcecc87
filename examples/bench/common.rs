//! What the three modes share: the paths and the binary under test, the PRNG, dates,
//! measuring a child process.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use clap::Args;

pub(crate) const DAY_MS: i64 = 86_400_000;

#[derive(Args, Clone)]
pub(crate) struct BinArgs {
    /// The jsonl-shipper binary [default: <cargo target dir>/release/jsonl-shipper, built first].
    #[arg(long = "bin")]
    bin: Option<PathBuf>,
    /// Do not run `cargo build --release --bin jsonl-shipper` first.
    #[arg(long)]
    no_build: bool,
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

pub(crate) fn data_root(dir: &Option<PathBuf>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.clone()),
        None => Ok(target_dir()?.join("bench-data")),
    }
}

/// The binary to benchmark; builds the release binary unless told otherwise.
pub(crate) fn resolve_bin(b: &BinArgs) -> Result<PathBuf> {
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
pub(crate) fn git_rev() -> Option<String> {
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

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Deterministic PRNG (SplitMix64)
// ---------------------------------------------------------------------------------------------

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0), by multiply-high.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    pub(crate) fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    pub(crate) fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len() as u64) as usize]
    }
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

pub(crate) fn ymd(ts_ms: i64, sep: &str) -> String {
    let (y, m, d) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    format!("{y:04}{sep}{m:02}{sep}{d:02}")
}

/// `2024-03-01T12:00:00.123Z`
pub(crate) fn write_iso(out: &mut Vec<u8>, ts_ms: i64) -> io::Result<()> {
    let (y, mo, d) = civil_from_days(ts_ms.div_euclid(DAY_MS));
    let ms = ts_ms.rem_euclid(DAY_MS);
    let (h, mi, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    write!(out, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}Z")
}

// ---------------------------------------------------------------------------------------------
// Measuring a child process
// ---------------------------------------------------------------------------------------------

/// Resource usage of one finished child, from `wait4(2)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Usage {
    pub(crate) status: ExitStatus,
    pub(crate) wall: f64,
    pub(crate) user: f64,
    pub(crate) sys: f64,
    pub(crate) maxrss_kib: i64,
}

fn tv_secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// Waits for `pid` with `wait4`; `Ok(None)` if `nohang` and it is still running.
pub(crate) fn wait4_pid(pid: u32, nohang: bool) -> Result<Option<(ExitStatus, libc::rusage)>> {
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
pub(crate) fn run_measured(cmd: &mut Command, log: &Path) -> Result<Usage> {
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

pub(crate) fn log_tail(log: &Path, n: usize) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        return "(empty)".into();
    }
    lines[start..].join("\n")
}

pub(crate) fn sqlite_files(dir: &Path) -> Result<Vec<PathBuf>> {
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

pub(crate) fn fmt_int(n: u64) -> String {
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
