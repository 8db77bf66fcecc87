//! The commit protocol's replay rules (issue 2, point 4), each on its own: whatever is shipped
//! again, and in whatever order files arrive, rows end up as if the stream had been read once
//! in order.

use serde_json::json;

use crate::dataset::{expected, run_row, Form, GenFile};
use crate::harness::{assert_snapshot, Shipper};

fn backfill_file(shipper: &Shipper, file: &GenFile) {
    shipper.backfill(&[shipper.path(&file.rel).to_str().expect("UTF-8")]);
}

/// Forgets every checkpoint (and the DLQ index), so the next backfill reads everything again:
/// the same replay a crash between "run DBs committed" and "checkpoint advanced" causes.
fn forget_checkpoints(shipper: &Shipper) {
    shipper.remove_db("db/shipper-state.sqlite");
}

#[test]
fn replayed_older_line_never_overwrites_a_newer_version() {
    let shipper = Shipper::new();
    let mut day1 = GenFile::new("raw/events_20240101.ndjson", Form::Finished);
    day1.good(r#"{"run_id":"r","event_id":"e1","v":"day1"}"#)
        .good(r#"{"run_id":"r","event_id":"e2","v":"day1 only"}"#)
        .good(r#"{"run_id":"r","event_id":3,"v":"day1"}"#);
    let mut day2 = GenFile::new("raw/events_20240102.ndjson", Form::Finished);
    day2.good(r#"{"run_id":"r","event_id":"3","v":"day2, a string id now"}"#)
        .good(r#"{"run_id":"r","event_id":"e1","v":"day2"}"#)
        .good(r#"{"run_id":"r","event_id":"e1","v":"day2, later line"}"#);
    day1.write(&shipper);
    day2.write(&shipper);
    let (want, _) = expected(shipper.base(), &[&day1, &day2], &[]);

    // The newer day first, then the older one: the day-2 versions stay.
    backfill_file(&shipper, &day2);
    backfill_file(&shipper, &day1);
    assert_snapshot(&shipper.snapshot(), &want);

    // Replaying the older day again changes nothing either.
    forget_checkpoints(&shipper);
    backfill_file(&shipper, &day1);
    assert_snapshot(&shipper.snapshot(), &want);
}

#[test]
fn runs_row_is_the_stream_order_merge_when_the_end_is_shipped_before_the_start() {
    let shipper = Shipper::new();
    let mut day1 = GenFile::new("raw/events_20240101.ndjson", Form::Finished);
    day1.good(r#"{"run_id":"r","record_type":"run","status":"running","start_time":"2024-01-01T23:00:00Z","config":{"lr":0.1},"metrics":{"loss":0.9,"acc":0.5},"tmp":1}"#)
        .good(r#"{"run_id":"r","record_type":"run","status":"failed","error":"oom"}"#);
    let mut day2 = GenFile::new("raw/events_20240102.ndjson", Form::Finished);
    day2.good(r#"{"run_id":"r","record_type":"run","status":"finished","end_time":"2024-01-02T01:00:00Z","metrics":{"loss":0.1},"tmp":null}"#);
    day1.write(&shipper);
    day2.write(&shipper);

    backfill_file(&shipper, &day2);
    let end_only = run_row(
        "r",
        json!({"run_id":"r","record_type":"run","status":"finished",
               "end_time":"2024-01-02T01:00:00Z","metrics":{"loss":0.1}}),
    );
    assert_snapshot(&shipper.snapshot(), &expected(shipper.base(), &[&day2], &[end_only]).0);

    backfill_file(&shipper, &day1);
    // In stream order: start, failed, finished. Arrival order would have kept "tmp" (deleted
    // by the later end record), "failed" (terminal, replaced by the later terminal "finished")
    // and loss 0.9.
    let merged = run_row(
        "r",
        json!({"run_id":"r","record_type":"run","status":"finished",
               "start_time":"2024-01-01T23:00:00Z","end_time":"2024-01-02T01:00:00Z",
               "config":{"lr":0.1},"metrics":{"loss":0.1,"acc":0.5},"error":"oom"}),
    );
    assert_snapshot(&shipper.snapshot(), &expected(shipper.base(), &[&day1, &day2], &[merged]).0);
}

#[test]
fn replayed_run_records_change_nothing() {
    let shipper = Shipper::new();
    let mut day1 = GenFile::new("raw/events_20240101.ndjson", Form::Finished);
    day1.good(r#"{"run_id":"r","record_type":"run","status":"running","start_time":1,"phase":"warmup","tmp":true}"#)
        .good(r#"{"run_id":"r","event_id":"e1"}"#)
        .good(r#"{"run_id":"r","record_type":"run","status":"running","phase":"train"}"#);
    let mut day2 = GenFile::new("raw/events_20240102.ndjson", Form::Finished);
    day2.good(r#"{"run_id":"r","record_type":"run","status":"succeeded","end_time":2,"tmp":null}"#);
    day1.write(&shipper);
    day2.write(&shipper);
    let merged = run_row(
        "r",
        json!({"run_id":"r","record_type":"run","status":"succeeded","start_time":1,
               "end_time":2,"phase":"train"}),
    );
    let (want, _) = expected(shipper.base(), &[&day1, &day2], &[merged]);

    shipper.backfill(&[]);
    assert_snapshot(&shipper.snapshot(), &want);

    // The start record read again (the span replayed after a crash): no roll-back.
    forget_checkpoints(&shipper);
    backfill_file(&shipper, &day1);
    assert_snapshot(&shipper.snapshot(), &want);

    // Everything read again, in the opposite order.
    forget_checkpoints(&shipper);
    backfill_file(&shipper, &day2);
    backfill_file(&shipper, &day1);
    assert_snapshot(&shipper.snapshot(), &want);
}

/// Two files of one day (one name in two directories) put records at the same stream
/// position: which one wins is decided by the lines themselves, so reading the files in
/// either order gives the same rows (issue 10 #7).
#[test]
fn a_tie_in_stream_order_is_decided_by_the_lines_not_the_read_order() {
    let rows_after = |order: [&str; 2]| {
        let shipper = Shipper::new();
        for dir in ["a", "b"] {
            let v = if dir == "a" { "from a" } else { "from b" };
            let status = if dir == "a" { "failed" } else { "succeeded" };
            shipper.write(
                &format!("raw/{dir}/events_20240101.ndjson"),
                format!(
                    "{{\"run_id\":\"r\",\"event_id\":\"e1\",\"v\":\"{v}\"}}\n\
                     {{\"run_id\":\"r\",\"record_type\":\"run\",\"status\":\"{status}\",\"{dir}\":1}}\n"
                )
                .as_bytes(),
            );
        }
        for dir in order {
            let path = shipper.path(&format!("raw/{dir}/events_20240101.ndjson"));
            shipper.backfill(&[path.to_str().expect("UTF-8")]).assert_success("backfill");
        }
        let snapshot = shipper.snapshot().rebased(shipper.base(), "BASE");
        (snapshot, shipper)
    };
    let (ab, _a) = rows_after(["a", "b"]);
    let (ba, _b) = rows_after(["b", "a"]);
    assert_snapshot(&ab, &ba);
    // "from b" > "from a" in byte order: b's line wins the event; the run records merge a's
    // then b's (a's line is the smaller), so b's terminal status is the later one.
    assert_eq!(ab.events.len(), 1);
    assert!(ab.events[0].data.contains("from b"), "{:?}", ab.events[0]);
    assert_eq!(ab.events[0].source, "BASE/raw/b/events_20240101.ndjson");
    assert_eq!(ab.runs.len(), 1);
    assert_eq!(ab.runs[0].status, rusqlite::types::Value::Text("succeeded".into()));
    assert_eq!(
        ab.runs[0].data,
        json!({"run_id":"r","record_type":"run","status":"succeeded","a":1,"b":1})
    );
}
