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

/// The keys of a JSON object, sorted.
#[track_caller]
fn keys(value: &Json) -> Vec<&str> {
    let object = value.as_object().unwrap_or_else(|| panic!("not an object: {value}"));
    object.keys().map(String::as_str).collect()
}

/// Scripts rely on `status --json`: keys may be added (here, with the test), never renamed or
/// dropped. Also checks the WAL figures against a WAL that another connection keeps alive.
#[test]
fn status_json_has_exactly_its_documented_keys_and_counts_wal_files() {
    let shipper = Shipper::new();
    let mut file = GenFile::new("raw/events_20240108.ndjson", Form::Live);
    file.good(r#"{"run_id":"w","event_id":"1"}"#).bad(b"[1]", "not_object");
    file.write(&shipper);
    shipper.backfill(&[]);

    // A reader/writer that disabled autocheckpoints holds a WAL open (as a dashboard might).
    let db = shipper.path("db/runs/w.sqlite");
    let conn = rusqlite::Connection::open(&db).expect("open run DB");
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint = 0; CREATE TABLE scratch(x); \
         INSERT INTO scratch VALUES (randomblob(100000));",
    )
    .expect("write into the WAL");
    let wal = std::fs::metadata(shipper.path("db/runs/w.sqlite-wal")).expect("WAL").len();
    assert!(wal > 100_000, "WAL of {wal} bytes");

    let got = status(&shipper);
    assert_eq!(keys(&got), ["dlq", "files", "runs"]);
    let files = got["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{got}");
    assert_eq!(
        keys(&files[0]),
        ["lag_bytes", "last_read_at", "line_no", "offset", "path", "present", "size"]
    );
    assert_eq!((&files[0]["line_no"], &files[0]["present"]), (&json!(2), &json!(true)));
    assert_eq!(keys(&got["runs"]), ["bytes", "catalog", "count", "largest_wals", "wal_bytes"]);
    assert_eq!(got["runs"]["wal_bytes"], json!(wal));
    assert_eq!(got["runs"]["largest_wals"], json!([{"name": "w.sqlite-wal", "bytes": wal}]));
    assert_eq!(got["runs"]["bytes"], json!(run_db_bytes(&shipper)));
    assert_eq!(keys(&got["dlq"]), ["by_reason", "lines"]);
    assert_eq!(got["dlq"]["by_reason"], json!({"not_object": 1}));
    drop(conn);
}

/// The human table: exact headers, every line within 80 columns, a long path shortened in
/// the middle with its file name whole, the WAL and the dead letters by reason.
#[test]
fn status_table_fits_80_columns_and_shortens_long_paths() {
    let shipper = Shipper::new();
    let rel = "raw/a-rather-long-directory-name/and-another-level/events_20240109.ndjson";
    let mut file = GenFile::new(rel, Form::Live);
    file.good(r#"{"run_id":"t","event_id":"1"}"#).bad(b"{nope", "invalid_json");
    file.write(&shipper);
    let path = shipper.source(rel);
    assert!(path.chars().count() > 40, "{path}");
    shipper.backfill(&[&path]);

    let finished = shipper.run_cmd(&["status"], &[]);
    finished.assert_success("status");
    let out = &finished.stdout;
    for line in out.lines() {
        assert!(line.chars().count() <= 80, "{} columns: {line:?}\n{out}", line.chars().count());
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "FILE                                     OFFSET       SIZE        LAG  LAST READ",
        "\n{out}"
    );
    let row = lines[1];
    assert!(row.contains("…/events_20240109.ndjson "), "not shortened in the middle:\n{out}");
    assert!(row.starts_with(&path[..5]), "the head of the path is kept:\n{out}");
    assert!(row.trim_end().ends_with(" ago"), "no age:\n{out}");
    let size = format!("{} B", file.len());
    assert_eq!(row.matches(&size).count(), 2, "offset and size {size}:\n{out}");
    assert!(lines[2].starts_with("total: 1 file ") && lines[2].ends_with(" 0 B"), "\n{out}");
    let at = |header: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(header))
            .unwrap_or_else(|| panic!("{header}:\n{out}"))
    };
    let runs = at("RUN DBS ");
    assert!(lines[runs].ends_with(" COUNT       SIZE        WAL"), "\n{out}");
    // The directory (itself shortened: the temp dir is long), 1 DB, its size, no WAL left.
    let fields: Vec<&str> = lines[runs + 1].split_whitespace().collect();
    assert!(fields[0].ends_with("/db/runs") && fields[1] == "1", "\n{out}");
    assert!(lines[runs + 1].ends_with(" 0 B"), "\n{out}");
    let dlq = at("DEAD LETTERS ");
    assert!(lines[dlq].ends_with(" LINES"), "\n{out}");
    let reason: Vec<&str> = lines[dlq + 2].split_whitespace().collect();
    assert_eq!(reason, ["invalid_json", "1"], "\n{out}");
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
