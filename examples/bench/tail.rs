//! `tail`: append-to-committed latency and CPU of `jsonl-shipper run` under steady load.
//!
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

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use clap::Args;
use rusqlite::{Connection, OpenFlags};

use crate::common::{
    data_root, git_rev, log_tail, nproc, resolve_bin, sqlite_files, unix_now, wait4_pid, write_iso,
    ymd, BinArgs, Rng, DAY_MS,
};

#[derive(Args)]
pub(crate) struct TailArgs {
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

// ---------------------------------------------------------------------------------------------
// tail mode
// ---------------------------------------------------------------------------------------------

/// utime + stime of a live process, in seconds, from `/proc/<pid>/stat`.
pub(crate) fn proc_cpu_secs(pid: u32) -> Result<f64> {
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

pub(crate) fn tail(a: TailArgs) -> Result<bool> {
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
