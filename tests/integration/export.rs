//! `export`: runs shipped by `backfill`, then exported and read back — Parquet with the
//! `parquet` crate's reader (types, values, a typed column with a NULL), NDJSON and CSV byte
//! for byte, `--since/--until` over a catalog made by the test with the contract's schema, a
//! missing run, and (when installed) DuckDB or pyarrow reading the Parquet.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::Array;
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value as Json};

use crate::harness::{line_key, Shipper};

const FILE: &str = "raw/events_20240301.ndjson";

/// The lines of run `r1` (one run record, three events: one keyed by `event_id`, two derived)
/// and one event of run `r2`, with text that needs quoting in CSV.
fn lines() -> Vec<&'static str> {
    vec![
        r#"{"run_id":"r1","record_type":"run","status":"finished","start_time":"2024-03-01T10:00:00Z"}"#,
        r#"{"run_id":"r1","event_id":"e-1","event_type":"fetch","ts":"2024-03-01T10:00:01Z","status":200}"#,
        r#"{"run_id":"r1","event_type":"two\nlines, \"quoted\"","ts":"2024-03-01T10:00:02Z","status":"oops"}"#,
        r#"{"run_id":"r1","ts":3,"status":404,"note":"a,b"}"#,
        r#"{"run_id":"r2","event_type":"fetch","status":500}"#,
    ]
}

/// A `--base` installation with [`lines`] shipped and a typed column `http_status` (INTEGER,
/// VIRTUAL, NULL for a non-integer, as `[columns]` adds it) in `r1`'s DB.
fn shipped() -> Shipper {
    let shipper = Shipper::new();
    shipper.write(FILE, format!("{}\n", lines().join("\n")).as_bytes());
    shipper.age(FILE);
    shipper.backfill(&[]);
    let conn = rusqlite::Connection::open(shipper.path("db/runs/r1.sqlite")).unwrap();
    conn.execute_batch(
        "ALTER TABLE events ADD COLUMN http_status INTEGER AS (
             CASE WHEN json_type(data, '$.status') = 'integer'
             THEN json_extract(data, '$.status') END) VIRTUAL",
    )
    .unwrap();
    shipper
}

/// The derived key of line `line_no` of [`FILE`], as export writes it (lowercase hex).
fn key(line_no: u64) -> String {
    let line = lines()[line_no as usize - 1];
    line_key(FILE, line_no, line.as_bytes()).strip_prefix("blob:").unwrap().to_string()
}

/// `r1`'s rows as JSON values, in the exported column order.
fn r1_rows(shipper: &Shipper) -> Vec<Json> {
    let source = shipper.source(FILE);
    vec![
        json!(["r1", "e-1", "fetch", "2024-03-01T10:00:01Z", source, 2, lines()[1], 200]),
        json!([
            "r1",
            key(3),
            "two\nlines, \"quoted\"",
            "2024-03-01T10:00:02Z",
            source,
            3,
            lines()[2],
            null
        ]),
        json!(["r1", key(4), null, "3", source, 4, lines()[3], 404]),
    ]
}

fn export(shipper: &Shipper, args: &[&str]) -> crate::harness::Finished {
    shipper.run_cmd(&["export"], args)
}

/// Column names and types, and every row as JSON values, of a Parquet file.
fn read_parquet(path: &Path) -> (Vec<(String, DataType)>, Vec<Json>) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    for row_group in builder.metadata().row_groups() {
        for column in row_group.columns() {
            assert!(
                matches!(column.compression(), parquet::basic::Compression::ZSTD(_)),
                "{} of {} is {:?}",
                column.column_path(),
                path.display(),
                column.compression()
            );
        }
    }
    let schema = builder.schema().clone();
    let columns =
        schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
    let mut rows = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        for idx in 0..batch.num_rows() {
            let row: Vec<Json> = batch
                .columns()
                .iter()
                .map(|array| match array.data_type() {
                    _ if array.is_null(idx) => Json::Null,
                    DataType::Utf8 => json!(array.as_string::<i32>().value(idx)),
                    DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(idx)),
                    DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(idx)),
                    other => panic!("unexpected type {other}"),
                })
                .collect();
            rows.push(Json::Array(row));
        }
    }
    (columns, rows)
}

fn names_and_types(columns: &[(&str, DataType)]) -> Vec<(String, DataType)> {
    columns.iter().map(|(n, t)| (n.to_string(), t.clone())).collect()
}

#[test]
fn export_parquet_reads_back_typed_with_hex_keys_and_a_typed_column() {
    let shipper = shipped();
    let out = shipper.root().join("out/nested");
    let finished =
        export(&shipper, &["--run", "r1", "--run", "r2", "--out", out.to_str().unwrap()]);
    finished.assert_success("export");
    let summary = finished.stderr.lines().find(|l| l.starts_with("export done:"));
    assert!(
        summary.is_some_and(|l| l.contains(": 2 runs, 4 rows,")),
        "summary: {}",
        finished.stderr
    );

    let (columns, rows) = read_parquet(&out.join("r1.parquet"));
    let utf8 = DataType::Utf8;
    assert_eq!(
        columns,
        names_and_types(&[
            ("run_id", utf8.clone()),
            ("event_key", utf8.clone()),
            ("event_type", utf8.clone()),
            ("ts", utf8.clone()),
            ("source", utf8.clone()),
            ("line_no", DataType::Int64),
            ("data", utf8.clone()),
            ("http_status", DataType::Int64),
        ])
    );
    assert_eq!(rows, r1_rows(&shipper));
    // r2 has no typed column: the built-in ones only.
    let (columns, rows) = read_parquet(&out.join("r2.parquet"));
    assert_eq!(columns.len(), 7);
    assert_eq!(rows, [json!(["r2", key(5), "fetch", null, shipper.source(FILE), 5, lines()[4]])]);

    // No catalog here: the runs rows come from the run DBs.
    let (columns, rows) = read_parquet(&out.join("runs.parquet"));
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "run_id",
            "db_path",
            "status",
            "started_at",
            "ended_at",
            "events",
            "first_ts",
            "last_ts",
            "db_bytes",
            "last_write_at",
            "summary"
        ]
    );
    let r1_db = shipper.path("db/runs/r1.sqlite");
    let r1_row = rows[0].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        r1_row[..8],
        json!([
            "r1",
            r1_db.to_str().unwrap(),
            "finished",
            "2024-03-01T10:00:00Z",
            null,
            3,
            // min/max of ts in SQLite's order: the number 3 before any text.
            "3",
            "2024-03-01T10:00:02Z"
        ])
        .as_array()
        .unwrap()[..]
    );
    assert!(r1_row[8].as_i64().unwrap() > 0, "db_bytes {}", r1_row[8]);
    // From the catalog the backfill kept: its last write, and the summary of the ended run.
    assert!(r1_row[9].as_str().is_some_and(|t| t.ends_with('Z')), "last_write_at {}", r1_row[9]);
    assert!(
        r1_row[10].as_str().is_some_and(|s| s.contains(r#""events":3"#)),
        "summary {}",
        r1_row[10]
    );
    assert_eq!(rows[1][0], "r2");

    // Only the final names: no temp file left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["r1.parquet", "r2.parquet", "runs.parquet"]);
}

#[test]
fn export_ndjson_and_csv_are_exact() {
    let shipper = shipped();
    let out = shipper.root().join("out");
    for format in ["ndjson", "csv"] {
        export(&shipper, &["--run", "r1", "--format", format, "--out", out.to_str().unwrap()])
            .assert_success(format);
    }
    let source = shipper.source(FILE);
    let ndjson = std::fs::read_to_string(out.join("r1.ndjson")).unwrap();
    let objects: Vec<Json> = r1_rows(&shipper)
        .into_iter()
        .map(|row| {
            let row = row.as_array().unwrap().clone();
            let names = [
                "run_id",
                "event_key",
                "event_type",
                "ts",
                "source",
                "line_no",
                "data",
                "http_status",
            ];
            let mut object = serde_json::Map::new();
            for (name, value) in names.iter().zip(row) {
                // `data` is embedded as JSON, not as a string.
                let value = if *name == "data" {
                    serde_json::from_str(value.as_str().unwrap()).unwrap()
                } else {
                    value
                };
                object.insert(name.to_string(), value);
            }
            Json::Object(object)
        })
        .collect();
    let expected: String = objects.iter().map(|o| format!("{o}\n")).collect();
    // serde_json's map keeps keys sorted unless preserve_order: compare parsed, then key order.
    let parsed: Vec<Json> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed, objects, "{ndjson}");
    assert_eq!(ndjson.len(), expected.len());
    assert!(
        ndjson.starts_with(r#"{"run_id":"r1","event_key":"e-1","event_type":"fetch","#),
        "{ndjson}"
    );
    assert!(ndjson.contains(r#","data":{"run_id":"r1","event_id":"e-1","#), "{ndjson}");

    let csv = std::fs::read_to_string(out.join("r1.csv")).unwrap();
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let expected = [
        "run_id,event_key,event_type,ts,source,line_no,data,http_status".to_string(),
        format!("r1,e-1,fetch,2024-03-01T10:00:01Z,{source},2,{},200", quoted(lines()[1])),
        format!(
            "r1,{},\"two\nlines, \"\"quoted\"\"\",2024-03-01T10:00:02Z,{source},3,{},",
            key(3),
            quoted(lines()[2])
        ),
        format!("r1,{},,3,{source},4,{},404", key(4), quoted(lines()[3])),
    ];
    assert_eq!(csv, expected.iter().map(|l| format!("{l}\r\n")).collect::<String>());
    let runs_csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert!(
        runs_csv.starts_with("run_id,db_path,status,started_at,ended_at,events,first_ts,last_ts,db_bytes,last_write_at,summary\r\nr1,"),
        "{runs_csv}"
    );
    assert_eq!(runs_csv.lines().count(), 2, "{runs_csv}");
}

/// The catalog with the contract's columns, made by the test (the catalog module is not what
/// is tested here).
fn write_catalog(shipper: &Shipper, rows: &[(&str, Option<&str>, Option<&str>, i64)]) {
    remove_catalog(shipper); // the one the backfill kept
    let conn = rusqlite::Connection::open(shipper.path("db/catalog.sqlite")).unwrap();
    conn.execute_batch(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, db_path TEXT NOT NULL, status TEXT,
             started_at TEXT, ended_at TEXT, events INTEGER, first_ts TEXT, last_ts TEXT,
             db_bytes INTEGER, last_write_at INTEGER, summary TEXT)",
    )
    .unwrap();
    for (run_id, started_at, first_ts, events) in rows {
        conn.execute(
            "INSERT INTO runs VALUES (?1, ?2, 'finished', ?3, NULL, ?4, ?5, NULL, 4096,
                 1709290000000, '{\"events\":1}')",
            rusqlite::params![
                run_id,
                shipper.source(&format!("db/runs/{run_id}.sqlite")),
                started_at,
                events,
                first_ts
            ],
        )
        .unwrap();
    }
}

#[test]
fn export_since_until_selects_the_catalogs_runs_by_start_day_and_skips_a_missing_db() {
    let shipper = shipped();
    write_catalog(
        &shipper,
        &[
            ("r1", Some("2024-03-01T10:00:00Z"), None, 3),
            // Started 2024-02-29 in New York: 2024-03-01 UTC.
            ("r2", Some("2024-02-29T20:00:00-05:00"), None, 1),
            ("gone", None, Some("2024-03-02T00:00:00Z"), 7),
            ("later", Some("2024-03-04T00:00:00Z"), None, 1),
            ("undated", None, None, 1),
        ],
    );
    let out = shipper.root().join("out");
    let out_arg = out.to_str().unwrap();
    let finished = export(
        &shipper,
        &["--since", "2024-03-01", "--until", "2024-03-03", "--format", "csv", "--out", out_arg],
    );
    // `gone` is listed but has no run DB: the others are exported, the exit says it.
    assert_eq!(finished.status.code(), Some(1), "stderr:\n{}", finished.stderr);
    assert!(
        finished
            .stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("gone") && l.contains("no run DB")),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("export incomplete: 2 runs, 4 rows,"), "{}", finished.stderr);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["r1.csv", "r2.csv", "runs.csv"]);
    // The catalog's own rows and types (last_write_at INTEGER), by start day then run_id.
    let runs = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    let db = |run: &str| shipper.source(&format!("db/runs/{run}.sqlite"));
    assert_eq!(
        runs,
        format!(
            "run_id,db_path,status,started_at,ended_at,events,first_ts,last_ts,db_bytes,last_write_at,summary\r\n\
             r1,{},finished,2024-03-01T10:00:00Z,,3,,,4096,1709290000000,\"{{\"\"events\"\":1}}\"\r\n\
             r2,{},finished,2024-02-29T20:00:00-05:00,,1,,,4096,1709290000000,\"{{\"\"events\"\":1}}\"\r\n",
            db("r1"),
            db("r2")
        )
    );

    // --since alone has no end; --until before --since is a usage error.
    let finished =
        export(&shipper, &["--since", "2024-03-05", "--format", "ndjson", "--out", out_arg]);
    finished.assert_success("export --since");
    assert!(finished.stderr.contains("export done: 0 runs, 0 rows,"), "{}", finished.stderr);
    let runs = std::fs::read_to_string(out.join("runs.ndjson")).unwrap();
    assert_eq!(runs, "");
    let finished =
        export(&shipper, &["--since", "2024-03-03", "--until", "2024-03-01", "--out", out_arg]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    let finished = export(&shipper, &["--since", "2024-02-30", "--out", out_arg]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("\"2024-02-30\" is not a date as YYYY-MM-DD"),
        "{}",
        finished.stderr
    );
}

#[test]
fn export_of_a_missing_run_exits_2_naming_it_and_writes_nothing() {
    let shipper = shipped();
    let out = shipper.root().join("out");
    let finished =
        export(&shipper, &["--run", "r1", "--run", "nope/../x", "--out", out.to_str().unwrap()]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains(r#"run "nope/../x" has no run DB"#)
            && finished.stderr.contains("nope%2F%2E%2E%2Fx.sqlite"),
        "{}",
        finished.stderr
    );
    assert!(!out.exists(), "nothing is written");
    // --since needs the catalog.
    remove_catalog(&shipper);
    let finished = export(&shipper, &["--since", "2024-03-01", "--out", out.to_str().unwrap()]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    assert!(finished.stderr.contains("catalog.sqlite does not exist"), "{}", finished.stderr);
    // Neither --run nor --since.
    let finished = export(&shipper, &["--out", out.to_str().unwrap()]);
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    // The read-only export created no run DB.
    assert_eq!(shipper.run_db_names(), ["r1.sqlite", "r2.sqlite"]);
}

/// DuckDB or pyarrow, the readers the contract names, read the Parquet export (skipped, with
/// a message, when neither Python module is installed).
#[test]
fn export_parquet_is_read_by_duckdb_or_pyarrow_when_installed() {
    let probe = |module: &str| {
        std::process::Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let script = if probe("duckdb") {
        "import duckdb, sys, json\n\
         r = duckdb.sql(f\"SELECT count(*), sum(http_status), count(http_status), \
         min(event_key), max(line_no) FROM read_parquet('{sys.argv[1]}/r*.parquet', \
         union_by_name=true) WHERE run_id IN ('r1', 'r2')\").fetchall()[0]\n\
         print(json.dumps(list(r)))"
    } else if probe("pyarrow") {
        "import pyarrow.parquet as pq, sys, json\n\
         ts = [pq.read_table(sys.argv[1] + f'/{r}.parquet') for r in ('r1', 'r2')]\n\
         keys = [k for t in ts for k in t.column('event_key').to_pylist()]\n\
         s = [v for v in ts[0].column('http_status').to_pylist() if v is not None]\n\
         lines = [v for t in ts for v in t.column('line_no').to_pylist()]\n\
         print(json.dumps([sum(t.num_rows for t in ts), sum(s), len(s), min(keys), max(lines)]))"
    } else {
        eprintln!("skipped: neither the duckdb nor the pyarrow Python module is installed");
        return;
    };
    let shipper = shipped();
    let out = shipper.root().join("out");
    export(&shipper, &["--run", "r1", "--out", out.to_str().unwrap()]).assert_success("export");
    // runs.parquet has other columns: only the runs' files are read.
    std::fs::rename(out.join("runs.parquet"), shipper.root().join("runs.parquet")).unwrap();
    export(&shipper, &["--run", "r2", "--out", out.to_str().unwrap()]).assert_success("export");
    std::fs::remove_file(out.join("runs.parquet")).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let result: Json = serde_json::from_slice(&output.stdout).unwrap();
    let min_key = [key(3), key(4), key(5), "e-1".to_string()].into_iter().min().unwrap();
    assert_eq!(result, json!([4, 604, 2, min_key, 5]));
}

fn remove_catalog(shipper: &Shipper) {
    shipper.remove_db("db/catalog.sqlite");
}
