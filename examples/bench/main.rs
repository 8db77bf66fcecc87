//! Benchmark harness for the `jsonl-shipper` binary.
//!
//! ```text
//! cargo run --release --example bench -- backfill [--runs 1,50,5000] [--events 1000000] [--reps 3]
//!                                                [--jobs N] [--keep] [--dir D] [--bin PATH]
//! cargo run --release --example bench -- export   [--runs 1] [--events 1000000] [--reps 3]
//!                                                [--format parquet|ndjson|csv]
//! cargo run --release --example bench -- gen      [--runs 50] [--events N] [--validate]
//! cargo run --release --example bench -- catalog  [--runs 5000] [--reps 3]
//! cargo run --release --example bench -- tail     [--producers 4] [--rate 5000] [--duration 20]
//!                                                [--files 1000 [--active 500]] ...
//! cargo run --release --example bench -- columns  [--runs 50] [--reps 5] [--open-events 1000000]
//!                                                [--no-write] [--no-open]
//! cargo run --release --example bench -- summary  [--events 1000000] [--reps 5] [--metrics F]
//! cargo run --release --example bench -- pair     [--runs 1,50,5000] [--n 3]
//! cargo run --release --example bench -- clickhouse [--runs 50] [--reps 3] [--url URL]
//!                                                [--sink-extra 'batch_max_rows = 100000'] [--server-nice 19]
//! ```
//!
//! Each mode's module says what it measures and how: `backfill.rs` (also the data set that
//! `gen.rs` writes), `tail.rs`, `columns.rs`, `catalog.rs`, `summary.rs`, `export.rs`,
//! `clickhouse.rs` and `pair.rs` (the limit program's yardstick);
//! `common.rs` holds what they share.
//!
//! The release binary is built with `cargo build --release --bin jsonl-shipper` before a run
//! (a no-op when it is up to date) unless `--bin PATH` or `--no-build` is given.

// The crate denies `unsafe_code`; this example needs a few libc calls std does not expose:
// `wait4(2)` for the child's own rusage (CPU and peak RSS), `kill(2)` to send SIGTERM and
// `sysconf(_SC_CLK_TCK)`. Each `unsafe` block is one such call with its safety argument beside it.
#![allow(unsafe_code)]

mod backfill;
mod clickhouse;
mod columns;
mod catalog;
mod common;
mod export;
mod gen;
mod pair;
mod summary;
mod tail;

use anyhow::Result;
use clap::{Parser, Subcommand};

use backfill::{backfill, BackfillArgs};
use catalog::{catalog, CatalogArgs};
use clickhouse::{clickhouse, ClickHouseArgs};
use columns::{columns, ColumnsArgs};
use export::{export, ExportArgs};
use gen::{generate_cmd, GenArgs};
use pair::{pair, PairArgs};
use summary::{summary, SummaryArgs};
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
    /// Time `jsonl-shipper catalog rebuild` over a backfilled data set's run DBs.
    Catalog(CatalogArgs),
    /// Time `jsonl-shipper export` of a shipped data set (typed columns added) and verify it.
    Export(ExportArgs),
    /// Only generate (or reuse) the data set of one set-up; optionally validate it.
    Gen(GenArgs),
    /// Measure append-to-committed latency and CPU of `jsonl-shipper run` under steady load.
    Tail(TailArgs),
    /// What typed columns and indexes cost: backfill with and without, and applying them to
    /// an existing DB at open.
    Columns(ColumnsArgs),
    /// Time `jsonl-shipper summary` on a 1-run data set (5 metrics, two percentiles).
    Summary(SummaryArgs),
    /// Issue 13's yardstick: `../shared/limit/pair.py` at 1, 50 and 5,000 runs, one table.
    Pair(PairArgs),
    /// The ClickHouse sink's bounds: backfill with and without it, interleaved, against a
    /// private server.
    Clickhouse(ClickHouseArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: the bench is built without --release; generation will be slow");
    }
    let ok = match cli.mode {
        Mode::Backfill(a) => backfill(a)?,
        Mode::Catalog(a) => catalog(a)?,
        Mode::Export(a) => export(a)?,
        Mode::Gen(a) => generate_cmd(a)?,
        Mode::Tail(a) => tail(a)?,
        Mode::Columns(a) => columns(a)?,
        Mode::Summary(a) => summary(a)?,
        Mode::Pair(a) => pair(a)?,
        Mode::Clickhouse(a) => clickhouse(a)?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
