//! Integration tests of `jsonl-shipper`: one test binary that drives the real binary on temp
//! dirs through one harness and asserts exact run DB rows, exact dead letters and exact
//! checkpoints against expectations built from the generator's knowledge (never read back
//! from the shipper's own output).
//!
//! Modules: `harness` (temp dirs, processes, readers), `dataset` (generator and expected
//! model), then one module per area of the contract.

mod harness;
mod dataset;

mod backfill;
mod crash;
mod replay;
mod daemon;
mod status;
mod configured;
