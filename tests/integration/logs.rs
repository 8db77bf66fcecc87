//! Logs on stderr: the level from `log.level` with `RUST_LOG` overriding it, `--log-format
//! json` (and `log.format`), colours only on a terminal, and no timestamps only when stderr is
//! the journal stream systemd names in `JOURNAL_STREAM`. Each check has its positive twin, so
//! none passes because the line it looks at is simply missing.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use serde_json::Value as Json;

use crate::harness::{wait_until, Shipper, DEADLINE};

/// The INFO line every `backfill` logs first.
const STARTED: &str = "backfill started";

/// A shipper with one small source file and `[log]` set to `log`.
fn shipper(log: &str) -> Shipper {
    let shipper = Shipper::with_config(&format!("[log]\n{log}\n"));
    shipper.write("raw/events_20240110.ndjson", b"{\"run_id\":\"l\",\"event_id\":\"1\"}\n");
    shipper
}

/// `backfill` with `RUST_LOG` set to `rust_log` (None: unset) and `args`; its stderr.
fn backfill_stderr(shipper: &Shipper, rust_log: Option<&str>, args: &[&str]) -> String {
    let mut command = shipper.command(&["backfill"], args);
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let finished = crate::harness::Running::spawn(command).wait();
    finished.assert_success("backfill");
    finished.stderr
}

fn started_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.contains(STARTED))
        .unwrap_or_else(|| panic!("no {STARTED:?} line in stderr:\n{stderr}"))
}

#[test]
fn the_level_comes_from_the_config_and_rust_log_overrides_it() {
    let quiet = shipper("level = \"warn\"");
    let stderr = backfill_stderr(&quiet, None, &[]);
    assert!(!stderr.contains(STARTED), "INFO logged at log.level = warn:\n{stderr}");
    started_line(&backfill_stderr(&quiet, Some("info"), &[]));

    let chatty = shipper("level = \"info\"");
    started_line(&backfill_stderr(&chatty, None, &[]));
    let stderr = backfill_stderr(&chatty, Some("warn"), &[]);
    assert!(!stderr.contains(STARTED), "INFO logged at RUST_LOG=warn:\n{stderr}");
    // An empty RUST_LOG (as `RUST_LOG= cmd` leaves it) means "not set".
    started_line(&backfill_stderr(&chatty, Some(""), &[]));
}

/// The `backfill started` line as JSON, checking it is one object with the usual keys.
#[track_caller]
fn json_started(stderr: &str) -> Json {
    let line = started_line(stderr);
    let event: Json =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert_eq!(event["level"], "INFO", "{event}");
    assert_eq!(event["fields"]["message"], STARTED, "{event}");
    assert_eq!(event["fields"]["files"], 1, "{event}");
    let at = event["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {event}"));
    humantime::parse_rfc3339_weak(at).unwrap_or_else(|e| panic!("timestamp {at:?}: {e}"));
    event
}

#[test]
fn log_format_json_from_the_flag_or_the_config_and_the_flag_wins() {
    let text = shipper("level = \"info\"");
    let stderr = backfill_stderr(&text, Some("info"), &[]);
    assert!(serde_json::from_str::<Json>(started_line(&stderr)).is_err(), "{stderr}");
    json_started(&backfill_stderr(&text, Some("info"), &["--log-format", "json"]));

    let json = shipper("format = \"json\"");
    let stderr = backfill_stderr(&json, Some("info"), &[]);
    json_started(&stderr);
    // Every line is an object, the summary included (as fields a pipeline can use).
    let objects: Vec<Json> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    let summary = objects
        .iter()
        .find(|o| o["fields"]["message"] == "backfill summary")
        .unwrap_or_else(|| panic!("no summary object:\n{stderr}"));
    assert_eq!(summary["fields"]["outcome"], "done", "{summary}");
    assert_eq!(summary["fields"]["events"], 1, "{summary}");
    assert_eq!(summary["fields"]["lines"], 1, "{summary}");
    let stderr = backfill_stderr(&json, Some("info"), &["--log-format", "text"]);
    assert!(serde_json::from_str::<Json>(started_line(&stderr)).is_err(), "{stderr}");
}

/// Runs `command` with stderr into a new file of the temp root; its contents.
fn stderr_into_file(shipper: &Shipper, mut command: Command, journal: Journal) -> String {
    let path = shipper.root().join("stderr.log");
    let file = std::fs::File::create(&path).expect("create stderr file");
    let meta = file.metadata().expect("stat stderr file");
    match journal {
        Journal::ThisStream => {
            command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        }
        // Inherited from a parent whose stderr was the journal, not ours.
        Journal::OtherStream => {
            command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino() + 1))
        }
        Journal::Unset => command.env_remove("JOURNAL_STREAM"),
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn backfill");
    let mut status = None;
    wait_until(DEADLINE, "backfill to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let stderr = std::fs::read_to_string(&path).expect("read stderr file");
    assert!(status.is_some_and(|s| s.success()), "backfill failed:\n{stderr}");
    stderr
}

#[derive(Clone, Copy, Debug)]
enum Journal {
    ThisStream,
    OtherStream,
    Unset,
}

#[test]
fn timestamps_are_left_to_journald_only_when_stderr_is_its_stream() {
    let shipper = shipper("level = \"info\"");
    for (journal, stamped) in
        [(Journal::ThisStream, false), (Journal::OtherStream, true), (Journal::Unset, true)]
    {
        let stderr = stderr_into_file(&shipper, shipper.command(&["backfill"], &[]), journal);
        let line = started_line(&stderr);
        let first = line.split_whitespace().next().unwrap_or_default();
        if stamped {
            humantime::parse_rfc3339_weak(first)
                .unwrap_or_else(|e| panic!("{journal:?}: no leading timestamp ({e}): {line:?}"));
        } else {
            // `<6>`: the syslog priority journald files the line under (info).
            assert_eq!(
                first, "<6>INFO",
                "{journal:?}: a timestamp for journald to double: {line:?}"
            );
        }
        assert!(!stderr.contains('\x1b'), "{journal:?}: ANSI escapes in a file:\n{stderr:?}");
    }
}

#[test]
#[allow(unsafe_code)]
fn colours_only_on_a_terminal() {
    let shipper = shipper("level = \"info\"");
    let piped = backfill_stderr(&shipper, Some("info"), &[]);
    assert!(!piped.contains('\x1b'), "ANSI escapes on a pipe:\n{piped:?}");

    // The same command with stderr on a pseudo-terminal.
    let (mut master, slave) = {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors into the ints we pass; the null name,
        // termios and winsize arguments are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened for us and are owned by nothing else.
        unsafe { (std::fs::File::from(OwnedFd::from_raw_fd(master)), OwnedFd::from_raw_fd(slave)) }
    };
    let mut command = shipper.command(&["backfill"], &[]);
    command.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(slave);
    let mut child = command.spawn().expect("spawn backfill");
    drop(command); // closes our copy of the slave, so the master reads EOF (EIO) at exit
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Linux reports the slave's last close as EIO, not as a 0-byte read.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let mut exited = None;
    wait_until(DEADLINE, "backfill on a terminal to exit", || {
        exited = child.try_wait().expect("try_wait");
        exited.is_some()
    });
    let tty = reader.join().expect("pty reader");
    assert!(exited.is_some_and(|s| s.success()), "backfill failed:\n{tty}");
    // The log line itself, not the progress bar (which draws with escapes of its own).
    let line = started_line(&tty);
    assert!(line.contains("\x1b["), "no colours on a terminal: {line:?}");
}
