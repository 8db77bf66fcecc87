//! Operations: `run` with `metrics.listen` serves exact counters at `/metrics` and 200 at
//! `/healthz`, turns `/healthz` to 503 while another process holds a run DB's write lock (and
//! back once it lets go), and speaks systemd's notify protocol on `NOTIFY_SOCKET`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::harness::{wait_until, Running, Shipper, DEADLINE};

const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// A port nobody listens on right now (bound, then released for the daemon).
pub(crate) fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// `GET path` over HTTP/1.0 (the server closes after the answer): the status code and body,
/// or None while nothing listens.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of the sample named exactly `series` (name plus labels) in a `/metrics` body.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(name, _)| *name == series))
        .and_then(|(_, value)| value.parse().ok())
}

pub(crate) fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    get(addr, "/metrics").filter(|(status, _)| *status == 200).and_then(|(_, b)| sample(&b, series))
}

fn spawn_with_metrics(extra: &str) -> (Shipper, SocketAddr, Running) {
    let addr = free_port();
    let shipper = Shipper::with_config(&format!("[metrics]\nlisten = \"{addr}\"\n{extra}"));
    let daemon = shipper.spawn_run();
    wait_until(DEADLINE, "/metrics to answer", || get(addr, "/metrics").is_some());
    (shipper, addr, daemon)
}

#[test]
fn metrics_count_exactly_what_was_shipped_and_healthz_is_ok() {
    let (shipper, addr, daemon) = spawn_with_metrics("");
    let (status, body) = get(addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    for name in [
        "jsonl_shipper_lines_read_total",
        "jsonl_shipper_bytes_read_total",
        "jsonl_shipper_events_written_total",
        "jsonl_shipper_dlq_lines_total{reason=\"invalid_json\"}",
        "jsonl_shipper_dlq_lines_total{reason=\"write_failed\"}",
        "jsonl_shipper_batch_commit_seconds_count",
        "jsonl_shipper_files_watched",
        "jsonl_shipper_lag_bytes",
        "jsonl_shipper_open_run_dbs",
        "jsonl_shipper_wal_checkpoints_total",
        "jsonl_shipper_retention_deleted_total",
        "jsonl_shipper_write_retries_total",
        "jsonl_shipper_last_commit_timestamp_seconds",
        "jsonl_shipper_truncations_total",
        "jsonl_shipper_rotations_total",
        "jsonl_shipper_deleted_unread_bytes_total",
        "jsonl_shipper_oldest_unshipped_age_seconds",
    ] {
        assert!(sample(&body, name).is_some(), "no {name} in:\n{body}");
    }
    assert_eq!(sample(&body, "jsonl_shipper_events_written_total"), Some(0.0));
    assert!(!body.contains("run_id=") && !body.contains("path="), "unbounded labels:\n{body}");

    let text = concat!(
        "{\"run_id\":\"a\",\"event_id\":\"1\"}\n",
        "{\"run_id\":\"a\",\"ts\":2}\n",
        "{\"run_id\":\"b\",\"record_type\":\"run\",\"status\":\"running\"}\n",
        "{\"run_id\":\"b\",oops}\n",
        "{\"run_id\":\"b\",\"event_id\":\"1\"}\n",
    );
    shipper.write("raw/events_20240301.ndjson", text.as_bytes());
    wait_until(DEADLINE, "4 records written and 1 dead letter counted", || {
        metric(addr, "jsonl_shipper_events_written_total") == Some(4.0)
            && metric(addr, "jsonl_shipper_dlq_lines_total{reason=\"invalid_json\"}") == Some(1.0)
    });
    let (_, body) = get(addr, "/metrics").expect("metrics");
    let value = |series: &str| sample(&body, series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(value("jsonl_shipper_lines_read_total"), 5.0);
    assert_eq!(value("jsonl_shipper_bytes_read_total"), text.len() as f64);
    assert_eq!(value("jsonl_shipper_dlq_lines_total{reason=\"not_object\"}"), 0.0);
    assert_eq!(value("jsonl_shipper_write_retries_total"), 0.0);
    assert!(value("jsonl_shipper_batch_commit_seconds_count") >= 2.0, "two runs, two commits");
    assert!(value("jsonl_shipper_last_commit_timestamp_seconds") > 1.6e9);
    assert_eq!(get(addr, "/healthz"), Some((200, "ok\n".to_string())));
    assert_eq!(get(addr, "/nope").map(|r| r.0), Some(404));

    daemon.terminate(DRAIN_DEADLINE).assert_success("run after SIGTERM");
    assert!(get(addr, "/metrics").is_none(), "the endpoint closes with the daemon");
}

#[test]
fn healthz_is_503_while_a_run_db_is_locked_and_recovers_after() {
    let (shipper, addr, daemon) =
        spawn_with_metrics("unhealthy_after = \"1s\"\n[sqlite]\nbusy_timeout = \"50ms\"\n");
    shipper.write("raw/events_20240302.ndjson", b"{\"run_id\":\"locked\",\"event_id\":\"1\"}\n");
    wait_until(DEADLINE, "the first record", || {
        metric(addr, "jsonl_shipper_events_written_total") == Some(1.0)
    });

    // Another process takes the run DB's write lock, as a careless analyst's tool might.
    let db = shipper.path("db/runs/locked.sqlite");
    let mut conn = rusqlite::Connection::open(&db).expect("open run DB");
    let lock = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .expect("BEGIN IMMEDIATE");
    shipper.append("raw/events_20240302.ndjson", b"{\"run_id\":\"locked\",\"event_id\":\"2\"}\n");
    let mut reason = String::new();
    wait_until(DEADLINE, "/healthz to turn 503", || match get(addr, "/healthz") {
        Some((503, body)) => {
            reason = body;
            true
        }
        _ => false,
    });
    assert!(reason.starts_with("unhealthy: ") && reason.ends_with('\n'), "{reason:?}");
    assert_eq!(reason.lines().count(), 1, "one line: {reason:?}");
    assert!(reason.contains("without a successful commit"), "{reason:?}");
    assert!(metric(addr, "jsonl_shipper_write_retries_total").is_some_and(|n| n >= 1.0));
    assert_eq!(metric(addr, "jsonl_shipper_events_written_total"), Some(1.0));
    // The held-back line was read before the write that has been pending for over 1 s.
    let age = metric(addr, "jsonl_shipper_oldest_unshipped_age_seconds");
    assert!(age.is_some_and(|a| a >= 1.0), "oldest unshipped byte's age {age:?}");

    lock.rollback().expect("release the lock");
    wait_until(DEADLINE, "the held-back record", || {
        metric(addr, "jsonl_shipper_events_written_total") == Some(2.0)
    });
    wait_until(DEADLINE, "/healthz to recover", || {
        get(addr, "/healthz").is_some_and(|r| r.0 == 200)
    });
    wait_until(DEADLINE, "the oldest unshipped byte's age to fall to 0", || {
        metric(addr, "jsonl_shipper_oldest_unshipped_age_seconds") == Some(0.0)
    });
    let finished = daemon.terminate(DRAIN_DEADLINE);
    finished.assert_success("run after SIGTERM");
    // (The monitor's "unhealthy" log line is not asserted: it looks once a second and may
    // have missed a short stall.)
    assert!(finished.stderr.contains("database is locked"), "{}", finished.stderr);
}

/// Receives notify datagrams (each is `KEY=VALUE` lines) until one has a line for which
/// `want` holds; returns that datagram.
fn wait_for_message(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut checked = 0;
    loop {
        if let Some(m) = seen[checked..].iter().find(|m| m.lines().any(&want)) {
            return m.clone();
        }
        checked = seen.len();
        assert!(start.elapsed() < DEADLINE, "no {what} within {DEADLINE:?}; got {seen:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn notify_socket_gets_ready_watchdog_status_reload_and_stopping() {
    let shipper = Shipper::with_config("");
    shipper.write("raw/events_20240303.ndjson", b"{\"run_id\":\"n\"}\n");
    let path = shipper.root().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let mut command = shipper.command(&["run"], &[]);
    command.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000").env_remove("WATCHDOG_PID");
    let mut daemon = Running::spawn(command);

    let mut seen = Vec::new();
    let ready = wait_for_message(&socket, &mut seen, "READY=1", |l| l == "READY=1");
    // STATUS= carries the lag from the start (the contract), here the unread line's 15 bytes.
    assert!(ready.lines().any(|l| l == "STATUS=lag 15 B, 1 files, 0 dead letters"), "{ready:?}");
    // Pinged every 200 to 400 ms while healthy.
    for _ in 0..3 {
        let from = seen.len();
        wait_for_message(&socket, &mut seen, "WATCHDOG=1", |l| l == "WATCHDOG=1");
        seen.truncate(from);
    }
    let status = wait_for_message(&socket, &mut seen, "a periodic STATUS", |l| {
        l.starts_with("STATUS=lag 0 B, 1 files, ")
    });
    assert!(status.ends_with(" events/s, 0 dead letters\n"), "{status:?}");

    daemon.hangup();
    seen.clear();
    wait_for_message(&socket, &mut seen, "RELOADING=1", |l| l == "RELOADING=1");
    let done = wait_for_message(&socket, &mut seen, "READY=1 after the reload", |l| l == "READY=1");
    assert!(done.lines().any(|l| l == "STATUS=lag 0 B, 1 files, 0 dead letters"), "{done:?}");

    // STOPPING=1 comes before the drain; the socket outlives the process.
    let finished = daemon.terminate(DRAIN_DEADLINE);
    finished.assert_success("run after SIGTERM");
    wait_for_message(&socket, &mut seen, "STOPPING=1", |l| l == "STOPPING=1");
}

/// `systemd-analyze` (Debian package `systemd`) on the shipped unit: exposure ≤ 2.0 and a clean
/// `verify`. Skipped, saying so, where systemd-analyze is not installed.
#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/jsonl-shipper.service");
    let analyze = |args: &[&str]| std::process::Command::new("systemd-analyze").args(args).output();
    let security = match analyze(&["security", "--offline=true", unit.to_str().expect("UTF-8")]) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("systemd-analyze not installed (apt-get install systemd): check skipped");
            return;
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for jsonl-shipper.service: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!("no exposure in:\n{text}{}", String::from_utf8_lossy(&security.stderr))
        });
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");

    // verify checks that ExecStart= exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("jsonl-shipper.service");
    let text = std::fs::read_to_string(&unit).expect("read unit");
    std::fs::write(&copy, text.replace("/usr/bin/jsonl-shipper", crate::harness::BIN))
        .expect("write");
    let verify =
        analyze(&["verify", copy.to_str().expect("UTF-8")]).expect("systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "verify: {complaints}");
}

/// Every file under `dir`, relative, with its bytes.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("under dir").display().to_string();
                files.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

/// The man pages and completions `cargo deb` ships are checked in under `dist/` (cargo-deb
/// packages files, it runs nothing): they must be exactly what the current CLI generates.
#[test]
fn dist_man_pages_and_completions_match_the_cli() {
    const REGENERATE: &str = "cargo run -- generate all --out dist && git add dist";
    let shipper = Shipper::new();
    let out = shipper.root().join("dist");
    shipper
        .run_bare(&["generate", "all", "--out", out.to_str().expect("UTF-8")])
        .assert_success("generate all");
    let generated = tree(&out);
    let names: Vec<&str> = generated.keys().map(String::as_str).collect();
    for want in [
        "man/jsonl-shipper.1",
        "man/jsonl-shipper-run.1",
        "man/jsonl-shipper-dlq-replay.1",
        "completions/jsonl-shipper.bash",
        "completions/_jsonl-shipper",
        "completions/jsonl-shipper.fish",
    ] {
        assert!(names.contains(&want), "generate all wrote no {want}: {names:?}");
    }
    let page = String::from_utf8_lossy(&generated["man/jsonl-shipper-backfill.1"]);
    assert!(page.contains("\\-\\-jobs"), "backfill page without --jobs:\n{page}");
    let bash = String::from_utf8_lossy(&generated["completions/jsonl-shipper.bash"]);
    assert!(bash.contains("check-config") && !bash.contains("generate"), "{bash}");

    let checked_in = tree(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist"));
    let stale: Vec<&String> = generated
        .keys()
        .chain(checked_in.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|name| generated.get(*name) != checked_in.get(*name))
        .collect();
    assert!(
        stale.is_empty(),
        "dist/ is stale against the CLI (differs: {stale:?}); regenerate with `{REGENERATE}`"
    );
}

/// SIGHUP applies `[metrics]` too: the endpoint moves to the new address (the old one closes)
/// and keeps counting from where it was.
#[test]
fn sighup_moves_the_metrics_endpoint_and_keeps_the_counts() {
    let (shipper, old, mut daemon) = spawn_with_metrics("");
    shipper.write("raw/events_20240303.ndjson", b"{\"run_id\":\"m\",\"event_id\":\"1\"}\n");
    wait_until(DEADLINE, "the first record", || {
        metric(old, "jsonl_shipper_events_written_total") == Some(1.0)
    });
    let new = free_port();
    shipper.set_config(&format!("[metrics]\nlisten = \"{new}\"\n"));
    daemon.hangup();
    wait_until(DEADLINE, "/metrics at the new address", || get(new, "/metrics").is_some());
    wait_until(DEADLINE, "the old address to close", || get(old, "/metrics").is_none());
    assert_eq!(metric(new, "jsonl_shipper_events_written_total"), Some(1.0));
    assert_eq!(get(new, "/healthz").map(|r| r.0), Some(200));
    let finished = daemon.terminate(DRAIN_DEADLINE);
    finished.assert_success("run after SIGTERM");
    assert!(finished.stderr.contains("metrics settings applied"), "{}", finished.stderr);
}
