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
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
}

/// Tails NDJSON telemetry files and upserts every record, exactly once, into one SQLite
/// database per run.
// (Doc comments here are clap's help text.) The documented command line: what `--help`, the man
// pages and the shell completions show.
#[derive(Debug, Parser)]
#[command(name = "jsonl-shipper", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Tails NDJSON telemetry files and upserts every record, exactly once, into one SQLite
/// database per run.
// What the binary parses: `Cli` plus hidden tooling. A separate type because clap_complete
// offers hidden commands too; a test keeps its help identical to `Cli`'s.
#[derive(Debug, Parser)]
#[command(name = "jsonl-shipper", version, about, propagate_version = true)]
pub struct Invocation {
    #[command(subcommand)]
    pub command: Invoked,
}

#[derive(Debug, Subcommand)]
pub enum Invoked {
    #[command(flatten)]
    Command(Command),
    /// Write the man pages or shell completions of the documented CLI (for packagers; the
    /// repo's copies under dist/ are what `cargo deb` ships).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
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
        /// Read every file from its start, ignoring and leaving alone the checkpoints and the
        /// DLQ: rebuilds run DBs (e.g. one quarantined as corrupt) while the sources exist.
        #[arg(long)]
        from_start: bool,
        /// With --from-start: ship only this run's records.
        #[arg(long, value_name = "RUN_ID", requires = "from_start", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        run: Option<String>,
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
    /// The run catalog (output.catalog): one row per run DB.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Export runs' events to Parquet, NDJSON or CSV: DIR/<run>.<ext> per run plus
    /// DIR/runs.<ext> (their catalog rows). Reads the run DBs read-only; safe while the daemon
    /// runs. Exit 2 when a --run has no run DB (nothing is written); exit 1 when a run selected
    /// from the catalog could not be read (the others are exported).
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        /// A run to export (repeat for several).
        #[arg(
            long = "run",
            value_name = "RUN_ID",
            required_unless_present = "since",
            conflicts_with = "since"
        )]
        runs: Vec<String>,
        /// The catalog's runs that started on or after this UTC day (started_at, else first_ts).
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = crate::export::select::parse_day)]
        since: Option<String>,
        /// ... and on or before this UTC day (inclusive; default: no end).
        #[arg(long, value_name = "YYYY-MM-DD", requires = "since", value_parser = crate::export::select::parse_day)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = crate::export::Format::Parquet)]
        format: crate::export::Format,
        /// Directory to write into (created if missing); files of an earlier export are replaced.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Inspect or replay the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print a run's summary: the built-in metrics and the configured [[summary]] ones (the
    /// stored summary if current, else computed and stored).
    Summary {
        #[command(flatten)]
        config: ConfigArgs,
        /// The run.
        #[arg(value_name = "RUN_ID")]
        run_id: String,
        /// Machine-readable output: {"run_id","status","metrics":{name: value}}.
        #[arg(long)]
        json: bool,
    },
    /// The SLO gate: judge the configured [[slo]] on a run, or on the N most recently ended
    /// runs. Exit 0 when every SLO holds, 1 when any fails or its metric is missing.
    Slo {
        #[command(flatten)]
        config: ConfigArgs,
        /// The run.
        #[arg(value_name = "RUN_ID", required_unless_present = "last", conflicts_with = "last")]
        run_id: Option<String>,
        /// The N most recently ended runs instead.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        last: Option<u32>,
        /// Machine-readable output: {"ok","runs":[{"run_id","ok","slos":[...]}]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Man pages (roff): `jsonl-shipper.1` and one page per command.
    Man {
        /// Write every page into DIR (default: the main page to stdout).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// A completion script for SHELL.
    Completions {
        shell: clap_complete::Shell,
        /// Write it into DIR under the shell's usual file name (default: stdout).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Everything the package ships: DIR/man/*.1 and DIR/completions/ for bash, zsh, fish.
    All {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Recreate the catalog from the run DBs (read-only; safe while the daemon runs).
    Rebuild {
        #[command(flatten)]
        config: ConfigArgs,
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, Invocation};

    /// clap checks `--log-format` against `LogFormat` and names the values it accepts.
    #[test]
    fn log_format_is_one_of_the_config_names() {
        use clap::Parser;
        let parse = |format: &str| {
            Invocation::try_parse_from(["jsonl-shipper", "status", "--log-format", format])
        };
        let Ok(Invocation {
            command: super::Invoked::Command(super::Command::Status { config, .. }),
        }) = parse("json")
        else {
            panic!("`status --log-format json` does not parse");
        };
        assert_eq!(config.log_format, Some(crate::config::LogFormat::Json));
        let err = parse("xml").unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("[possible values: text, json]"), "{err}");
        // Case-sensitive, as the flag always was (the config file is not).
        assert_eq!(parse("JSON").unwrap_err().kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        Invocation::command().debug_assert();
    }

    /// `Invocation` only adds hidden commands: what users see is `Cli`, which the man pages and
    /// completions are generated from.
    #[test]
    fn the_parsed_cli_shows_the_same_help_as_the_documented_one() {
        let help = |mut cmd: clap::Command| cmd.render_long_help().to_string();
        assert_eq!(help(Invocation::command()), help(Cli::command()));
        let names = |cmd: clap::Command| -> Vec<String> {
            cmd.get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name().to_string())
                .collect()
        };
        assert_eq!(names(Invocation::command()), names(Cli::command()));
    }
}
