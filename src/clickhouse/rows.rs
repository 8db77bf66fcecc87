//! Rows as JSONEachRow lines (one JSON object per line), the format every ClickHouse since
//! 18.16 reads over HTTP. Pure: no IO.
//!
//! Column values follow the SQLite run DBs: `event_key` is the producer's `event_id`, or the
//! 24-byte line identity as lowercase hex (a BLOB in SQLite); `event_type` and `ts` are
//! Nullable(String): a JSON string as its text, a number as its JSON text, anything else NULL
//! (as the SQLite path stores them); `data` is the line itself.

use serde::Serialize;

use crate::parse::Scalar;

/// One `events` row.
#[derive(Debug, Serialize)]
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

/// One `runs` row: the run's row as its run DB holds it, and the version that orders copies.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct RunRow {
    pub host: String,
    pub run_id: String,
    pub status: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub data: String,
    pub version: u64,
}

/// Appends `row` and its newline to `body`.
pub(crate) fn push<T: Serialize>(body: &mut Vec<u8>, row: &T) {
    serde_json::to_writer(&mut *body, row).expect("rows of strings and integers serialize");
    body.push(b'\n');
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
    fn rows_are_one_json_object_per_line() {
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
                ts: Some("2024"),
                data: "{\"run_id\":\"r\\\"1\"}",
                source: "/raw/events_20240101.ndjson",
                line_no: 7,
                pos: 20240101_0000000007,
            },
        );
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["run_id"], "r\"1");
        assert_eq!(back["event_type"], serde_json::Value::Null);
        assert_eq!(back["pos"], 202401010000000007u64);
    }
}
