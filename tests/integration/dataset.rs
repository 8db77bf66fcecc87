//! A generator of source files that remembers what every line is, and the expected contents of
//! the run DBs and the DLQ computed from that knowledge alone (never from the shipper's
//! output): each good line's run, key and columns follow from the contract's field rules; a
//! repeated key keeps the row latest in stream order (file day, then line number); each bad
//! line is one dead letter. The merged `runs` rows are written out by hand in the tests, which
//! is the most independent oracle for the merge rules.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::Value as SqlValue;
use serde_json::Value as Json;

use crate::harness::{
    db_file_name, line_key, DeadLetter, EventRow, RunRow, Shipper, Snapshot, MAX_LINE_BYTES,
    MAX_RAW_BYTES,
};

/// What the generator knows about one line.
#[derive(Debug, Clone)]
enum What {
    Record(Rec),
    Blank,
    Dead(&'static str),
}

/// A good record, as the contract's field rules read it.
#[derive(Debug, Clone)]
struct Rec {
    run_id: String,
    is_run: bool,
    event_id: Option<String>,
    event_type: SqlValue,
    ts: SqlValue,
}

#[derive(Debug, Clone)]
struct GenLine {
    offset: u64,
    line_no: u64,
    bytes: Vec<u8>,
    what: What,
}

/// How a generated file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Plain, mtime an hour ago: a finished file.
    Finished,
    /// Plain, just written: a file a producer may still append to.
    Live,
    /// Gzip, as members cut at thirds of the content.
    Gzip,
}

/// One source file being generated.
#[derive(Debug, Clone)]
pub(crate) struct GenFile {
    /// Path relative to the base dir, e.g. `raw/events_20240101.ndjson.gz`.
    pub(crate) rel: String,
    form: Form,
    day: u64,
    bytes: Vec<u8>,
    lines: Vec<GenLine>,
    /// An unterminated last line was added; nothing may follow it.
    closed: bool,
}

impl GenFile {
    /// A file at `rel`; its stream day is the `YYYYMMDD` in its name (0 if none).
    pub(crate) fn new(rel: &str, form: Form) -> GenFile {
        GenFile {
            rel: rel.to_string(),
            form,
            day: day_of(rel),
            bytes: Vec::new(),
            lines: Vec::new(),
            closed: false,
        }
    }

    /// Total bytes (decompressed).
    pub(crate) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of lines, including an unterminated last one.
    pub(crate) fn n_lines(&self) -> u64 {
        self.lines.len() as u64
    }

    /// The first `n_lines` lines of this file, as a file of its own (what a tailer has seen
    /// once the producer wrote that far).
    pub(crate) fn prefix(&self, n_lines: usize) -> GenFile {
        let lines = self.lines[..n_lines].to_vec();
        let end = self.lines.get(n_lines).map_or(self.bytes.len(), |l| l.offset as usize);
        GenFile { bytes: self.bytes[..end].to_vec(), lines, closed: false, ..self.clone() }
    }

    /// This file as seen by a reader that started after its first `n_lines` lines: same
    /// bytes, only the later lines expected.
    pub(crate) fn skipping(&self, n_lines: usize) -> GenFile {
        GenFile { lines: self.lines[n_lines..].to_vec(), ..self.clone() }
    }

    /// A valid record (event or run record); its expectation follows from the text.
    pub(crate) fn good(&mut self, text: &str) -> &mut GenFile {
        let rec = expect_record(text);
        self.push(text.as_bytes(), What::Record(rec), true)
    }

    /// A valid event without `event_id`, `event_type`, `ts` that the generator's own JSON
    /// parser cannot read (nested deeper than serde_json's 128 levels, integers beyond 64
    /// bits): its run is given instead of read from the text.
    pub(crate) fn good_explicit(&mut self, text: &str, run_id: &str) -> &mut GenFile {
        let rec = Rec {
            run_id: run_id.to_string(),
            is_run: false,
            event_id: None,
            event_type: SqlValue::Null,
            ts: SqlValue::Null,
        };
        self.push(text.as_bytes(), What::Record(rec), true)
    }

    /// A blank (empty or whitespace-only) line: counted, never stored.
    pub(crate) fn blank(&mut self, text: &str) -> &mut GenFile {
        assert!(text.bytes().all(|b| b" \t\r".contains(&b)), "not blank: {text:?}");
        self.push(text.as_bytes(), What::Blank, true)
    }

    /// A line the contract dead-letters with `reason`.
    pub(crate) fn bad(&mut self, bytes: &[u8], reason: &'static str) -> &mut GenFile {
        assert!(!bytes.contains(&b'\n'), "a line has no newline inside");
        self.push(bytes, What::Dead(reason), true)
    }

    /// A valid JSON object of exactly `len` bytes (> max_line_bytes): `line_too_long`.
    pub(crate) fn too_long(&mut self, len: usize) -> &mut GenFile {
        self.too_long_of(len, r#"{"run_id":"alpha","event_id":"too-long","pad":""#, 'x')
    }

    /// A valid JSON object of about `len` bytes (> max_line_bytes): `head`, then `fill`
    /// repeated, then `"}`.
    pub(crate) fn too_long_of(&mut self, len: usize, head: &str, fill: char) -> &mut GenFile {
        assert!(len > MAX_LINE_BYTES);
        let mut line = head.to_string();
        while line.len() + fill.len_utf8() + 2 <= len {
            line.push(fill);
        }
        line.push_str("\"}");
        self.bad(line.as_bytes(), "line_too_long")
    }

    /// Unterminated trailing bytes that parse: a record of a finished file.
    pub(crate) fn tail_good(&mut self, text: &str) {
        let rec = expect_record(text);
        self.push(text.as_bytes(), What::Record(rec), false);
    }

    /// Unterminated trailing bytes that do not parse: `incomplete_line` in a finished file.
    pub(crate) fn tail_bad(&mut self, bytes: &[u8]) {
        self.push(bytes, What::Dead("incomplete_line"), false);
    }

    fn push(&mut self, bytes: &[u8], what: What, newline: bool) -> &mut GenFile {
        assert!(!self.closed, "{}: nothing may follow an unterminated line", self.rel);
        let offset = self.bytes.len() as u64;
        let line_no = self.lines.len() as u64 + 1;
        self.bytes.extend_from_slice(bytes);
        if newline {
            self.bytes.push(b'\n');
        } else {
            self.closed = true;
        }
        self.lines.push(GenLine { offset, line_no, bytes: bytes.to_vec(), what });
        self
    }

    /// Writes the file into `shipper`'s base dir.
    pub(crate) fn write(&self, shipper: &Shipper) {
        match self.form {
            Form::Finished => {
                shipper.write(&self.rel, &self.bytes);
                shipper.age(&self.rel);
            }
            Form::Live => {
                shipper.write(&self.rel, &self.bytes);
            }
            Form::Gzip => {
                let n = self.bytes.len();
                shipper.write_gz(&self.rel, &self.bytes, &[n / 3, 2 * n / 3]);
            }
        }
    }
}

/// The producer's `YYYYMMDD` (of `events_YYYYMMDD`) in a file name, 0 if none.
fn day_of(rel: &str) -> u64 {
    crate::harness::producer_day(rel)
}

/// Reads a good line the way the contract describes; panics if the generator was asked to
/// call something good that the contract would dead-letter.
fn expect_record(text: &str) -> Rec {
    assert!(text.len() <= MAX_LINE_BYTES);
    let short = short(text);
    let value: Json =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {short}"));
    let object = value.as_object().unwrap_or_else(|| panic!("not an object: {short}"));
    let run_id = match object.get("run_id") {
        Some(Json::String(s)) if !s.is_empty() && s.len() <= 4096 => s.clone(),
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        other => panic!("generator: bad run_id {other:?} in a good line: {short}"),
    };
    let event_id = match object.get("event_id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) if s.is_empty() => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        other => panic!("generator: keep event_ids to strings and integers, got {other:?}"),
    };
    let column = |key: &str| match object.get(key) {
        None | Some(Json::Null) => SqlValue::Null,
        Some(Json::String(s)) => SqlValue::Text(s.clone()),
        Some(Json::Number(n)) if n.is_i64() => SqlValue::Integer(n.as_i64().expect("i64")),
        Some(Json::Number(n)) => SqlValue::Real(n.as_f64().expect("f64")),
        other => panic!("generator: keep {key} to strings and numbers, got {other:?}"),
    };
    Rec {
        run_id,
        is_run: object.get("record_type") == Some(&Json::String("run".into())),
        event_id,
        event_type: column("event_type"),
        ts: column("ts"),
    }
}

/// A dead letter's `raw`: the line as lossy UTF-8, cut to at most `dlq.max_raw_bytes` bytes
/// (at a character boundary, so it stays valid text of at most that size).
fn cut_raw(line: &[u8]) -> String {
    // Every output character comes from at least one input byte, so this prefix suffices.
    let lossy = String::from_utf8_lossy(&line[..line.len().min(MAX_RAW_BYTES + 4)]);
    let mut end = lossy.len().min(MAX_RAW_BYTES);
    while !lossy.is_char_boundary(end) {
        end -= 1;
    }
    lossy[..end].to_string()
}

/// `text` cut to at most 200 bytes, for messages.
fn short(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A hand-written `runs` row: `status`, `started_at`, `ended_at` are `data`'s `status`,
/// `start_time`, `end_time` as given.
pub(crate) fn run_row(run_id: &str, data: Json) -> RunRow {
    let column = |key: &str| match data.get(key) {
        None | Some(Json::Null) => SqlValue::Null,
        Some(Json::String(s)) => SqlValue::Text(s.clone()),
        Some(Json::Number(n)) if n.is_i64() => SqlValue::Integer(n.as_i64().expect("i64")),
        Some(Json::Number(n)) => SqlValue::Real(n.as_f64().expect("f64")),
        Some(other) => panic!("keep {key} to strings and numbers, got {other}"),
    };
    RunRow {
        db: db_file_name(run_id),
        run_id: run_id.to_string(),
        status: column("status"),
        started_at: column("start_time"),
        ended_at: column("end_time"),
        data,
    }
}

/// The expected state after shipping `files` (in any order) into `base`: every event of the
/// files, the latest version per key; a `runs` row for every run seen (`{}` and NULLs unless
/// `runs` gives its merged row; every run with run records must be given); every dead letter.
pub(crate) fn expected(
    base: &Path,
    files: &[&GenFile],
    runs: &[RunRow],
) -> (Snapshot, Vec<DeadLetter>) {
    let mut events: BTreeMap<(String, String), (u64, EventRow)> = BTreeMap::new();
    let mut seen_runs: BTreeMap<String, bool> = BTreeMap::new();
    let mut dead = Vec::new();
    for file in files {
        let source = base.join(&file.rel).to_str().expect("UTF-8").to_string();
        for line in &file.lines {
            match &line.what {
                What::Blank => {}
                What::Dead(reason) => dead.push(DeadLetter {
                    source: source.clone(),
                    line_no: line.line_no,
                    offset: line.offset,
                    reason: reason.to_string(),
                    raw_len: line.bytes.len() as u64,
                    raw: cut_raw(&line.bytes),
                }),
                What::Record(rec) => {
                    *seen_runs.entry(rec.run_id.clone()).or_default() |= rec.is_run;
                    if rec.is_run {
                        continue;
                    }
                    let db = db_file_name(&rec.run_id);
                    let key = rec
                        .event_id
                        .clone()
                        .unwrap_or_else(|| line_key(&file.rel, line.line_no, &line.bytes));
                    let pos = file.day * 10_000_000_000 + line.line_no;
                    let row = EventRow {
                        db: db.clone(),
                        event_key: key.clone(),
                        run_id: rec.run_id.clone(),
                        event_type: rec.event_type.clone(),
                        ts: rec.ts.clone(),
                        data: String::from_utf8(line.bytes.clone()).expect("good lines are UTF-8"),
                        source: source.clone(),
                        line_no: line.line_no as i64,
                    };
                    match events.get(&(db.clone(), key.clone())) {
                        Some((old_pos, _)) if *old_pos >= pos => {}
                        _ => {
                            events.insert((db, key), (pos, row));
                        }
                    }
                }
            }
        }
    }
    let mut run_rows = Vec::new();
    for (run_id, has_run_records) in &seen_runs {
        match runs.iter().find(|r| &r.run_id == run_id) {
            Some(row) => run_rows.push(row.clone()),
            None => {
                assert!(
                    !has_run_records,
                    "generator: run {run_id:?} has run records; give its merged row"
                );
                run_rows.push(run_row(run_id, serde_json::json!({})));
            }
        }
    }
    for row in runs {
        assert!(
            seen_runs.contains_key(&row.run_id),
            "generator: run {:?} has no records",
            row.run_id
        );
    }
    let mut snapshot =
        Snapshot { runs: run_rows, events: events.into_values().map(|(_, row)| row).collect() };
    snapshot.sort();
    dead.sort();
    (snapshot, dead)
}

/// The multi-day set: five daily files (a plain one; two gzip ones of several members cut
/// mid-line; a plain one; one of blank lines only; plain ones finished), with every kind of
/// bad line, producer retries, changed content under one `event_id` across days, runs crossing
/// midnight, hostile run_ids.
/// Returns the files and the hand-merged `runs` rows of the runs that have run records.
pub(crate) fn multi_day() -> (Vec<GenFile>, Vec<RunRow>) {
    use serde_json::json;

    // The oldest day, plain: its unterminated last line parses, so it is a record.
    let mut day0 = GenFile::new("raw/events_20231231.ndjson", Form::Finished);
    bulk(&mut day0, 0, 0..10);
    day0.blank("\r").good(r#"{"run_id":" ","n":5}"#).good(&format!(
        r#"{{"run_id":"alpha","s":"{}","event_type":"nesting inside a string is fine"}}"#,
        "[".repeat(5000)
    ));
    day0.tail_good(r#"{"run_id":"alpha","event_id":"tail-0","v":0}"#);

    let mut day1 = GenFile::new("raw/events_20240101.ndjson.gz", Form::Gzip);
    day1.good(r#"{"run_id":"night","record_type":"run","status":"running","start_time":"2024-01-01T23:50:00Z","host":"crawl-1","cfg":{"depth":3,"tmp":true}}"#)
        .good(r#"{"run_id":"alpha","record_type":"run","status":"running","start_time":1704067200}"#);
    bulk(&mut day1, 1, 0..60);
    day1.good(r#"{"run_id":"alpha","event_id":7,"v":"day1"}"#)
        .good(r#"{"run_id":"alpha","event_id":"retry-1","event_type":"fetch","v":1}"#)
        .good(r#"{"run_id":"alpha","event_id":"retry-1","event_type":"fetch","v":1}"#)
        .good(r#"{"run_id":"night","event_id":"chg","v":"old"}"#)
        .good(r#"{"run_id":"night","event_id":"chg3","v":"day1"}"#)
        .good(r#"{"run\u005fid":"alpha","event\u005fid":"escaped-key-names","ts":1e3}"#)
        .good(r#"{"run_id":"alpha","event_id":"caf\u00e9","v":"escaped"}"#)
        .blank("")
        .blank("  \t")
        .bad(br#"{"run_id":"alpha","#, "invalid_json")
        .bad(b"[1,2,3]", "not_object")
        .bad(br#"{"event_id":"x"}"#, "missing_run_id")
        .bad(br#"{"run_id":""}"#, "invalid_run_id")
        .good(r#"{"run_id":"../x","event_id":"h1"}"#)
        .good(r#"{"run_id":"a/b","n":1}"#)
        .good(r#"{"run_id":"alpha","event_id":"","n":1}"#)
        .good(r#"{"run_id":"alpha","event_id":null,"n":2}"#)
        .good(r#"{"run_id":"alpha","record_type":"run","status":"finished","end_time":1704070800,"result":{"pages":100}}"#)
        .good(r#"{"run_id":"night","record_type":"run","status":"running","heartbeat":1,"cfg":{"tmp":null}}"#);
    bulk(&mut day1, 1, 60..90);
    day1.good(r#"{"run_id":"alpha","event_id":"retry-1","event_type":"fetch","v":1}"#)
        .good(r#"{"run_id":"42","record_type":"run","status":"done","start_time":5}"#);
    day1.tail_good(r#"{"run_id":"alpha","event_id":"tail-1","v":1}"#);

    let mut day2 = GenFile::new("raw/events_20240102.ndjson.gz", Form::Gzip);
    day2.good(r#"{"run_id":"night","record_type":"run","status":"finished","end_time":"2024-01-02T00:10:00Z","cfg":{"depth":4},"host":null}"#);
    bulk(&mut day2, 2, 0..50);
    let long_id = format!(r#"{{"run_id":"{}","n":3}}"#, "x".repeat(1000));
    let longest_id = format!(r#"{{"run_id":"{}","n":4}}"#, "z".repeat(4096));
    let too_long_id = format!(r#"{{"run_id":"{}","n":4}}"#, "y".repeat(4097));
    let deep = format!(r#"{{"run_id":"alpha","deep":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
    day2.good(r#"{"run_id":"alpha","event_id":"7","v":"day2"}"#)
        .good(r#"{"run_id":"night","event_id":"chg","v":"new"}"#)
        .good(r#"{"run_id":"alpha","event_id":"café","v":"the same id, unescaped"}"#)
        .good(r#"{"run_id":"a\/b","record_type":"r\u0075n","status":"running"}"#)
        .good(r#"{"run_id":"alpha","event_id":"retry-1","event_type":"fetch","v":1}"#)
        .good(r#"{"run_id":42,"event_id":"i1","ts":1.25}"#)
        .good(r#"{"run_id":"42","event_id":"i2","ts":-7}"#)
        .good(r#"{"run_id":"\u002f","n":1}"#)
        .good(r#"{"run_id":"\u0000","n":2}"#)
        .good(&long_id)
        .good(&longest_id)
        .good(r#"{"run_id":12345678901234567890,"event_id":-3}"#)
        .good(r#"{"run_id":"alpha","record_type":"run","event_id":"rr-1","phase":"post"}"#)
        .good(r#"{"run_id":"alpha","record_type":"RUN","event_id":"not-a-run-record"}"#)
        .good(r#"{"run_id":"%41","n":6}"#)
        .good(r#"{"run_id":"A","n":7}"#)
        .good(r#"{"run_id":".","n":8}"#)
        .good(r#"{"run_id":"..","n":9}"#)
        .good(r#"{"run_id":"alpha","event_id":"shared","v":"alpha"}"#)
        .good(r#"{"run_id":"night","event_id":"shared","v":"night"}"#)
        .bad(too_long_id.as_bytes(), "invalid_run_id")
        .bad(br#"{"run_id":1e3}"#, "invalid_run_id")
        .bad(deep.as_bytes(), "invalid_json")
        .too_long(2 * 1024 * 1024)
        .bad(b"{\"run_id\":\"alpha\",\"x\":\"a\0b\"}", "invalid_json")
        .bad(b"{\"run_id\":\"alpha\",\"x\":\"\xff\xfe\"}", "invalid_json")
        .bad(br#""just a string""#, "not_object")
        .bad(b"42", "not_object")
        .bad(b"null", "not_object")
        .bad(b"true", "not_object")
        .bad(br#"{"run_id":1.5}"#, "invalid_run_id")
        .bad(br#"{"run_id":true}"#, "invalid_run_id")
        .bad(br#"{"run_id":{"a":1}}"#, "invalid_run_id")
        .bad(br#"{"run_id":[1]}"#, "invalid_run_id")
        .bad(br#"{"run_id":null}"#, "missing_run_id");
    bulk(&mut day2, 2, 50..70);
    day2.tail_bad(br#"{"run_id":"alpha","x":"#);

    let mut day3 = GenFile::new("raw/events_20240103.ndjson", Form::Finished);
    day3.good(r#"{"run_id":"night","record_type":"run","status":"running","heartbeat":2}"#)
        .good(r#"{"run_id":42,"record_type":"run","status":"running","n":1}"#);
    bulk(&mut day3, 3, 0..40);
    day3.good(r#"{"run_id":"night","event_id":"chg3","v":"day3"}"#)
        .bad(&random_binary_line(0x5eed, 300), "invalid_json")
        .good("{\"run_id\":\"alpha\",\"event_id\":\"crlf\",\"v\":1}\r")
        .good("   {\"run_id\":\"alpha\",\"event_id\":\"pad\"}  \t")
        .good(r#"{"run_id":"ünï","event_id":"u1","event_type":"日本","ts":-3}"#)
        .good(r#"{"run_id":"night","event_id":"r3","v":1}"#)
        .good(r#"{"run_id":"night","event_id":"r3","v":1}"#)
        .too_long(2 * 1024 * 1024 + 17)
        .good(&sized_line(MAX_LINE_BYTES))
        .too_long(MAX_LINE_BYTES + 1)
        .good_explicit(&nested(999), "alpha")
        .good_explicit(
            r#"{"run_id":123456789012345678901234567890,"n":1}"#,
            "123456789012345678901234567890",
        )
        .good(r#"{"run_id":"123456789012345678901234567890","n":2}"#)
        .bad(br#"{"run_id":007}"#, "invalid_json")
        .bad(nested(1000).as_bytes(), "invalid_json")
        .bad(b"\0{\"run_id\":\"alpha\"}", "invalid_json");
    bulk(&mut day3, 3, 40..60);
    day3.tail_bad(br#"{"run_id":"alpha","broken"#);

    let runs = vec![
        run_row(
            "alpha",
            json!({"run_id":"alpha","record_type":"run","status":"finished",
                   "start_time":1704067200,"end_time":1704070800,"result":{"pages":100},
                   "event_id":"rr-1","phase":"post"}),
        ),
        // Crosses midnight: started on day 1, ended on day 2; the day-3 heartbeat merges its
        // other keys but does not resurrect the run.
        run_row(
            "night",
            json!({"run_id":"night","record_type":"run","status":"finished",
                   "start_time":"2024-01-01T23:50:00Z","end_time":"2024-01-02T00:10:00Z",
                   "cfg":{"depth":4},"heartbeat":2}),
        ),
        // `a\/b` is `a/b`, and `r\u0075n` is `run`.
        run_row("a/b", json!({"run_id":"a/b","record_type":"run","status":"running"})),
        // "42" and 42 are one run; the later record's integer run_id wins in `data`.
        run_row(
            "42",
            json!({"run_id":42,"record_type":"run","status":"done","start_time":5,"n":1}),
        ),
    ];
    // Only blank lines.
    let mut day4 = GenFile::new("raw/events_20240104.ndjson", Form::Finished);
    day4.blank("").blank(" ").blank("\t\r");
    (vec![day0, day1, day2, day3, day4], runs)
}

/// A valid event of exactly `len` bytes.
fn sized_line(len: usize) -> String {
    let head = format!(r#"{{"run_id":"alpha","event_id":"len-{len}","pad":""#);
    format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
}

/// An event whose arrays nest `depth` deep inside the object, i.e. `depth + 1` levels.
fn nested(depth: usize) -> String {
    format!(
        r#"{{"run_id":"alpha","depth":{depth},"x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// Ordinary events of `day`: three runs (one with an integer run_id every other time), most
/// with an `event_id` unique to the day, some without; string, integer and float columns.
fn bulk(file: &mut GenFile, day: u32, range: std::ops::Range<u32>) {
    for i in range {
        let run = match i % 3 {
            0 => r#""alpha""#,
            1 => r#""night""#,
            _ if i % 2 == 0 => "42",
            _ => r#""42""#,
        };
        let event_type = ["fetch", "parse", "store"][(i % 3) as usize];
        let ts = if i % 5 == 0 {
            format!("{}.5", 1_704_067_200 + i)
        } else {
            (1_704_067_200 + i).to_string()
        };
        let id = if i % 4 == 3 { String::new() } else { format!(r#""event_id":"d{day}-{i}","#) };
        file.good(&format!(
            r#"{{"run_id":{run},{id}"event_type":"{event_type}","ts":{ts},"payload":{{"url":"https://example.com/{day}/{i}","tags":["a","b"],"n":{i}}}}}"#
        ));
    }
}

/// Deterministic random bytes without a newline, starting with an invalid UTF-8 byte.
pub(crate) fn random_binary_line(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = vec![0xff];
    while out.len() < len {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let byte = (state >> 24) as u8;
        if byte != b'\n' {
            out.push(byte);
        }
    }
    out
}
