//! The one harness every integration test goes through: a temp dir per test, helpers to write
//! source files (plain, multi-member gzip), to run the real binary with a deadline or spawn it
//! as a daemon, and to read back everything it produced (all rows of all run DBs, the DLQ, the
//! checkpoint table) as sorted plain data for exact comparison.
//!
//! Synchronisation is always by polling an observable condition ([`wait_until`]), never by a
//! fixed sleep: the suite must pass on a loaded 2-core machine and fail fast on a real bug.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use flate2::write::GzEncoder;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// The binary under test (the debug build cargo made for this test target).
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_jsonl-shipper");

/// How long any one wait may take. Generous on purpose: a debug binary on a loaded 2-core box.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// `dlq.max_raw_bytes` and `sources.max_line_bytes` under `--base` (the contract's defaults).
pub(crate) const MAX_RAW_BYTES: usize = 64 * 1024;
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A temp dir holding one `--base D` installation. `D` is `<root>/base`, so that a run_id that
/// escaped `D` would still land inside `<root>` where [`Shipper::all_files`] sees it.
pub(crate) struct Shipper {
    root: tempfile::TempDir,
    base: PathBuf,
    /// With a config file, commands get `--config F` (whose `base` is D) instead of `--base D`.
    config: Option<PathBuf>,
    /// Run the binary under `umask 000`, so only its own choice of modes protects its files.
    umask_000: bool,
}

impl Shipper {
    pub(crate) fn new() -> Shipper {
        let root =
            tempfile::Builder::new().prefix("jsonl-shipper-it-").tempdir().expect("temp dir");
        let base = root.path().join("base");
        fs::create_dir_all(base.join("raw")).expect("create raw dir");
        Shipper { root, base, config: None, umask_000: false }
    }

    /// An installation driven by `--config <root>/config.toml`: `base = D` plus `toml`.
    pub(crate) fn with_config(toml: &str) -> Shipper {
        let mut shipper = Shipper::new();
        let path = shipper.root.path().join("config.toml");
        fs::write(&path, format!("base = \"base\"\n{toml}")).expect("write config");
        shipper.config = Some(path);
        shipper
    }

    pub(crate) fn base(&self) -> &Path {
        &self.base
    }

    pub(crate) fn root(&self) -> &Path {
        self.root.path()
    }

    /// `D/<rel>`.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    /// `D/<rel>` as the text the shipper stores in `source` columns and dead letters.
    pub(crate) fn source(&self, rel: &str) -> String {
        self.path(rel).to_str().expect("temp paths are UTF-8").to_string()
    }

    /// Creates or replaces `D/<rel>` with `bytes`.
    pub(crate) fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().expect("has parent")).expect("create parent dir");
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Appends `bytes` to `D/<rel>` in one `write_all`, as a producer would.
    pub(crate) fn append(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        file.write_all(bytes).unwrap_or_else(|e| panic!("appending to {}: {e}", path.display()));
    }

    /// Writes `bytes` gzip-compressed as several concatenated members, cut at `cuts` (offsets
    /// into `bytes`; a cut may fall inside a line, which the reader must not notice).
    pub(crate) fn write_gz(&self, rel: &str, bytes: &[u8], cuts: &[usize]) -> PathBuf {
        self.write(rel, &gzip_members(bytes, cuts))
    }

    /// Makes `D/<rel>` look written long ago, i.e. "finished" for `backfill`
    /// (older than `sources.close_inactive`).
    pub(crate) fn age(&self, rel: &str) {
        let path = self.path(rel);
        let file = fs::File::options().write(true).open(&path).expect("open to age");
        let past = SystemTime::now() - Duration::from_secs(3600);
        file.set_modified(past).expect("set mtime");
    }

    /// Runs the binary under `umask 000` from now on.
    pub(crate) fn with_umask_000(mut self) -> Shipper {
        self.umask_000 = true;
        self
    }

    /// `jsonl-shipper <subcommand> --base D <args>` (or `--config F`, see [`Shipper::with_config`]).
    pub(crate) fn command(&self, subcommand: &[&str], args: &[&str]) -> Command {
        let mut command = self.bare_command(subcommand);
        match &self.config {
            Some(config) => command.arg("--config").arg(config),
            None => command.arg("--base").arg(&self.base),
        };
        command.args(args);
        command
    }

    /// `jsonl-shipper <args>` (no `--base`) run to completion.
    pub(crate) fn run_bare(&self, args: &[&str]) -> Finished {
        Running::spawn(self.bare_command(args)).wait()
    }

    /// `jsonl-shipper <args>`, run in the temp root, with a controlled environment.
    fn bare_command(&self, args: &[&str]) -> Command {
        let mut command = if self.umask_000 {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", "umask 000 && exec \"$0\" \"$@\"", BIN]);
            sh
        } else {
            Command::new(BIN)
        };
        command
            .args(args)
            .env_remove("JSONL_SHIPPER_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .current_dir(self.root.path());
        command
    }

    /// Runs a command to completion (or panics after [`DEADLINE`]).
    pub(crate) fn run_cmd(&self, subcommand: &[&str], args: &[&str]) -> Finished {
        Running::spawn(self.command(subcommand, args)).wait()
    }

    /// `backfill --base D <args>`, which must exit 0 and print its summary.
    pub(crate) fn backfill(&self, args: &[&str]) -> Finished {
        let finished = self.run_cmd(&["backfill"], args);
        finished.assert_success("backfill");
        finished.summary();
        finished
    }

    pub(crate) fn spawn_backfill(&self, args: &[&str]) -> Running {
        Running::spawn(self.command(&["backfill"], args))
    }

    /// The daemon, `run --base D`.
    pub(crate) fn spawn_run(&self) -> Running {
        Running::spawn(self.command(&["run"], &[]))
    }

    /// Every row of every run DB. Panics on any error (use [`Shipper::try_snapshot`] while a
    /// process may be creating DBs).
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.try_snapshot().unwrap_or_else(|e| panic!("reading run DBs: {e}"))
    }

    pub(crate) fn try_snapshot(&self) -> rusqlite::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        for name in self.run_db_names() {
            let conn = open_read_only(&self.path("db/runs").join(&name))?;
            let mut stmt = conn.prepare(
                "SELECT run_id, status, started_at, ended_at, data FROM runs ORDER BY run_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(RunRow {
                    db: name.clone(),
                    run_id: r.get(0)?,
                    status: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    data: json_column(r.get(4)?),
                })
            })?;
            for row in rows {
                snapshot.runs.push(row?);
            }
            let mut stmt = conn.prepare(
                "SELECT event_key, run_id, event_type, ts, data, source, line_no FROM events",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(EventRow {
                    db: name.clone(),
                    event_key: key_column(r.get(0)?),
                    run_id: r.get(1)?,
                    event_type: r.get(2)?,
                    ts: r.get(3)?,
                    data: r.get(4)?,
                    source: r.get(5)?,
                    line_no: r.get(6)?,
                })
            })?;
            for row in rows {
                snapshot.events.push(row?);
            }
        }
        snapshot.sort();
        Ok(snapshot)
    }

    /// Names of the run DB files in `D/db/runs` (`*.sqlite`), sorted.
    pub(crate) fn run_db_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read_dir_names(&self.path("db/runs"))
            .into_iter()
            .filter(|name| name.ends_with(".sqlite"))
            .collect();
        names.sort();
        names
    }

    /// Keys of the events in a run DB whose `data` SQLite's JSON functions reject.
    pub(crate) fn rows_sqlite_rejects(&self, db_name: &str) -> Vec<String> {
        let conn = open_read_only(&self.path("db/runs").join(db_name)).expect("open run DB");
        let mut stmt = conn
            .prepare("SELECT event_key FROM events WHERE NOT json_valid(data) OR json_type(data) != 'object'")
            .expect("prepare");
        let keys = stmt.query_map([], |r| r.get(0).map(key_column)).expect("query");
        keys.collect::<rusqlite::Result<_>>().expect("rows")
    }

    /// `PRAGMA user_version` of a run DB.
    pub(crate) fn user_version(&self, db_name: &str) -> i64 {
        let conn = open_read_only(&self.path("db/runs").join(db_name)).expect("open run DB");
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("user_version")
    }

    /// Every dead letter in `D/dlq/dlq_*.ndjson`, sorted. Checks the fields a [`DeadLetter`]
    /// does not keep (`at`, `error`) are present and well-formed, that each file is named after
    /// the UTC day its letters were written, and that no line is left unterminated.
    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.read_dead_letters(true)
    }

    /// The same while a process may be appending: a trailing fragment is not a letter yet.
    pub(crate) fn dead_letters_so_far(&self) -> Vec<DeadLetter> {
        self.read_dead_letters(false)
    }

    fn read_dead_letters(&self, strict: bool) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        for (name, bytes) in self.dlq_files() {
            let day = name
                .strip_prefix("dlq_")
                .and_then(|n| n.strip_suffix(".ndjson"))
                .unwrap_or_else(|| panic!("unexpected DLQ file name {name}"));
            let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                Some(i) => &bytes[..=i],
                None => &[][..],
            };
            assert!(!strict || complete.len() == bytes.len(), "{name}: last line unterminated");
            let text = std::str::from_utf8(complete).expect("DLQ files are UTF-8");
            for line in text.lines() {
                let (letter, at) = parse_dead_letter(line);
                assert_eq!(at.replace('-', "")[..8], *day, "{name}: `at` vs file day: {line}");
                letters.push(letter);
            }
        }
        letters.sort();
        letters
    }

    /// The DLQ files (`dlq_*.ndjson`) with their exact bytes, sorted by name.
    pub(crate) fn dlq_files(&self) -> Vec<(String, Vec<u8>)> {
        let dir = self.path("dlq");
        let mut names: Vec<String> = read_dir_names(&dir)
            .into_iter()
            .filter(|n| n.starts_with("dlq_") && n.ends_with(".ndjson"))
            .collect();
        names.sort();
        // A file deleted between the listing and the read (retention in a running daemon,
        // while a test polls) is simply not there.
        names
            .into_iter()
            .filter_map(|name| match fs::read(dir.join(&name)) {
                Ok(bytes) => Some((name, bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("reading DLQ file {name}: {e}"),
            })
            .collect()
    }

    /// The state DB's `files` table, sorted by path. Empty if the state DB does not exist yet.
    pub(crate) fn checkpoints(&self) -> Vec<Checkpoint> {
        self.try_checkpoints().unwrap_or_else(|e| panic!("reading the state DB: {e}"))
    }

    pub(crate) fn try_checkpoints(&self) -> rusqlite::Result<Vec<Checkpoint>> {
        let path = self.path("db/shipper-state.sqlite");
        if !path.exists() {
            return Ok(Vec::new());
        }
        let conn = open_read_only(&path)?;
        let mut stmt = conn.prepare("SELECT path, offset, line_no FROM files ORDER BY path")?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint { path: r.get(0)?, offset: r.get(1)?, line_no: r.get(2)? })
        })?;
        rows.collect()
    }

    /// Deletes the SQLite DB `D/<rel>` with its `-wal` and `-shm`, those that exist.
    pub(crate) fn remove_db(&self, rel: &str) {
        for suffix in ["", "-wal", "-shm"] {
            let path = self.path(&format!("{rel}{suffix}"));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing {}: {e}", path.display()),
            }
        }
    }

    /// The checkpointed offset of `D/<rel>`; None while it has none or the state DB cannot be
    /// read (for polling a daemon whose state DB is locked or being written).
    pub(crate) fn checkpoint_offset(&self, rel: &str) -> Option<u64> {
        let source = self.source(rel);
        self.try_checkpoints().ok()?.into_iter().find(|cp| cp.path == source).map(|cp| cp.offset)
    }

    /// Sum of the checkpointed offsets: how far the shipper has durably got. 0 while the state
    /// DB does not exist or is being created.
    pub(crate) fn progress(&self) -> u64 {
        // Summed by SQLite: tests poll this every 10 ms over tens of thousands of rows.
        let path = self.path("db/shipper-state.sqlite");
        if !path.exists() {
            return 0;
        }
        open_read_only(&path)
            .and_then(|c| {
                c.query_row("SELECT coalesce(sum(offset), 0) FROM files", [], |r| r.get(0))
            })
            .unwrap_or(0)
    }

    /// Every file under the temp root (relative to it), sorted.
    pub(crate) fn all_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out.sort();
        out
    }
}

/// Every file under `dir`, as paths relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {}: {e}", dir.display()),
    }
}

fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn json_column(text: String) -> Json {
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("runs.data is not JSON ({e}): {text}"))
}

/// Parses one DLQ line into the kept fields and its `at`.
fn parse_dead_letter(line: &str) -> (DeadLetter, String) {
    let value: Json =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("DLQ line is not JSON ({e}): {line}"));
    let text = |key: &str| -> String {
        value[key]
            .as_str()
            .unwrap_or_else(|| panic!("DLQ `{key}` not a string: {line}"))
            .to_string()
    };
    let number = |key: &str| -> u64 {
        value[key].as_u64().unwrap_or_else(|| panic!("DLQ `{key}` not an integer: {line}"))
    };
    let at = text("at");
    humantime::parse_rfc3339_weak(&at).unwrap_or_else(|e| panic!("DLQ `at` {at:?}: {e}"));
    assert!(!text("error").is_empty(), "DLQ `error` is empty: {line}");
    let letter = DeadLetter {
        source: text("source"),
        line_no: number("line_no"),
        offset: number("offset"),
        reason: text("reason"),
        raw_len: number("raw_len"),
        raw: text("raw"),
    };
    (letter, at)
}

/// All rows of all run DBs of one installation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) runs: Vec<RunRow>,
    pub(crate) events: Vec<EventRow>,
}

impl Snapshot {
    pub(crate) fn sort(&mut self) {
        self.runs.sort_by(|a, b| (&a.db, &a.run_id).cmp(&(&b.db, &b.run_id)));
        self.events.sort_by(|a, b| (&a.db, &a.event_key).cmp(&(&b.db, &b.event_key)));
    }

    /// The same rows with `from` replaced by `to` in every `source`, to compare two
    /// installations that read identical layouts under different temp dirs.
    pub(crate) fn rebased(&self, from: &Path, to: &str) -> Snapshot {
        let from = from.to_str().expect("UTF-8 path");
        let mut out = self.clone();
        for event in &mut out.events {
            event.source = event.source.replace(from, to);
        }
        out
    }
}

/// One `runs` row (`data` parsed: the merge's key order is not part of the contract).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    /// The run DB file it was read from.
    pub(crate) db: String,
    pub(crate) run_id: String,
    pub(crate) status: SqlValue,
    pub(crate) started_at: SqlValue,
    pub(crate) ended_at: SqlValue,
    pub(crate) data: Json,
}

/// One `events` row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRow {
    /// The run DB file it was read from.
    pub(crate) db: String,
    pub(crate) event_key: String,
    pub(crate) run_id: String,
    pub(crate) event_type: SqlValue,
    pub(crate) ts: SqlValue,
    pub(crate) data: String,
    pub(crate) source: String,
    pub(crate) line_no: i64,
}

/// One dead letter, without `at` and `error` (checked for shape when read).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DeadLetter {
    pub(crate) source: String,
    pub(crate) line_no: u64,
    pub(crate) offset: u64,
    pub(crate) reason: String,
    pub(crate) raw_len: u64,
    pub(crate) raw: String,
}

impl DeadLetter {
    pub(crate) fn rebased(&self, from: &Path, to: &str) -> DeadLetter {
        let from = from.to_str().expect("UTF-8 path");
        DeadLetter { source: self.source.replace(from, to), ..self.clone() }
    }
}

/// One row of the state DB's `files` table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Checkpoint {
    pub(crate) path: String,
    pub(crate) offset: u64,
    pub(crate) line_no: u64,
}

/// A process that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    #[track_caller]
    pub(crate) fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed with {}; stderr:\n{}",
            self.status,
            self.stderr
        );
    }

    /// The `backfill done:` summary line.
    #[track_caller]
    pub(crate) fn summary(&self) -> &str {
        self.stderr
            .lines()
            .find(|line| line.starts_with("backfill done:"))
            .unwrap_or_else(|| panic!("no `backfill done:` line in stderr:\n{}", self.stderr))
    }
}

/// A child process of the binary whose output is collected in the background (so a chatty
/// child never blocks on a full pipe). Dropping it SIGKILLs the child if it still runs, so a
/// failing test leaves no daemon behind.
pub(crate) struct Running {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    stderr_live: Arc<Mutex<Vec<u8>>>,
}

impl Running {
    pub(crate) fn spawn(mut command: Command) -> Running {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        let stdout = child.stdout.take().map(collect::<ChildStdout>);
        let stderr_live = Arc::<Mutex<Vec<u8>>>::default();
        let stderr = child.stderr.take().map(|pipe| collect_live(pipe, stderr_live.clone()));
        Running { child, stdout, stderr, stderr_live }
    }

    /// What the process wrote to stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr_live.lock().expect("live output lock")).into_owned()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub(crate) fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// The furthest file position of any descriptor the process has open on `path` (from
    /// `/proc/<pid>/fdinfo`): how far a tailer has read. None if it has no such descriptor.
    pub(crate) fn read_position(&self, path: &Path) -> Option<u64> {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.child.id()));
        let fds = fs::read_dir(proc_dir.join("fd")).ok()?;
        let mut furthest = None;
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).ok().as_deref() != Some(path) {
                continue;
            }
            let info = fs::read_to_string(proc_dir.join("fdinfo").join(fd.file_name()));
            let pos = info.ok().and_then(|info| {
                info.lines().find_map(|l| l.strip_prefix("pos:").map(|p| p.trim().parse::<u64>()))
            });
            if let Some(Ok(pos)) = pos {
                furthest = furthest.max(Some(pos));
            }
        }
        furthest
    }

    /// The process's peak resident set size so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmHWM in:\n{status}"));
        kib * 1024
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit.
    pub(crate) fn terminate(mut self, deadline: Duration) -> Finished {
        self.signal(libc::SIGTERM);
        self.finish(deadline)
    }

    /// One SIGINT (Ctrl-C), then waits for the exit.
    pub(crate) fn interrupt(mut self) -> Finished {
        self.signal(libc::SIGINT);
        self.finish(DEADLINE)
    }

    /// SIGINT every 50 ms until the process exits (a second signal must end it at once).
    pub(crate) fn interrupt_until_exit(mut self) -> Finished {
        let exited = poll_until(DEADLINE, || {
            self.signal(libc::SIGINT);
            std::thread::sleep(Duration::from_millis(50));
            self.try_status().is_some()
        });
        assert!(exited, "still running after SIGINTs for {DEADLINE:?}");
        self.finish(DEADLINE)
    }

    /// SIGHUP (`systemctl reload`).
    pub(crate) fn hangup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGKILL (`kill -9`) and reap.
    pub(crate) fn kill9(mut self) -> Finished {
        self.signal(libc::SIGKILL);
        self.finish(DEADLINE)
    }

    /// Waits for the process to exit on its own.
    pub(crate) fn wait(mut self) -> Finished {
        self.finish(DEADLINE)
    }

    #[allow(unsafe_code)]
    fn signal(&mut self, signal: libc::c_int) {
        if self.try_status().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) takes plain integers; `pid` is our own unreaped child (checked just
        // above), so the pid cannot have been recycled for another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    fn finish(&mut self, deadline: Duration) -> Finished {
        let reaped = poll_until(deadline, || self.try_status().is_some());
        if !reaped {
            if let Err(e) = self.child.kill() {
                eprintln!("killing a process that overran its deadline: {e}");
            }
        }
        let status = self.child.wait().expect("wait");
        let join = |h: Option<JoinHandle<Vec<u8>>>| {
            h.map(|h| String::from_utf8_lossy(&h.join().expect("reader thread")).into_owned())
                .unwrap_or_default()
        };
        let stdout = join(self.stdout.take());
        let stderr = join(self.stderr.take());
        assert!(reaped, "process did not exit within {deadline:?}; stderr:\n{stderr}");
        Finished { status, stdout, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only an unreaped child may be signalled (its pid cannot have been reused).
        if self.child.try_wait().ok().flatten().is_none()
            && self.child.kill().is_ok()
            && self.child.wait().is_err()
        {
            eprintln!("could not reap pid {}", self.child.id());
        }
    }
}

fn collect<R: Read + Send + 'static>(pipe: R) -> JoinHandle<Vec<u8>> {
    collect_live(pipe, Arc::default())
}

/// Like `collect`, also mirroring what arrived so far into `live` (for polling a log line).
fn collect_live<R: Read + Send + 'static>(
    mut pipe: R,
    live: Arc<Mutex<Vec<u8>>>,
) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => live.lock().expect("live output lock").extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("reading a child's output: {e}");
                    break;
                }
            }
        }
        let out = live.lock().expect("live output lock").clone();
        out
    })
}

/// Waits until the run DBs and the DLQ hold exactly `want`, then asserts it (so a timeout
/// reports the difference).
#[track_caller]
pub(crate) fn wait_for_rows(shipper: &Shipper, want: &(Snapshot, Vec<DeadLetter>)) {
    poll_until(DEADLINE, || {
        shipper.try_snapshot().is_ok_and(|s| s == want.0) && shipper.dead_letters_so_far() == want.1
    });
    assert_snapshot(&shipper.snapshot(), &want.0);
    assert_dead_letters(&shipper.dead_letters(), &want.1);
}

/// Polls `cond` (every 10 ms) until it holds or `deadline` passes; returns whether it held.
pub(crate) fn poll_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it holds; panics naming `what` after `deadline`.
#[track_caller]
pub(crate) fn wait_until(deadline: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(deadline, cond), "timed out after {deadline:?} waiting for {what}");
}

/// Asserts two sorted row lists are equal, reporting the first differences by key instead of
/// dumping thousands of rows.
#[track_caller]
pub(crate) fn assert_same<T: Debug + PartialEq, K: Ord + Debug>(
    what: &str,
    actual: &[T],
    expected: &[T],
    key: impl Fn(&T) -> K,
) {
    if actual == expected {
        return;
    }
    let actual_keys: BTreeSet<K> = actual.iter().map(&key).collect();
    let expected_keys: BTreeSet<K> = expected.iter().map(&key).collect();
    let mut report = format!("{what}: {} rows, expected {}\n", actual.len(), expected.len());
    let mut n = 0;
    for row in expected.iter().filter(|r| !actual_keys.contains(&key(r))).take(10) {
        report.push_str(&format!("  missing:    {row:?}\n"));
        n += 1;
    }
    for row in actual.iter().filter(|r| !expected_keys.contains(&key(r))).take(10) {
        report.push_str(&format!("  unexpected: {row:?}\n"));
        n += 1;
    }
    for a in actual {
        if n >= 30 {
            break;
        }
        if let Some(e) = expected.iter().find(|e| key(e) == key(a)) {
            if a != e {
                report.push_str(&format!("  actual:     {a:?}\n  expected:   {e:?}\n"));
                n += 1;
            }
        }
    }
    if n == 0 {
        report.push_str("  same rows, different order or multiplicity\n");
    }
    panic!("{report}");
}

/// Asserts a whole snapshot equals the expected one.
#[track_caller]
pub(crate) fn assert_snapshot(actual: &Snapshot, expected: &Snapshot) {
    assert_same("runs", &actual.runs, &expected.runs, |r| (r.db.clone(), r.run_id.clone()));
    assert_same("events", &actual.events, &expected.events, |e| {
        (e.db.clone(), e.event_key.clone())
    });
}

#[track_caller]
pub(crate) fn assert_dead_letters(actual: &[DeadLetter], expected: &[DeadLetter]) {
    assert_same("dead letters", actual, expected, |d| (d.source.clone(), d.line_no));
}

/// The contract's run DB file name: bytes `[A-Za-z0-9_-]` kept, others `%XX`; stems longer than
/// 200 bytes become their first ≤160 bytes (no `%XX` split) + `~` + SHA-256 of the run_id.
pub(crate) fn db_file_name(run_id: &str) -> String {
    let mut stem = String::new();
    for b in run_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            stem.push(char::from(b));
        } else {
            stem.push_str(&format!("%{b:02X}"));
        }
    }
    if stem.len() > 200 {
        let mut cut = 160;
        if let Some(i) = stem[cut - 2..cut].rfind('%') {
            cut = cut - 2 + i;
        }
        stem.truncate(cut);
        stem.push('~');
        for b in Sha256::digest(run_id.as_bytes()) {
            stem.push_str(&format!("{b:02x}"));
        }
    }
    format!("{stem}.sqlite")
}

/// The event key of a line without `event_id`, as [`key_column`] renders it: a BLOB of the
/// producer's date in the file's name (`events_YYYYMMDD`, 4 bytes big-endian, 0 without one),
/// the line number (8 bytes, big-endian) and the first 12 bytes of the SHA-256 of the line's
/// bytes (without the newline).
pub(crate) fn line_key(file: &str, line_no: u64, line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    let day = producer_day(file) as u32;
    let mut key = String::from("blob:");
    for b in day.to_be_bytes().iter().chain(&line_no.to_be_bytes()).chain(&digest[..12]) {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

/// The contract's producer date of a file (path or name): the `YYYYMMDD` of `events_YYYYMMDD`
/// in its name, 0 if none.
pub(crate) fn producer_day(file: &str) -> u64 {
    let name = file.rsplit('/').next().unwrap_or(file);
    name.match_indices("events_")
        .filter_map(|(at, _)| {
            let digits: String =
                name[at + 7..].chars().take_while(|c| c.is_ascii_digit()).collect();
            (digits.len() == 8).then(|| digits.parse::<u64>().expect("digits"))
        })
        .find(|d| (1..=12).contains(&(d / 100 % 100)) && (1..=31).contains(&(d % 100)))
        .unwrap_or(0)
}

/// An `event_key` value as text: TEXT as is (producer event_ids), BLOB as `blob:<hex>` (line
/// identities). Any other type fails the comparison loudly.
pub(crate) fn key_column(v: rusqlite::types::Value) -> String {
    match v {
        rusqlite::types::Value::Text(t) => t,
        rusqlite::types::Value::Blob(b) => {
            let mut key = String::from("blob:");
            for byte in b {
                key.push_str(&format!("{byte:02x}"));
            }
            key
        }
        other => format!("unexpected {other:?}"),
    }
}

/// Concatenated gzip members of `bytes` split at `cuts`.
pub(crate) fn gzip_members(bytes: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&bytes[start..end]).expect("gzip");
        out.extend(encoder.finish().expect("gzip"));
        start = end;
    }
    out
}

/// Asserts a file's permission bits are 0640 or stricter.
#[track_caller]
pub(crate) fn assert_private(path: &Path) {
    let mode = fs::metadata(path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "{} has mode {mode:o}, want 0640 or stricter", path.display());
}

// ---- Helpers for the live-tailing tests (`tailing`): config rewrites, SIGSTOP/SIGCONT, a
// ---- process's open descriptors, a daemon under a low `ulimit -n`.

impl Shipper {
    /// Rewrites the config file given to [`Shipper::with_config`] (`base = D` plus `toml`), e.g.
    /// before a SIGHUP.
    pub(crate) fn set_config(&self, toml: &str) {
        let path = self.config.as_ref().expect("set_config needs Shipper::with_config");
        fs::write(path, format!("base = \"base\"\n{toml}")).expect("rewrite config");
    }
}

impl Running {
    /// Where every open descriptor of the process points (`/proc/<pid>/fd` link targets; a
    /// deleted file reads `<path> (deleted)`).
    pub(crate) fn fd_targets(&self) -> Vec<PathBuf> {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.child.id())) else {
            return Vec::new();
        };
        fds.flatten().filter_map(|fd| fs::read_link(fd.path()).ok()).collect()
    }

    /// SIGSTOP: the process runs no code until [`Running::resume`], so the test can change
    /// files "faster than the daemon looks".
    pub(crate) fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Running::pause`].
    pub(crate) fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }
}

impl Shipper {
    /// The daemon, `run`, under `ulimit -n <limit>` (soft and hard, so it cannot raise it).
    pub(crate) fn spawn_run_with_fd_limit(&self, limit: u32) -> Running {
        let inner = self.command(&["run"], &[]);
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            match value {
                Some(value) => sh.env(key, value),
                None => sh.env_remove(key),
            };
        }
        if let Some(dir) = inner.get_current_dir() {
            sh.current_dir(dir);
        }
        Running::spawn(sh)
    }
}

/// `lines=N` of the `drained; exiting` line.
#[track_caller]
pub(crate) fn drained_lines(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("drained; exiting"))
        .unwrap_or_else(|| panic!("no `drained; exiting` line in:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("lines="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lines=N in {line:?}"))
}

// ---- A private ClickHouse server (`clickhouse` tests): Debian's `clickhouse-server`, started
// ---- on free ports with a generated config in its own temp dir, killed on drop.

/// One `clickhouse-server` process of a test, with its data dir (kept across
/// [`ClickHouse::stop`] and [`ClickHouse::start_again`], so a restart finds its tables).
pub(crate) struct ClickHouse {
    dir: tempfile::TempDir,
    pub(crate) http_port: u16,
    child: Option<Child>,
}

impl ClickHouse {
    /// Starts a server and waits until `/ping` answers. Fails, saying how to install it, where
    /// `clickhouse-server` is missing (`.ci/run` installs it).
    pub(crate) fn start() -> ClickHouse {
        let server = ClickHouse::configure();
        let mut server = server;
        server.start_again();
        server
    }

    /// Writes the config for a server on free ports without starting it (a sink configured
    /// with its URL sees a server that is down).
    pub(crate) fn configure() -> ClickHouse {
        let ports = free_ports(3);
        ClickHouse::configure_on([ports[0], ports[1], ports[2]], "")
    }

    /// `n` servers started as one cluster named `fleet` (`remote_servers`: one shard per
    /// server, in order, each its server's TCP port), for `Distributed` tables over them.
    pub(crate) fn cluster(n: usize) -> Vec<ClickHouse> {
        let ports = free_ports(3 * n);
        let shards: String = (0..n)
            .map(|i| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>",
                    ports[3 * i + 1]
                )
            })
            .collect();
        let remote = format!("<remote_servers><fleet>{shards}</fleet></remote_servers>");
        (0..n)
            .map(|i| {
                let mut server = ClickHouse::configure_on(
                    [ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]],
                    &remote,
                );
                server.start_again();
                server
            })
            .collect()
    }

    /// The config of a server on `[http, tcp, interserver]` ports, with `extra` XML inside
    /// `<yandex>` (a cluster's `remote_servers`).
    fn configure_on(ports: [u16; 3], extra: &str) -> ClickHouse {
        let found = Command::new("clickhouse-server").arg("--help").output();
        assert!(
            found.is_ok(),
            "clickhouse-server is not installed: the clickhouse tests start private servers; \
             install it with `apt-get install -y clickhouse-server clickhouse-client` \
             (.ci/run does)"
        );
        let dir = tempfile::Builder::new().prefix("jsonl-shipper-ch-").tempdir().expect("temp dir");
        let d = dir.path().display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><console>0</console></logger>
  <http_port>{}</http_port>
  <tcp_port>{}</tcp_port>
  <interserver_http_port>{}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size>
  <uncompressed_cache_size>0</uncompressed_cache_size>
  {extra}
</yandex>
"#,
            ports[0], ports[1], ports[2]
        );
        let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <shipper><password>s3cret</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></shipper>
  </users>
  <quotas><default></default></quotas>
</yandex>
"#;
        fs::write(dir.path().join("config.xml"), config).expect("write server config");
        fs::write(dir.path().join("users.xml"), users).expect("write users config");
        ClickHouse { dir, http_port: ports[0], child: None }
    }

    /// (Re)starts the server on its ports and data dir; waits until `/ping` answers.
    pub(crate) fn start_again(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning clickhouse-server");
        self.child = Some(child);
        let pinged = poll_until(DEADLINE, || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = fs::read_to_string(self.dir.path().join("server.err.log"));
                panic!("clickhouse-server exited with {status}: {}", log.unwrap_or_default());
            }
            ureq::get(&format!("{}/ping", self.url())).call().is_ok()
        });
        assert!(pinged, "clickhouse-server did not answer /ping within {DEADLINE:?}");
    }

    /// Kills the server (SIGKILL: an outage, not a drain).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill clickhouse-server");
            child.wait().expect("reap clickhouse-server");
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs `sql` as `default`; the answer's text. Panics on an error.
    #[track_caller]
    pub(crate) fn query(&self, sql: &str) -> String {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub(crate) fn try_query(&self, sql: &str) -> Result<String, String> {
        let mut response = ureq::post(&format!("{}/", self.url()))
            .config()
            .http_status_as_error(false)
            .build()
            .send(sql)
            .map_err(|e| e.to_string())?;
        let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
        if response.status() == 200 {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// `SELECT count() FROM <table>` (with `FINAL` when asked); 0 while the table is missing.
    pub(crate) fn count(&self, table: &str, final_: bool) -> u64 {
        let sql = format!("SELECT count() FROM {table}{}", if final_ { " FINAL" } else { "" });
        self.try_query(&sql).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// Rows of `sql` as JSON objects (`FORMAT JSONEachRow`).
    pub(crate) fn rows(&self, sql: &str) -> Vec<Json> {
        self.query(&format!("{sql} FORMAT JSONEachRow"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` distinct ports free right now (bound to port 0 and released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}
