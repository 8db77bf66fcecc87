//! `status --json` after a partial read, and `check-config`'s exit code for a bad config.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value as Json};

use crate::dataset::{expected, Form, GenFile};
use crate::harness::{assert_snapshot, Checkpoint, Shipper};

/// `status --base D --json`, parsed.
fn status(shipper: &Shipper) -> Json {
    let finished = shipper.run_cmd(&["status"], &["--json"]);
    finished.assert_success("status --json");
    serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", finished.stdout))
}

/// The contract's fields of one `files` entry (more are allowed), checking `last_read_at` is
/// a recent RFC 3339 time.
fn file_status(entry: &Json) -> Json {
    let at = entry["last_read_at"].as_str().unwrap_or_else(|| panic!("last_read_at: {entry}"));
    let at = humantime::parse_rfc3339_weak(at).unwrap_or_else(|e| panic!("last_read_at {at}: {e}"));
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(age < Duration::from_secs(600), "last_read_at is {age:?} old: {entry}");
    json!({
        "path": entry["path"],
        "offset": entry["offset"],
        "size": entry["size"],
        "lag_bytes": entry["lag_bytes"],
    })
}

/// Total size of the files in `D/db/runs`.
fn run_db_bytes(shipper: &Shipper) -> u64 {
    std::fs::read_dir(shipper.path("db/runs"))
        .expect("db/runs")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .sum()
}

#[test]
fn status_json_reports_exact_offset_size_and_lag_after_a_partial_read() {
    let shipper = Shipper::new();
    let mut file = GenFile::new("raw/events_20240107.ndjson", Form::Live);
    file.good(r#"{"run_id":"s","event_id":"1"}"#)
        .good(r#"{"run_id":"s","ts":2}"#)
        .bad(b"{nope", "invalid_json")
        .good(r#"{"run_id":"s","event_id":"3"}"#);
    file.write(&shipper);
    // A producer is in the middle of writing line 5.
    let partial = r#"{"run_id":"s","event_id":"late""#;
    shipper.append(&file.rel, partial.as_bytes());

    shipper.backfill(&[]);

    let path = shipper.source(&file.rel);
    let size = file.len() + partial.len() as u64;
    assert_eq!(
        shipper.checkpoints(),
        [Checkpoint { path: path.clone(), offset: file.len(), line_no: 4 }]
    );
    let got = status(&shipper);
    let files: Vec<Json> = got["files"]
        .as_array()
        .unwrap_or_else(|| panic!("files: {got}"))
        .iter()
        .map(file_status)
        .collect();
    assert_eq!(
        files,
        [json!({"path": path, "offset": file.len(), "size": size, "lag_bytes": partial.len()})]
    );
    // The contract's fields, exactly (more are allowed: `wal_bytes`).
    assert_eq!(got["runs"]["count"], json!(1));
    assert_eq!(got["runs"]["bytes"], json!(run_db_bytes(&shipper)));
    assert_eq!(got["dlq"]["lines"], json!(1));
    let by_reason: serde_json::Map<String, Json> = got["dlq"]["by_reason"]
        .as_object()
        .unwrap_or_else(|| panic!("by_reason: {got}"))
        .iter()
        .filter(|(_, n)| **n != json!(0))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(Json::Object(by_reason), json!({"invalid_json": 1}));
    assert_snapshot(&shipper.snapshot(), &expected(shipper.base(), &[&file], &[]).0);

    // The producer ends the line: the next backfill ships it and the lag is 0.
    shipper.append(&file.rel, b"}\n");
    let mut whole = file.clone();
    whole.good(&format!("{partial}}}"));
    shipper.backfill(&[]);
    let got = status(&shipper);
    let files: Vec<Json> =
        got["files"].as_array().expect("files").iter().map(file_status).collect();
    assert_eq!(
        files,
        [json!({"path": path, "offset": size + 2, "size": size + 2, "lag_bytes": 0})]
    );
    assert_snapshot(&shipper.snapshot(), &expected(shipper.base(), &[&whole], &[]).0);
}

/// `check-config --config F` with a config that has one unknown key exits 2 naming the key.
#[track_caller]
fn check_unknown_key(shipper: &Shipper, toml: &str, key: &str) {
    let config = shipper.write("config.toml", toml.as_bytes());
    let finished = shipper.run_bare(&["check-config", "--config", config.to_str().expect("UTF-8")]);
    assert_eq!(finished.status.code(), Some(2), "{toml}\nstderr:\n{}", finished.stderr);
    assert!(finished.stderr.contains(key), "stderr does not name {key:?}:\n{}", finished.stderr);
}

#[test]
fn check_config_exits_2_naming_an_unknown_key() {
    let shipper = Shipper::new();
    let paths = format!("paths = [\"{}/raw/events_*.ndjson\"]", shipper.base().display());
    check_unknown_key(&shipper, &format!("[sources]\n{paths}\nfrobnicate = true\n"), "frobnicate");
    check_unknown_key(
        &shipper,
        &format!("[sources]\n{paths}\n[output]\nbatch_max_evnts = 10\n"),
        "batch_max_evnts",
    );
    check_unknown_key(
        &shipper,
        &format!("[sources]\n{paths}\n[retention_typo]\nmax_age = \"1d\"\n"),
        "retention_typo",
    );
}

#[test]
fn status_of_a_fresh_base_is_empty_and_a_missing_backfill_path_is_a_usage_error() {
    let shipper = Shipper::new();
    let got = status(&shipper);
    assert_eq!(got["files"], json!([]));
    assert_eq!(got["runs"]["count"], json!(0));
    assert_eq!(got["dlq"]["lines"], json!(0));

    let missing = shipper.path("raw/no_such_file.ndjson");
    let finished = shipper.run_cmd(&["backfill"], &[missing.to_str().expect("UTF-8")]);
    assert_eq!(finished.status.code(), Some(2), "stderr:\n{}", finished.stderr);
    assert!(finished.stderr.contains("no_such_file.ndjson"), "stderr:\n{}", finished.stderr);
}

#[test]
fn directories_are_created_0750_and_a_world_writable_output_dir_is_refused_with_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let shipper = Shipper::new().with_umask_000();
    shipper.write("raw/events_20240301.ndjson", b"{\"run_id\":\"a\"}\n");
    shipper.age("raw/events_20240301.ndjson");
    shipper.backfill(&[]);
    let mode = |rel: &str| {
        std::fs::metadata(shipper.path(rel)).expect("stat").permissions().mode() & 0o777
    };
    for dir in ["db", "db/runs", "dlq"] {
        assert_eq!(mode(dir), 0o750, "{dir} under umask 000");
    }
    let runs = shipper.path("db/runs");
    std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    for command in ["run", "backfill", "maintain"] {
        let finished = shipper.run_cmd(&[command], &[]);
        let context = format!("{command}; stderr:\n{}", finished.stderr);
        assert_eq!(finished.status.code(), Some(2), "{context}");
        for needle in ["output.dir", "world-writable", runs.to_str().expect("UTF-8")] {
            assert!(finished.stderr.contains(needle), "no {needle:?}: {context}");
        }
    }
    assert_eq!(mode("db/runs"), 0o777, "the operator's to fix, not changed behind their back");
}
