//! TODO

pub mod run_path;
