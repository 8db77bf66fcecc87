//! The `jsonl-shipper` binary: parse the command line, set up logging, dispatch, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 usage or config error).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use jsonl_shipper::cli::Cli;
use jsonl_shipper::commands::{self, UsageError, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match commands::dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            // One line with the whole cause chain.
            eprintln!("jsonl-shipper: error: {error:#}");
            if error.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

/// Logs go to stderr: no colours unless a terminal, no timestamps under journald (it adds its
/// own). `RUST_LOG` overrides the default level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
