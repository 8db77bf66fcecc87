//! Benchmark harness for the `jsonl-shipper` binary.
//!
//! ```text
//! cargo run --release --example bench -- backfill [--runs 1,50,5000] [--events 1000000] [--reps 3]
//!                                                [--jobs N] [--keep] [--dir D] [--bin PATH]
//! cargo run --release --example bench -- gen      [--runs 50] [--events N] [--validate]
//! cargo run --release --example bench -- tail     [--producers 4] [--rate 5000] [--duration 20]
//!                                                [--files 1000 [--active 500]] ...
//! ```
//!
//! # `backfill`
//! For each set-up (number of runs; default 1, 50 and 5000 in turn) the bench
//!
//! 1. generates, once, a deterministic data set of `--events` telemetry events (~320 bytes a
//!    line, nested payloads, half with an `event_id`, ~1 % of those retried with the same
//!    `event_id`) spread over three daily files `raw/events_2024030{1,2,3}.ndjson` under the
//!    set-up's base dir `<dir>/<runs>runs-<events>/` (default `<dir>` = `target/bench-data`).
//!    Runs are interleaved: at any time up to `--concurrent` runs are active, and each event
//!    goes to a random active one; every run has a `"running"` run record before its first
//!    event and a `"finished"` one after its last. `manifest.json` records the parameters and
//!    the expected counts; a base whose manifest matches is reused, anything else regenerated;
//! 2. reads the input once so it is in the page cache (nothing is dropped from it);
//! 3. per repetition: deletes `db/` and `dlq/` (keeps `raw/`), runs
//!    `jsonl-shipper backfill --base <base> [--jobs N]` (output to `logs/`), and takes the
//!    child's wall time, user+sys CPU and peak RSS from `wait4(2)`;
//! 4. verifies the rep: exit status 0, one run DB per run with `runs.status = 'finished'`,
//!    `count(*)` of `events` summed over `db/runs/*.sqlite` equal to the expected number of
//!    distinct events, and no DLQ line;
//! 5. prints median/min/max over the reps, the goal of the issue beside it, a table at the end
//!    and one machine-readable line per set-up: `BENCH {json}`.
//!
//! `ev/s` = event lines in the input (`--events`, retries included, run records not) / wall
//! time; `MB/s` = input bytes / wall time (1 MB = 10^6 bytes). The exit code is 1 if any rep
//! failed its verification (a missed goal is reported, not an error).
//!
//! # `tail`
//! Starts `jsonl-shipper run --base <dir>/tail`, then `--producers` threads append lines
//! (one `write(2)` per line, `O_APPEND`) to today's `raw/events_YYYYMMDD.ndjson` at a steady
//! total `--rate`. Each line carries `"ts_ns"`: the bench's monotonic clock just before the
//! write. The bench polls every run DB read-only for new rows (`rowid > last seen`) and takes,
//! per row, *poll start time − ts_ns*: an upper bound of append-to-committed latency, coarse by
//! up to one poll interval (`--poll-ms`). It also reports the daemon's CPU % while loaded and
//! while idle afterwards (from `/proc/<pid>/stat`), its peak RSS, and whether the rows committed
//! equal the lines sent (each line has a unique `event_id`, so a lost line shows as fewer rows,
//! a line stored twice under different keys as more). The daemon is stopped with SIGTERM and
//! must exit 0. Needs a rowid `events` table (rows are found by `rowid > last seen`).
//!
//! With `--files N` (N > 1) the daemon watches N files `raw/events_YYYYMMDD_NNNNN.ndjson`, each
//! holding one line before it starts (counted in the rows expected); the producers append
//! across the first `--active` of them (each file has one producer, which keeps it open), the
//! others stay idle. Peak RSS and idle CPU are then those of a daemon watching N files.
//!
//! The release binary is built with `cargo build --release --bin jsonl-shipper` before a run
//! (a no-op when it is up to date) unless `--bin PATH` or `--no-build` is given.

// The crate denies `unsafe_code`; this example needs a few libc calls std does not expose:
// `wait4(2)` for the child's own rusage (CPU and peak RSS), `kill(2)` to send SIGTERM and
// `sysconf(_SC_CLK_TCK)`. Each `unsafe` block is one such call with its safety argument beside it.
#![allow(unsafe_code)]

mod backfill;
mod common;
mod gen;
mod tail;

use anyhow::Result;
use clap::{Parser, Subcommand};

use backfill::{backfill, BackfillArgs};
use gen::{generate_cmd, GenArgs};
use tail::{tail, TailArgs};

#[derive(Parser)]
#[command(name = "bench", about = "Benchmarks for the jsonl-shipper binary")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Time `jsonl-shipper backfill` on generated data sets and verify the output.
    Backfill(BackfillArgs),
    /// Only generate (or reuse) the data set of one set-up; optionally validate it.
    Gen(GenArgs),
    /// Measure append-to-committed latency and CPU of `jsonl-shipper run` under steady load.
    Tail(TailArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: the bench is built without --release; generation will be slow");
    }
    let ok = match cli.mode {
        Mode::Backfill(a) => backfill(a)?,
        Mode::Gen(a) => generate_cmd(a)?,
        Mode::Tail(a) => tail(a)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
