//! One module per command: each turns parsed arguments and a validated [`Config`] into work
//! and an exit code.
//!
//! Errors: the modules that do one job (`config`, `discover`, `tail`, `parse`, `route`, `sink`,
//! `dlq`, `checkpoint`) return typed errors (`io`, `rusqlite`, `ConfigError`, `DiscoverError`,
//! `OpenError`), so that their callers can act on the kind. `anyhow` is for errors that are
//! only reported: here and in `main`, and at the edges that run a whole job for a command:
//! `pipeline` (starting and joining the writer and state threads, opening a source at its
//! checkpoint), `maintain` (retention, replay, upkeep), `exporter` and `monitor` (starting the
//! HTTP endpoint and the ops loop). There an error only gathers context on its way to the
//! operator's one line; what still decides the exit code is found in the chain by type
//! ([`exit_code`]: a [`UsageError`] or a corrupt state DB exits 2).

mod backfill;
mod catalog;
mod check_config;
mod dlq;
mod export;
mod generate;
mod maintain;
mod progress;
mod run;
mod slo;
mod status;
mod summary;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{CatalogCommand, Command, ConfigArgs, DlqCommand, Invoked};
use crate::config::Config;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Where `--config` points by default.
pub const DEFAULT_CONFIG: &str = "/etc/jsonl-shipper/config.toml";

/// An error that is the user's to fix (bad flag, bad config): exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for a command's error: 2 for what the operator must fix before a retry can
/// help (a usage or config error, a corrupt state DB), 1 for everything else.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.chain().any(|e| e.is::<UsageError>()) || corrupt_state_db(error).is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

/// The one line to print for a command's error: the whole cause chain, except that a corrupt
/// state DB's message alone says what happened to which file and what to do.
pub fn error_message(error: &anyhow::Error) -> String {
    match corrupt_state_db(error) {
        Some(corrupt) => corrupt.to_string(),
        None => format!("{error:#}"),
    }
}

fn corrupt_state_db(error: &anyhow::Error) -> Option<&crate::checkpoint::OpenError> {
    error.chain().find_map(|e| {
        e.downcast_ref::<crate::checkpoint::OpenError>()
            .filter(|e| matches!(e, crate::checkpoint::OpenError::Corrupt { .. }))
    })
}

/// Loads the config named by `--config`/`--base` (exit 2 on error) and starts logging with
/// its `[log]` settings.
pub fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    let config = match (&args.base, &args.config) {
        (Some(base), _) => Config::for_base(&absolute(base)),
        (None, config) => {
            let path = config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let config = Config::load(&path)
                .map_err(|e| UsageError(format!("{:#}", anyhow::Error::new(e))))?;
            // The SQL of [[summary]], against a run DB's schema (config itself does no SQLite).
            crate::summary::check_sql(&config.summary, &config.schema).map_err(
                |(key, message)| UsageError(format!("{}: {key}: {message}", path.display())),
            )?;
            config
        }
    };
    let mut log = config.log.clone();
    if let Some(format) = args.log_format {
        log.format = format;
    }
    init_logging(&log)?;
    let mut config = config;
    config.log = log; // the effective settings, for commands that print beside the log
    Ok(config)
}

/// Logs go to stderr: no colours unless a terminal, no timestamps but a syslog priority prefix
/// when stderr is the journal (it adds its own timestamps), JSON lines with `format = "json"`. `RUST_LOG` overrides `log.level`.
fn init_logging(log: &crate::config::LogConfig) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => {
            EnvFilter::try_new(&directive).map_err(|e| UsageError(format!("RUST_LOG: {e}")))?
        }
        _ => EnvFilter::try_new(&log.level)
            .map_err(|e| UsageError(format!("log.level: invalid filter {:?}: {e}", log.level)))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let journald = stderr_is_journal();
    // A second call (tests, or a command loading twice) keeps the first subscriber.
    let _ = match (log.format, journald) {
        (crate::config::LogFormat::Json, _) => builder.json().try_init(),
        (crate::config::LogFormat::Text, true) => builder
            .event_format(SyslogPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false)
                    .with_level(false),
            ))
            .try_init(),
        (crate::config::LogFormat::Text, false) => builder.try_init(),
    };
    Ok(())
}

/// Prefixes each line with its syslog priority and level (`<3>` error … `<7>` debug, sd-daemon(3)), so
/// the journal files WARN and ERROR under their priority and `journalctl -p warning` finds them.
struct SyslogPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for SyslogPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        let priority = match level {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        // The level written here, unpadded: the journal strips `<N>` and keeps the rest as is.
        write!(writer, "<{priority}>{level} ")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<ino>` for the stream it connects stderr to, and every
/// child inherits it (an operator's shell in a unit, `systemd-run`, a cron wrapper): only a
/// stderr that is that stream gets journald's timestamps, so only then are ours dropped.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    // fstat(2) through a duplicate of fd 2 (std has no safe fstat of a borrowed fd).
    std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata())
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Creates and checks the directories a writing command needs (exit 2 on error).
pub fn prepare_dirs(config: &Config) -> anyhow::Result<()> {
    config.prepare_dirs().map_err(|e| UsageError(format!("{:#}", anyhow::Error::new(e))).into())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The open-files limit after [`raise_fd_limit`] (0 until it ran).
static FD_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Raises the soft open-files limit to the hard limit: every open run DB holds three
/// descriptors (db, wal, shm), and the default soft limit of 1024 is below what
/// `max_open_dbs` and `max_open_files` allow. systemd's default hard limit is 524288.
#[allow(unsafe_code)]
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which outlives the calls.
    let current = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    FD_LIMIT.store(current, std::sync::atomic::Ordering::Relaxed);
}

/// Serves every allocation of 128 KiB or more (batch arenas, run buffers) with its own
/// mapping, returned to the OS when freed. glibc would otherwise raise that threshold to the
/// size of the largest block freed so far and keep such blocks in its heaps: they fragment, and
/// a 50-run backfill peaked ~20 MiB higher (`bench backfill --runs 50`, medians of 3: 100 MiB
/// without, 79 MiB with; CPU within noise). Not for `export`: its Arrow buffers (MiBs, one set
/// per 8,192-row batch) would each be a fresh mapping, zeroed page by page; glibc's own
/// threshold reuses them (`bench export`: see the README).
#[allow(unsafe_code)]
pub fn tune_malloc(invoked: &Invoked) {
    if matches!(invoked, Invoked::Command(Command::Export { .. })) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// The open-files limit, if known.
pub fn fd_limit() -> Option<u64> {
    Some(FD_LIMIT.load(std::sync::atomic::Ordering::Relaxed)).filter(|&l| l > 0)
}

/// Runs a command.
pub fn dispatch(invoked: Invoked) -> anyhow::Result<ExitCode> {
    let command = match invoked {
        Invoked::Command(command) => command,
        // Needs no config and starts no logging: it only writes the CLI's own description.
        Invoked::Generate { what } => return generate::generate(what),
    };
    match command {
        Command::Run { config } => run::run(load_config(&config)?, config),
        Command::Backfill { config, jobs, from_start, run, paths } => {
            let rebuild = from_start.then_some(crate::flow::Rebuild { run });
            backfill::backfill(load_config(&config)?, jobs as usize, rebuild, &paths)
        }
        Command::Status { config, json } => status::status(&load_config(&config)?, json),
        Command::CheckConfig { config } => check_config::check_config(load_config(&config)?),
        Command::Maintain { config, vacuum } => maintain::maintain(load_config(&config)?, vacuum),
        Command::Catalog { command } => match command {
            CatalogCommand::Rebuild { config } => catalog::rebuild(&load_config(&config)?),
        },
        Command::Export { config, runs, since, until, format, out } => {
            let selection = match since {
                Some(since) => export::Selection::Started { since, until },
                None => export::Selection::Runs(runs),
            };
            export::export(&load_config(&config)?, &selection, format, &out)
        }
        Command::Dlq { command } => match command {
            DlqCommand::List { config, reason, json } => {
                dlq::list(&load_config(&config)?, reason.as_deref(), json)
            }
            DlqCommand::Replay { config, reason } => {
                dlq::replay(load_config(&config)?, reason.as_deref())
            }
        },
        Command::Summary { config, run_id, json } => {
            summary::summary(&load_config(&config)?, &run_id, json)
        }
        Command::Slo { config, run_id, last, json } => {
            slo::slo(&load_config(&config)?, run_id.as_deref(), last.map(|n| n as usize), json)
        }
    }
}

/// Parses `--reason` into the contract's closed set.
fn parse_reason(reason: Option<&str>) -> anyhow::Result<Option<crate::parse::DeadReason>> {
    reason
        .map(|r| {
            crate::parse::DeadReason::from_name(r).ok_or_else(|| {
                let all: Vec<_> =
                    crate::parse::DeadReason::ALL.iter().map(|r| r.as_str()).collect();
                UsageError(format!("--reason {r:?} is not one of {}", all.join(", "))).into()
            })
        })
        .transpose()
}
