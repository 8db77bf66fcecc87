//! NDJSON: one JSON object per row, every column a key in column order (NULL as `null`).
//! JSON columns (`data`, `summary`) are embedded as JSON values, not strings, so `jq .data.x`
//! and DuckDB's `read_json` reach into them; a value that is not valid JSON (never written by
//! the agent) is written as a string and counted.

use std::fs::File;
use std::io::{BufWriter, Write};

use rusqlite::types::ValueRef;
use serde_json::value::RawValue;

use super::write::{
    Column, Kind, Mismatches, OutputFile, TableWriter, Typed, WriteError, Written, BUFFER_BYTES,
};

pub(crate) struct NdjsonTable {
    output: OutputFile,
    out: BufWriter<File>,
    columns: Vec<Column>,
    /// Each column's `"name":`, escaped once.
    keys: Vec<String>,
    mismatches: Mismatches,
}

impl NdjsonTable {
    pub(crate) fn new(output: OutputFile, file: File, columns: &[Column]) -> NdjsonTable {
        let keys = columns
            .iter()
            .map(|c| format!("{}:", serde_json::Value::String(c.name.clone())))
            .collect();
        NdjsonTable {
            output,
            out: BufWriter::with_capacity(BUFFER_BYTES, file),
            columns: columns.to_vec(),
            keys,
            mismatches: Mismatches::new(columns.len()),
        }
    }
}

impl TableWriter for NdjsonTable {
    fn write_row(&mut self, row: &[ValueRef<'_>]) -> Result<(), WriteError> {
        self.out.write_all(b"{")?;
        for (idx, (column, &value)) in self.columns.iter().zip(row).enumerate() {
            if idx > 0 {
                self.out.write_all(b",")?;
            }
            self.out.write_all(self.keys[idx].as_bytes())?;
            match self.mismatches.typed(idx, column.kind, value) {
                Typed::Null => self.out.write_all(b"null")?,
                Typed::Integer(i) => write!(self.out, "{i}")?,
                // Non-finite numbers have no JSON form: serde_json writes them as null.
                Typed::Real(r) => serde_json::to_writer(&mut self.out, &r).map_err(io_error)?,
                Typed::Text(t) if column.kind == Kind::Json => {
                    match serde_json::from_str::<&RawValue>(&t) {
                        Ok(raw) => self.out.write_all(raw.get().as_bytes())?,
                        Err(_) => {
                            self.mismatches.count(idx);
                            serde_json::to_writer(&mut self.out, &*t).map_err(io_error)?;
                        }
                    }
                }
                Typed::Text(t) => serde_json::to_writer(&mut self.out, &*t).map_err(io_error)?,
            }
        }
        self.out.write_all(b"}\n")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Written, WriteError> {
        let NdjsonTable { output, out, columns, mismatches, .. } = *self;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let bytes = output.commit(file)?;
        Ok(Written { bytes, mismatched: mismatches.report(&columns) })
    }
}

fn io_error(e: serde_json::Error) -> std::io::Error {
    std::io::Error::other(e)
}
