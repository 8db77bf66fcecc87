//! `status`: per-file progress from the state DB (read-only), run DB count and size, dead
//! letters by reason. Safe while the daemon runs.
//!
//! The run DB count and size come from listing `output.dir`, not from the catalog: the WAL
//! sizes need the listing anyway, it is exact (the catalog lags by up to a second and only
//! knows what `run`/`backfill` wrote) and costs one `stat` per file. The catalog's own totals
//! (rows, events) are shown beside them (`runs.catalog`; null without a catalog).
//!
//! `--json` is for scripts: keys are only ever added (a test pins the set). The human output
//! is a table that fits an 80-column terminal, sizes in IEC units, long paths shortened in the
//! middle.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::Serialize;

use crate::checkpoint::StateDb;
use crate::config::Config;
use crate::identity::FileId;

/// What the human table fits in: the narrowest usual terminal, and what a pipe or a ticket
/// paste gets. The exact values are in `--json`.
const WIDTH: usize = 80;

/// How many of the largest WAL files the status names (large ones mean a reader keeps
/// checkpoints from completing; the operator needs the run, not a list of thousands).
const LARGEST_WALS: usize = 3;

#[derive(Debug, Serialize)]
struct Status {
    files: Vec<FileStatus>,
    runs: RunsStatus,
    dlq: DlqStatus,
    /// The configured remote sinks (`"clickhouse"`); absent when none is.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sinks: BTreeMap<&'static str, SinkStatus>,
}

#[derive(Debug, Serialize)]
struct SinkStatus {
    /// Bytes of the files the globs match now that the sink has not shipped.
    lag_bytes: u64,
    /// RFC 3339; null until the first acknowledged insert.
    last_insert_at: Option<String>,
    /// Failed requests (each retried) since the state DB was created.
    errors: u64,
    /// The last failure's message (the server's own), if any.
    last_error: Option<String>,
    /// RFC 3339; when that failure happened (null from a state DB of an older version).
    last_error_at: Option<String>,
    /// Whether the last request failed (no request succeeded since `last_error_at`).
    failing: bool,
}

#[derive(Debug, Serialize)]
struct FileStatus {
    path: String,
    offset: u64,
    size: Option<u64>,
    lag_bytes: Option<u64>,
    last_read_at: Option<String>,
    /// `last_read_at` for the table's relative age.
    #[serde(skip)]
    last_read: Option<SystemTime>,
    line_no: u64,
    /// False when the path no longer holds this file (rotated away or deleted).
    present: bool,
}

#[derive(Debug, Default, Serialize)]
struct RunsStatus {
    count: u64,
    bytes: u64,
    /// Of `bytes`, how much is in `-wal` files (large ones mean checkpoints are blocked).
    wal_bytes: u64,
    /// The largest non-empty `-wal` files, largest first (at most [`LARGEST_WALS`]).
    largest_wals: Vec<WalFile>,
    /// What the catalog (`output.catalog`) adds up to; None if there is none.
    catalog: Option<CatalogStatus>,
}

#[derive(Debug, Serialize)]
struct CatalogStatus {
    path: String,
    /// Rows (run DBs it knows).
    runs: u64,
    /// Their events, summed.
    events: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct WalFile {
    /// File name in the output dir (`<escaped run_id>.sqlite-wal`).
    name: String,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct DlqStatus {
    lines: u64,
    by_reason: BTreeMap<String, u64>,
}

pub(super) fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let state_path = &config.output.state_db;
    let db = StateDb::open_read_only(state_path)
        .with_context(|| format!("opening state DB {}", state_path.display()))?;
    let checkpoints = match &db {
        Some(db) => db.load().with_context(|| format!("reading {}", state_path.display()))?,
        None => Default::default(),
    };
    let mut sinks = BTreeMap::new();
    if config.sinks.clickhouse.is_some() {
        sinks.insert(crate::clickhouse::SINK, sink_status(config, db.as_ref()));
    }
    let mut files: Vec<FileStatus> = checkpoints
        .into_values()
        .map(|cp| {
            let current = std::fs::metadata(&cp.path).ok().filter(|m| FileId::of(m) == cp.id);
            let size =
                if cp.gzip { cp.size } else { current.as_ref().map(|m| m.len()).or(cp.size) };
            let last_read = cp
                .last_read_at
                .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64));
            FileStatus {
                path: cp.path.display().to_string(),
                offset: cp.offset,
                lag_bytes: if cp.gzip { None } else { size.map(|s| s.saturating_sub(cp.offset)) },
                size,
                last_read_at: last_read.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                last_read,
                line_no: cp.line_no,
                present: current.is_some(),
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));

    let catalog_path = &config.output.catalog;
    let catalog = crate::catalog::Catalog::open_read_only(catalog_path)
        .and_then(|catalog| catalog.map(|c| c.totals()).transpose())
        .with_context(|| format!("reading the catalog {}", catalog_path.display()))?
        .map(|totals| CatalogStatus {
            path: catalog_path.display().to_string(),
            runs: totals.runs,
            events: totals.events,
            bytes: totals.bytes,
        });
    let mut runs = RunsStatus { catalog, ..RunsStatus::default() };
    let mut wals = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&config.output.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.ends_with(".sqlite") {
                runs.count += 1;
            } else if name.ends_with(".sqlite-wal") {
                runs.wal_bytes += meta.len();
                if meta.len() > 0 {
                    wals.push(WalFile { name: name.clone(), bytes: meta.len() });
                }
            } else if !name.ends_with(".sqlite-shm") {
                continue;
            }
            runs.bytes += meta.len();
        }
    }
    wals.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    wals.truncate(LARGEST_WALS);
    runs.largest_wals = wals;
    let mut dlq = DlqStatus { lines: 0, by_reason: BTreeMap::new() };
    for letter in crate::dlq::read_all(&config.dlq.dir).context("reading the DLQ")? {
        dlq.lines += 1;
        *dlq.by_reason.entry(letter.reason).or_default() += 1;
    }
    let status = Status { files, runs, dlq, sinks };

    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &status)?;
        writeln!(out)?;
    } else {
        let dirs = Dirs {
            runs: &config.output.dir.display().to_string(),
            dlq: &config.dlq.dir.display().to_string(),
        };
        out.write_all(table(&status, &dirs, SystemTime::now(), WIDTH).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The ClickHouse sink's lag over the files the globs match now, and its counts. A state DB
/// from before the sink (no `sink_files` yet) reads as nothing shipped.
fn sink_status(config: &Config, db: Option<&StateDb>) -> SinkStatus {
    use crate::clickhouse::SINK;
    let cursors = db.and_then(|db| db.sink_cursors(SINK).ok()).unwrap_or_default();
    let recorded = db.and_then(|db| db.sink_status(SINK).ok()).unwrap_or_default();
    let mut paths = std::collections::BTreeSet::new();
    for pattern in &config.sources.paths {
        for p in [pattern.clone(), format!("{pattern}.gz")] {
            paths.extend(crate::discover::glob_files(&p).unwrap_or_default());
        }
    }
    let lag_bytes = paths.iter().filter_map(|p| crate::clickhouse::file_lag(p, &cursors)).sum();
    let at = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let rfc3339 = |ms: i64| humantime::format_rfc3339_seconds(at(ms)).to_string();
    SinkStatus {
        lag_bytes,
        last_insert_at: recorded.last_insert_at.map(rfc3339),
        errors: recorded.errors,
        failing: recorded.failing(),
        last_error: recorded.last_error,
        last_error_at: recorded.last_error_at.map(rfc3339),
    }
}

/// Where the run DBs and the DLQ are, as shown in the table.
struct Dirs<'a> {
    runs: &'a str,
    dlq: &'a str,
}

/// Width of each number column ("1023.9 MiB" is 10).
const NUM: usize = 10;
/// Files without lag the table lists (the most recently read); `--json` lists all.
const RECENT_FILES: usize = 10;
/// Width of the last column ("LAST READ", "999d ago").
const AGE: usize = 9;

/// The human output: three sections whose number columns line up, every line at most `width`
/// columns (counted in chars) as long as `width` leaves the first column 12.
fn table(status: &Status, dirs: &Dirs<'_>, now: SystemTime, width: usize) -> String {
    // The first column gets what the others leave: three numbers and the age, spaced.
    let first_max = width.saturating_sub(3 * (NUM + 1) + 2 + AGE).max(12);
    let mut firsts: Vec<usize> =
        status.files.iter().map(|f| name_cell(f).chars().count()).collect();
    firsts.extend([dirs.runs.chars().count(), dirs.dlq.chars().count(), "DEAD LETTERS".len()]);
    // Labels of our own are never cut ("total: 0 files" read "total:…files").
    firsts.push(format!("total: {} files", status.files.len()).len());
    firsts.extend(status.sinks.keys().map(|name| format!("{name} SINK").len()));
    let w = firsts.into_iter().max().unwrap_or(0).clamp(12, first_max);

    let mut out = String::new();
    let row = |out: &mut String, first: &str, nums: [&str; 3], age: &str| {
        let first = shorten(first, w);
        let line =
            format!("{first:<w$} {:>NUM$} {:>NUM$} {:>NUM$}  {age}", nums[0], nums[1], nums[2]);
        out.push_str(line.trim_end());
        out.push('\n');
    };
    let size = |n: u64| bytesize::ByteSize(n).display().iec().to_string();
    let opt = |n: Option<u64>| n.map_or_else(|| "-".to_string(), size);

    row(&mut out, "FILE", ["OFFSET", "SIZE", "LAG"], "LAST READ");
    let shown = shown_files(&status.files);
    for (f, _) in status.files.iter().zip(&shown).filter(|(_, &shown)| shown) {
        let age = f.last_read.map_or_else(|| "-".to_string(), |t| ago(now, t));
        row(&mut out, &name_cell(f), [&size(f.offset), &opt(f.size), &opt(f.lag_bytes)], &age);
    }
    let hidden = shown.iter().filter(|&&shown| !shown).count();
    if hidden > 0 {
        row(&mut out, &format!("… {hidden} more, no lag"), ["", "", ""], "");
    }
    let lag: u64 = status.files.iter().filter_map(|f| f.lag_bytes).sum();
    let n = status.files.len();
    row(
        &mut out,
        &format!("total: {n} file{}", if n == 1 { "" } else { "s" }),
        ["", "", &size(lag)],
        "",
    );
    row(&mut out, "", ["", "", ""], "");

    let runs = &status.runs;
    row(&mut out, "RUN DBS", ["COUNT", "SIZE", "WAL"], "");
    row(
        &mut out,
        dirs.runs,
        [&runs.count.to_string(), &size(runs.bytes), &size(runs.wal_bytes)],
        "",
    );
    for wal in &runs.largest_wals {
        row(&mut out, &format!("  {}", wal.name), ["", "", &size(wal.bytes)], "");
    }
    if let Some(catalog) = &runs.catalog {
        let first = format!("  catalog: {} events", catalog.events);
        row(&mut out, &first, [&catalog.runs.to_string(), &size(catalog.bytes), ""], "");
    }
    row(&mut out, "", ["", "", ""], "");

    row(&mut out, "DEAD LETTERS", ["LINES", "", ""], "");
    row(&mut out, dirs.dlq, [&status.dlq.lines.to_string(), "", ""], "");
    for (reason, lines) in &status.dlq.by_reason {
        row(&mut out, &format!("  {reason}"), [&lines.to_string(), "", ""], "");
    }
    for (name, sink) in &status.sinks {
        row(&mut out, "", ["", "", ""], "");
        row(
            &mut out,
            &format!("{} SINK", name.to_uppercase()),
            ["ERRORS", "", "LAG"],
            "LAST INSERT",
        );
        let last = sink.last_insert_at.as_deref().unwrap_or("-");
        row(&mut out, "", [&sink.errors.to_string(), "", &size(sink.lag_bytes)], last);
        if let Some(error) = &sink.last_error {
            // Whole, wrapped: the server's message is what an operator acts on.
            let when = match (&sink.last_error_at, sink.failing) {
                (Some(at), true) => format!(" at {at}, failing now"),
                (Some(at), false) => format!(" at {at}, answered since"),
                (None, _) => String::new(),
            };
            for line in wrap(&format!("last error{when}: {error}"), width.saturating_sub(2)) {
                out.push_str("  ");
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out
}

/// `text` cut into lines of at most `width` chars (at least 20), at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    // A server's message may hold its own line breaks (a parse error quotes rows).
    text.split('\n').flat_map(|piece| wrap_line(piece, width)).collect()
}

fn wrap_line(text: &str, width: usize) -> Vec<String> {
    let width = width.max(20);
    let mut lines = vec![String::new()];
    for word in text.split([' ', '\t', '\r']).filter(|w| !w.is_empty()) {
        let mut word = word;
        loop {
            let line = lines.last_mut().expect("one line at least");
            let used = line.chars().count();
            let room = if used == 0 { width } else { width.saturating_sub(used + 1) };
            let len = word.chars().count();
            if len <= room {
                if used > 0 {
                    line.push(' ');
                }
                line.push_str(word);
                break;
            }
            if used > 0 {
                lines.push(String::new());
                continue;
            }
            // A word longer than a line: cut it.
            let cut = word.char_indices().nth(width).map_or(word.len(), |(i, _)| i);
            line.push_str(&word[..cut]);
            word = &word[cut..];
            lines.push(String::new());
        }
    }
    lines.retain(|l| !l.is_empty());
    lines
}

/// Which files the table lists: every one with lag, and the most recently read others (a host
/// keeps years of daily files; the table is for what is happening now).
fn shown_files(files: &[FileStatus]) -> Vec<bool> {
    let mut shown: Vec<bool> =
        files.iter().map(|f| f.lag_bytes.is_some_and(|lag| lag > 0)).collect();
    let mut recent: Vec<usize> = (0..files.len()).collect();
    recent.sort_by_key(|&i| std::cmp::Reverse(files[i].last_read));
    for i in recent.into_iter().take(RECENT_FILES) {
        shown[i] = true;
    }
    shown
}

/// A file's first cell: its path, marked when the path no longer holds the file shipped.
fn name_cell(f: &FileStatus) -> String {
    if f.present {
        f.path.clone()
    } else {
        format!("{} (gone)", f.path)
    }
}

/// `text` in at most `width` chars: whole if it fits, else with "…" in the middle. The end
/// from the last `/` (the file name, a "(gone)" mark) is what tells rows apart, so it is kept
/// whole when it leaves a few chars of the head, and then both sides of the "…" are cut at a
/// `/` so that rows of one directory look alike; otherwise both halves get half.
fn shorten(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_string();
    }
    let room = width.saturating_sub(1);
    let tail = chars.iter().rposition(|&c| c == '/').map_or(0, |i| chars.len() - i);
    let (head_len, end_start) = if tail > 0 && tail + 4 <= room {
        let mut end_start = chars.len() - tail.max(room / 2);
        // Terminates at the last '/', which starts the tail.
        while chars[end_start] != '/' {
            end_start += 1;
        }
        let head_len = room - (chars.len() - end_start);
        let head_len = match chars[..head_len].iter().rposition(|&c| c == '/') {
            Some(slash) if slash > 0 => slash + 1,
            _ => head_len,
        };
        (head_len, end_start)
    } else {
        (room - room / 2, chars.len() - room / 2)
    };
    let head: String = chars[..head_len].iter().collect();
    let end: String = chars[end_start..].iter().collect();
    format!("{head}…{end}")
}

/// How long ago `then` was, in the largest whole unit ("42s ago", "5m ago", "3h ago", "12d ago").
fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_704_628_800; // 2024-01-07T12:00:00Z

    fn at(secs_ago: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(NOW - secs_ago)
    }

    fn file(path: &str, offset: u64, size: Option<u64>, secs_ago: Option<u64>) -> FileStatus {
        let gz = path.ends_with(".gz");
        FileStatus {
            path: path.to_string(),
            offset,
            size,
            lag_bytes: if gz { None } else { size.map(|s| s - offset) },
            last_read_at: None,
            last_read: secs_ago.map(at),
            line_no: 0,
            present: true,
        }
    }

    fn typical() -> Status {
        let raw = "/var/lib/jsonl-shipper/raw";
        let mut gone = file(&format!("{raw}/events_20240105.ndjson"), 3 << 30, Some(3 << 30), None);
        gone.present = false;
        Status {
            files: vec![
                file(
                    &format!("{raw}/events_20240104.ndjson.gz"),
                    1 << 30,
                    Some(1 << 30),
                    Some(3 * 86400),
                ),
                gone,
                file(
                    &format!("{raw}/events_20240106.ndjson"),
                    40_000_000,
                    Some(40_000_000),
                    Some(7200),
                ),
                file(&format!("{raw}/events_20240107.ndjson"), 512, Some(1_500_000), Some(4)),
            ],
            runs: RunsStatus {
                count: 1234,
                bytes: 5 << 30,
                wal_bytes: 9 << 20,
                largest_wals: vec![
                    WalFile { name: "crawl-2024-01-07.sqlite-wal".into(), bytes: 8 << 20 },
                    WalFile { name: "crawl-b.sqlite-wal".into(), bytes: 1 << 20 },
                ],
                catalog: Some(CatalogStatus {
                    path: "/var/lib/jsonl-shipper/db/catalog.sqlite".into(),
                    runs: 1233,
                    events: 98_765_432,
                    bytes: (5 << 30) - (9 << 20),
                }),
            },
            dlq: DlqStatus {
                lines: 4,
                by_reason: [("incomplete_line".to_string(), 1), ("invalid_json".to_string(), 3)]
                    .into(),
            },
            sinks: BTreeMap::new(),
        }
    }

    const DIRS: Dirs<'static> =
        Dirs { runs: "/var/lib/jsonl-shipper/db/runs", dlq: "/var/lib/jsonl-shipper/dlq" };

    fn now() -> SystemTime {
        at(0)
    }

    #[test]
    fn the_table_of_a_typical_host_fits_80_columns_exactly_so() {
        let got = table(&typical(), &DIRS, now(), WIDTH);
        let want = "\
FILE                                     OFFSET       SIZE        LAG  LAST READ
/var/lib/…/events_20240104.ndjson.gz    1.0 GiB    1.0 GiB          -  3d ago
/var/…/events_20240105.ndjson (gone)    3.0 GiB    3.0 GiB        0 B  -
/var/lib/…/events_20240106.ndjson      38.1 MiB   38.1 MiB        0 B  2h ago
/var/lib/…/events_20240107.ndjson         512 B    1.4 MiB    1.4 MiB  4s ago
total: 4 files                                                1.4 MiB

RUN DBS                                   COUNT       SIZE        WAL
/var/lib/jsonl-shipper/db/runs             1234    5.0 GiB    9.0 MiB
  crawl-2024-01-07.sqlite-wal                                 8.0 MiB
  crawl-b.sqlite-wal                                          1.0 MiB
  catalog: 98765432 events                 1233    5.0 GiB

DEAD LETTERS                              LINES
/var/lib/jsonl-shipper/dlq                    4
  incomplete_line                             1
  invalid_json                                3
";
        assert_eq!(got, want, "got:\n{got}");
        for line in got.lines() {
            assert!(line.chars().count() <= WIDTH, "{} columns: {line:?}", line.chars().count());
        }
    }

    #[test]
    fn the_table_lists_files_with_lag_and_the_most_recently_read_others() {
        let mut files: Vec<FileStatus> = (1..=25)
            .map(|day| {
                let path = format!("/d/events_202401{day:02}.ndjson");
                file(&path, 10, Some(10), Some((26 - day) * 86400))
            })
            .collect();
        files[2].offset = 5; // the 3rd, long ago, still has 5 bytes to ship
        files[2].lag_bytes = Some(5);
        let status = Status {
            files,
            runs: RunsStatus::default(),
            dlq: DlqStatus { lines: 0, by_reason: BTreeMap::new() },
            sinks: BTreeMap::new(),
        };
        let got = table(&status, &Dirs { runs: "/d/db/runs", dlq: "/d/dlq" }, now(), WIDTH);
        let listed: Vec<&str> =
            got.lines().skip(1).take_while(|l| l.starts_with("/d/events")).collect();
        let days: Vec<&str> = listed.iter().map(|l| &l[16..18]).collect();
        assert_eq!(days, ["03", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25"]);
        assert!(listed[0].contains("5 B  23d ago"), "{got}");
        let more = got.lines().nth(12).unwrap_or_default();
        assert_eq!(more, "… 14 more, no lag", "{got}");
        assert!(got.contains("total: 25 files"), "{got}");
    }

    #[test]
    fn short_paths_are_whole_and_the_table_narrows_to_them() {
        let status = Status {
            files: vec![file("/d/raw/events_20240107.ndjson", 10, Some(10), Some(75))],
            runs: RunsStatus::default(),
            dlq: DlqStatus { lines: 0, by_reason: BTreeMap::new() },
            sinks: BTreeMap::new(),
        };
        let got = table(&status, &Dirs { runs: "/d/db/runs", dlq: "/d/dlq" }, now(), WIDTH);
        let want = "\
FILE                              OFFSET       SIZE        LAG  LAST READ
/d/raw/events_20240107.ndjson       10 B       10 B        0 B  1m ago
total: 1 file                                              0 B

RUN DBS                            COUNT       SIZE        WAL
/d/db/runs                             0        0 B        0 B

DEAD LETTERS                       LINES
/d/dlq                                 0
";
        assert_eq!(got, want, "got:\n{got}");
    }

    #[test]
    fn a_sink_error_is_shown_whole_wrapped_with_its_time_and_whether_it_is_current() {
        let message = "http://ch-01.example.net:8123: HTTP 516: Code: 516. DB::Exception: \
                       default: Authentication failed: password is incorrect or there is no user \
                       with such name. (AUTHENTICATION_FAILED) (version 24.3.1.1)";
        let sink = |failing| SinkStatus {
            lag_bytes: 3 << 20,
            last_insert_at: Some("2024-01-07T11:00:00Z".into()),
            errors: 17,
            last_error: Some(message.into()),
            last_error_at: Some("2024-01-07T11:59:00Z".into()),
            failing,
        };
        let status = |failing| Status {
            files: vec![],
            runs: RunsStatus::default(),
            dlq: DlqStatus { lines: 0, by_reason: BTreeMap::new() },
            sinks: [("clickhouse", sink(failing))].into(),
        };
        let dirs = Dirs { runs: "/d/db/runs", dlq: "/d/dlq" };
        let got = table(&status(true), &dirs, now(), WIDTH);
        let sink_part = &got[got.find("CLICKHOUSE").expect("a sink section")..];
        let want = "\
CLICKHOUSE SINK     ERRORS                   LAG  LAST INSERT
                        17               3.0 MiB  2024-01-07T11:00:00Z
  last error at 2024-01-07T11:59:00Z, failing now:
  http://ch-01.example.net:8123: HTTP 516: Code: 516. DB::Exception: default:
  Authentication failed: password is incorrect or there is no user with such
  name. (AUTHENTICATION_FAILED) (version 24.3.1.1)
";
        assert!(got.starts_with("FILE "), "{got}");
        assert!(got.contains("\ntotal: 0 files "), "{got}");
        assert_eq!(sink_part, want, "got:\n{got}");
        for line in got.lines() {
            assert!(line.chars().count() <= WIDTH, "{} columns: {line:?}", line.chars().count());
        }
        let got = table(&status(false), &dirs, now(), WIDTH);
        assert!(got.contains("  last error at 2024-01-07T11:59:00Z, answered since:\n"), "{got}");
    }

    #[test]
    fn wrap_cuts_at_spaces_and_cuts_a_word_longer_than_a_line() {
        assert_eq!(wrap("aaa bbb ccc", 20), ["aaa bbb ccc"]);
        // Line breaks of its own, runs of spaces, a space at a full line: never wider.
        assert_eq!(wrap("Row 1:\nColumn 0,   name: x ", 20), ["Row 1:", "Column 0, name: x"]);
        assert_eq!(wrap(&format!("{} b", "a".repeat(20)), 20), ["a".repeat(20), "b".into()]);
        assert_eq!(wrap("ünïcödé ünïcödé ünïcödé", 20), ["ünïcödé ünïcödé", "ünïcödé"]);
        let long = "x".repeat(45);
        assert_eq!(
            wrap(&format!("ab {long} cd"), 20),
            ["ab", &long[..20], &long[20..40], "xxxxx cd"]
        );
    }

    #[test]
    fn a_sink_is_failing_until_a_request_succeeds_after_its_last_error() {
        use crate::checkpoint::SinkStatus as Recorded;
        let r = |insert, error: Option<i64>, recovered| Recorded {
            last_insert_at: insert,
            errors: 1,
            last_error: error.map(|_| "boom".to_string()),
            last_error_at: error,
            recovered_at: recovered,
        };
        assert!(!Recorded::default().failing());
        assert!(r(None, Some(5), None).failing());
        assert!(r(Some(4), Some(5), None).failing());
        assert!(!r(Some(6), Some(5), None).failing(), "an insert after it");
        assert!(!r(Some(4), Some(5), Some(7)).failing(), "a request after it");
        assert!(r(Some(4), Some(9), Some(7)).failing(), "failed again after recovering");
        // A state DB of before version 5: an error without a time is current until the sink
        // has connected since.
        let old = Recorded { last_error: Some("boom".into()), ..Recorded::default() };
        assert!(old.failing());
        assert!(!Recorded { recovered_at: Some(1), ..old }.failing());
    }

    #[test]
    fn shorten_keeps_the_file_name_and_cuts_at_slashes() {
        for (text, width, want) in [
            ("/a/b.ndjson", 11, "/a/b.ndjson"),
            ("/var/lib/x/raw/events_20240107.ndjson", 30, "/var/…/events_20240107.ndjson"),
            ("/var/lib/x/raw/events_20240107.ndjson", 36, "/var/lib/x/…/events_20240107.ndjson"),
            // A name too long to keep whole: half and half.
            ("/x/a_very_long_file_name_without_any_end.ndjson", 21, "/x/a_very_…end.ndjson"),
            ("relative_name_that_is_long.ndjson", 12, "relati…djson"),
            ("/ünïcödé/ünïcödé/ünïcödé/events.ndjson", 24, "/ünïcödé/…/events.ndjson"),
        ] {
            let got = shorten(text, width);
            assert_eq!(got, want, "shorten({text:?}, {width})");
            assert!(got.chars().count() <= width, "{got:?} is wider than {width}");
        }
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        for (secs, want) in [
            (0, "0s ago"),
            (59, "59s ago"),
            (60, "1m ago"),
            (3599, "59m ago"),
            (3600, "1h ago"),
            (86399, "23h ago"),
            (86400 * 400, "400d ago"),
        ] {
            assert_eq!(ago(now(), at(secs)), want);
        }
        // A clock that went back reads as now, not as a panic.
        assert_eq!(ago(at(10), now()), "0s ago");
    }
}
