//! `clickhouse`: the fleet sink's bounds (issue 12). A private ClickHouse server (Debian's
//! `clickhouse-server`, started here on free ports with a generated config in a temp dir, as
//! the integration tests do; or `--url` of a running one) and the backfill data set of
//! `--runs` runs (`gen.rs`; default 50 runs, 1,000,000 events). Per rep, interleaved:
//!
//! - **without** the sink: `jsonl-shipper backfill --config F` (F: `base` only);
//! - **with** the sink: the same plus `[sinks.clickhouse]`, into a database dropped first.
//!
//! Each is timed by `wait4` (wall, CPU, peak RSS of the agent; the server's CPU from
//! `/proc/<pid>/stat`). The SQLite path's time with the sink is the `seconds` of backfill's
//! "the run DBs are complete" line (the sink may still be shipping then; absent when the sink
//! finished first: the whole wall time). Checked per rep: the run DBs as in `backfill`, and in
//! ClickHouse at most one row per event line before `FINAL` (no replay; merges may have
//! collapsed retries already) and, after it, the expected distinct events and one runs row
//! per run.
//!
//! Reported (medians): ClickHouse rows/s = event lines ÷ the wall time with the sink (both
//! paths together); the SQLite path's rate with the sink ÷ without; peak RSS with ÷ without;
//! the load average before and after (the box is shared).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::backfill::{remove_outputs, round3, stat, verify, warm_cache, Stat};
use crate::common::{
    data_root, fmt_int, git_rev, nproc, resolve_bin, run_measured, unix_now, BinArgs,
};
use crate::gen::{base_dir, ensure_data, gen_params, print_manifest, DataArgs};
use crate::tail::proc_cpu_secs;

#[derive(Args)]
pub(crate) struct ClickHouseArgs {
    /// Runs in the data set.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Interleaved pairs (without, with).
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// A running server's HTTP interface instead of a private one (its `telemetry_bench`
    /// database is dropped before every rep).
    #[arg(long)]
    url: Option<String>,
    /// Extra lines for `[sinks.clickhouse]` (e.g. `batch_max_rows = 100000`).
    #[arg(long, default_value = "")]
    sink_extra: String,
    /// Starts the private server under `nice -n N`. With 19 the server takes only CPU the
    /// agent leaves, as a server on another host would: the SQLite path's ratio then shows
    /// the sink's own cost on the agent's host, without the co-located server's.
    #[arg(long, default_value_t = 0)]
    server_nice: i32,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

const DATABASE: &str = "telemetry_bench";

/// A private server: its temp dir and process, killed on drop.
struct Server {
    _dir: tempfile::TempDir,
    child: Child,
    url: String,
}

impl Server {
    fn start(nice: i32) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("jsonl-shipper-bench-ch-").tempdir()?;
        let ports: Vec<u16> = {
            let listeners: Vec<std::net::TcpListener> = (0..3)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<_>>()?;
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<std::io::Result<_>>()?
        };
        let d = dir.path().display();
        fs::write(
            dir.path().join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><console>0</console></logger>
  <http_port>{}</http_port><tcp_port>{}</tcp_port><interserver_http_port>{}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile><default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size><uncompressed_cache_size>0</uncompressed_cache_size>
</yandex>
"#,
                ports[0], ports[1], ports[2]
            ),
        )?;
        fs::write(
            dir.path().join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )?;
        let child = Command::new("nice")
            .args(["-n", &nice.to_string(), "clickhouse-server"])
            .arg(format!("--config-file={}", dir.path().join("config.xml").display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning clickhouse-server (apt-get install clickhouse-server)")?;
        let server = Server { _dir: dir, child, url: format!("http://127.0.0.1:{}", ports[0]) };
        let t0 = Instant::now();
        while query(&server.url, "SELECT 1").is_err() {
            ensure!(t0.elapsed() < Duration::from_secs(60), "clickhouse-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn query(url: &str, sql: &str) -> Result<String> {
    let mut response =
        ureq::post(&format!("{url}/")).config().http_status_as_error(false).build().send(sql)?;
    let text = response.body_mut().read_to_string()?;
    ensure!(response.status() == 200, "{sql}: {text}");
    Ok(text)
}

fn count(url: &str, sql: &str) -> Result<u64> {
    query(url, sql)?.trim().parse().with_context(|| format!("{sql}: not a number"))
}

/// The first number of `/proc/loadavg`.
fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The `seconds` of backfill's "the run DBs are complete" line, if it logged one.
fn sqlite_done_secs(log: &Path) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("the run DBs are complete"))?;
    let (_, rest) = line.split_once("seconds=")?;
    rest.trim_start_matches('"')
        .split(|c: char| c != '.' && !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[derive(Serialize, Default)]
struct Pair {
    load1: f64,
    without_wall_s: f64,
    without_cpu_s: f64,
    without_rss_mib: f64,
    with_wall_s: f64,
    with_sqlite_s: f64,
    with_cpu_s: f64,
    with_rss_mib: f64,
    server_cpu_s: f64,
    ch_rows_per_s: f64,
    sqlite_ratio: f64,
    rss_ratio: f64,
}

#[derive(Serialize)]
struct Report {
    mode: &'static str,
    runs: u32,
    event_lines: u64,
    reps: usize,
    ch_rows_per_s: Stat,
    sqlite_ev_per_s_without: Stat,
    sqlite_ev_per_s_with: Stat,
    sqlite_ratio: Stat,
    rss_mib_without: Stat,
    rss_mib_with: Stat,
    rss_ratio: Stat,
    cpu_s_without: Stat,
    cpu_s_with: Stat,
    server_cpu_s: Stat,
    load1: Stat,
    git: Option<String>,
    nproc: usize,
    unix_time: u64,
    per_rep: Vec<Pair>,
}

pub(crate) fn clickhouse(a: ClickHouseArgs) -> Result<bool> {
    ensure!(a.reps > 0, "--reps must be > 0");
    let bin = resolve_bin(&a.bin)?;
    let base = base_dir(&data_root(&a.data.dir)?, a.runs, a.data.events);
    let m = ensure_data(&base, &gen_params(a.runs, &a.data))?;
    print_manifest(&base, &m);
    let server = match &a.url {
        Some(_) => None,
        None => Some(Server::start(a.server_nice)?),
    };
    let url = a.url.clone().or(server.as_ref().map(|s| s.url.clone())).expect("a server");
    println!(
        "clickhouse {} at {url}{}",
        query(&url, "SELECT version()")?.trim(),
        if a.server_nice != 0 {
            format!(", under nice -n {}", a.server_nice)
        } else {
            String::new()
        }
    );
    let logs = base.join("logs");
    fs::create_dir_all(&logs)?;
    let plain = logs.join("bench-clickhouse-without.toml");
    let with = logs.join("bench-clickhouse-with.toml");
    let base_line = format!("base = {:?}\n", base.display().to_string());
    fs::write(&plain, &base_line)?;
    fs::write(
        &with,
        format!(
            "{base_line}[sinks.clickhouse]\nurl = {url:?}\ndatabase = \"{DATABASE}\"\n\
             host_label = \"bench\"\n{}\n",
            a.sink_extra
        ),
    )?;
    warm_cache(&base, &m)?;
    let mut pairs = Vec::new();
    let mut ok = true;
    for rep in 1..=a.reps {
        let mut pair = Pair { load1: load1(), ..Pair::default() };
        // Without the sink.
        remove_outputs(&base)?;
        let log = logs.join(format!("clickhouse-without-rep{rep}.log"));
        let u = run_measured(Command::new(&bin).args(["backfill", "--config"]).arg(&plain), &log)?;
        let problems = verify(&base, &m, &u)?;
        if !problems.is_empty() {
            ok = false;
            eprintln!("rep {rep} without the sink: {problems:?} (log {})", log.display());
        }
        pair.without_wall_s = round3(u.wall);
        pair.without_cpu_s = round3(u.user + u.sys);
        pair.without_rss_mib = round3(u.maxrss_kib as f64 / 1024.0);

        // With the sink, into an empty database.
        remove_outputs(&base)?;
        query(&url, &format!("DROP DATABASE IF EXISTS {DATABASE}"))?;
        let server_cpu =
            || server.as_ref().and_then(|s| proc_cpu_secs(s.child.id()).ok()).unwrap_or(0.0);
        let cpu0 = server_cpu();
        let log = logs.join(format!("clickhouse-with-rep{rep}.log"));
        let u = run_measured(Command::new(&bin).args(["backfill", "--config"]).arg(&with), &log)?;
        pair.server_cpu_s = round3(server_cpu() - cpu0);
        let mut problems = verify(&base, &m, &u)?;
        let inserted = count(&url, &format!("SELECT count() FROM {DATABASE}.events"))?;
        let distinct = count(&url, &format!("SELECT count() FROM {DATABASE}.events FINAL"))?;
        let runs = count(&url, &format!("SELECT count() FROM {DATABASE}.runs FINAL"))?;
        // Background merges may already have collapsed the producers' retries, never more.
        if !(m.expected_rows..=m.event_lines).contains(&inserted) {
            problems.push(format!(
                "clickhouse events rows before FINAL {inserted}, expected {}..={}",
                m.expected_rows, m.event_lines
            ));
        }
        if distinct != m.expected_rows || runs != m.expected_runs {
            problems.push(format!(
                "clickhouse FINAL: {distinct} events, {runs} runs; expected {} and {}",
                m.expected_rows, m.expected_runs
            ));
        }
        if !problems.is_empty() {
            ok = false;
            eprintln!("rep {rep} with the sink: {problems:?} (log {})", log.display());
        }
        pair.with_wall_s = round3(u.wall);
        pair.with_sqlite_s = round3(sqlite_done_secs(&log).unwrap_or(u.wall));
        pair.with_cpu_s = round3(u.user + u.sys);
        pair.with_rss_mib = round3(u.maxrss_kib as f64 / 1024.0);
        pair.ch_rows_per_s = (m.event_lines as f64 / u.wall).round();
        pair.sqlite_ratio = round3(pair.without_wall_s / pair.with_sqlite_s);
        pair.rss_ratio = round3(pair.with_rss_mib / pair.without_rss_mib);
        println!(
            "rep {rep} (load {:.2}): without {:.2} s, {:.0} MiB | with: wall {:.2} s, run DBs done {:.2} s, {:.0} MiB, agent CPU {:.1} s, server CPU {:.1} s -> {} rows/s, SQLite {:.0} %, RSS x{:.2}",
            pair.load1, pair.without_wall_s, pair.without_rss_mib, pair.with_wall_s, pair.with_sqlite_s,
            pair.with_rss_mib, pair.with_cpu_s, pair.server_cpu_s, fmt_int(pair.ch_rows_per_s as u64),
            pair.sqlite_ratio * 100.0, pair.rss_ratio
        );
        pairs.push(pair);
    }
    let col = |f: fn(&Pair) -> f64| stat(&pairs.iter().map(f).collect::<Vec<_>>());
    let rate = |secs: f64| (m.event_lines as f64 / secs).round();
    let report = Report {
        mode: "clickhouse",
        runs: a.runs,
        event_lines: m.event_lines,
        reps: pairs.len(),
        ch_rows_per_s: col(|p| p.ch_rows_per_s),
        sqlite_ev_per_s_without: stat(
            &pairs.iter().map(|p| rate(p.without_wall_s)).collect::<Vec<_>>(),
        ),
        sqlite_ev_per_s_with: stat(
            &pairs.iter().map(|p| rate(p.with_sqlite_s)).collect::<Vec<_>>(),
        ),
        sqlite_ratio: col(|p| p.sqlite_ratio),
        rss_mib_without: col(|p| p.without_rss_mib),
        rss_mib_with: col(|p| p.with_rss_mib),
        rss_ratio: col(|p| p.rss_ratio),
        cpu_s_without: col(|p| p.without_cpu_s),
        cpu_s_with: col(|p| p.with_cpu_s),
        server_cpu_s: col(|p| p.server_cpu_s),
        load1: col(|p| p.load1),
        git: git_rev(),
        nproc: nproc(),
        unix_time: unix_now(),
        per_rep: pairs,
    };
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "\nClickHouse rows/s: median {} ({}–{}), goal >= 150,000: {}",
        fmt_int(report.ch_rows_per_s.median as u64),
        fmt_int(report.ch_rows_per_s.min as u64),
        fmt_int(report.ch_rows_per_s.max as u64),
        verdict(report.ch_rows_per_s.median >= 150_000.0)
    );
    println!(
        "SQLite path with the sink / without: median {:.0} % ({:.0}–{:.0} %; {} vs {} ev/s), goal >= 85 %: {}",
        report.sqlite_ratio.median * 100.0,
        report.sqlite_ratio.min * 100.0,
        report.sqlite_ratio.max * 100.0,
        fmt_int(report.sqlite_ev_per_s_with.median as u64),
        fmt_int(report.sqlite_ev_per_s_without.median as u64),
        verdict(report.sqlite_ratio.median >= 0.85)
    );
    println!(
        "agent peak RSS with / without: median x{:.2} ({:.0} vs {:.0} MiB), goal <= 1.25: {}",
        report.rss_ratio.median,
        report.rss_mib_with.median,
        report.rss_mib_without.median,
        verdict(report.rss_ratio.median <= 1.25)
    );
    println!(
        "load average (1 min) at each pair's start: {:.2}–{:.2}; after: {:.2}",
        report.load1.min,
        report.load1.max,
        load1()
    );
    println!("BENCH {}", serde_json::to_string(&report)?);
    if !ok {
        bail!("a rep's output was wrong (see above)");
    }
    Ok(true)
}
