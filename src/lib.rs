//! jsonl-shipper: tails NDJSON telemetry files and upserts every record, exactly once, into
//! one SQLite database per run.
//!
//! The modules are listed in the order data flows through them:
//!
//! ```text
//! discover ─▶ follow ─▶ tail ─▶ parse ─▶ route ──Batch──▶ sink (writers, each with its runs)
//!                                          │                 │ spans acked
//!                                          └─StateMsg─▶ state ◀┘ (the state thread writes
//!                                                              checkpoint offsets and dlq files)
//! ```
//!
//! See `ARCHITECTURE.md` for the threads, the commit protocol and the invariants.

pub mod cli;
mod config;
mod schema;

mod identity;
mod flow;
mod discover;
mod follow;
mod tail;
mod parse;
mod route;
mod sink;
mod clickhouse;
mod checkpoint;
mod dlq;
mod state;
mod pipeline;
mod catalog;
mod maintain;
mod summary;
mod export;

mod sqlite;
mod crash;
mod metrics;
mod shutdown;
mod exporter;
mod monitor;
mod systemd;

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

    /// The top-level module a source file belongs to (`sink/pool.rs` -> `sink`).
    fn module_of(src: &std::path::Path, file: &std::path::Path) -> String {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    }

    /// No import cycle between top-level modules (matklad: the module graph is the
    /// architecture): each `crate::name` in code (not in comments) is an edge. A cycle fails
    /// with its path, e.g. `route -> dlq -> route`.
    #[test]
    fn modules_import_each_other_without_cycles() {
        use std::collections::{BTreeMap, BTreeSet};
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let from = module_of(&src, file);
            if from == "lib" || from == "main" {
                continue;
            }
            let text = std::fs::read_to_string(file).unwrap();
            let deps = graph.entry(from.clone()).or_default();
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != from {
                        deps.insert(name);
                    }
                }
                // `use crate::{a, b::C}` lists several.
                if let Some(rest) = line.trim_start().strip_prefix("use crate::{") {
                    for part in rest.split([',', '}']) {
                        let name = part.trim().split("::").next().unwrap_or("").to_string();
                        if !name.is_empty() && name != from {
                            deps.insert(name);
                        }
                    }
                }
            }
        }
        // Depth-first search for a back edge.
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|n| n == node) {
                let mut cycle = path[at..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node.to_string());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node.to_string());
            None
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
            assert!(cycle.is_none(), "import cycle: {}", cycle.unwrap().join(" -> "));
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
