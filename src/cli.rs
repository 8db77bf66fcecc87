//! The command line, as clap derive types only; `commands` turns it into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where the configuration comes from (every command takes these).
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Config file (TOML).
    #[arg(long, value_name = "FILE", conflicts_with = "base", env = "JSONL_SHIPPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Zero-config mode: sources in D/raw/events_*.ndjson, run DBs in D/db/runs, state DB in
    /// D/db/shipper-state.sqlite, DLQ in D/dlq.
    #[arg(long, value_name = "D")]
    pub base: Option<PathBuf>,
    /// Log line format on stderr (overrides `log.format`): `text`, or `json` for log pipelines.
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

/// Tails NDJSON telemetry files and upserts every record, exactly once, into one SQLite
/// database per run.
#[derive(Debug, Parser)]
#[command(name = "jsonl-shipper", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (SIGTERM/SIGINT drain and exit 0; SIGHUP reloads).
    Run {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Ship historic files to their end and exit (resumable; safe while the daemon runs).
    Backfill {
        #[command(flatten)]
        config: ConfigArgs,
        /// Files read in parallel.
        #[arg(long, short = 'j', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
        /// Files, directories or globs (default: the configured sources, .ndjson and .ndjson.gz).
        #[arg(value_name = "PATH_OR_GLOB")]
        paths: Vec<String>,
    },
    /// Show per-file progress, run DBs and dead letters.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print the effective config.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// One-off upkeep for cron or an operator: retention now, WAL checkpoint (TRUNCATE) and
    /// PRAGMA optimize of every run DB, optionally VACUUM.
    Maintain {
        #[command(flatten)]
        config: ConfigArgs,
        /// Also VACUUM every run DB (rewrites each file; needs free space as large as it).
        #[arg(long)]
        vacuum: bool,
    },
    /// Inspect or replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this reason (invalid_json, not_object, missing_run_id, invalid_run_id,
        /// line_too_long, incomplete_line, write_failed).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Re-ingest dead letters through the current mapping; remove those that now succeed.
    Replay {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        reason: Option<String>,
    },
}
