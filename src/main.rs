//! The `jsonl-shipper` binary: parse the command line, set up logging, dispatch, map errors to
//! exit codes.

fn main() {}
