//! What every output format shares: the columns and their kinds, how a SQLite value becomes a
//! value of its column's kind (the same in every format), and the output file, written under
//! a hidden temp name in DIR and renamed over the final name only once complete and fsynced,
//! so a crash or an error never leaves a half file under a name a reader globs.

use std::borrow::Cow;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;

use super::Format;

/// The type of an exported column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Int64.
    Integer,
    /// Float64.
    Real,
    /// Utf8.
    Text,
    /// Utf8 holding a JSON document (`data`, `summary`): embedded as JSON in NDJSON.
    Json,
}

impl Kind {
    /// The kind of a column by SQLite's affinity rules on its declared type (datatype3.html
    /// §3.1): `INT` anywhere is INTEGER, then `CHAR`/`CLOB`/`TEXT` TEXT, then
    /// `REAL`/`FLOA`/`DOUB` REAL; `None` for the rest (no type, BLOB, NUMERIC).
    pub(crate) fn of_declared(declared: &str) -> Option<Kind> {
        let upper = declared.to_ascii_uppercase();
        let has = |s: &str| upper.contains(s);
        if has("INT") {
            Some(Kind::Integer)
        } else if has("CHAR") || has("CLOB") || has("TEXT") {
            Some(Kind::Text)
        } else if has("REAL") || has("FLOA") || has("DOUB") {
            Some(Kind::Real)
        } else {
            None
        }
    }
}

/// An exported column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub name: String,
    pub kind: Kind,
}

impl Column {
    pub(crate) fn new(name: &str, kind: Kind) -> Column {
        Column { name: name.to_string(), kind }
    }
}

/// A value converted to its column's kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

/// Converts a SQLite value to `kind`. Text columns take anything: a BLOB (a derived
/// `event_key`) as lowercase hex, numbers as their decimal text, invalid UTF-8 replaced.
/// Number columns take numbers only (an INTEGER is a REAL's too); anything else is `Err`: the
/// caller writes NULL and counts it, never a coerced number.
pub(crate) fn typed(kind: Kind, value: ValueRef<'_>) -> Result<Typed<'_>, ()> {
    match (kind, value) {
        (_, ValueRef::Null) => Ok(Typed::Null),
        (Kind::Integer, ValueRef::Integer(i)) => Ok(Typed::Integer(i)),
        (Kind::Real, ValueRef::Integer(i)) => Ok(Typed::Real(i as f64)),
        (Kind::Real, ValueRef::Real(r)) => Ok(Typed::Real(r)),
        (Kind::Integer | Kind::Real, _) => Err(()),
        // `from_utf8` first: its check of valid text is several times faster than the lossy one's.
        (Kind::Text | Kind::Json, ValueRef::Text(t)) => {
            Ok(Typed::Text(match std::str::from_utf8(t) {
                Ok(text) => Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(t),
            }))
        }
        (Kind::Text | Kind::Json, ValueRef::Blob(b)) => Ok(Typed::Text(Cow::Owned(hex(b)))),
        (Kind::Text | Kind::Json, ValueRef::Integer(i)) => {
            Ok(Typed::Text(Cow::Owned(i.to_string())))
        }
        (Kind::Text | Kind::Json, ValueRef::Real(r)) => Ok(Typed::Text(Cow::Owned(real_text(r)))),
    }
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

/// The shortest text that reads back as the same f64 (`1.5`, `1e300`), as text formats write it.
pub(crate) fn real_text(r: f64) -> String {
    format!("{r:?}")
}

/// Values written as NULL because they were not of their column's kind, per column.
#[derive(Debug)]
pub(crate) struct Mismatches(Vec<u64>);

impl Mismatches {
    pub(crate) fn new(columns: usize) -> Mismatches {
        Mismatches(vec![0; columns])
    }

    /// `typed(kind, value)`, or NULL counted against column `idx`.
    pub(crate) fn typed<'a>(&mut self, idx: usize, kind: Kind, value: ValueRef<'a>) -> Typed<'a> {
        typed(kind, value).unwrap_or_else(|()| {
            self.count(idx);
            Typed::Null
        })
    }

    /// One more value of column `idx` not of its kind.
    pub(crate) fn count(&mut self, idx: usize) {
        self.0[idx] += 1;
    }

    pub(crate) fn report(&self, columns: &[Column]) -> Vec<(String, u64)> {
        columns
            .iter()
            .zip(&self.0)
            .filter(|(_, &n)| n > 0)
            .map(|(c, &n)| (c.name.clone(), n))
            .collect()
    }
}

/// Why an output file could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] ::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// A finished output file.
#[derive(Debug)]
pub(crate) struct Written {
    pub bytes: u64,
    pub mismatched: Vec<(String, u64)>,
}

/// A table being written in one format.
pub(crate) trait TableWriter {
    /// One row, a value per column in the order of the columns the writer was opened with.
    fn write_row(&mut self, row: &[ValueRef<'_>]) -> Result<(), WriteError>;
    /// Completes the file and gives it its final name.
    fn finish(self: Box<Self>) -> Result<Written, WriteError>;
}

/// Opens a writer of `format` for a table of `columns` that will be named `path`.
pub(crate) fn open(
    format: Format,
    path: &Path,
    columns: &[Column],
) -> Result<Box<dyn TableWriter>, WriteError> {
    let (output, file) = OutputFile::create(path)?;
    Ok(match format {
        Format::Parquet => {
            Box::new(super::parquet_writer::ParquetTable::new(output, file, columns)?)
        }
        Format::Ndjson => Box::new(super::ndjson_writer::NdjsonTable::new(output, file, columns)),
        Format::Csv => Box::new(super::csv_writer::CsvTable::new(output, file, columns)?),
    })
}

/// Buffer of the NDJSON and CSV writers.
pub(crate) const BUFFER_BYTES: usize = 256 << 10;

/// The temp file an output is written to, renamed to its final name by [`OutputFile::commit`];
/// removed if dropped before that (an error), left behind only by a crash (`.NAME.tmp-PID`,
/// hidden from `*.parquet` globs).
#[derive(Debug)]
pub(crate) struct OutputFile {
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl OutputFile {
    /// Creates the temp file beside `path` (mode 0640: the export holds what the run DBs do).
    pub(crate) fn create(path: &Path) -> io::Result<(OutputFile, File)> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file =
            File::options().write(true).create(true).truncate(true).mode(0o640).open(&temp)?;
        Ok((OutputFile { temp, path: path.to_path_buf(), committed: false }, file))
    }

    /// Makes `file` (the temp file, fully written) durable and gives it its final name,
    /// replacing an earlier export's; returns its size.
    pub(crate) fn commit(mut self, file: File) -> io::Result<u64> {
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        drop(file);
        std::fs::rename(&self.temp, &self.path)?;
        self.committed = true;
        // The rename itself survives a power loss only once the directory is synced.
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(bytes)
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(kind: Kind, value: ValueRef<'_>, expected: Result<Typed<'_>, ()>) {
        assert_eq!(typed(kind, value), expected, "{kind:?} of {value:?}");
    }

    #[test]
    fn values_become_their_columns_kind_or_null() {
        let text = |s: &str| Ok(Typed::Text(Cow::Owned(s.to_string())));
        check(Kind::Text, ValueRef::Text(b"a,b"), text("a,b"));
        check(Kind::Text, ValueRef::Blob(&[0x00, 0xAB, 0x10]), text("00ab10"));
        check(Kind::Text, ValueRef::Integer(-7), text("-7"));
        check(Kind::Text, ValueRef::Real(1.5), text("1.5"));
        check(Kind::Text, ValueRef::Real(1e300), text("1e300"));
        check(Kind::Text, ValueRef::Text(b"\xFFx"), text("\u{FFFD}x"));
        check(Kind::Text, ValueRef::Null, Ok(Typed::Null));
        check(Kind::Integer, ValueRef::Integer(404), Ok(Typed::Integer(404)));
        check(Kind::Integer, ValueRef::Null, Ok(Typed::Null));
        check(Kind::Integer, ValueRef::Real(1.5), Err(()));
        check(Kind::Integer, ValueRef::Text(b"404"), Err(()));
        check(Kind::Integer, ValueRef::Blob(b"x"), Err(()));
        check(Kind::Real, ValueRef::Integer(3), Ok(Typed::Real(3.0)));
        check(Kind::Real, ValueRef::Real(0.25), Ok(Typed::Real(0.25)));
        check(Kind::Real, ValueRef::Text(b"0.25"), Err(()));
    }

    #[test]
    fn declared_types_follow_sqlite_affinity() {
        let cases = [
            ("INTEGER", Some(Kind::Integer)),
            ("int", Some(Kind::Integer)),
            ("BIGINT", Some(Kind::Integer)),
            ("REAL", Some(Kind::Real)),
            ("DOUBLE PRECISION", Some(Kind::Real)),
            ("FLOAT", Some(Kind::Real)),
            ("TEXT", Some(Kind::Text)),
            ("VARCHAR(10)", Some(Kind::Text)),
            ("", None),
            ("BLOB", None),
            ("NUMERIC", None),
        ];
        for (declared, kind) in cases {
            assert_eq!(Kind::of_declared(declared), kind, "{declared:?}");
        }
    }

    #[test]
    fn an_output_is_renamed_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let (output, file) = OutputFile::create(&path).unwrap();
        drop(file);
        drop(output);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temp file left");
        let (output, mut file) = OutputFile::create(&path).unwrap();
        io::Write::write_all(&mut file, b"x\r\n").unwrap();
        assert_eq!(output.commit(file).unwrap(), 3);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["r.csv"]);
    }
}
