//! Retention: what to delete is a pure [`plan`] of a directory snapshot ([`Inputs`]), the
//! [`Policy`] and `now`; [`apply`] then deletes, re-checking each file just before.
//!
//! - Run DBs whose last write (mtime of the DB or its `-wal`) is older than `max_age`, then the
//!   oldest first while all of them together exceed `max_total_size`. A DB in `busy` (being
//!   written by this process) is never deleted, but counts toward the total.
//! - DLQ files, oldest day first, while they exceed `dlq.max_total_size`.
//! - Source files, with `delete_sources_after`: fully shipped (the checkpoint of this very inode
//!   is at its size), not the newest file of its directory (a producer may still append), and
//!   unmodified for that long. `.gz` files are never deleted: their checkpoint counts
//!   decompressed bytes, so the state DB cannot tell that one was read to its end.
//!   With a remote sink configured (`[sinks.clickhouse]`), also passed by the sink's own
//!   cursor: one it has not passed is kept (`RetentionPlan::held_for_sink`) and logged.
//!
//! The catalog rows of deleted run DBs are removed after them (`catalog::remove_deleted`).
//!
//! `apply` deletes a run DB only while holding SQLite's exclusive lock on it, so a DB another
//! connection has open (the daemon's writer pool keeps a shared lock) is skipped, not pulled
//! from under it; and `run_db::open` reopens a DB whose file vanished while it waited. In the
//! daemon, a DB found in use is first released by this process's own writers
//! ([`crate::sink::Releases`]), then the delete is tried again: only another process's
//! connection (or records of that run waiting to be committed) keeps it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::checkpoint::StateDb;
use crate::config::Config;
use crate::identity::FileId;
use crate::sink::Releases;
use crate::sqlite::sibling;

/// A run DB as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunDb {
    /// `<output.dir>/<name>.sqlite`.
    pub path: PathBuf,
    /// The DB, its `-wal` and `-shm` together.
    pub bytes: u64,
    /// The mtime of the DB or its `-wal`, whichever is later.
    pub last_write: SystemTime,
}

/// A DLQ file (`dlq_YYYYMMDD.ndjson`); names sort oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DlqFile {
    pub name: String,
    pub bytes: u64,
}

/// A source file matching the configured globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
    pub gzip: bool,
    /// The checkpoint offset of this inode, if the state DB has one.
    pub shipped_to: Option<u64>,
    /// With a remote sink configured: whether its cursor has passed the whole file (None:
    /// no sink).
    pub sink_passed: Option<bool>,
}

/// A snapshot of everything retention decides about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inputs {
    pub runs: Vec<RunDb>,
    pub dlq: Vec<DlqFile>,
    pub sources: Vec<SourceFile>,
    /// Run DB paths being written right now: never deleted.
    pub busy: HashSet<PathBuf>,
}

/// The limits (`None` = off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    pub max_age: Option<Duration>,
    pub max_total_size: Option<u64>,
    pub dlq_max_total_size: Option<u64>,
    pub delete_sources_after: Option<Duration>,
}

impl Policy {
    pub(crate) fn from_config(config: &Config) -> Policy {
        Policy {
            max_age: config.retention.max_age,
            max_total_size: config.retention.max_total_size,
            dlq_max_total_size: config.dlq.max_total_size,
            delete_sources_after: config.retention.delete_sources_after,
        }
    }
}

/// Why a run DB is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    MaxAge,
    MaxTotalSize,
}

/// What to delete, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RetentionPlan {
    pub runs: Vec<(RunDb, Why)>,
    pub dlq: Vec<DlqFile>,
    pub sources: Vec<SourceFile>,
    /// Source files that would be deleted but the remote sink has not passed yet.
    pub held_for_sink: Vec<SourceFile>,
}

#[cfg(test)]
impl RetentionPlan {
    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.dlq.is_empty() && self.sources.is_empty()
    }
}

fn age(t: SystemTime, now: SystemTime) -> Duration {
    // A clock step backwards makes files look new, never old.
    now.duration_since(t).unwrap_or_default()
}

/// Decides what to delete. Pure: no IO, no clock.
pub(crate) fn plan(inputs: &Inputs, policy: &Policy, now: SystemTime) -> RetentionPlan {
    let mut out = RetentionPlan::default();

    let mut runs: Vec<&RunDb> = inputs.runs.iter().collect();
    runs.sort_by(|a, b| (a.last_write, &a.path).cmp(&(b.last_write, &b.path)));
    let mut total: u64 = runs.iter().map(|r| r.bytes).sum();
    let mut deleted = HashSet::new();
    if let Some(max_age) = policy.max_age {
        for run in &runs {
            if !inputs.busy.contains(&run.path) && age(run.last_write, now) > max_age {
                out.runs.push(((*run).clone(), Why::MaxAge));
                deleted.insert(&run.path);
                total -= run.bytes;
            }
        }
    }
    if let Some(max) = policy.max_total_size {
        for run in &runs {
            if total <= max {
                break;
            }
            if inputs.busy.contains(&run.path) || deleted.contains(&run.path) {
                continue;
            }
            out.runs.push(((*run).clone(), Why::MaxTotalSize));
            total -= run.bytes;
        }
    }

    if let Some(max) = policy.dlq_max_total_size {
        let mut files: Vec<&DlqFile> = inputs.dlq.iter().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut total: u64 = files.iter().map(|f| f.bytes).sum();
        for file in files {
            if total <= max {
                break;
            }
            out.dlq.push(file.clone());
            total -= file.bytes;
        }
    }

    if let Some(after) = policy.delete_sources_after {
        // The newest file of each directory, by the day in its name, then mtime.
        let mut newest: HashMap<&Path, (u32, SystemTime, &Path)> = HashMap::new();
        for source in &inputs.sources {
            let dir = source.path.parent().unwrap_or(Path::new(""));
            let day = crate::parse::file_day(
                &source.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            );
            let rank = (day, source.modified, source.path.as_path());
            newest.entry(dir).and_modify(|n| *n = (*n).max(rank)).or_insert(rank);
        }
        for source in &inputs.sources {
            let dir = source.path.parent().unwrap_or(Path::new(""));
            let is_newest = newest.get(dir).is_some_and(|n| n.2 == source.path);
            if !source.gzip
                && !is_newest
                && source.shipped_to == Some(source.bytes)
                && age(source.modified, now) > after
            {
                if source.sink_passed == Some(false) {
                    out.held_for_sink.push(source.clone());
                } else {
                    out.sources.push(source.clone());
                }
            }
        }
        out.sources.sort_by(|a, b| a.path.cmp(&b.path));
    }
    out
}

/// Reads the snapshot [`plan`] needs: run DBs in `output.dir`, DLQ files, the configured
/// sources with their checkpoints (when `state` is given).
pub(crate) fn gather(
    config: &Config,
    state: Option<&StateDb>,
    busy: &HashSet<PathBuf>,
) -> anyhow::Result<Inputs> {
    use anyhow::Context;
    let mut inputs = Inputs { busy: busy.clone(), ..Inputs::default() };
    let dir = &config.output.dir;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries.into_iter().flatten() {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sqlite") {
            continue;
        }
        let path = entry.path();
        let Some(meta) = stat(&path)? else { continue };
        let mut bytes = meta.len();
        let mut last_write = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        for suffix in ["-wal", "-shm"] {
            if let Some(m) = stat(&sibling(&path, suffix))? {
                bytes += m.len();
                // An empty WAL holds no write: readers (an analyst's sqlite3) create one, and a
                // TRUNCATE checkpoint leaves one, both without writing anything.
                if suffix == "-wal" && m.len() > 0 {
                    last_write = last_write.max(m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                }
            }
        }
        inputs.runs.push(RunDb { path, bytes, last_write });
    }
    inputs.dlq = crate::dlq::dlq_files(&config.dlq.dir)
        .with_context(|| format!("listing {}", config.dlq.dir.display()))?
        .into_iter()
        .map(|(name, bytes)| DlqFile { name, bytes })
        .collect();
    if config.retention.delete_sources_after.is_some() {
        let checkpoints = match state {
            Some(state) => state.load().context("loading checkpoints")?,
            None => HashMap::new(),
        };
        let sink = config.sinks.clickhouse.is_some();
        let sink_cursors = match state {
            Some(state) if sink => state
                .sink_cursors(crate::clickhouse::SINK)
                .context("loading the clickhouse sink's cursors")?,
            _ => HashMap::new(),
        };
        let mut seen = HashSet::new();
        for pattern in &config.sources.paths {
            for path in glob::glob(pattern).with_context(|| format!("glob {pattern}"))?.flatten() {
                let Some(meta) = stat(&path)? else { continue };
                if !meta.is_file() || !seen.insert(path.clone()) {
                    continue;
                }
                let gzip = is_gzip(&path);
                inputs.sources.push(SourceFile {
                    bytes: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    gzip,
                    shipped_to: checkpoints.get(&FileId::of(&meta)).map(|cp| cp.offset),
                    sink_passed: sink.then(|| {
                        crate::clickhouse::has_passed(
                            meta.len(),
                            sink_cursors.get(&FileId::of(&meta)),
                        )
                    }),
                    path,
                });
            }
        }
    }
    Ok(inputs)
}

fn is_gzip(path: &Path) -> bool {
    std::fs::File::open(path).and_then(|f| crate::tail::is_gzip(&f)).unwrap_or(false)
}

fn stat(path: &Path) -> anyhow::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("stat {}", path.display()))),
    }
}

/// What [`apply`] deleted (and what it could not).
#[derive(Debug, Default, Clone)]
pub(crate) struct Applied {
    pub runs: Vec<PathBuf>,
    pub dlq: Vec<String>,
    pub sources: Vec<PathBuf>,
    pub bytes: u64,
    /// Planned deletions skipped: in use, written since, or failed (with why).
    pub skipped: Vec<(PathBuf, String)>,
    /// Source files kept because the remote sink has not passed them ([`HeldForSink`] says so).
    pub held_for_sink: Vec<SourceFile>,
}

/// The source files retention keeps for the remote sink, remembered between rounds, so that
/// the daemon says so once per file when it starts keeping it, not every `check_interval`
/// for as long as the sink is behind (the deletion, once the sink passed it, is logged too).
#[derive(Debug, Default)]
pub(crate) struct HeldForSink {
    said: HashSet<PathBuf>,
}

impl HeldForSink {
    /// Logs the files newly kept by this round (`Applied::held_for_sink`); returns them.
    pub(crate) fn update(&mut self, held: &[SourceFile]) -> Vec<PathBuf> {
        let now: HashSet<PathBuf> = held.iter().map(|s| s.path.clone()).collect();
        let mut new = Vec::new();
        for source in held.iter().filter(|s| !self.said.contains(&s.path)) {
            tracing::info!(path = %source.path.display(), bytes = source.bytes, "retention: keeping a fully shipped source file until the clickhouse sink has passed it");
            new.push(source.path.clone());
        }
        self.said = now;
        new
    }
}

impl Applied {
    /// Files deleted: what `jsonl_shipper_retention_deleted_total` counts.
    pub(crate) fn deleted(&self) -> u64 {
        (self.runs.len() + self.dlq.len() + self.sources.len()) as u64
    }
}

/// How long retention waits for this process's writers to close a run DB it deletes.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Carries out a plan. Each deletion is logged; one that cannot be done is skipped and
/// reported, never fatal (the next round tries again). DLQ files are deleted under the DLQ lock
/// and need the state DB. `releases`: this process's writers (the daemon), asked to close a
/// run DB found in use before it is tried again.
pub(crate) fn apply(
    plan: &RetentionPlan,
    config: &Config,
    state: Option<&StateDb>,
    releases: Option<&Releases>,
) -> Applied {
    let mut out = Applied { held_for_sink: plan.held_for_sink.clone(), ..Applied::default() };
    for (run, why) in &plan.runs {
        // With writers to ask, do not wait out a lock they hold: ask them instead.
        let wait = if releases.is_some() { Duration::ZERO } else { config.sqlite.busy_timeout };
        let mut result = delete_run_db(run, wait);
        if let (Err(Kept::InUse(_)), Some(releases)) = (&result, releases) {
            if releases.release(&run.path, RELEASE_WAIT) {
                result = delete_run_db(run, config.sqlite.busy_timeout);
            }
        }
        match result.map_err(Kept::into_why) {
            Ok(()) => {
                tracing::info!(path = %run.path.display(), bytes = run.bytes, ?why, "retention: deleted run DB");
                out.bytes += run.bytes;
                out.runs.push(run.path.clone());
            }
            Err(why) => {
                tracing::info!(path = %run.path.display(), %why, "retention: run DB kept");
                out.skipped.push((run.path.clone(), why));
            }
        }
    }
    // After the files: the catalog thread writes a row only for a file it finds (in its own
    // transaction), so a row removed after its file is gone for good.
    if let Err(error) =
        crate::catalog::remove_deleted(&config.output.catalog, &config.sqlite, &out.runs)
    {
        tracing::warn!(
            path = %config.output.catalog.display(),
            %error,
            "retention: cannot remove deleted run DBs from the catalog; the next start of run or backfill does"
        );
    }
    if !plan.dlq.is_empty() {
        let dir = &config.dlq.dir;
        let names: Vec<String> = plan.dlq.iter().map(|f| f.name.clone()).collect();
        let result = match state {
            None => Err(std::io::Error::other("no state DB")),
            Some(state) => crate::dlq::DlqLock::acquire(dir)
                .and_then(|_lock| crate::dlq::delete_files(dir, state, &names)),
        };
        match result {
            Ok(bytes) => {
                for name in names {
                    tracing::info!(path = %dir.join(&name).display(), "retention: deleted DLQ file");
                    out.dlq.push(name);
                }
                out.bytes += bytes;
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "retention: cannot delete DLQ files");
                out.skipped.push((dir.clone(), e.to_string()));
            }
        }
    }
    for source in &plan.sources {
        // Re-check: a producer may have appended since the snapshot.
        let unchanged = std::fs::metadata(&source.path)
            .ok()
            .is_some_and(|m| m.len() == source.bytes && m.modified().ok() == Some(source.modified));
        if !unchanged {
            out.skipped.push((source.path.clone(), "changed since planned".into()));
            continue;
        }
        match std::fs::remove_file(&source.path) {
            Ok(()) => {
                tracing::info!(path = %source.path.display(), "retention: deleted fully shipped source file");
                out.bytes += source.bytes;
                out.sources.push(source.path.clone());
            }
            Err(e) => {
                tracing::warn!(path = %source.path.display(), error = %e, "retention: cannot delete source file");
                out.skipped.push((source.path.clone(), e.to_string()));
            }
        }
    }
    out
}

/// Why a run DB was kept.
#[derive(Debug)]
enum Kept {
    /// Another connection has it open.
    InUse(String),
    Other(String),
}

impl Kept {
    fn into_why(self) -> String {
        match self {
            Kept::InUse(why) | Kept::Other(why) => why,
        }
    }
}

/// Deletes a run DB with its `-wal` and `-shm`, holding SQLite's exclusive lock on it so that
/// no other connection has it open (waiting up to `wait` for that lock); skipped if it was
/// written after the plan was made.
fn delete_run_db(run: &RunDb, wait: Duration) -> Result<(), Kept> {
    use rusqlite::{Connection, OpenFlags};
    let wal_before = std::fs::metadata(sibling(&run.path, "-wal")).ok();
    let conn = Connection::open_with_flags(
        &run.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Kept::Other(format!("open: {e}")))?;
    // Closing must not checkpoint or delete a `-wal` by name: after the unlink that name may
    // belong to a new DB of the same run.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .and_then(|_| conn.busy_timeout(wait))
        .map_err(|e| Kept::Other(format!("configure: {e}")))?;
    // In exclusive locking mode the first read takes an exclusive lock on the DB file, which
    // fails while any other connection (which keeps a shared lock in WAL mode) has it open.
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .map_err(|e| Kept::InUse(format!("in use ({e})")))?;
    // Written since the plan? Our own exclusive open may have created an empty `-wal`; a
    // writer's commit would have made it non-empty or touched the DB or an existing `-wal`.
    let wal = sibling(&run.path, "-wal");
    let stat = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let newer = |t: Option<SystemTime>| t.is_none_or(|t| t > run.last_write);
    let written_since = stat(&run.path).is_none_or(|(t, _)| newer(t))
        || match (&wal_before, stat(&wal)) {
            (_, None) => false,
            (None, Some((_, len))) => len > 0,
            // An empty WAL holds no commit (a reader's, or truncated by a checkpoint, which
            // would have touched the DB file itself).
            (Some(_), Some((t, len))) => len > 0 && newer(t),
        };
    if written_since {
        return Err(Kept::Other("written since planned".into()));
    }
    // The DB file last: a crash in between leaves a DB without its `-wal` (deleted next
    // round), never a `-wal` without its DB, which a new DB of the same run would replay.
    for suffix in ["-wal", "-shm", ""] {
        let path = sibling(&run.path, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Kept::Other(format!("{}: {e}", path.display()))),
        }
        if suffix == "-wal" {
            crate::crash::point("retention.between_files");
        }
    }
    drop(conn);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn t(days_ago: u64) -> SystemTime {
        now() - Duration::from_secs(days_ago * DAY)
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn run(name: &str, bytes: u64, days_ago: u64) -> RunDb {
        RunDb { path: PathBuf::from(format!("/o/{name}.sqlite")), bytes, last_write: t(days_ago) }
    }

    fn names(plan: &RetentionPlan) -> Vec<(String, Why)> {
        plan.runs
            .iter()
            .map(|(r, why)| (r.path.file_stem().unwrap().to_string_lossy().into_owned(), *why))
            .collect()
    }

    #[test]
    fn run_dbs_by_age_then_size_never_busy() {
        use Why::*;
        let runs = vec![run("a", 100, 40), run("b", 100, 31), run("c", 100, 10), run("d", 100, 1)];
        let days = |d| Some(Duration::from_secs(d * DAY));
        // (policy max_age, max_total_size, busy, expected deletions in order)
        type Case<'a> = (Option<Duration>, Option<u64>, &'a [&'a str], Vec<(&'a str, Why)>);
        let cases: Vec<Case> = vec![
            (None, None, &[], vec![]),
            (days(30), None, &[], vec![("a", MaxAge), ("b", MaxAge)]),
            (days(30), None, &["a"], vec![("b", MaxAge)]),
            // Exactly at the limit is kept: "older than".
            (days(31), None, &[], vec![("a", MaxAge)]),
            (None, Some(400), &[], vec![]),
            (None, Some(250), &[], vec![("a", MaxTotalSize), ("b", MaxTotalSize)]),
            // A busy DB counts toward the total but the next oldest goes instead.
            (None, Some(250), &["a"], vec![("b", MaxTotalSize), ("c", MaxTotalSize)]),
            (
                days(35),
                Some(150),
                &[],
                vec![("a", MaxAge), ("b", MaxTotalSize), ("c", MaxTotalSize)],
            ),
            // Everything busy: nothing to do, even over the limit.
            (None, Some(0), &["a", "b", "c", "d"], vec![]),
        ];
        for (max_age, max_total_size, busy, want) in cases {
            let inputs = Inputs {
                runs: runs.clone(),
                busy: busy.iter().map(|b| PathBuf::from(format!("/o/{b}.sqlite"))).collect(),
                ..Inputs::default()
            };
            let policy = Policy { max_age, max_total_size, ..Policy::default() };
            let got = names(&plan(&inputs, &policy, now()));
            let want: Vec<(String, Why)> =
                want.into_iter().map(|(n, w)| (n.to_string(), w)).collect();
            assert_eq!(
                got, want,
                "max_age {max_age:?}, max_total_size {max_total_size:?}, busy {busy:?}"
            );
        }
    }

    #[test]
    fn future_mtimes_are_not_old() {
        let inputs = Inputs {
            runs: vec![RunDb {
                path: "/o/x.sqlite".into(),
                bytes: 1,
                last_write: now() + Duration::from_secs(DAY),
            }],
            ..Inputs::default()
        };
        let policy = Policy { max_age: Some(Duration::from_secs(1)), ..Policy::default() };
        assert!(plan(&inputs, &policy, now()).is_empty());
    }

    #[test]
    fn dlq_files_oldest_first_under_the_limit() {
        let dlq: Vec<DlqFile> =
            [("dlq_20240103.ndjson", 10), ("dlq_20240101.ndjson", 10), ("dlq_20240102.ndjson", 10)]
                .iter()
                .map(|(n, b)| DlqFile { name: n.to_string(), bytes: *b })
                .collect();
        for (max, want) in [
            (None, vec![]),
            (Some(30), vec![]),
            (Some(29), vec!["dlq_20240101.ndjson"]),
            (Some(10), vec!["dlq_20240101.ndjson", "dlq_20240102.ndjson"]),
            (Some(0), vec!["dlq_20240101.ndjson", "dlq_20240102.ndjson", "dlq_20240103.ndjson"]),
        ] {
            let inputs = Inputs { dlq: dlq.clone(), ..Inputs::default() };
            let policy = Policy { dlq_max_total_size: max, ..Policy::default() };
            let got: Vec<String> =
                plan(&inputs, &policy, now()).dlq.into_iter().map(|f| f.name).collect();
            assert_eq!(got, want, "dlq max {max:?}");
        }
    }

    #[test]
    fn sources_fully_shipped_old_and_not_newest() {
        let src =
            |name: &str, bytes: u64, shipped: Option<u64>, days_ago: u64, gzip: bool| SourceFile {
                path: PathBuf::from(format!("/raw/{name}")),
                bytes,
                modified: t(days_ago),
                gzip,
                shipped_to: shipped,
                sink_passed: None,
            };
        let sources = vec![
            src("events_20240101.ndjson", 10, Some(10), 10, false), // deleted
            src("events_20240102.ndjson", 10, Some(9), 10, false),  // not fully shipped
            src("events_20240103.ndjson", 10, None, 10, false),     // never shipped
            src("events_20240104.ndjson", 10, Some(10), 1, false),  // too recent
            src("events_20240105.ndjson.gz", 10, Some(99), 10, true), // gzip: unknown EOF
            src("events_20240106.ndjson", 10, Some(10), 10, false), // newest of its dir
        ];
        let inputs = Inputs { sources, ..Inputs::default() };
        let policy = Policy {
            delete_sources_after: Some(Duration::from_secs(7 * DAY)),
            ..Policy::default()
        };
        let got: Vec<PathBuf> =
            plan(&inputs, &policy, now()).sources.into_iter().map(|s| s.path).collect();
        assert_eq!(got, vec![PathBuf::from("/raw/events_20240101.ndjson")]);
        // Off: nothing.
        assert!(plan(&inputs, &Policy::default(), now()).is_empty());
        // Issue 12: a sink that has not passed a file keeps it (and says so).
        let mut inputs = inputs;
        inputs.sources[0].sink_passed = Some(false);
        let held = plan(&inputs, &policy, now());
        assert!(held.sources.is_empty());
        assert_eq!(held.held_for_sink.len(), 1);
        // Said once, not every round; again only once it was let go and kept anew.
        let mut said = HeldForSink::default();
        let path = inputs.sources[0].path.clone();
        assert_eq!(said.update(&held.held_for_sink), std::slice::from_ref(&path));
        assert_eq!(said.update(&held.held_for_sink), Vec::<PathBuf>::new());
        assert_eq!(said.update(&[]), Vec::<PathBuf>::new());
        assert_eq!(said.update(&held.held_for_sink), [path]);
        inputs.sources[0].sink_passed = Some(true);
        assert_eq!(plan(&inputs, &policy, now()).sources.len(), 1);
    }

    #[test]
    fn an_open_connection_blocks_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let sqlite = crate::config::Config::for_base(dir.path()).sqlite;
        let conn = crate::sink::run_db::open(&path, &sqlite, &Default::default()).unwrap();
        conn.execute_batch("INSERT INTO runs (run_id) VALUES ('r')").unwrap();
        let last_write = std::fs::metadata(sibling(&path, "-wal")).unwrap().modified().unwrap();
        let db = RunDb { path: path.clone(), bytes: 0, last_write };
        let err = delete_run_db(&db, Duration::ZERO).unwrap_err();
        assert!(matches!(&err, Kept::InUse(why) if why.contains("in use")), "{err:?}");
        assert!(path.exists());
        drop(conn);
        delete_run_db(&db, Duration::ZERO).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert!(!sibling(&path, suffix).exists(), "{suffix} left behind");
        }
    }
}
