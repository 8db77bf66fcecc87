//! jsonl-shipper: tails NDJSON telemetry files and upserts every record, exactly once, into
//! one SQLite database per run.
//!
//! The modules are listed in the order data flows through them:
//!
//! ```text
//! discover ─▶ tail ─▶ parse ─▶ route ──Batch──▶ sink (writer threads, one per shard of runs)
//!                                  └─DeadLetter─▶ dlq ─┐          │ spans acked
//!                                                      ▼          ▼
//!                                              checkpoint (state DB: offsets, DLQ index)
//! ```
//!
//! See `ARCHITECTURE.md` for the threads, the commit protocol and the invariants.

pub mod cli;
pub mod config;

pub mod discover;
pub mod tail;
pub mod parse;
pub mod route;
pub mod sink;
pub mod checkpoint;
pub mod dlq;
pub mod pipeline;

pub mod metrics;
pub mod shutdown;

pub mod commands;
