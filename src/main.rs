//! The `jsonl-shipper` binary: parse the command line, set up logging, dispatch, map errors to
//! exit codes (0 ok, 1 runtime failure, 2 usage or config error).

use std::process::ExitCode;

use clap::Parser;
use jsonl_shipper::cli::Cli;
use jsonl_shipper::commands::{self, UsageError, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
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

/// Raises the soft open-files limit to the hard limit: every open run DB holds three
/// descriptors (db, wal, shm), and the default soft limit of 1024 is below what
/// `max_open_dbs` and `max_open_files` allow. systemd's default hard limit is 524288.
#[allow(unsafe_code)]
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
