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
    /// The line as read (valid UTF-8: `parse` accepted it).
    pub data: &'a [u8],
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
        escaped(out, self.data);
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
    escaped(out, text.as_bytes());
}

/// [`text`] of bytes. The sink's hottest loop (a whole line per row): a JSON line holds a raw
/// CR or NUL only in the rare case of a CRLF line or whitespace, so the common case looks for
/// the other three escapes with memchr's vectorised search (measured, 1,000,000 rows: the
/// sink thread's CPU 15 % in a byte-at-a-time loop).
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len());
    let mut start = 0;
    if memchr::memchr2(b'\r', 0, bytes).is_none() {
        for i in memchr::memchr3_iter(b'\\', b'\t', b'\n', bytes) {
            out.extend_from_slice(&bytes[start..i]);
            out.extend_from_slice(escape(bytes[i]));
            start = i + 1;
        }
    } else {
        for (i, &byte) in bytes.iter().enumerate() {
            if matches!(byte, b'\\' | b'\t' | b'\n' | b'\r' | 0) {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(escape(byte));
                start = i + 1;
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The TabSeparated escape of one of the five bytes [`escaped`] escapes.
fn escape(byte: u8) -> &'static [u8] {
    match byte {
        b'\\' => b"\\\\",
        b'\t' => b"\\t",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        _ => b"\\0",
    }
}

/// A Nullable(String) field: `\N` for NULL.
fn nullable(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => text(out, value),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// Decimal digits (not `write!`: its formatting machinery was a tenth of the sink's CPU).
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.clear();
    for byte in key {
        buf.push(char::from(HEX[usize::from(byte >> 4)]));
        buf.push(char::from(HEX[usize::from(byte & 0xf)]));
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

    proptest::proptest! {
        /// Both of `escaped`'s paths (memchr's, and the byte loop for a CR or NUL) agree with
        /// the plainest escaping, and numbers with `Display`.
        #[test]
        fn escaping_is_the_plain_byte_by_byte_one(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"\\\t\n\r\0{\"a".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..64,
            ),
            n in proptest::num::u64::ANY,
        ) {
            // Written out, not `escape()`: the oracle must not share the table it checks.
            let mut want = Vec::new();
            for &byte in &bytes {
                match byte {
                    b'\\' => want.extend_from_slice(br"\\"),
                    b'\t' => want.extend_from_slice(br"\t"),
                    b'\n' => want.extend_from_slice(br"\n"),
                    b'\r' => want.extend_from_slice(br"\r"),
                    0 => want.extend_from_slice(br"\0"),
                    _ => want.push(byte),
                }
            }
            let mut got = b"x".to_vec();
            escaped(&mut got, &bytes);
            proptest::prop_assert_eq!(&got[1..], &want[..]);
            let mut digits = Vec::new();
            number(&mut digits, n);
            proptest::prop_assert_eq!(digits, n.to_string().into_bytes());
        }
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
                data: "{\"a\":\"x\\ty\"}\t\r\u{0}é".as_bytes(),
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
