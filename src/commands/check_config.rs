//! `check-config`: load, validate, create/check the writable directories, print the effective
//! config. Used by the systemd unit's ExecStartPre, so a bad edit never replaces a good daemon.
//!
//! Then, as TOML comments after the config, how the run DBs compare with `[columns]` and
//! `[[indexes]]`: columns and indexes no longer configured that DBs keep (never dropped), and
//! what DBs still lack (applied when `run` or `backfill` next write to them, or by `maintain`).
//! Each DB is opened read-only for two reads of its schema (`sink::columns::survey`); nothing
//! is written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::sink::columns::survey;

pub(super) fn check_config(config: Config) -> anyhow::Result<ExitCode> {
    super::prepare_dirs(&config)?;
    if let Some(clickhouse) = &config.sinks.clickhouse {
        // Readable now, so that the service does not start without its sink; never printed.
        clickhouse.password().map_err(|e| super::UsageError(e.to_string()))?;
    }
    let report = schema_report(&config)?;
    let mut out = std::io::stdout().lock();
    out.write_all(config.to_toml_string().as_bytes())?;
    out.write_all(report.as_bytes())?;
    if let Some(clickhouse) = &config.sinks.clickhouse {
        // As comments, so the output still parses as the effective config.
        writeln!(
            out,
            "\n# [sinks.clickhouse] writes these tables, creating what `EXISTS TABLE` says is\n\
             # missing (an existing one, e.g. a Distributed table over a cluster, is used as it is).\n\
             # To create them by hand:"
        )?;
        for line in crate::clickhouse::ddl_script(&clickhouse.database).lines() {
            writeln!(out, "# {line}")?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Per finding, the run DBs it concerns.
#[derive(Debug, Default)]
struct Tally {
    /// By finding (its line, less the count), the number of DBs and one of them.
    findings: BTreeMap<(u8, String), (usize, PathBuf)>,
    unreadable: Vec<(PathBuf, String)>,
    n_dbs: usize,
}

impl Tally {
    /// `order` sorts the kinds of finding (what an operator must act on first).
    fn add(&mut self, order: u8, what: String, path: &Path) {
        let entry = self.findings.entry((order, what)).or_insert((0, path.to_path_buf()));
        entry.0 += 1;
    }
}

/// The comment lines that follow the effective config ("" when there is nothing to say).
fn schema_report(config: &Config) -> anyhow::Result<String> {
    let dir = &config.output.dir;
    let mut tally = Tally::default();
    for path in run_dbs(dir)? {
        tally.n_dbs += 1;
        let found = match survey(&path, &config.schema) {
            Ok(found) => found,
            Err(error) => {
                tally.unreadable.push((path, error.to_string()));
                continue;
            }
        };
        for (column, why) in found.blocked_columns {
            tally.add(0, format!("column {column} is defined differently and keeps its old definition in {{}} ({why}; drop that by hand to let it be redefined)"), &path);
        }
        for column in found.unconfigured_columns {
            tally.add(1, format!("column {column} is not in [columns]: kept in {{}} (never dropped; by hand: ALTER TABLE events DROP COLUMN {column})"), &path);
        }
        for index in found.unconfigured_indexes {
            tally.add(2, format!("index {index} is not in [[indexes]]: kept in {{}} (never dropped; by hand: DROP INDEX {index})"), &path);
        }
        for column in found.changed_columns {
            tally.add(3, format!("column {column} is defined differently in {{}}: redefined when `run` or `backfill` next writes each, or now by `jsonl-shipper maintain`"), &path);
        }
        for column in found.missing_columns {
            tally.add(4, format!("column {column} is missing from {{}}: added when `run` or `backfill` next writes each, or now by `jsonl-shipper maintain`"), &path);
        }
        for index in found.missing_indexes {
            tally.add(5, format!("index {index} is missing from {{}}: built when `run` or `backfill` next writes each, or now by `jsonl-shipper maintain`"), &path);
        }
    }
    let mut report = String::new();
    if tally.findings.is_empty() && tally.unreadable.is_empty() {
        if !config.schema.is_empty() {
            let n = run_dbs_text(tally.n_dbs);
            report.push_str(&format!(
                "\n# [columns] and [[indexes]]: {n} in {} up to date\n",
                dir.display()
            ));
        }
        return Ok(report);
    }
    report.push_str(&format!(
        "\n# [columns] and [[indexes]] in the {} in {}:\n",
        run_dbs_text(tally.n_dbs),
        dir.display()
    ));
    for ((_, what), (n, example)) in &tally.findings {
        let line = what.replacen("{}", &run_dbs_text(*n), 1);
        report.push_str(&format!("# - {line}; e.g. {}\n", example.display()));
    }
    if let Some((path, error)) = tally.unreadable.first() {
        report.push_str(&format!(
            "# - {} could not be read, e.g. {}: {error}\n",
            run_dbs_text(tally.unreadable.len()),
            path.display()
        ));
    }
    Ok(report)
}

fn run_dbs_text(n: usize) -> String {
    match n {
        1 => "1 run DB".into(),
        n => format!("{n} run DBs"),
    }
}

/// The run DBs in `dir` (`*.sqlite`; a missing dir has none), sorted.
fn run_dbs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && entry.file_name().to_string_lossy().ends_with(".sqlite") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}
