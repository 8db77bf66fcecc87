//! CSV (RFC 4180): a header row of the column names, CRLF after every record, a field quoted
//! when it holds `,`, `"`, CR or LF (quotes doubled inside), NULL as an empty field and an
//! empty string as `""` so that readers can tell them apart (DuckDB reads the former as NULL).
//!
//! Written by hand rather than with the `csv` crate: quoting one field is the whole of what
//! we need (no reading, no serde, no dialects), a dozen lines with their own tests.

use std::fs::File;
use std::io::{BufWriter, Write};

use rusqlite::types::ValueRef;

use super::write::{
    real_text, Column, Mismatches, OutputFile, TableWriter, Typed, WriteError, Written,
    BUFFER_BYTES,
};

pub(crate) struct CsvTable {
    output: OutputFile,
    out: BufWriter<File>,
    columns: Vec<Column>,
    mismatches: Mismatches,
}

impl CsvTable {
    pub(crate) fn new(
        output: OutputFile,
        file: File,
        columns: &[Column],
    ) -> Result<CsvTable, WriteError> {
        let mut out = BufWriter::with_capacity(BUFFER_BYTES, file);
        for (idx, column) in columns.iter().enumerate() {
            if idx > 0 {
                out.write_all(b",")?;
            }
            write_field(&mut out, &column.name)?;
        }
        out.write_all(b"\r\n")?;
        let mismatches = Mismatches::new(columns.len());
        Ok(CsvTable { output, out, columns: columns.to_vec(), mismatches })
    }
}

impl TableWriter for CsvTable {
    fn write_row(&mut self, row: &[ValueRef<'_>]) -> Result<(), WriteError> {
        for (idx, (column, &value)) in self.columns.iter().zip(row).enumerate() {
            if idx > 0 {
                self.out.write_all(b",")?;
            }
            match self.mismatches.typed(idx, column.kind, value) {
                Typed::Null => {}
                Typed::Integer(i) => write!(self.out, "{i}")?,
                Typed::Real(r) => self.out.write_all(real_text(r).as_bytes())?,
                Typed::Text(t) => write_field(&mut self.out, &t)?,
            }
        }
        self.out.write_all(b"\r\n")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Written, WriteError> {
        let CsvTable { output, out, columns, mismatches } = *self;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let bytes = output.commit(file)?;
        Ok(Written { bytes, mismatched: mismatches.report(&columns) })
    }
}

/// One text field, quoted when RFC 4180 requires it; the empty string quoted so that it is not
/// read as NULL.
fn write_field(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    if !text.is_empty() && !text.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        return out.write_all(text.as_bytes());
    }
    out.write_all(b"\"")?;
    for (idx, part) in text.split('"').enumerate() {
        if idx > 0 {
            out.write_all(b"\"\"")?;
        }
        out.write_all(part.as_bytes())?;
    }
    out.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    #[track_caller]
    fn check(text: &str, expected: &str) {
        let mut out = Vec::new();
        super::write_field(&mut out, text).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{text:?}");
    }

    #[test]
    fn fields_are_quoted_as_rfc_4180_says() {
        check("plain", "plain");
        check(" spaced ", " spaced ");
        check("", r#""""#);
        check("a,b", r#""a,b""#);
        check(r#"say "hi""#, r#""say ""hi""""#);
        check("\"", r#""""""#);
        check("two\nlines", "\"two\nlines\"");
        check("cr\rlf", "\"cr\rlf\"");
        check(r#"{"a":1,"b":"x"}"#, r#""{""a"":1,""b"":""x""}""#);
    }
}
