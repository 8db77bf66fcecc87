//! Rows as TabSeparated lines, the oldest text format of ClickHouse (every server since 18.16
//! reads it, with the column list named in the `INSERT`). Pure: no IO.
//!
//! TabSeparated, not JSONEachRow: 20 % fewer bytes, no JSON escaping of `data` (a line's text
//! goes into its field as it is, but for the five escapes below), and about 20 % less CPU for
//! an 18.16 server measured by hand (1,000,000 rows of the bench data set in 25,000-row
//! inserts), though not through `bench clickhouse`'s noise (ARCHITECTURE.md, "The fleet sink").
//!
//! Column values follow the SQLite run DBs: `event_key` is the producer's `event_id`, or the
//! 24-byte line identity as lowercase hex (a BLOB in SQLite); `event_type` and `ts` are
//! Nullable(String): a JSON string as its text, a number as its JSON text, anything else NULL
//! (as the SQLite path stores them); `data` is the line itself.

use crate::parse::Scalar;

/// A row of one of the sink's tables, written as one TabSeparated line.
pub(crate) trait Row {
    /// The table's columns in the order of [`Row::fields`], for `INSERT INTO t (...)`.
    const COLUMNS: &'static str;
    /// Appends the fields, tab-separated, without the newline.
    fn fields(&self, out: &mut Vec<u8>);
}

/// One `events` row.
#[derive(Debug)]
pub(crate) struct EventRow<'a> {
    pub host: &'a str,
    pub run_id: &'a str,
    pub event_key: &'a str,
    pub event_type: Option<&'a str>,
    pub ts: Option<&'a str>,
    pub data: &'a str,
    pub source: &'a str,
    pub line_no: u64,
    pub pos: u64,
}

impl Row for EventRow<'_> {
    const COLUMNS: &'static str =
        "host, run_id, event_key, event_type, ts, data, source, line_no, pos";

    fn fields(&self, out: &mut Vec<u8>) {
        text(out, self.host);
        tab(out);
        text(out, self.run_id);
        tab(out);
        text(out, self.event_key);
        tab(out);
        nullable(out, self.event_type);
        tab(out);
        nullable(out, self.ts);
        tab(out);
        text(out, self.data);
        tab(out);
        text(out, self.source);
        tab(out);
        number(out, self.line_no);
        tab(out);
        number(out, self.pos);
    }
}

/// One `runs` row: the run's row as its run DB holds it, and the version that orders copies.
#[derive(Debug, PartialEq)]
pub(crate) struct RunRow {
    pub host: String,
    pub run_id: String,
    pub status: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub data: String,
    pub version: u64,
}

impl Row for RunRow {
    const COLUMNS: &'static str = "host, run_id, status, started_at, ended_at, data, version";

    fn fields(&self, out: &mut Vec<u8>) {
        text(out, &self.host);
        tab(out);
        text(out, &self.run_id);
        tab(out);
        nullable(out, self.status.as_deref());
        tab(out);
        nullable(out, self.started_at.as_deref());
        tab(out);
        nullable(out, self.ended_at.as_deref());
        tab(out);
        text(out, &self.data);
        tab(out);
        number(out, self.version);
    }
}

/// Appends `row` and its newline to `body`.
pub(crate) fn push<R: Row>(body: &mut Vec<u8>, row: &R) {
    row.fields(body);
    body.push(b'\n');
}

fn tab(out: &mut Vec<u8>) {
    out.push(b'\t');
}

/// A String field: the text with backslash, tab, newline, carriage return and NUL escaped as
/// ClickHouse's TabSeparated reader decodes them (so `\N` stays text, never NULL); every other
/// byte as it is.
fn text(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// A Nullable(String) field: `\N` for NULL.
fn nullable(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => out.extend_from_slice(b"\\N"),
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// A scalar column's text (see the module docs); `buf` holds a number's text.
pub(crate) fn scalar_text<'a>(scalar: &'a Scalar<'a>, buf: &'a mut String) -> Option<&'a str> {
    use std::fmt::Write;
    buf.clear();
    match scalar {
        Scalar::Null => None,
        Scalar::Text(text) => Some(text),
        Scalar::Int(n) => {
            let _ = write!(buf, "{n}");
            Some(buf)
        }
        Scalar::Real(x) => {
            *buf = serde_json::Number::from_f64(*x).map_or_else(String::new, |n| n.to_string());
            Some(buf)
        }
    }
}

/// Lowercase hex of a derived line key.
pub(crate) fn hex_key(key: &[u8; 24], buf: &mut String) {
    use std::fmt::Write;
    buf.clear();
    for byte in key {
        let _ = write!(buf, "{byte:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[track_caller]
    fn check_scalar(scalar: Scalar<'_>, want: Option<&str>) {
        let mut buf = String::new();
        assert_eq!(scalar_text(&scalar, &mut buf), want);
    }

    #[test]
    fn scalars_are_their_text() {
        check_scalar(Scalar::Null, None);
        check_scalar(Scalar::Text(Cow::Borrowed("fallback")), Some("fallback"));
        check_scalar(Scalar::Int(-42), Some("-42"));
        check_scalar(Scalar::Real(1.5), Some("1.5"));
        check_scalar(Scalar::Real(1e300), Some("1e+300"));
    }

    #[test]
    fn rows_are_one_tab_separated_line_with_escapes() {
        let mut body = Vec::new();
        let mut key = String::new();
        let mut raw = [0u8; 24];
        raw[0] = 0xab;
        raw[23] = 0x01;
        hex_key(&raw, &mut key);
        assert_eq!(key.len(), 48);
        assert!(key.starts_with("ab00") && key.ends_with("01"));
        push(
            &mut body,
            &EventRow {
                host: "h",
                run_id: "r\"1",
                event_key: &key,
                event_type: None,
                ts: Some("\\N"),
                data: "{\"a\":\"x\\ty\"}\t\r\u{0}é",
                source: "/raw/events_20240101.ndjson",
                line_no: 7,
                pos: 20240101_0000000007,
            },
        );
        let want = format!(
            "h\tr\"1\t{key}\t\\N\t\\\\N\t{{\"a\":\"x\\\\ty\"}}\\t\\r\\0é\t\
             /raw/events_20240101.ndjson\t7\t202401010000000007\n"
        );
        assert_eq!(String::from_utf8(body).unwrap(), want);
        assert_eq!(EventRow::COLUMNS.split(", ").count(), 9);

        let mut body = Vec::new();
        let run = RunRow {
            host: "h".into(),
            run_id: "r".into(),
            status: Some("done".into()),
            started_at: None,
            ended_at: None,
            data: "{}".into(),
            version: 3,
        };
        push(&mut body, &run);
        assert_eq!(body, b"h\tr\tdone\t\\N\t\\N\t{}\t3\n");
        assert_eq!(RunRow::COLUMNS.split(", ").count(), 7);
    }
}
