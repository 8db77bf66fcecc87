//! `columns`: what typed columns and indexes from config (`[columns]`, `[[indexes]]`) cost.
//!
//! 0. **SQLite alone** (`--sqlite-rows`, default 300,000 lines of the 50-run data set): the
//!    run DB's `events` table and the agent's upsert, in one scratch DB per variant, with no
//!    columns, 5 columns `AS (NULL)`, 5 columns of bare `json_extract`, and the 5 columns as
//!    the agent defines them (`json_type`-guarded; the expressions mirror `schema.rs`), in
//!    5,000-row transactions, interleaved: what SQLite's INSERT costs per row for each. SQLite
//!    computes every generated column, VIRTUAL ones included, on every INSERT
//!    (`sqlite3ComputeGeneratedColumns` in `sqlite3Insert`), so this is the floor of part 1.
//! 1. **Write path** (each `--runs` set-up, default 50; the data set of `backfill`): per
//!    rep, in turn, `jsonl-shipper backfill --config F` of the whole data set with F setting
//!    no columns, the 5 typed columns below, and the 5 columns plus the 2 indexes below
//!    (interleaved, so that a machine getting busier does not favour one). Wall time, CPU and
//!    peak RSS as in `backfill`; each rep is verified (rows as expected, no dead letter, every
//!    run DB with 5 typed columns and 2 indexes when configured). The issue's bound: 5
//!    columns within 3 % of none; the indexes' cost is reported. (SQLite computes VIRTUAL
//!    columns on every INSERT too, so the columns are not free.)
//! 2. **Applying to an existing DB** (`--open-events`, default 1,000,000 events of one run):
//!    the data set is shipped once without columns; then per rep the typed columns and
//!    indexes are removed by hand (schema only), the config gets them, and `backfill` of one
//!    new line of that run makes the writer open the DB and apply them. Reported: that
//!    backfill's wall time (the bound: ≤ 10 s) and each index build's time from the progress
//!    lines the binary logs.
//! 3. **Reopening DBs that have everything** (`--reopen-runs`, default 5,000 runs of
//!    `--reopen-events`, default 100,000): the data set is shipped once with the columns and
//!    indexes; then per rep `maintain` (which opens every run DB through the same open as the
//!    writers) runs with a config without them (no check) and with them (the check finds
//!    nothing missing): the difference per DB is what the check costs each open. Also timed:
//!    `check-config` surveying every DB.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use clap::Args;
use rusqlite::Connection;
use serde::Serialize;

use crate::backfill::{remove_outputs, round3, stat, verify, warm_cache, Stat};
use crate::common::{
    data_root, fmt_int, git_rev, log_tail, nproc, resolve_bin, run_measured, sqlite_files,
    unix_now, BinArgs,
};
use crate::gen::{base_dir, ensure_data, gen_params, print_manifest, DataArgs};

#[derive(Args)]
pub(crate) struct ColumnsArgs {
    /// Write-path set-ups: number of runs in the data set; comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_values_t = [50u32])]
    runs: Vec<u32>,
    /// Repetitions (of each variant, interleaved).
    #[arg(long, default_value_t = 5)]
    reps: u32,
    /// Events of the one-run data set whose DB gets the columns and indexes at open.
    #[arg(long, default_value_t = 1_000_000)]
    open_events: u64,
    /// Skip part 1 (write path).
    #[arg(long)]
    no_write: bool,
    /// Skip part 2 (applying to an existing DB).
    #[arg(long)]
    no_open: bool,
    /// Runs of part 3's data set (reopening DBs that have everything).
    #[arg(long, default_value_t = 5000)]
    reopen_runs: u32,
    /// Events of part 3's data set.
    #[arg(long, default_value_t = 100_000)]
    reopen_events: u64,
    /// Skip part 3.
    #[arg(long)]
    no_reopen: bool,
    /// Lines inserted per variant in part 0 (SQLite alone); 0 skips it.
    #[arg(long, default_value_t = 300_000)]
    sqlite_rows: usize,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    bin: BinArgs,
}

/// Five typed columns over fields of the generated events (integer, real, text; present in
/// some event types, absent in others).
const COLUMNS: &str = r#"
[columns]
http_status = { path = "$.status", type = "integer" }
ttfb_ms = { path = "$.timing.ttfb_ms", type = "real" }
content_type = { path = "$.headers.content_type", type = "text" }
depth = { path = "$.depth", type = "integer" }
url = { path = "$.url", type = "text" }
"#;

/// Two indexes: a partial one (failed fetches by type) and a full one.
const INDEXES: &str = r#"
[[indexes]]
columns = ["event_type", "http_status"]
where = "http_status >= 400"

[[indexes]]
columns = ["ttfb_ms"]
"#;

const N_COLUMNS: i64 = 5;
const N_INDEXES: i64 = 2;

#[derive(Serialize)]
struct VariantReport {
    variant: &'static str,
    runs: u32,
    reps: usize,
    ev_per_s: Stat,
    wall_s: Stat,
    cpu_s: Stat,
    rss_mib: Stat,
    /// Median wall time relative to "none", in percent (+ = slower).
    wall_vs_none_pct: f64,
    cpu_vs_none_pct: f64,
    ok: bool,
}

#[derive(Serialize)]
struct OpenReport {
    events: u64,
    rows: i64,
    reps: usize,
    /// The backfill of one line that opened the DB and applied everything.
    wall_s: Stat,
    /// Per index, its build time from the "index built" line.
    build_s: Vec<(String, Stat)>,
    bound_s: f64,
    met: bool,
}

pub(crate) fn columns(a: ColumnsArgs) -> Result<bool> {
    ensure!(a.reps > 0, "--reps must be > 0");
    let root = data_root(&a.data.dir)?;
    let bin = resolve_bin(&a.bin)?;
    let mut ok = true;
    if a.sqlite_rows > 0 {
        sqlite_alone(&a, &root)?;
    }
    if !a.no_write {
        for &runs in &a.runs {
            ok &= write_path(&a, &root, &bin, runs)?;
        }
    }
    if !a.no_open {
        ok &= apply_at_open(&a, &root, &bin)?;
    }
    if !a.no_reopen {
        ok &= reopen(&a, &root, &bin)?;
    }
    Ok(ok)
}

/// The paths and types of [`COLUMNS`].
const COLUMN_PATHS: [(&str, &str); 5] = [
    ("$.status", "integer"),
    ("$.timing.ttfb_ms", "real"),
    ("$.headers.content_type", "text"),
    ("$.depth", "integer"),
    ("$.url", "text"),
];

/// Part 0: SQLite's INSERT cost per row with each kind of generated column (see the top).
fn sqlite_alone(a: &ColumnsArgs, root: &Path) -> Result<()> {
    let base = base_dir(root, 50, a.data.events);
    let m = ensure_data(&base, &gen_params(50, &a.data))?;
    let mut lines = Vec::with_capacity(a.sqlite_rows);
    'files: for file in &m.files {
        for line in fs::read_to_string(base.join("raw").join(&file.name))?.lines() {
            if lines.len() == a.sqlite_rows {
                break 'files;
            }
            lines.push(line.to_string());
        }
    }
    let guarded = |p: &str, ty: &str| {
        match ty {
        "integer" => format!("CASE WHEN json_type(data, '{p}') = 'integer' THEN json_extract(data, '{p}') END"),
        "real" => format!("CASE WHEN json_type(data, '{p}') IN ('integer', 'real') THEN CAST(json_extract(data, '{p}') AS REAL) END"),
        _ => format!("CASE WHEN json_type(data, '{p}') = 'text' THEN json_extract(data, '{p}') END"),
    }
    };
    let variants: [(&str, Vec<String>); 4] = [
        ("none", vec![]),
        ("5 x NULL", COLUMN_PATHS.iter().map(|_| "NULL".to_string()).collect()),
        (
            "5 x json_extract",
            COLUMN_PATHS.iter().map(|(p, _)| format!("json_extract(data, '{p}')")).collect(),
        ),
        ("5 typed (agent)", COLUMN_PATHS.iter().map(|(p, t)| guarded(p, t)).collect()),
    ];
    let scratch = base.join("sqlite-alone");
    fs::create_dir_all(&scratch)?;
    let mut times: Vec<Vec<f64>> = vec![vec![]; variants.len()];
    for _rep in 0..a.reps {
        for (v, (_, columns)) in variants.iter().enumerate() {
            let db = scratch.join(format!("v{v}.sqlite"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = fs::remove_file(format!("{}{suffix}", db.display()));
            }
            let conn = Connection::open(&db)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
                 CREATE TABLE events (event_key TEXT PRIMARY KEY, run_id TEXT NOT NULL,
                     event_type, ts, data TEXT NOT NULL, source TEXT NOT NULL,
                     line_no INTEGER NOT NULL, pos INTEGER NOT NULL);",
            )?;
            for (i, expr) in columns.iter().enumerate() {
                conn.execute_batch(&format!(
                    "ALTER TABLE events ADD COLUMN c{i} AS ({expr}) VIRTUAL"
                ))?;
            }
            let started = std::time::Instant::now();
            for (chunk_no, chunk) in lines.chunks(5_000).enumerate() {
                let tx = conn.unchecked_transaction()?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO events (event_key, run_id, event_type, ts, data, source, line_no, pos)
                     VALUES (?1, 'r', 't', NULL, ?2, 'raw', ?3, ?3)
                     ON CONFLICT (event_key) DO UPDATE SET data = excluded.data, pos = excluded.pos
                     WHERE excluded.pos > events.pos
                        OR (excluded.pos = events.pos AND excluded.data > events.data)",
                )?;
                for (i, line) in chunk.iter().enumerate() {
                    let n = (chunk_no * 5_000 + i) as i64;
                    insert.execute(rusqlite::params![format!("{n:016}"), line, n])?;
                }
                drop(insert);
                tx.commit()?;
            }
            times[v].push(started.elapsed().as_secs_f64());
        }
    }
    let median = |xs: &[f64]| {
        let mut xs = xs.to_vec();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let none = median(&times[0]);
    println!(
        "SQLite alone: {} lines per variant, medians of {} interleaved reps",
        fmt_int(lines.len() as u64),
        a.reps
    );
    for (v, (name, _)) in variants.iter().enumerate() {
        let m = median(&times[v]);
        println!(
            "  {name:18} {m:.3} s, {:.2} µs/row, {:+.2} µs/row vs none",
            m * 1e6 / lines.len() as f64,
            (m - none) * 1e6 / lines.len() as f64
        );
    }
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// Writes `base = <base>` plus `extra` to `<base>/logs/<name>.toml`.
fn write_config(base: &Path, name: &str, extra: &str) -> Result<PathBuf> {
    let logs = base.join("logs");
    fs::create_dir_all(&logs)?;
    let path = logs.join(format!("{name}.toml"));
    fs::write(&path, format!("base = {:?}\n{extra}", base.display().to_string()))?;
    Ok(path)
}

/// Typed (VIRTUAL generated) columns and our (`jss_`) indexes of a run DB.
fn typed_counts(db: &Path) -> Result<(i64, i64)> {
    let conn = Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    let columns = conn.query_row(
        "SELECT count(*) FROM pragma_table_xinfo('events') WHERE hidden = 2",
        [],
        |r| r.get(0),
    )?;
    let indexes = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'jss\\_%' ESCAPE '\\'",
        [],
        |r| r.get(0),
    )?;
    Ok((columns, indexes))
}

fn write_path(a: &ColumnsArgs, root: &Path, bin: &Path, runs: u32) -> Result<bool> {
    let base = base_dir(root, runs, a.data.events);
    let m = ensure_data(&base, &gen_params(runs, &a.data))?;
    print_manifest(&base, &m);
    warm_cache(&base, &m)?;
    let variants: [(&'static str, String, (i64, i64)); 3] = [
        ("none", String::new(), (0, 0)),
        ("5 columns", COLUMNS.to_string(), (N_COLUMNS, 0)),
        ("5 columns + 2 indexes", format!("{COLUMNS}{INDEXES}"), (N_COLUMNS, N_INDEXES)),
    ];
    // (wall, cpu, rss, ev/s) per variant, per rep.
    let mut results: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut ok = true;
    for rep in 1..=a.reps {
        for (i, (name, toml, want)) in variants.iter().enumerate() {
            remove_outputs(&base)?;
            let config = write_config(&base, &format!("columns-{i}"), toml)?;
            let log = base.join("logs").join(format!("columns-{i}-rep{rep}.log"));
            let mut cmd = Command::new(bin);
            cmd.arg("backfill").arg("--config").arg(&config);
            let u = run_measured(&mut cmd, &log)?;
            let mut problems = verify(&base, &m, &u)?;
            for db in sqlite_files(&base.join("db").join("runs"))? {
                let got = typed_counts(&db)?;
                if got != *want {
                    problems.push(format!(
                        "{}: (columns, indexes) {got:?}, want {want:?}",
                        db.display()
                    ));
                    break;
                }
            }
            let r = (
                u.wall,
                u.user + u.sys,
                u.maxrss_kib as f64 / 1024.0,
                m.event_lines as f64 / u.wall,
            );
            println!(
                "[{runs} runs] rep {rep}/{} {name:<22} {:.2} s wall, {} ev/s, CPU {:.2} s, peak RSS {:.1} MiB, {}",
                a.reps,
                r.0,
                fmt_int(r.3 as u64),
                r.1,
                r.2,
                if problems.is_empty() { "verified" } else { "FAILED" }
            );
            for p in &problems {
                println!(
                    "    problem: {p}\n    log {} ends with:\n{}",
                    log.display(),
                    log_tail(&log, 10)
                );
            }
            ok &= problems.is_empty();
            results[i].push(r);
        }
    }
    remove_outputs(&base)?;
    let col = |i: usize, f: fn(&(f64, f64, f64, f64)) -> f64| {
        stat(&results[i].iter().map(f).collect::<Vec<_>>())
    };
    let (none_wall, none_cpu) = (col(0, |r| r.0).median, col(0, |r| r.1).median);
    println!();
    println!(
        "columns, write path: {runs} runs, {} events, {} reps, {} CPUs, {}",
        fmt_int(a.data.events),
        a.reps,
        nproc(),
        git_rev().as_deref().unwrap_or("unknown rev")
    );
    println!(
        "{:<22} {:>22} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "variant",
        "ev/s median [min-max]",
        "wall s",
        "CPU s",
        "RSS MiB",
        "wall vs none",
        "CPU vs none"
    );
    for (i, (name, _, _)) in variants.iter().enumerate() {
        let (ev, wall, cpu, rss) =
            (col(i, |r| r.3), col(i, |r| r.0), col(i, |r| r.1), col(i, |r| r.2));
        let pct = |x: f64, of: f64| round3((x / of - 1.0) * 100.0);
        let report = VariantReport {
            variant: name,
            runs,
            reps: results[i].len(),
            ev_per_s: ev,
            wall_s: wall,
            cpu_s: cpu,
            rss_mib: rss,
            wall_vs_none_pct: pct(wall.median, none_wall),
            cpu_vs_none_pct: pct(cpu.median, none_cpu),
            ok,
        };
        println!(
            "{:<22} {:>22} {:>8.2} {:>8.2} {:>8.1} {:>+8.1} % {:>+8.1} %",
            name,
            format!("{:.0} [{:.0}-{:.0}]", ev.median, ev.min, ev.max),
            wall.median,
            cpu.median,
            rss.max,
            report.wall_vs_none_pct,
            report.cpu_vs_none_pct
        );
        println!("BENCH {}", serde_json::to_string(&report)?);
    }
    println!("(bound: 5 columns within 3 % of none; medians over reps, RSS = max)");
    Ok(ok)
}

/// Drops the typed columns and our indexes of `db` (schema only), so a rep starts from a DB
/// that never had them.
fn strip(db: &Path) -> Result<()> {
    let conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let names = |sql: &str| -> Result<Vec<String>> {
        let mut statement = conn.prepare(sql)?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    for index in names(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'jss\\_%' ESCAPE '\\'",
    )? {
        conn.execute_batch(&format!("DROP INDEX \"{index}\""))?;
    }
    for column in names("SELECT name FROM pragma_table_xinfo('events') WHERE hidden = 2")? {
        conn.execute_batch(&format!("ALTER TABLE events DROP COLUMN \"{column}\""))?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn apply_at_open(a: &ColumnsArgs, root: &Path, bin: &Path) -> Result<bool> {
    let mut data = a.data.clone();
    data.events = a.open_events;
    let base = base_dir(root, 1, a.open_events);
    let m = ensure_data(&base, &gen_params(1, &data))?;
    print_manifest(&base, &m);
    warm_cache(&base, &m)?;
    remove_outputs(&base)?;
    let plain = write_config(&base, "columns-open-none", "")?;
    let log = base.join("logs").join("columns-open-ship.log");
    let u = run_measured(Command::new(bin).arg("backfill").arg("--config").arg(&plain), &log)?;
    let problems = verify(&base, &m, &u)?;
    ensure!(problems.is_empty(), "shipping the data set: {problems:?}; log {}", log.display());
    let db = sqlite_files(&base.join("db").join("runs"))?.pop().context("no run DB")?;
    let (run_id, rows): (String, i64) = Connection::open(&db)?.query_row(
        "SELECT (SELECT run_id FROM runs), (SELECT count(*) FROM events)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    println!(
        "shipped {} rows into {} without columns ({:.1} s)",
        fmt_int(rows as u64),
        db.display(),
        u.wall
    );
    let config = write_config(&base, "columns-open", &format!("{COLUMNS}{INDEXES}"))?;
    let extra = base.join("extra");
    fs::create_dir_all(&extra)?;
    let mut walls = Vec::new();
    let mut builds: Vec<(String, Vec<f64>)> = Vec::new();
    let mut ok = true;
    for rep in 1..=a.reps {
        strip(&db)?;
        ensure!(typed_counts(&db)? == (0, 0), "{} still has typed columns", db.display());
        let line = base.join("extra").join(format!("extra-{}-{rep}.ndjson", unix_now()));
        fs::write(
            &line,
            format!("{{\"run_id\":{run_id:?},\"event_id\":\"columns-bench-{}-{rep}\",\"event_type\":\"page_fetched\",\"status\":200}}\n", unix_now()),
        )?;
        let log = base.join("logs").join(format!("columns-open-rep{rep}.log"));
        let u = run_measured(
            Command::new(bin).arg("backfill").arg("--config").arg(&config).arg(&line),
            &log,
        )?;
        let got = typed_counts(&db)?;
        let text = fs::read_to_string(&log)?;
        let mut n_builds = 0;
        for l in text.lines().filter(|l| l.contains("index built")) {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_string())
            };
            let (Some(index), Some(ms)) = (field("index="), field("elapsed_ms=")) else { continue };
            let secs = ms.parse::<f64>().unwrap_or(f64::NAN) / 1000.0;
            match builds.iter_mut().find(|(name, _)| *name == index) {
                Some((_, v)) => v.push(secs),
                None => builds.push((index, vec![secs])),
            }
            n_builds += 1;
        }
        let good = u.status.success() && got == (N_COLUMNS, N_INDEXES) && n_builds == N_INDEXES;
        println!(
            "[open] rep {rep}/{}: {:.2} s wall (columns, indexes) = {got:?}, {n_builds} progress lines, {}",
            a.reps,
            u.wall,
            if good { "ok" } else { "FAILED" }
        );
        if !good {
            println!("    log {} ends with:\n{}", log.display(), log_tail(&log, 10));
        }
        ok &= good;
        walls.push(u.wall);
    }
    let wall = stat(&walls);
    let report = OpenReport {
        events: a.open_events,
        rows,
        reps: walls.len(),
        wall_s: wall,
        build_s: builds.iter().map(|(name, v)| (name.clone(), stat(v))).collect(),
        bound_s: 10.0,
        met: wall.median <= 10.0,
    };
    println!();
    println!(
        "columns, applied at open: {} rows, 5 columns + 2 indexes: {:.2} s median [{:.2}-{:.2}] (bound <= 10 s: {})",
        fmt_int(rows as u64),
        wall.median,
        wall.min,
        wall.max,
        if report.met { "met" } else { "MISSED" }
    );
    for (name, s) in &report.build_s {
        println!("  {name}: {:.2} s median [{:.2}-{:.2}]", s.median, s.min, s.max);
    }
    println!("BENCH {}", serde_json::to_string(&report)?);
    Ok(ok)
}

#[derive(Serialize)]
struct ReopenReport {
    run_dbs: usize,
    reps: usize,
    maintain_without_s: Stat,
    maintain_with_s: Stat,
    /// (with - without) / run DBs, from the medians.
    check_per_open_us: f64,
    check_config_s: Stat,
    /// Shipping the data set once, without and with the columns and indexes (1 rep each).
    ship_without_s: f64,
    ship_with_s: f64,
}

fn reopen(a: &ColumnsArgs, root: &Path, bin: &Path) -> Result<bool> {
    let mut data = a.data.clone();
    data.events = a.reopen_events;
    let base = base_dir(root, a.reopen_runs, a.reopen_events);
    let m = ensure_data(&base, &gen_params(a.reopen_runs, &data))?;
    print_manifest(&base, &m);
    warm_cache(&base, &m)?;
    let without = write_config(&base, "columns-reopen-none", "")?;
    let with = write_config(&base, "columns-reopen", &format!("{COLUMNS}{INDEXES}"))?;
    let logs = base.join("logs");
    let mut ship = Vec::new();
    for (name, config) in [("none", &without), ("5 columns + 2 indexes", &with)] {
        remove_outputs(&base)?;
        let log = logs.join("columns-reopen-ship.log");
        let u = run_measured(Command::new(bin).arg("backfill").arg("--config").arg(config), &log)?;
        let problems = verify(&base, &m, &u)?;
        ensure!(problems.is_empty(), "shipping the data set: {problems:?}; log {}", log.display());
        println!(
            "[reopen] shipped {} runs with {name}: {:.2} s wall, CPU {:.2} s",
            a.reopen_runs,
            u.wall,
            u.user + u.sys
        );
        ship.push(u.wall);
    }
    let dbs = sqlite_files(&base.join("db").join("runs"))?;
    ensure!(
        typed_counts(&dbs[0])? == (N_COLUMNS, N_INDEXES),
        "{} lacks the columns",
        dbs[0].display()
    );
    let maintain = |config: &Path, log: &str| -> Result<f64> {
        let log = logs.join(log);
        let u = run_measured(Command::new(bin).arg("maintain").arg("--config").arg(config), &log)?;
        ensure!(u.status.success(), "maintain failed; log {}", log.display());
        Ok(u.wall)
    };
    // Untimed: the first `PRAGMA optimize` of each DB analyzes its new indexes.
    maintain(&without, "columns-reopen-warm.log")?;
    let (mut t_without, mut t_with, mut t_check) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=a.reps {
        t_without.push(maintain(&without, &format!("columns-reopen-none-rep{rep}.log"))?);
        t_with.push(maintain(&with, &format!("columns-reopen-rep{rep}.log"))?);
        let log = logs.join(format!("columns-reopen-check-rep{rep}.log"));
        let u =
            run_measured(Command::new(bin).arg("check-config").arg("--config").arg(&with), &log)?;
        let text = fs::read_to_string(&log)?;
        ensure!(
            u.status.success()
                && text.contains(&format!("{} run DBs in", dbs.len()))
                && text.contains("up to date"),
            "check-config did not find every DB up to date; log {}",
            log.display()
        );
        t_check.push(u.wall);
        println!(
            "[reopen] rep {rep}/{}: maintain without {:.2} s, with {:.2} s; check-config {:.2} s",
            a.reps,
            t_without[t_without.len() - 1],
            t_with[t_with.len() - 1],
            u.wall
        );
    }
    let (without_s, with_s) = (stat(&t_without), stat(&t_with));
    let report = ReopenReport {
        run_dbs: dbs.len(),
        reps: t_with.len(),
        maintain_without_s: without_s,
        maintain_with_s: with_s,
        check_per_open_us: round3((with_s.median - without_s.median) / dbs.len() as f64 * 1e6),
        check_config_s: stat(&t_check),
        ship_without_s: round3(ship[0]),
        ship_with_s: round3(ship[1]),
    };
    println!();
    println!(
        "columns, reopening {} run DBs that have everything: maintain {:.2} s without the check, {:.2} s with it ({:+.0} µs per open); check-config {:.2} s",
        dbs.len(),
        without_s.median,
        with_s.median,
        report.check_per_open_us,
        report.check_config_s.median
    );
    println!("BENCH {}", serde_json::to_string(&report)?);
    remove_outputs(&base)?;
    Ok(true)
}
