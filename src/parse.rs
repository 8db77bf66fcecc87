//! Turning one line's bytes into a [`Parsed`] record or a [`DeadReason`], through `[mapping]`.
//!
//! Pure: no IO, no clock, no allocation for the common case (the mapped fields are borrowed
//! from the line). Only the mapped top-level fields are looked at; everything else is validated
//! as JSON and skipped, because the whole line is stored as the event's `data` anyway.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::Mapping;

/// Longest run_id accepted. File names stay short through hashing, but a megabyte run_id is
/// not an id; it is better dead-lettered where an operator sees it.
pub(crate) const MAX_RUN_ID_BYTES: usize = 4096;

/// SQLite's JSON_MAX_DEPTH: deeper documents are rejected by json_extract() and friends.
pub(crate) const MAX_JSON_DEPTH: usize = 1000;

/// Why a line went to the dead-letter queue (the contract's closed set of reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DeadReason {
    InvalidJson,
    NotObject,
    MissingRunId,
    InvalidRunId,
    LineTooLong,
    IncompleteLine,
    WriteFailed,
}

impl DeadReason {
    pub(crate) const ALL: [DeadReason; 7] = [
        DeadReason::InvalidJson,
        DeadReason::NotObject,
        DeadReason::MissingRunId,
        DeadReason::InvalidRunId,
        DeadReason::LineTooLong,
        DeadReason::IncompleteLine,
        DeadReason::WriteFailed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeadReason::InvalidJson => "invalid_json",
            DeadReason::NotObject => "not_object",
            DeadReason::MissingRunId => "missing_run_id",
            DeadReason::InvalidRunId => "invalid_run_id",
            DeadReason::LineTooLong => "line_too_long",
            DeadReason::IncompleteLine => "incomplete_line",
            DeadReason::WriteFailed => "write_failed",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<DeadReason> {
        DeadReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scalar as stored in an SQLite column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
}

/// Whether a record describes the run or is an event of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Event,
    Run,
}

/// A valid record, borrowing from its line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed<'a> {
    pub run_id: Cow<'a, str>,
    pub kind: Kind,
    /// The producer's idempotency key, canonicalised (an integer and its decimal string agree).
    pub event_id: Option<Cow<'a, str>>,
    pub event_type: Scalar<'a>,
    pub ts: Scalar<'a>,
}

/// The outcome for one line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome<'a> {
    Record(Parsed<'a>),
    /// Empty or whitespace-only: counted, not stored, not dead-lettered.
    Blank,
    Dead(DeadReason, String),
}

/// Parses one line (without its newline).
pub(crate) fn parse_line<'a>(line: &'a [u8], mapping: &Mapping) -> Outcome<'a> {
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => {
            return Outcome::Dead(
                DeadReason::InvalidJson,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        }
    };
    let trimmed = text.trim_ascii_start();
    if trimmed.trim_ascii_end().is_empty() {
        return Outcome::Blank;
    }
    if !trimmed.starts_with('{') {
        return match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Outcome::Dead(DeadReason::NotObject, not_object_error(trimmed)),
            Err(e) => Outcome::Dead(DeadReason::InvalidJson, json_error(&e)),
        };
    }
    if text.len() > 2 * MAX_JSON_DEPTH && exceeds_depth(text, MAX_JSON_DEPTH) {
        // Valid JSON, but SQLite's JSON functions would reject it, and one such row makes every
        // analyst query that calls json_extract() over the table fail.
        return Outcome::Dead(
            DeadReason::InvalidJson,
            format!("nesting deeper than {MAX_JSON_DEPTH} levels (SQLite's JSON limit)"),
        );
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = match (FieldsSeed { mapping }).deserialize(&mut de).and_then(|f| {
        de.end()?;
        Ok(f)
    }) {
        Ok(fields) => fields,
        Err(e) => return Outcome::Dead(DeadReason::InvalidJson, json_error(&e)),
    };
    let run_id = match fields.run_id.map(classify) {
        None | Some(Json::Null) => {
            return Outcome::Dead(
                DeadReason::MissingRunId,
                format!("field {:?} is missing or null", mapping.run_id),
            )
        }
        Some(Json::Str(s)) if s.is_empty() => {
            return Outcome::Dead(DeadReason::InvalidRunId, "run_id is an empty string".into())
        }
        Some(Json::Str(s)) if s.len() > MAX_RUN_ID_BYTES => {
            return Outcome::Dead(
                DeadReason::InvalidRunId,
                format!("run_id is {} bytes, longer than {MAX_RUN_ID_BYTES}", s.len()),
            )
        }
        Some(Json::Str(s)) => s,
        Some(Json::Int(raw)) => Cow::Borrowed(raw),
        Some(Json::Other(raw)) => {
            return Outcome::Dead(
                DeadReason::InvalidRunId,
                format!("run_id must be a non-empty string or an integer, got {}", cut(raw, 64)),
            )
        }
    };
    let kind = match fields.record_type.map(classify) {
        Some(Json::Str(s)) if s == "run" => Kind::Run,
        _ => Kind::Event,
    };
    let event_id = match fields.event_id.map(classify) {
        None | Some(Json::Null) => None,
        Some(Json::Str(s)) if s.is_empty() => None,
        Some(Json::Str(s)) => Some(s),
        Some(Json::Int(raw)) | Some(Json::Other(raw)) => Some(Cow::Borrowed(raw)),
    };
    Outcome::Record(Parsed {
        run_id,
        kind,
        event_id,
        event_type: fields.event_type.map_or(Scalar::Null, scalar),
        ts: fields.ts.map_or(Scalar::Null, scalar),
    })
}

/// The identity of a line that has no `event_id`: the producer's date from its file's name
/// (4 bytes, big-endian; 0 without one), its line number (8 bytes, big-endian) and the first
/// 96 bits of the SHA-256 of its bytes. Re-reading the same content at the same position of
/// the same day's file (restart, rename, copy, `.gz`) gives the same key; the same bytes at the
/// same line of another day's file are another line. It is stored as a BLOB, and SQLite never
/// considers a BLOB equal to TEXT, so it cannot collide with any producer `event_id` (always
/// TEXT); day and line number first keep one file's keys ascending, which keeps the
/// primary-key index append-mostly.
pub(crate) fn line_key(day: u32, line_no: u64, digest: &[u8; 32]) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..4].copy_from_slice(&day.to_be_bytes());
    key[4..12].copy_from_slice(&line_no.to_be_bytes());
    key[12..].copy_from_slice(&digest[..12]);
    key
}

/// The key a line had before the day was part of it (schema 1 of the run DBs, the state DB's
/// DLQ keys before its version 4): line number and the first 128 bits of the SHA-256. The new
/// key of the same line is the day followed by its first 20 bytes.
pub(crate) fn legacy_line_key(line_no: u64, digest: &[u8; 32]) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&line_no.to_be_bytes());
    key[8..].copy_from_slice(&digest[..16]);
    key
}

/// SHA-256 of a line's bytes (without newline).
pub(crate) fn digest(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// Orders records of the same run or event across files: the `YYYYMMDD` in the file name
/// (producers write daily files), then the line number. Pure so that every reader of every
/// copy of a file computes the same order.
pub(crate) fn stream_pos(file_day: u32, line_no: u64) -> i64 {
    (file_day as i64) * 10_000_000_000 + (line_no.min(9_999_999_999) as i64)
}

/// The producer's date in a file name: the `YYYYMMDD` of `events_YYYYMMDD` (a plausible date,
/// not part of a longer number), or 0 when the name has none. Only that one counts: a date a
/// rotation tool appends (`events_20240301.ndjson.20240305.gz`) is not the producer's.
pub(crate) fn file_day(file_name: &str) -> u32 {
    for (at, _) in file_name.match_indices("events_") {
        let rest = &file_name.as_bytes()[at + 7..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits != 8 {
            continue;
        }
        let value: u32 = file_name[at + 7..at + 15].parse().unwrap_or(0);
        let (month, day) = (value / 100 % 100, value % 100);
        if (1..=12).contains(&month) && (1..=31).contains(&day) && value / 10_000 >= 1970 {
            return value;
        }
    }
    0
}

/// [`file_day`] of the file a `source` path (as stored in `events.source` and dead letters)
/// names.
pub(crate) fn source_day(source: &str) -> u32 {
    let name = std::path::Path::new(source).file_name().map(|n| n.to_string_lossy());
    file_day(&name.unwrap_or_default())
}

fn json_error(e: &serde_json::Error) -> String {
    e.to_string()
}

/// Whether brackets nest deeper than `limit` (outside strings). A linear scan, run only on
/// lines long enough to possibly exceed it.
fn exceeds_depth(text: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn not_object_error(trimmed: &str) -> String {
    let kind = match trimmed.as_bytes()[0] {
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    };
    format!("line is {kind}, not a JSON object")
}

fn cut(s: &str, max: usize) -> &str {
    &s[..floor_char_boundary(s, max)]
}

/// The largest char boundary of `s` at or below `index` (`str::floor_char_boundary` is newer
/// than our MSRV).
pub(crate) fn floor_char_boundary(s: &str, index: usize) -> usize {
    let mut end = index.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A mapped field's raw JSON, classified.
enum Json<'a> {
    Null,
    Str(Cow<'a, str>),
    /// An integer, as its canonical decimal text.
    Int(&'a str),
    Other(&'a str),
}

fn classify(raw: &RawValue) -> Json<'_> {
    let text = raw.get();
    match text.as_bytes()[0] {
        b'"' => match serde_json::from_str::<Cow<'_, str>>(text) {
            Ok(s) => Json::Str(s),
            Err(_) => Json::Other(text),
        },
        b'n' => Json::Null,
        b'-' | b'0'..=b'9' if !text.contains(['.', 'e', 'E']) => {
            // "-0" is the integer 0; every other JSON integer is already canonical text.
            if text == "-0" {
                Json::Int("0")
            } else {
                Json::Int(text)
            }
        }
        _ => Json::Other(text),
    }
}

fn scalar(raw: &RawValue) -> Scalar<'_> {
    let text = raw.get();
    match classify(raw) {
        Json::Null => Scalar::Null,
        Json::Str(s) => Scalar::Text(s),
        Json::Int(digits) => match digits.parse::<i64>() {
            Ok(v) => Scalar::Int(v),
            Err(_) => Scalar::Text(Cow::Borrowed(digits)),
        },
        Json::Other("true") => Scalar::Int(1),
        Json::Other("false") => Scalar::Int(0),
        Json::Other(other) => match other.as_bytes()[0] {
            b'-' | b'0'..=b'9' => {
                other.parse::<f64>().map_or(Scalar::Text(text.into()), Scalar::Real)
            }
            // Objects and arrays keep their JSON text.
            _ => Scalar::Text(Cow::Borrowed(other)),
        },
    }
}

/// The mapped top-level fields of one object, as raw JSON borrowed from the line.
#[derive(Default)]
struct Fields<'a> {
    run_id: Option<&'a RawValue>,
    record_type: Option<&'a RawValue>,
    event_id: Option<&'a RawValue>,
    event_type: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
}

struct FieldsSeed<'m> {
    mapping: &'m Mapping,
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let m = self.mapping;
        let mut fields = Fields::default();
        // Duplicate keys: the last one wins, as in serde_json::Value and SQLite's json().
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = if key == m.run_id {
                &mut fields.run_id
            } else if key == m.record_type {
                &mut fields.record_type
            } else if key == m.event_id {
                &mut fields.event_id
            } else if key == m.event_type {
                &mut fields.event_type
            } else if key == m.ts {
                &mut fields.ts
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        crate::config::Config::for_base(std::path::Path::new("/x")).mapping
    }

    #[track_caller]
    fn check_dead(line: &str, reason: DeadReason, error_contains: &str) {
        match parse_line(line.as_bytes(), &mapping()) {
            Outcome::Dead(r, e) => {
                assert_eq!(r, reason, "{line}: {e}");
                assert!(e.contains(error_contains), "{line}: error {e:?} lacks {error_contains:?}");
            }
            other => panic!("{line}: expected dead letter, got {other:?}"),
        }
    }

    #[track_caller]
    fn check_ok(line: &str, run_id: &str, kind: Kind, event_id: Option<&str>) -> Parsed<'static> {
        let leaked: &'static str = Box::leak(line.to_string().into_boxed_str());
        match parse_line(leaked.as_bytes(), &mapping()) {
            Outcome::Record(p) => {
                assert_eq!(p.run_id, run_id, "{line}");
                assert_eq!(p.kind, kind, "{line}");
                assert_eq!(p.event_id.as_deref(), event_id, "{line}");
                p
            }
            other => panic!("{line}: expected record, got {other:?}"),
        }
    }

    #[test]
    fn valid_records() {
        check_ok(r#"{"run_id":"r1","x":1}"#, "r1", Kind::Event, None);
        check_ok(r#"{"run_id":42}"#, "42", Kind::Event, None);
        check_ok(r#"{"run_id":-0}"#, "0", Kind::Event, None);
        check_ok(r#"{"run_id":"a\/b\u0000"}"#, "a/b\0", Kind::Event, None);
        check_ok(r#"{"run_id":"r","record_type":"run"}"#, "r", Kind::Run, None);
        check_ok(r#"{"run_id":"r","record_type":"RUN"}"#, "r", Kind::Event, None);
        check_ok(r#"{"run_id":"r","event_id":7}"#, "r", Kind::Event, Some("7"));
        check_ok(r#"{"run_id":"r","event_id":"7"}"#, "r", Kind::Event, Some("7"));
        check_ok(r#"{"run_id":"r","event_id":""}"#, "r", Kind::Event, None);
        check_ok(r#"{"run_id":"r","event_id":null}"#, "r", Kind::Event, None);
        check_ok(r#"{"run_id":"r","event_id":{"a":1}}"#, "r", Kind::Event, Some(r#"{"a":1}"#));
        check_ok(r#"  {"run_id":"dup","run_id":"last"}  "#, "last", Kind::Event, None);
        check_ok("{\"run_id\":\"r\"}\r", "r", Kind::Event, None);
    }

    #[test]
    fn scalars_keep_their_sql_type() {
        let p = check_ok(r#"{"run_id":"r","event_type":"fetch","ts":1.5}"#, "r", Kind::Event, None);
        assert_eq!((p.event_type, p.ts), (Scalar::Text("fetch".into()), Scalar::Real(1.5)));
        let p = check_ok(r#"{"run_id":"r","event_type":[1],"ts":17}"#, "r", Kind::Event, None);
        assert_eq!((p.event_type, p.ts), (Scalar::Text("[1]".into()), Scalar::Int(17)));
        let p = check_ok(r#"{"run_id":"r","event_type":true}"#, "r", Kind::Event, None);
        assert_eq!((p.event_type, p.ts), (Scalar::Int(1), Scalar::Null));
    }

    #[test]
    fn bad_lines() {
        check_dead("{", DeadReason::InvalidJson, "EOF");
        check_dead(r#"{"run_id":"a"} x"#, DeadReason::InvalidJson, "trailing");
        check_dead("{\"run_id\":\"a\0\"}", DeadReason::InvalidJson, "control character");
        check_dead("[1,2]", DeadReason::NotObject, "an array");
        check_dead("\"s\"", DeadReason::NotObject, "a string");
        check_dead("12", DeadReason::NotObject, "a number");
        check_dead("nul", DeadReason::InvalidJson, "");
        check_dead(r#"{"x":1}"#, DeadReason::MissingRunId, "run_id");
        check_dead(r#"{"run_id":null}"#, DeadReason::MissingRunId, "run_id");
        check_dead(r#"{"run_id":""}"#, DeadReason::InvalidRunId, "empty");
        check_dead(r#"{"run_id":1.5}"#, DeadReason::InvalidRunId, "1.5");
        check_dead(r#"{"run_id":{"a":1}}"#, DeadReason::InvalidRunId, "integer");
        check_dead(r#"{"run_id":true}"#, DeadReason::InvalidRunId, "true");
        let deep = format!("{{\"run_id\":\"r\",\"x\":{}{}}}", "[".repeat(5000), "]".repeat(5000));
        check_dead(&deep, DeadReason::InvalidJson, "nesting deeper");
        let ok_depth = format!("{{\"run_id\":\"r\",\"x\":{}{}}}", "[".repeat(999), "]".repeat(999));
        check_ok(&ok_depth, "r", Kind::Event, None);
        let in_string = format!("{{\"run_id\":\"r\",\"x\":\"{}\\\"\"}}", "[".repeat(3000));
        check_ok(&in_string, "r", Kind::Event, None);
        let huge_id = format!("{{\"run_id\":\"{}\"}}", "a".repeat(MAX_RUN_ID_BYTES + 1));
        check_dead(&huge_id, DeadReason::InvalidRunId, "longer than");
    }

    #[test]
    fn invalid_utf8_and_blank() {
        match parse_line(b"{\"run_id\":\"\xff\"}", &mapping()) {
            Outcome::Dead(DeadReason::InvalidJson, e) => assert_eq!(e, "invalid UTF-8 at byte 11"),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_line(b"", &mapping()), Outcome::Blank);
        assert_eq!(parse_line(b" \t\r", &mapping()), Outcome::Blank);
    }

    #[test]
    fn custom_mapping_is_applied() {
        let mut m = mapping();
        m.run_id = "job".into();
        m.record_type = "kind".into();
        let line = br#"{"job":"j1","kind":"run","run_id":"ignored"}"#;
        match parse_line(line, &m) {
            Outcome::Record(p) => assert_eq!((p.run_id.as_ref(), p.kind), ("j1", Kind::Run)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_days_and_positions() {
        assert_eq!(file_day("events_20240301.ndjson"), 20240301);
        assert_eq!(file_day("events_20240301.ndjson.gz"), 20240301);
        assert_eq!(file_day("events_20240301.ndjson.1"), 20240301);
        assert_eq!(file_day("events_20240301.ndjson.20240305.gz"), 20240301);
        assert_eq!(file_day("events_20250401_0007.ndjson"), 20250401);
        assert_eq!(file_day("events_20241399.ndjson"), 0);
        assert_eq!(file_day("events_123456789.ndjson"), 0);
        assert_eq!(file_day("telemetry_20240301.ndjson"), 0, "not the producer's naming");
        assert_eq!(file_day("plain.ndjson"), 0);
        assert_eq!(source_day("/var/x/raw/events_20240301.ndjson.1"), 20240301);
        assert!(stream_pos(20240102, 1) > stream_pos(20240101, 9_999_999));
        assert!(stream_pos(20240101, 2) > stream_pos(20240101, 1));
    }

    #[test]
    fn line_keys_sort_by_line_and_differ_by_content() {
        let a = line_key(20240301, 9, &digest(b"x"));
        let b = line_key(20240301, 10, &digest(b"x"));
        assert!(a < b);
        assert!(line_key(20240302, 1, &digest(b"x")) > b, "days first");
        assert_ne!(line_key(20240301, 9, &digest(b"y")), a);
        assert_ne!(line_key(20240302, 9, &digest(b"x")), a, "another day's line");
        assert_eq!(a[..4], 20240301u32.to_be_bytes());
        assert_eq!(a[4..12], 9u64.to_be_bytes());
        assert_eq!(a[12..], digest(b"x")[..12]);
        let legacy = legacy_line_key(9, &digest(b"x"));
        assert_eq!(a[4..], legacy[..20], "the new key is the day and the legacy key's head");
    }
}
