//! `gen`: the deterministic data set generator, also used by `backfill` (whose doc, step 1,
//! describes the data set).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::common::{data_root, fmt_int, write_iso, ymd, Rng, DAY_MS};

/// Bump when the generated data changes, so cached data sets are regenerated.
const GENERATOR_VERSION: u32 = 1;
/// 2024-03-01T00:00:00Z: the first day of the generated data.
const BASE_EPOCH_MS: i64 = 1_709_251_200_000;
const DAYS: i64 = 3;

#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Event lines per data set (run records come on top).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) events: u64,
    /// At most this many runs are active at once; events go to a random active run.
    /// Default: all runs interleaved at once (the worst case for the shipper).
    #[arg(long, default_value_t = u32::MAX)]
    pub(crate) concurrent: u32,
    /// Percentage of events with an `event_id` that are producer retries (same line again).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) dup_pct: f64,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Parent work dir; each set-up lives in `<dir>/<runs>runs-<events>/`
    /// [default: <cargo target dir>/bench-data].
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct GenArgs {
    /// Number of runs in the data set.
    #[arg(long, default_value_t = 50)]
    runs: u32,
    /// Parse every line again and recount the distinct events independently of the generator.
    #[arg(long)]
    validate: bool,
    #[command(flatten)]
    data: DataArgs,
}

// ---------------------------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub(crate) struct GenParams {
    pub(crate) version: u32,
    pub(crate) runs: u32,
    pub(crate) events: u64,
    pub(crate) concurrent: u32,
    pub(crate) dup_pct: f64,
    pub(crate) seed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct FileInfo {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
}

/// What a data set contains; written to `<base>/manifest.json` after the files.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Manifest {
    pub(crate) params: GenParams,
    pub(crate) files: Vec<FileInfo>,
    /// All lines (events and run records).
    pub(crate) lines: u64,
    pub(crate) input_bytes: u64,
    /// Event lines, retries included (= params.events).
    pub(crate) event_lines: u64,
    pub(crate) run_records: u64,
    pub(crate) events_with_event_id: u64,
    /// Event lines that repeat an earlier line's `event_id` (producer retries).
    pub(crate) retries: u64,
    /// Distinct events = rows expected in `events` over all run DBs.
    pub(crate) expected_rows: u64,
    /// Run DBs expected (one per run).
    pub(crate) expected_runs: u64,
}

pub(crate) fn base_dir(root: &Path, runs: u32, events: u64) -> PathBuf {
    root.join(format!("{runs}runs-{events}"))
}

/// Returns the data set's manifest, generating the data set unless a matching one exists.
pub(crate) fn ensure_data(base: &Path, params: &GenParams) -> Result<Manifest> {
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

pub(crate) fn gen_params(runs: u32, d: &DataArgs) -> GenParams {
    GenParams {
        version: GENERATOR_VERSION,
        runs,
        events: d.events,
        concurrent: d.concurrent,
        dup_pct: d.dup_pct,
        seed: d.seed,
    }
}

pub(crate) fn generate_cmd(a: GenArgs) -> Result<bool> {
    let base = base_dir(&data_root(&a.data.dir)?, a.runs, a.data.events);
    let m = ensure_data(&base, &gen_params(a.runs, &a.data))?;
    print_manifest(&base, &m);
    if a.validate {
        validate(&base, &m)?;
    }
    Ok(true)
}

pub(crate) fn print_manifest(base: &Path, m: &Manifest) {
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
