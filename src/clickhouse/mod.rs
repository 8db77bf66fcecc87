//! The fleet sink: every record the SQLite path ships, also in ClickHouse (`[sinks.clickhouse]`),
//! effectively once, read by a cursor of its own over the source files.
//!
//! ```text
//! source files ──▶ clickhouse thread (own cursor: state DB `sink_files`) ──HTTP──▶ ClickHouse
//!                        │ waits for the SQLite checkpoint before sending a run's row
//!                        └── reads that row from the run DB (read-only)
//! ```
//! The source files are the durable log: the sink never takes records from the SQLite path's
//! channels, so an outage, a slow server or a bad credential only makes its cursor wait; the
//! readers and writers of the run DBs never wait for it. Its cursor moves only after the server
//! acknowledged the insert (HTTP 200); a replay re-inserts rows that ReplacingMergeTree
//! collapses (`ddl`). `client` speaks HTTP, `rows` encodes TabSeparated, `cursor` is the thread.

mod client;
mod cursor;
mod ddl;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::Sender;

use crate::checkpoint::SinkCursor;
use crate::config::Config;
use crate::metrics::Counters;

pub(crate) use ddl::script as ddl_script;

/// The sink's name in the state DB (`sink_files.sink`), in metrics labels and in `status`.
pub(crate) const SINK: &str = crate::metrics::CLICKHOUSE_SINK;

/// What the sink reads.
#[derive(Debug, Clone)]
pub(crate) enum Files {
    /// The daemon: the configured globs, rescanned every `batch_max_delay`, for ever.
    Globs(Vec<String>),
    /// Backfill: these files, each to its end; then the thread ends.
    List(Vec<PathBuf>),
}

/// How the sink thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    Normal,
    /// Beside backfill's run DBs: a background job ([`run_in_background`]) that goes on
    /// until stopped (the run DBs keep growing), whatever it has shipped so far.
    Background,
}

/// The running sink thread. Dropping the handle without [`Sink::stop`] detaches nothing: the
/// thread sees its stop channel close at its next safe point, but only `stop`/`finish` join it.
pub(crate) struct Sink {
    stop: Sender<()>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Sink {
    /// Starts the sink thread if `[sinks.clickhouse]` is configured. The password file is read
    /// here, so a missing one fails the start naming its key.
    pub(crate) fn start(
        config: &Arc<Config>,
        files: Files,
        counters: Arc<Counters>,
        priority: Priority,
    ) -> anyhow::Result<Option<Sink>> {
        let Some(clickhouse) = &config.sinks.clickhouse else { return Ok(None) };
        let password = clickhouse.password()?;
        let (stop, stop_rx) = crossbeam_channel::bounded(0);
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name("clickhouse".into())
            .spawn(move || {
                // Set by the thread on itself, before anything else.
                let background = priority == Priority::Background && run_in_background();
                let until_stopped = priority == Priority::Background;
                cursor::run(config, password, files, counters, background, until_stopped, stop_rx)
            })
            .context("spawning the clickhouse sink thread")?;
        Ok(Some(Sink { stop, thread }))
    }

    /// Stops the thread at its next safe point (between requests, or in a retry's wait; an
    /// HTTP request in flight ends within `timeout`) and joins it. Lines read but not
    /// acknowledged are read again by the next start: the cursor did not move past them.
    pub(crate) fn stop(self) -> anyhow::Result<()> {
        let Sink { stop, thread } = self;
        drop(stop);
        match thread.join() {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the clickhouse sink thread panicked"),
        }
    }

    /// Whether the thread has ended on its own (backfill: every file shipped, or given up).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Joins a thread that ends on its own (backfill); its error says why it gave up.
    pub(crate) fn join(self) -> anyhow::Result<()> {
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => anyhow::bail!("the clickhouse sink thread panicked"),
        }
    }
}

/// Makes the calling thread a background job (Linux's `SCHED_IDLE`: it runs on CPU time no
/// other thread wants); false where that failed or does not exist. Backfill's sink thread calls
/// it while the run DBs are being written (`sinks.clickhouse.backfill = "beside"`; on a host of
/// 2 CPUs or fewer the default waits for the run DBs instead, see `config::SinkBackfill`): backfill is CPU-bound, and on a busy host (or one
/// that runs the ClickHouse server too) the run DBs, the job's first output, and the producers
/// keep the CPU; the sink takes what they leave, all of an idle core. Measured (`bench
/// clickhouse`, server on the same 2 cores, 4 sittings each): the SQLite path's rate with the
/// sink 80-89 % of its rate alone instead of 68-73 %, the ClickHouse rate 70-82k rows/s instead
/// of 75-91k. Once the run DBs are complete, backfill restarts the sink at normal priority (an
/// unprivileged thread cannot take its old priority back), so that on a host that is never
/// idle its rest does not crawl; `run` keeps its sink at normal priority throughout.
#[allow(unsafe_code)]
pub(crate) fn run_in_background() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0) with a valid parameter struct.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc == 0 {
            return true;
        }
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "clickhouse sink: cannot run as a background job (SCHED_IDLE)");
    }
    false
}

/// Bytes of a source file the sink has not shipped: a plain file's size past its cursor; a
/// `.gz` (whose cursor counts decompressed bytes) all of its size until it was read to its end
/// at this size.
pub(crate) fn lag_bytes(size: u64, gzip: bool, cursor: Option<&SinkCursor>) -> u64 {
    match cursor {
        None => size,
        Some(c) if gzip => {
            if c.size == Some(size) {
                0
            } else {
                size
            }
        }
        Some(c) => size.saturating_sub(c.offset),
    }
}

/// The lag of the file at `path` now (a stat and a 2-byte read), against the sink's saved
/// cursors; None if it cannot be read. What `status`, the lag gauge during an outage and
/// backfill's closing WARN count.
pub(crate) fn file_lag(
    path: &std::path::Path,
    cursors: &std::collections::HashMap<crate::identity::FileId, SinkCursor>,
) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    let gzip = std::fs::File::open(path).and_then(|f| crate::tail::is_gzip(&f)).ok()?;
    Some(lag_bytes(meta.len(), gzip, cursors.get(&crate::identity::FileId::of(&meta))))
}

/// The files of `paths` the sink has not shipped to their end, with their lag in bytes, read
/// from the state DB: for backfill's closing WARN.
pub(crate) fn unshipped(state_db: &std::path::Path, paths: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    let Ok(Some(state)) = crate::checkpoint::StateDb::open_read_only(state_db) else {
        return Vec::new();
    };
    let cursors = state.sink_cursors(SINK).unwrap_or_default();
    let lag = |path: &PathBuf| file_lag(path, &cursors).filter(|&lag| lag > 0);
    paths.iter().filter_map(|path| Some((path.clone(), lag(path)?))).collect()
}

/// Whether the sink has shipped a plain file of `size` bytes to its end (retention's test).
pub(crate) fn has_passed(size: u64, cursor: Option<&SinkCursor>) -> bool {
    cursor.is_some_and(|c| c.offset >= size)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The calling thread's scheduling policy: field 41 of its `/proc` stat.
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self");
        // The name (field 2) may hold spaces; field 3 starts past its ')'.
        let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
        rest.split(' ').nth(41 - 3).expect("field 41").parse().expect("a number")
    }

    #[test]
    fn a_background_thread_is_sched_idle_and_no_other_thread_is() {
        let (before, ok, after) = std::thread::spawn(|| {
            let before = policy();
            let ok = super::run_in_background();
            (before, ok, policy())
        })
        .join()
        .expect("thread");
        // SCHED_OTHER (0), then SCHED_IDLE (5).
        assert_eq!((before, ok, after), (0, true, libc::SCHED_IDLE as u32));
        assert_eq!(policy(), 0, "the spawning thread keeps its policy");
    }
}
