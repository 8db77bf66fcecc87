//! The `jsonl-shipper` binary: parse the command line, set up logging, dispatch, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 usage or config error).

use std::process::ExitCode;

use clap::Parser;
use jsonl_shipper::cli::Invocation;
use jsonl_shipper::commands::{self, UsageError, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Invocation::parse();
    commands::raise_fd_limit();
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
