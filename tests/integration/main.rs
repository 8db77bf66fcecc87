//! Integration tests of `jsonl-shipper`: one test binary that drives the real binary on temp
//! dirs through one harness and asserts exact run DB rows, exact dead letters and exact
//! checkpoints against expectations built from the generator's knowledge (never read back
//! from the shipper's own output).
//!
//! - `harness`: temp dir per test, writing sources (plain, multi-member gzip), running the
//!   binary with deadlines or as a daemon (signals, `/proc` observations), reading every row,
//!   dead letter and checkpoint back; polling waits only, never fixed sleeps.
//! - `dataset`: the generator that knows what each line is, and the expected-state model.
//! - one module per area: `backfill` (the multi-day set, idempotence, `--jobs`), `replay`
//!   (the commit protocol's replay rules), `crash` (kill -9 / Ctrl-C and resume), `daemon`
//!   (`run`: tailing, partial lines, SIGTERM drain, restart), `status` (`status --json`, exit
//!   codes), `configured` (behaviour that needs `--config`), `ops` (`/metrics`, `/healthz`,
//!   systemd notify, the packaged man pages and completions), `logs` (level, format, colours,
//!   journald timestamps), `tailing` (live tailing: discovery latency, file identity, rotation,
//!   copytruncate, deletion, SIGHUP, many files, a model), `columns` (typed columns and
//!   indexes from config on old and new run DBs, and `check-config`'s report of them),
//!   `catalog` (the run catalog: kept current, after crashes and retention, rebuilt),
//!   `export` (Parquet, NDJSON, CSV read back; selection by `--run` and from a catalog),
//!   `clickhouse` (the fleet sink against private ClickHouse servers the tests start: exactly
//!   once after FINAL, crash replay, outages, a two-shard cluster; the DDL and README queries
//!   on chdb when installed).
//!
//! Linux only: the daemon tests read `/proc/<pid>/fdinfo` and `/proc/<pid>/status`.

mod harness;
mod dataset;

mod backfill;
mod replay;
mod crash;
mod daemon;
mod status;
mod wal;
mod faults;
mod configured;
mod maintenance;
mod retention;
mod ops;
mod logs;
mod tailing;
mod columns;
mod catalog;
mod summary;
mod export;
mod clickhouse;
