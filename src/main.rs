//! The `jsonl-shipper` binary: parse the command line, set up logging, dispatch, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 usage or config error, or a corrupt state DB).

use std::process::ExitCode;

use clap::Parser;
use jsonl_shipper::cli::Invocation;
use jsonl_shipper::commands;

fn main() -> ExitCode {
    let cli = Invocation::parse();
    commands::tune_malloc(&cli.command);
    commands::raise_fd_limit();
    match commands::dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("jsonl-shipper: error: {}", commands::error_message(&error));
            ExitCode::from(commands::exit_code(&error))
        }
    }
}
