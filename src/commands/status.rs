//! `status`: per-file progress from the state DB (read-only), run DB count and size, dead
//! letters by reason. Safe while the daemon runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::checkpoint::StateDb;
use crate::config::Config;

#[derive(Debug, Serialize)]
struct Status {
    files: Vec<FileStatus>,
    runs: RunsStatus,
    dlq: DlqStatus,
}

#[derive(Debug, Serialize)]
struct FileStatus {
    path: String,
    offset: u64,
    size: Option<u64>,
    lag_bytes: Option<u64>,
    last_read_at: Option<String>,
    line_no: u64,
    /// False when the path no longer holds this file (rotated away or deleted).
    present: bool,
}

#[derive(Debug, Serialize)]
struct RunsStatus {
    count: u64,
    bytes: u64,
    /// Of `bytes`, how much is in `-wal` files (large ones mean checkpoints are blocked).
    wal_bytes: u64,
}

#[derive(Debug, Serialize)]
struct DlqStatus {
    lines: u64,
    by_reason: BTreeMap<String, u64>,
}

pub(super) fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let state_path = &config.output.state_db;
    let checkpoints = match StateDb::open_read_only(state_path)
        .with_context(|| format!("opening state DB {}", state_path.display()))?
    {
        Some(db) => db.load().with_context(|| format!("reading {}", state_path.display()))?,
        None => Default::default(),
    };
    let mut files: Vec<FileStatus> = checkpoints
        .into_values()
        .map(|cp| {
            let current =
                std::fs::metadata(&cp.path).ok().filter(|m| m.dev() == cp.dev && m.ino() == cp.ino);
            let size =
                if cp.gzip { cp.size } else { current.as_ref().map(|m| m.len()).or(cp.size) };
            FileStatus {
                path: cp.path.display().to_string(),
                offset: cp.offset,
                lag_bytes: if cp.gzip { None } else { size.map(|s| s.saturating_sub(cp.offset)) },
                size,
                last_read_at: cp.last_read_at.map(|ms| {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
                    humantime::format_rfc3339_seconds(t).to_string()
                }),
                line_no: cp.line_no,
                present: current.is_some(),
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));

    let mut runs = RunsStatus { count: 0, bytes: 0, wal_bytes: 0 };
    if let Ok(entries) = std::fs::read_dir(&config.output.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if name.ends_with(".sqlite") {
                runs.count += 1;
            }
            if name.ends_with(".sqlite")
                || name.ends_with(".sqlite-wal")
                || name.ends_with(".sqlite-shm")
            {
                runs.bytes += meta.len();
            }
        }
    }
    let mut dlq = DlqStatus { lines: 0, by_reason: BTreeMap::new() };
    for letter in crate::dlq::read_all(&config.dlq.dir).context("reading the DLQ")? {
        dlq.lines += 1;
        *dlq.by_reason.entry(letter.reason).or_default() += 1;
    }
    let status = Status { files, runs, dlq };

    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &status)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:<60} {:>14} {:>14} {:>12}  LAST READ", "FILE", "OFFSET", "SIZE", "LAG")?;
    for f in &status.files {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        writeln!(
            out,
            "{:<60} {:>14} {:>14} {:>12}  {}{}",
            f.path,
            f.offset,
            opt(f.size),
            opt(f.lag_bytes),
            f.last_read_at.as_deref().unwrap_or("-"),
            if f.present { "" } else { " (gone)" }
        )?;
    }
    writeln!(
        out,
        "\nruns: {} DBs, {} (WAL {}) in {}",
        status.runs.count,
        bytesize::ByteSize(status.runs.bytes),
        bytesize::ByteSize(status.runs.wal_bytes),
        config.output.dir.display()
    )?;
    write!(out, "dead letters: {}", status.dlq.lines)?;
    for (reason, n) in &status.dlq.by_reason {
        write!(out, ", {reason}: {n}")?;
    }
    writeln!(out, " (in {})", config.dlq.dir.display())?;
    Ok(ExitCode::SUCCESS)
}
