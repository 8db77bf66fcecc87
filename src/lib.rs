//! jsonl-shipper: tails NDJSON telemetry files and upserts every record, exactly once, into
//! one SQLite database per run.
//!
//! The modules are listed in the order data flows through them:
//!
//! ```text
//! discover ─▶ follow ─▶ tail ─▶ parse ─▶ route ──Batch──▶ sink (writers, one per shard of runs)
//!                                            └─DeadLetter─▶ dlq ─┐          │ spans acked
//!                                                                ▼          ▼
//!                                                        checkpoint (state DB: offsets, DLQ index)
//! ```
//!
//! See `ARCHITECTURE.md` for the threads, the commit protocol and the invariants.

pub mod cli;
pub mod config;

pub mod discover;
pub mod follow;
pub mod tail;
pub mod parse;
pub mod route;
pub mod sink;
pub mod checkpoint;
pub mod dlq;
pub mod state;
pub mod pipeline;
pub mod maintain;

pub mod sqlite;
pub mod metrics;
pub mod shutdown;
pub mod exporter;
pub mod monitor;
pub mod systemd;

pub mod commands;

/// Tidy checks (rust-analyzer style): every source file opens with a `//!` paragraph saying
/// what it owns, so `ls src` plus the first lines read as the architecture.
#[cfg(test)]
mod tidy {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_source_file_starts_with_a_module_doc() {
        let mut files = Vec::new();
        rust_files(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        assert!(files.len() > 10);
        let missing: Vec<_> = files
            .iter()
            .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//! "))
            .collect();
        assert!(missing.is_empty(), "files without a leading //! doc: {missing:?}");
    }
}
