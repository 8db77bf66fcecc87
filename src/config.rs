//! The configuration: TOML text → `RawConfig` (serde, `deny_unknown_fields` on every section,
//! human durations and sizes) → `Config` (typed, defaults filled in, paths absolute, validated).
//!
//! This module owns every default, every limit and every config error message. Nothing
//! downstream parses a duration, checks a range or unwraps a default again. It does no IO
//! besides reading the config file and `Config::prepare_dirs` (`[columns]` and `[[indexes]]`
//! are checked against an in-memory SQLite DB, `schema::Schema::validate`).

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize, Serialize};

use crate::schema::{ColumnType, Index, Schema, TypedColumn};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The systemd `StateDirectory`, used as `base` when a config file does not set it.
pub(crate) const DEFAULT_BASE: &str = "/var/lib/jsonl-shipper";
/// Files that already exist are usually what the operator wants shipped.
pub(crate) const DEFAULT_READ_FROM: ReadFrom = ReadFrom::Beginning;
/// The glob rescan is the source of truth; 1s bounds discovery latency at negligible cost.
pub(crate) const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Daily files go quiet after midnight; 5m frees their descriptors without closing busy ones.
pub(crate) const DEFAULT_CLOSE_INACTIVE: Duration = Duration::from_secs(5 * 60);
/// Far above a sane telemetry record, small enough that one line never threatens RSS.
pub(crate) const DEFAULT_MAX_LINE_BYTES: usize = MIB as usize;
/// Well under a typical `LimitNOFILE`, leaving room for run DBs and sockets.
pub(crate) const DEFAULT_MAX_OPEN_FILES: usize = 1024;
/// Most rows of one run committed together: amortises the commit (an fsync, ~3 ms here
/// whatever its size, and rewriting the pages it touches). With several runs buffered, a run
/// is committed sooner, at its share of the byte bound (`sink::writer`), so this is what one
/// hot run gets, not what every run holds (1 run: pair.py 1.20 -> 1.49 against 1024).
pub(crate) const DEFAULT_BATCH_MAX_EVENTS: usize = 16_384;
/// Bounds the memory buffered records hold (all writers together), whatever the line sizes and
/// the number of runs; with thousands of interleaved runs batches grow to this to amortise
/// one commit per run.
pub(crate) const DEFAULT_BATCH_MAX_BYTES: usize = 64 * MIB as usize;
/// A trickle of events still lands within a tenth of a second.
pub(crate) const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(100);
/// Enough for every concurrently active run on a busy host; each open DB costs fds and cache.
pub(crate) const DEFAULT_MAX_OPEN_DBS: usize = 256;
/// A finished run's DB is checkpointed and closed a minute after its last write.
pub(crate) const DEFAULT_IDLE_CLOSE_AFTER: Duration = Duration::from_secs(60);
/// Two writers overlap one DB's fsync with another's inserts; more rarely helps one disk.
pub(crate) const DEFAULT_WRITER_THREADS: usize = 2;
/// A committed batch survives power loss, which the checkpoint protocol relies on.
pub(crate) const DEFAULT_SYNCHRONOUS: Synchronous = Synchronous::Full;
/// Rides out a concurrent reader or `backfill` holding a lock, then the writer retries.
pub(crate) const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite's own default (pages, ~4MiB of WAL); the checkpoint loop does the rest.
pub(crate) const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 1000;
/// Keeps WAL files small even for DBs that never reach the auto-checkpoint threshold.
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// A WAL that once grew large is truncated back to this after a checkpoint.
pub(crate) const DEFAULT_JOURNAL_SIZE_LIMIT: usize = 4 * MIB as usize;
/// Upserts touch few pages (measured: 512KiB is as fast as 2MiB at 50 runs and halves RSS);
/// a small cache keeps 256 open DBs cheap.
pub(crate) const DEFAULT_CACHE_SIZE: usize = 512 * KIB as usize;
/// Deleting data is opt-in.
pub(crate) const DEFAULT_RETENTION_MAX_AGE: Option<Duration> = None;
/// Deleting data is opt-in.
pub(crate) const DEFAULT_RETENTION_MAX_TOTAL_SIZE: Option<u64> = None;
/// Retention is a directory scan; once a minute is cheap and timely (contract default).
pub(crate) const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// Source files belong to the producers; deleting them is opt-in.
pub(crate) const DEFAULT_DELETE_SOURCES_AFTER: Option<Duration> = None;
/// A flood of bad lines must not fill the disk the run DBs need.
pub(crate) const DEFAULT_DLQ_MAX_TOTAL_SIZE: Option<u64> = Some(GIB);
/// Enough of a bad line to diagnose it without copying megabytes per entry (or
/// `sources.max_line_bytes` when that is smaller).
pub(crate) const DEFAULT_DLQ_MAX_RAW_BYTES: usize = 64 * KIB as usize;
/// No listening socket unless asked for.
pub(crate) const DEFAULT_METRICS_LISTEN: Option<SocketAddr> = None;
/// Far above any healthy commit gap, short enough for a watchdog to act on.
pub(crate) const DEFAULT_UNHEALTHY_AFTER: Duration = Duration::from_secs(120);
/// A commit slower than this usually means a saturated or failing disk; it is logged.
pub(crate) const DEFAULT_SLOW_COMMIT_THRESHOLD: Duration = Duration::from_secs(1);
/// Lifecycle events without per-batch noise.
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// journald adds its own timestamps and metadata to plain lines.
pub(crate) const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
/// ClickHouse's `default` user, as its own HTTP interface assumes.
pub(crate) const DEFAULT_CLICKHOUSE_USER: &str = "default";
/// ClickHouse wants few, big inserts (each makes a part the server merges later); 50,000 rows
/// of telemetry lines are a few MiB.
pub(crate) const DEFAULT_CLICKHOUSE_BATCH_MAX_ROWS: usize = 50_000;
/// Bounds the sink's one batch in memory (the TabSeparated body), whatever the line sizes.
pub(crate) const DEFAULT_CLICKHOUSE_BATCH_MAX_BYTES: usize = 16 * MIB as usize;
/// How long a new line waits at most before the sink sends it (its pass interval): one
/// insert a second keeps the server's part count low.
pub(crate) const DEFAULT_CLICKHOUSE_BATCH_MAX_DELAY: Duration = Duration::from_secs(1);
/// One HTTP request (connect, send, answer); an insert of a full batch takes well under it.
pub(crate) const DEFAULT_CLICKHOUSE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub sources: SourcesConfig,
    pub mapping: Mapping,
    pub output: OutputConfig,
    pub sqlite: SqliteConfig,
    pub retention: RetentionConfig,
    pub dlq: DlqConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// `[columns]` and `[[indexes]]`: typed columns and indexes of the run DBs' `events`.
    pub schema: Schema,
    /// `[[summary]]`: named metrics over a run's events, in config order.
    pub summary: Vec<SummaryMetric>,
    /// `[[slo]]`: bounds on summary metrics (the `slo` gate, `jsonl_shipper_slo_ok`).
    pub slo: Vec<Slo>,
    pub sinks: SinksConfig,
}

/// Remote copies of the records, each with its own cursor over the sources.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SinksConfig {
    /// `[sinks.clickhouse]`; absent = off.
    pub clickhouse: Option<ClickHouseConfig>,
}

/// `[sinks.clickhouse]`: the fleet sink (see the `clickhouse` module).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickHouseConfig {
    /// The HTTP interface, `http://host:port` (no path, no query).
    pub url: String,
    /// An identifier: tables are `database.events` and `database.runs`.
    pub database: String,
    pub user: String,
    /// A file holding the password (its first line); never the password itself.
    pub password_file: Option<PathBuf>,
    /// The `host` column of every row.
    pub host_label: String,
    pub batch_max_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_max_delay: Duration,
    pub timeout: Duration,
    /// When `backfill` ships to ClickHouse: beside the run DBs or after them.
    pub backfill: SinkBackfill,
}

/// When `backfill` runs the ClickHouse sink (`sinks.clickhouse.backfill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkBackfill {
    /// `after` on a host of at most 2 CPUs, else `beside`.
    Auto,
    /// While the run DBs are written, as a background job (`SCHED_IDLE`), then at normal
    /// priority: ClickHouse gets history sooner where spare cores make that free.
    Beside,
    /// Once the run DBs are complete: on a small host, any work beside them (even at idle
    /// priority) slows the job's first output (ARCHITECTURE.md, "The fleet sink").
    After,
}

impl SinkBackfill {
    /// Whether the sink waits for the run DBs, `Auto` decided by this host's CPUs.
    pub(crate) fn after(self) -> bool {
        match self {
            SinkBackfill::Beside => false,
            SinkBackfill::After => true,
            SinkBackfill::Auto => {
                std::thread::available_parallelism().map_or(true, |n| n.get() <= 2)
            }
        }
    }
}

impl ClickHouseConfig {
    /// The password from `password_file` (its first line, without the newline), read each
    /// time the sink starts (so a rotated credential needs only a reload).
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Dir {
            key: "sinks.clickhouse.password_file",
            path: path.clone(),
            problem: "cannot read the password file",
            source: Some(e),
        })?;
        Ok(Some(text.lines().next().unwrap_or("").to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourcesConfig {
    /// Absolute glob patterns, each accepted by `glob::Pattern::new`.
    pub paths: Vec<String>,
    pub read_from: ReadFrom,
    pub rescan_interval: Duration,
    pub close_inactive: Duration,
    pub max_line_bytes: usize,
    pub max_open_files: usize,
}

/// Where to start in a file first seen at startup that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Beginning,
    End,
}

/// Input field names; each is non-empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub run_id: String,
    pub record_type: String,
    pub event_id: String,
    pub event_type: String,
    pub ts: String,
    pub status: String,
    pub start_time: String,
    pub end_time: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    pub dir: PathBuf,
    pub state_db: PathBuf,
    /// One row per run DB (`catalog` module); default `catalog.sqlite` beside `dir`.
    pub catalog: PathBuf,
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    pub batch_max_delay: Duration,
    pub max_open_dbs: usize,
    pub idle_close_after: Duration,
    pub writer_threads: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig {
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    /// In pages; 0 disables SQLite's automatic checkpoints.
    pub wal_autocheckpoint: u32,
    pub checkpoint_interval: Duration,
    pub journal_size_limit: usize,
    /// Bytes per connection.
    pub cache_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl Synchronous {
    pub fn as_pragma(&self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// `None` = off.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    pub max_age: Option<Duration>,
    pub max_total_size: Option<u64>,
    pub check_interval: Duration,
    pub delete_sources_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DlqConfig {
    pub dir: PathBuf,
    pub max_total_size: Option<u64>,
    pub max_raw_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
    pub unhealthy_after: Duration,
    pub slow_commit_threshold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive.
    pub level: String,
    pub format: LogFormat,
}

/// `log.format` in the config file (spelled by `human_enum!` below) and `--log-format` on the
/// command line (`ValueEnum`: clap checks and lists the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The metrics every summary has without config (`summary` module). `events_by_type` is an
/// object; the others are numbers (`first_ts`/`last_ts`: whatever type `ts` has) or null.
pub(crate) const BUILTIN_METRICS: [&str; 5] =
    ["events", "events_by_type", "duration_s", "first_ts", "last_ts"];

/// The columns of `events` in every run DB (`sink::run_db`'s schema; a test in `summary`
/// keeps this list equal to it).
pub(crate) const BUILTIN_COLUMNS: [&str; 8] =
    ["event_key", "run_id", "event_type", "ts", "data", "source", "line_no", "pos"];

/// `[[summary]]`: one named metric over a run's events.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryMetric {
    pub name: String,
    pub agg: Agg,
    /// The column aggregated; `None` exactly for `count` and `ratio`.
    pub column: Option<String>,
    /// `where`: an SQL condition over events' columns (checked by `summary::check_sql`).
    pub filter: Option<String>,
    /// `of` (ratio only): the denominator's condition; `None` = every event.
    pub of: Option<String>,
}

/// What a summary metric computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    P50,
    P90,
    P95,
    P99,
    Ratio,
}

impl Agg {
    /// The percentile (nearest rank), for p50..p99.
    pub fn percentile(&self) -> Option<u32> {
        match self {
            Agg::P50 => Some(50),
            Agg::P90 => Some(90),
            Agg::P95 => Some(95),
            Agg::P99 => Some(99),
            _ => None,
        }
    }

    /// Whether it aggregates a column (everything but `count` and `ratio`).
    pub fn needs_column(&self) -> bool {
        !matches!(self, Agg::Count | Agg::Ratio)
    }
}

/// `[[slo]]`: a bound on one metric of a run's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub name: String,
    /// A `[[summary]]` name or a numeric built-in metric.
    pub metric: String,
    pub bound: Bound,
}

/// An SLO holds when the metric is at most `Max` or at least `Min` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Max(f64),
    Min(f64),
}

/// Every message names the file and the key, or the key and the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: cannot read config file")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not valid TOML, so there is no key to name.
    #[error("{origin}: line {line}, column {column}: {message}")]
    Syntax { origin: PathBuf, line: usize, column: usize, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid { origin: PathBuf, key: String, message: String },
    #[error("{key}: {path}: {problem}")]
    Dir {
        key: &'static str,
        path: PathBuf,
        problem: &'static str,
        #[source]
        source: Option<io::Error>,
    },
}

impl Config {
    /// Zero-config defaults for `--base D` (contract table "default (under --base D)").
    pub fn for_base(base: &Path) -> Config {
        // Absolute so that every path downstream is.
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        RawConfig::default().into_config(&base, &base)
    }

    /// Reads and validates a TOML file. Relative paths inside it are resolved against the
    /// config file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let abs = std::path::absolute(path).map_err(read_err)?;
        Config::from_toml_str(&text, path, abs.parent().unwrap_or(Path::new("/")))
    }

    /// Parses TOML text; `origin` names the file in errors; `dir` resolves relative paths.
    pub fn from_toml_str(text: &str, origin: &Path, dir: &Path) -> Result<Config, ConfigError> {
        // Parsed first, so that a syntax error is never blamed on a key.
        let document =
            toml::Deserializer::parse(text).map_err(|e| toml_error(&e, None, text, origin))?;
        let raw: RawConfig = serde_path_to_error::deserialize(document)
            .map_err(|e| toml_error(e.inner(), key_of(e.path()), text, origin))?;
        let invalid = |(key, message): Bad| ConfigError::Invalid {
            origin: origin.to_path_buf(),
            key: key.to_owned(),
            message,
        };
        // Checked before joining, which would turn "" into `dir` itself.
        let globs = raw.sources.paths.iter().flatten();
        for (key, value) in [
            ("base", raw.base.as_ref()),
            ("output.dir", raw.output.dir.as_ref()),
            ("output.state_db", raw.output.state_db.as_ref()),
            ("output.catalog", raw.output.catalog.as_ref()),
            ("dlq.dir", raw.dlq.dir.as_ref()),
        ]
        .into_iter()
        .chain(globs.map(|g| ("sources.paths", Some(g))))
        {
            if value.is_some_and(|v| v.is_empty()) {
                return Err(invalid((key, "path must not be empty".into())));
            }
        }
        let typed: Vec<String> = raw.columns.iter().flat_map(|c| c.keys().cloned()).collect();
        let (summary, slo) =
            parse_analytics(&raw.summary, &raw.slo, &typed).map_err(|(key, message)| {
                ConfigError::Invalid { origin: origin.to_path_buf(), key, message }
            })?;
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let base = raw.base.as_ref().map_or(PathBuf::from(DEFAULT_BASE), |b| dir.join(b));
        let mut config = raw.into_config(&base, &dir);
        (config.summary, config.slo) = (summary, slo);
        config.validate().map_err(invalid)?;
        config.schema.validate().map_err(|(key, message)| ConfigError::Invalid {
            origin: origin.to_path_buf(),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Checks the directories the agent will write (output.dir, parents of output.state_db
    /// and output.catalog, dlq.dir): creates missing ones (mode 0750), and fails naming the key and path if one is
    /// not a directory or not writable.
    pub fn prepare_dirs(&self) -> Result<(), ConfigError> {
        let state_parent = self.output.state_db.parent().unwrap_or(Path::new("/"));
        let catalog_parent = self.output.catalog.parent().unwrap_or(Path::new("/"));
        for (key, dir) in [
            ("output.dir", self.output.dir.as_path()),
            ("output.state_db", state_parent),
            ("output.catalog", catalog_parent),
            ("dlq.dir", self.dlq.dir.as_path()),
        ] {
            let fail = |problem, source| ConfigError::Dir {
                key,
                path: dir.to_path_buf(),
                problem,
                source,
            };
            match std::fs::metadata(dir) {
                Ok(meta) if !meta.is_dir() => return Err(fail("not a directory", None)),
                // Anyone could plant, swap or delete run DBs, the state DB or dead letters.
                Ok(meta) if meta.permissions().mode() & 0o002 != 0 => {
                    return Err(fail("world-writable directory; make it 0750 (chmod o-w)", None))
                }
                Ok(_) => {}
                // Missing, or something in the way below it: create_dir_all says which.
                Err(_) => std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)
                    .map_err(|e| fail("cannot create directory", Some(e)))?,
            }
            // Permission bits lie under ACLs, read-only mounts and systemd sandboxing; only
            // an actual write tells.
            let probe = dir.join(format!(".jsonl-shipper-probe-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| fail("directory not writable", Some(e)))?;
        }
        for (key, path) in
            [("output.state_db", &self.output.state_db), ("output.catalog", &self.output.catalog)]
        {
            if path.is_dir() {
                return Err(ConfigError::Dir {
                    key,
                    path: path.clone(),
                    problem: "is a directory, expected a database file",
                    source: None,
                });
            }
        }
        // `validate` compares the paths as written; a symlink can still put the catalog among
        // the run DBs, where retention would take it for one.
        let canonical = |p: &Path| std::fs::canonicalize(p).ok();
        if canonical(catalog_parent).is_some_and(|p| Some(p) == canonical(&self.output.dir)) {
            return Err(ConfigError::Dir {
                key: "output.catalog",
                path: self.output.catalog.clone(),
                problem: "is in output.dir (through a symlink), where run DBs are named",
                source: None,
            });
        }
        Ok(())
    }

    /// The effective config as TOML text with every key, durations/sizes in human form;
    /// parsing it back with `from_toml_str` gives an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(&RawConfig::from(self))
            .expect("RawConfig holds only strings, integers, arrays and tables")
    }

    /// The keys whose effective values differ between `self` and `new`, dotted
    /// (`sources.rescan_interval`; an array of tables such as `[[summary]]` is one key), for
    /// the reload's log line: names only, never values. None if either could not be turned
    /// into TOML (not expected: `to_toml_string` relies on it).
    pub(crate) fn changed_keys(&self, new: &Config) -> Option<Vec<String>> {
        fn flatten(prefix: &str, value: toml::Value, out: &mut Vec<(String, toml::Value)>) {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        let key = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                        flatten(&key, value, out);
                    }
                }
                other => out.push((prefix.to_owned(), other)),
            }
        }
        let flat = |config: &Config| {
            let mut out = Vec::new();
            flatten("", toml::Value::try_from(RawConfig::from(config)).ok()?, &mut out);
            Some(out.into_iter().collect::<std::collections::BTreeMap<_, _>>())
        };
        let (old, new) = (flat(self)?, flat(new)?);
        let mut keys: Vec<String> = old
            .iter()
            .filter(|(key, value)| new.get(*key) != Some(value))
            .map(|(key, _)| key.clone())
            .chain(new.keys().filter(|key| !old.contains_key(*key)).cloned())
            .collect();
        keys.sort();
        Some(keys)
    }

    fn validate(&self) -> Result<(), Bad> {
        /// `a/./b/../c` as `a/c`, without touching the file system.
        fn lexical(path: &Path) -> PathBuf {
            let mut out = PathBuf::new();
            for component in path.components() {
                match component {
                    std::path::Component::CurDir => {}
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    other => out.push(other),
                }
            }
            out
        }
        let (s, m, o, r, d, x) =
            (&self.sources, &self.mapping, &self.output, &self.retention, &self.dlq, &self.metrics);
        let ensure = |ok: bool, key, message: String| if ok { Ok(()) } else { Err((key, message)) };
        ensure(!s.paths.is_empty(), "sources.paths", "must list at least one glob".into())?;
        // Every `*.sqlite` in output.dir is a run DB (retention ages and deletes them; the
        // run "catalog" is named catalog.sqlite), and the state DB is another DB.
        let catalog = lexical(&o.catalog);
        ensure(
            !catalog.starts_with(lexical(&o.dir)),
            "output.catalog",
            format!(
                "must not be inside output.dir ({}), where run DBs are named after their run_id",
                o.dir.display()
            ),
        )?;
        ensure(
            catalog != lexical(&o.state_db),
            "output.catalog",
            "must not be the same file as output.state_db".into(),
        )?;
        for p in &s.paths {
            glob::Pattern::new(p)
                .map_err(|e| ("sources.paths", format!("invalid glob {p:?}: {e}")))?;
        }
        for (key, name) in [
            ("mapping.run_id", &m.run_id),
            ("mapping.record_type", &m.record_type),
            ("mapping.event_id", &m.event_id),
            ("mapping.event_type", &m.event_type),
            ("mapping.ts", &m.ts),
            ("mapping.status", &m.status),
            ("mapping.start_time", &m.start_time),
            ("mapping.end_time", &m.end_time),
            ("log.level", &self.log.level),
        ] {
            ensure(!name.trim().is_empty(), key, "must not be empty".into())?;
        }
        for (key, value) in [
            ("sources.rescan_interval", s.rescan_interval),
            ("sources.close_inactive", s.close_inactive),
            ("output.batch_max_delay", o.batch_max_delay),
            ("output.idle_close_after", o.idle_close_after),
            ("sqlite.busy_timeout", self.sqlite.busy_timeout),
            ("sqlite.checkpoint_interval", self.sqlite.checkpoint_interval),
            ("retention.check_interval", r.check_interval),
            ("metrics.unhealthy_after", x.unhealthy_after),
            ("metrics.slow_commit_threshold", x.slow_commit_threshold),
        ] {
            ensure(!value.is_zero(), key, "must be greater than zero".into())?;
        }
        // Zero would mean "delete everything"; "off" is the way to disable these.
        let off_hint = "must be greater than zero (\"off\" disables it)";
        for (key, value) in [
            ("retention.max_age", r.max_age),
            ("retention.delete_sources_after", r.delete_sources_after),
        ] {
            ensure(value != Some(Duration::ZERO), key, off_hint.into())?;
        }
        for (key, value) in [
            ("retention.max_total_size", r.max_total_size),
            ("dlq.max_total_size", d.max_total_size),
        ] {
            ensure(value != Some(0), key, off_hint.into())?;
        }
        for (key, value, min, max) in [
            ("sources.max_open_files", s.max_open_files, 1, usize::MAX),
            ("output.batch_max_events", o.batch_max_events, 1, usize::MAX),
            // Text offsets in a batch are u32: a run's buffer (up to this, plus one span of
            // 8 MiB and one line of max_line_bytes, at most 1 GiB) stays under 4 GiB.
            ("output.batch_max_bytes", o.batch_max_bytes, 1, GIB as usize),
            ("output.max_open_dbs", o.max_open_dbs, 1, usize::MAX),
            ("output.writer_threads", o.writer_threads, 1, 64),
        ] {
            let message = match max {
                usize::MAX => format!("must be at least {min}, got {value}"),
                _ => format!("must be between {min} and {max}, got {value}"),
            };
            ensure((min..=max).contains(&value), key, message)?;
        }
        let size_range = |key, value: usize, min: usize, max: usize, note: &str| {
            let (lo, hi, got) = (min.show(), max.show(), value.show());
            let message = format!("must be between {lo} and {hi}{note}, got {got}");
            ensure((min..=max).contains(&value), key, message)
        };
        let (line, raw) = (s.max_line_bytes, d.max_raw_bytes);
        size_range("sources.max_line_bytes", line, KIB as usize, GIB as usize, "")?;
        size_range("dlq.max_raw_bytes", raw, 64, line, " (sources.max_line_bytes)")?;
        if let Some(ch) = &self.sinks.clickhouse {
            validate_clickhouse(ch)?;
        }
        Ok(())
    }
}

/// A validation failure: the key and what is wrong with it.
type Bad = (&'static str, String);

/// The columns a summary may aggregate: the built-in ones of `events` and the typed columns.
fn summary_columns(typed: &[String]) -> Vec<&str> {
    BUILTIN_COLUMNS.iter().copied().chain(typed.iter().map(String::as_str)).collect()
}

/// `[[summary]]` and `[[slo]]` as typed values, or the first problem with its element's key
/// (`summary[1].column`). The SQL of `where`/`of` is checked later against a run DB's schema
/// (`summary::check_sql`, called by `commands::load_config`): this module does no SQLite.
fn parse_analytics(
    raw_summary: &[RawSummary],
    raw_slo: &[RawSlo],
    typed: &[String],
) -> Result<(Vec<SummaryMetric>, Vec<Slo>), (String, String)> {
    let mut summary: Vec<SummaryMetric> = Vec::new();
    for (i, r) in raw_summary.iter().enumerate() {
        let key = |field: &str| format!("summary[{i}].{field}");
        let name = required_name(r.name.as_deref(), &key("name"))?;
        if BUILTIN_METRICS.contains(&name.as_str()) {
            return Err((key("name"), format!("{name:?} is a built-in metric; choose another")));
        }
        if summary.iter().any(|m| m.name == name) {
            return Err((key("name"), format!("duplicate summary name {name:?}")));
        }
        let agg = r.agg.ok_or_else(|| {
            (
                key("agg"),
                "missing (count, sum, avg, min, max, p50, p90, p95, p99 or ratio)".to_string(),
            )
        })?;
        let column = match (&r.column, agg.needs_column()) {
            (None, true) => {
                return Err((
                    key("column"),
                    format!("missing: agg = \"{}\" needs a column", agg.as_str()),
                ))
            }
            (Some(_), false) => {
                return Err((key("column"), format!("not allowed with agg = \"{}\"", agg.as_str())))
            }
            // SQL names ignore case, as in `[columns]` and `[[indexes]]`.
            (Some(c), true)
                if !summary_columns(typed).iter().any(|known| known.eq_ignore_ascii_case(c)) =>
            {
                let known = summary_columns(typed).join(", ");
                return Err((
                    key("column"),
                    format!("unknown column {c:?}; expected one of: {known}"),
                ));
            }
            (column, _) => column.clone(),
        };
        if r.of.is_some() && agg != Agg::Ratio {
            return Err((key("of"), format!("only for agg = \"ratio\", not \"{}\"", agg.as_str())));
        }
        for (field, fragment) in [("where", &r.filter), ("of", &r.of)] {
            if fragment.as_ref().is_some_and(|f| f.trim().is_empty()) {
                return Err((
                    key(field),
                    "must not be empty (leave it out for every event)".into(),
                ));
            }
        }
        summary.push(SummaryMetric {
            name,
            agg,
            column,
            filter: r.filter.clone(),
            of: r.of.clone(),
        });
    }
    let mut slo: Vec<Slo> = Vec::new();
    for (i, r) in raw_slo.iter().enumerate() {
        let key = |field: &str| format!("slo[{i}].{field}");
        let name = required_name(r.name.as_deref(), &key("name"))?;
        if slo.iter().any(|s| s.name == name) {
            return Err((key("name"), format!("duplicate slo name {name:?}")));
        }
        let metric = required_name(r.metric.as_deref(), &key("metric"))?;
        if metric == "events_by_type" {
            return Err((key("metric"), "events_by_type is an object, not a number".into()));
        }
        if !BUILTIN_METRICS.contains(&metric.as_str()) && !summary.iter().any(|m| m.name == metric)
        {
            return Err((
                key("metric"),
                format!(
                    "unknown metric {metric:?}: not a [[summary]] name nor one of {}",
                    BUILTIN_METRICS.join(", ")
                ),
            ));
        }
        let bound = match (r.max, r.min) {
            (Some(max), None) => Bound::Max(max),
            (None, Some(min)) => Bound::Min(min),
            (Some(_), Some(_)) => {
                return Err((key("max"), "set exactly one of max and min, not both".into()))
            }
            (None, None) => {
                return Err((key("max"), "missing: set exactly one of max and min".into()))
            }
        };
        let (Bound::Max(threshold) | Bound::Min(threshold)) = bound;
        if !threshold.is_finite() {
            let field = if r.max.is_some() { "max" } else { "min" };
            return Err((key(field), format!("must be a finite number, got {threshold}")));
        }
        slo.push(Slo { name, metric, bound });
    }
    Ok((summary, slo))
}

/// A name that must be present and not blank.
fn required_name(value: Option<&str>, key: &str) -> Result<String, (String, String)> {
    match value {
        None => Err((key.to_string(), "missing".into())),
        Some(v) if v.trim().is_empty() => Err((key.to_string(), "must not be empty".into())),
        Some(v) => Ok(v.to_string()),
    }
}

fn validate_clickhouse(ch: &ClickHouseConfig) -> Result<(), Bad> {
    let ensure = |ok: bool, key, message: String| if ok { Ok(()) } else { Err((key, message)) };
    ensure(!ch.url.is_empty(), "sinks.clickhouse.url", "is required".into())?;
    ensure(!ch.database.is_empty(), "sinks.clickhouse.database", "is required".into())?;
    let rest = ch.url.strip_prefix("http://");
    ensure(
        rest.is_some(),
        "sinks.clickhouse.url",
        format!(
            "must start with http:// (the HTTP interface; https is not built in), got {:?}",
            ch.url
        ),
    )?;
    let rest = rest.unwrap_or_default().trim_end_matches('/');
    ensure(
        !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']),
        "sinks.clickhouse.url",
        format!("must be http://host:port without path, query or credentials, got {:?}", ch.url),
    )?;
    let identifier = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    ensure(
        identifier(&ch.database),
        "sinks.clickhouse.database",
        format!("must be an identifier (letters, digits, _), got {:?}", ch.database),
    )?;
    ensure(!ch.user.trim().is_empty(), "sinks.clickhouse.user", "must not be empty".into())?;
    ensure(
        !ch.host_label.trim().is_empty(),
        "sinks.clickhouse.host_label",
        "must not be empty".into(),
    )?;
    ensure(
        (1..=1_000_000).contains(&ch.batch_max_rows),
        "sinks.clickhouse.batch_max_rows",
        format!("must be between 1 and 1000000, got {}", ch.batch_max_rows),
    )?;
    let (lo, hi) = (KIB as usize, GIB as usize);
    ensure(
        (lo..=hi).contains(&ch.batch_max_bytes),
        "sinks.clickhouse.batch_max_bytes",
        format!("must be between 1KiB and 1GiB, got {}", ch.batch_max_bytes.show()),
    )?;
    for (key, value) in [
        ("sinks.clickhouse.batch_max_delay", ch.batch_max_delay),
        ("sinks.clickhouse.timeout", ch.timeout),
    ] {
        ensure(!value.is_zero(), key, "must be greater than zero".into())?;
    }
    Ok(())
}

/// The machine's host name (the default `host_label`); "localhost" if it has none.
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    name.unwrap_or_else(|| "localhost".into())
}

/// `rel` under `dir`, with `dir` escaped so its own `*?[]` stay literal.
fn glob_under(dir: &Path, rel: &str) -> String {
    let dir = glob::Pattern::escape(&dir.to_string_lossy());
    Path::new(&dir).join(rel).to_string_lossy().into_owned()
}

/// The dotted key of the value that failed to deserialize, as written in the file: table keys
/// only (an array element has no key of its own). For an unknown key it is that key, under its
/// table. `None` at the top of the document.
fn key_of(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let mut key = String::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Map { key: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            // An element of an array of tables has keys of its own (`summary[1].where`); a
            // scalar element is named by its array's key alone.
            Segment::Seq { index } if i + 1 < segments.len() => key.push_str(&format!("[{index}]")),
            _ => {}
        }
    }
    (!key.is_empty()).then_some(key)
}

/// Turns toml's error into one naming `key`, or, for a syntax error (no key), the line and
/// column.
fn toml_error(e: &toml::de::Error, key: Option<String>, text: &str, origin: &Path) -> ConfigError {
    let origin = origin.to_path_buf();
    let message = e.message().trim_end().to_owned();
    match (key, e.span()) {
        (None, Some(span)) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            ConfigError::Syntax { origin, line, column, message }
        }
        (key, _) => ConfigError::Invalid {
            origin,
            key: key.unwrap_or_else(|| "(document)".into()),
            message,
        },
    }
}

/// A value written as a string in TOML ("500ms", "64MiB", "full", "off").
trait Human: Sized {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result;
    fn parse(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

impl Human for Duration {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as \"500ms\" or \"30d\"")
    }
    fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

/// Sizes: bytesize syntax ("64MiB" = 64·2^20, "64MB" = 64·10^6) or a plain number of bytes.
impl Human for u64 {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"64MiB\" or a number of bytes")
    }
    fn parse(s: &str) -> Result<Self, String> {
        let size: bytesize::ByteSize =
            s.trim().parse().map_err(|e| format!("invalid size {s:?}: {e}"))?;
        Ok(size.as_u64())
    }
    /// Exact, unlike bytesize's one-decimal display, so that the output parses back equal.
    fn show(&self) -> String {
        let units = [
            (GIB << 30, "EiB"),
            (GIB << 20, "PiB"),
            (GIB << 10, "TiB"),
            (GIB, "GiB"),
            (MIB, "MiB"),
            (KIB, "KiB"),
        ];
        match units.into_iter().find(|(f, _)| *self >= *f && (*self).is_multiple_of(*f)) {
            Some((factor, unit)) => format!("{}{unit}", *self / factor),
            None => format!("{self}B"),
        }
    }
}

impl Human for usize {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        u64::expecting(f)
    }
    fn parse(s: &str) -> Result<Self, String> {
        usize::try_from(u64::parse(s)?).map_err(|_| format!("size {s:?} is too large"))
    }
    fn show(&self) -> String {
        (*self as u64).show()
    }
}

impl Human for SocketAddr {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a socket address such as \"127.0.0.1:9108\"")
    }
    fn parse(s: &str) -> Result<Self, String> {
        s.trim().parse().map_err(|e| format!("invalid socket address {s:?}: {e}"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// `"off"` (any case) disables an optional setting.
impl<T: Human> Human for Option<T> {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"off\" or ")?;
        T::expecting(f)
    }
    fn parse(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            Ok(None)
        } else {
            T::parse(s).map(Some)
        }
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "off".into(), T::show)
    }
}

/// Case-insensitive choice among `all`, shown by `name`.
fn pick<T: Copy>(s: &str, all: &[T], name: fn(&T) -> &'static str) -> Result<T, String> {
    let found = all.iter().find(|v| name(v).eq_ignore_ascii_case(s.trim()));
    found.copied().ok_or_else(|| {
        let names: Vec<_> = all.iter().map(name).collect();
        format!("invalid value {s:?}, expected one of: {}", names.join(", "))
    })
}

macro_rules! human_enum {
    ($ty:ident { $($variant:ident = $name:literal),+ }) => {
        impl Human for $ty {
            fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!("one of:" $(, " ", $name)+))
            }
            fn parse(s: &str) -> Result<Self, String> {
                pick(s, &[$($ty::$variant),+], |v| v.as_str())
            }
            fn show(&self) -> String {
                self.as_str().into()
            }
        }
        impl $ty {
            /// The spelling used in the config file.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
    };
}
human_enum!(ReadFrom { Beginning = "beginning", End = "end" });
human_enum!(Synchronous { Off = "off", Normal = "normal", Full = "full", Extra = "extra" });
human_enum!(LogFormat { Text = "text", Json = "json" });
human_enum!(SinkBackfill { Auto = "auto", Beside = "beside", After = "after" });
human_enum!(Agg {
    Count = "count", Sum = "sum", Avg = "avg", Min = "min", Max = "max",
    P50 = "p50", P90 = "p90", P95 = "p95", P99 = "p99", Ratio = "ratio"
});

/// Spelled by `schema::ColumnType::as_str`.
impl Human for ColumnType {
    fn expecting(f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one of: integer, real, text")
    }
    fn parse(s: &str) -> Result<Self, String> {
        pick(s, &ColumnType::ALL, |v| v.as_str())
    }
    fn show(&self) -> String {
        self.as_str().into()
    }
}

/// serde `with` module for `Option<T: Human>` fields: absent = `None` (via `#[serde(default)]`).
mod human {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer, T: Human>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(&v.show()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>, T: Human>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        d.deserialize_any(HumanVisitor(PhantomData)).map(Some)
    }

    /// For a required field (no `Option`).
    pub(super) mod required {
        use super::*;

        pub(in super::super) fn serialize<S: serde::Serializer, T: Human>(
            value: &T,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_str(&value.show())
        }

        pub(in super::super) fn deserialize<'de, D: serde::Deserializer<'de>, T: Human>(
            d: D,
        ) -> Result<T, D::Error> {
            d.deserialize_any(HumanVisitor(PhantomData))
        }
    }

    struct HumanVisitor<T>(PhantomData<T>);

    impl<T: Human> de::Visitor<'_> for HumanVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            T::expecting(f)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            T::parse(s).map_err(E::custom)
        }
        // A bare integer is a size in bytes; a duration gets humantime's "unit needed".
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            self.visit_str(&n.to_string())
        }
    }
}

// The raw layer mirrors the TOML document: every key optional, every section denies unknown
// keys (never `flatten`, which silently disables that). It also renders `to_toml_string`.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<String>,
    sources: RawSources,
    mapping: RawMapping,
    output: RawOutput,
    sqlite: RawSqlite,
    retention: RawRetention,
    dlq: RawDlq,
    metrics: RawMetrics,
    log: RawLog,
    /// By name; a `BTreeMap` renders them in a stable order.
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<std::collections::BTreeMap<String, RawColumn>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    indexes: Option<Vec<RawIndex>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    summary: Vec<RawSummary>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    slo: Vec<RawSlo>,
    #[serde(skip_serializing_if = "RawSinks::is_empty")]
    sinks: RawSinks,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSinks {
    #[serde(skip_serializing_if = "Option::is_none")]
    clickhouse: Option<RawClickHouse>,
}

impl RawSinks {
    fn is_empty(&self) -> bool {
        self.clickhouse.is_none()
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawClickHouse {
    url: Option<String>,
    database: Option<String>,
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    host_label: Option<String>,
    batch_max_rows: Option<usize>,
    #[serde(with = "human")]
    batch_max_bytes: Option<usize>,
    #[serde(with = "human")]
    batch_max_delay: Option<Duration>,
    #[serde(with = "human")]
    timeout: Option<Duration>,
    #[serde(with = "human")]
    backfill: Option<SinkBackfill>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSources {
    paths: Option<Vec<String>>,
    #[serde(with = "human")]
    read_from: Option<ReadFrom>,
    #[serde(with = "human")]
    rescan_interval: Option<Duration>,
    #[serde(with = "human")]
    close_inactive: Option<Duration>,
    #[serde(with = "human")]
    max_line_bytes: Option<usize>,
    max_open_files: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawMapping {
    run_id: Option<String>,
    record_type: Option<String>,
    event_id: Option<String>,
    event_type: Option<String>,
    ts: Option<String>,
    status: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawOutput {
    dir: Option<String>,
    state_db: Option<String>,
    catalog: Option<String>,
    batch_max_events: Option<usize>,
    #[serde(with = "human")]
    batch_max_bytes: Option<usize>,
    #[serde(with = "human")]
    batch_max_delay: Option<Duration>,
    max_open_dbs: Option<usize>,
    #[serde(with = "human")]
    idle_close_after: Option<Duration>,
    writer_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSqlite {
    #[serde(with = "human")]
    synchronous: Option<Synchronous>,
    #[serde(with = "human")]
    busy_timeout: Option<Duration>,
    wal_autocheckpoint: Option<u32>,
    #[serde(with = "human")]
    checkpoint_interval: Option<Duration>,
    #[serde(with = "human")]
    journal_size_limit: Option<usize>,
    #[serde(with = "human")]
    cache_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawRetention {
    #[serde(with = "human")]
    max_age: Option<Option<Duration>>,
    #[serde(with = "human")]
    max_total_size: Option<Option<u64>>,
    #[serde(with = "human")]
    check_interval: Option<Duration>,
    #[serde(with = "human")]
    delete_sources_after: Option<Option<Duration>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawDlq {
    dir: Option<String>,
    #[serde(with = "human")]
    max_total_size: Option<Option<u64>>,
    #[serde(with = "human")]
    max_raw_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawMetrics {
    #[serde(with = "human")]
    listen: Option<Option<SocketAddr>>,
    #[serde(with = "human")]
    unhealthy_after: Option<Duration>,
    #[serde(with = "human")]
    slow_commit_threshold: Option<Duration>,
}

/// A `[columns]` entry; both keys are required.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    path: String,
    #[serde(rename = "type", with = "human::required")]
    ty: ColumnType,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawIndex {
    columns: Vec<String>,
    #[serde(rename = "where", skip_serializing_if = "Option::is_none")]
    condition: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    #[serde(with = "human")]
    format: Option<LogFormat>,
}

/// Required keys are `Option`s checked by `validate_analytics`, so that a missing one is
/// named with its element (`summary[1].name`), like every other error of an element.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSummary {
    name: Option<String>,
    #[serde(with = "human")]
    agg: Option<Agg>,
    column: Option<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    of: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSlo {
    name: Option<String>,
    metric: Option<String>,
    max: Option<f64>,
    min: Option<f64>,
}

impl RawConfig {
    /// Fills in the defaults, with paths under `base`, and resolves relative paths against
    /// `dir`, the config file's directory.
    fn into_config(self, base: &Path, dir: &Path) -> Config {
        let path = |v: Option<String>, default: &str| v.map_or(base.join(default), |v| dir.join(v));
        let name = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_owned());
        // Escaping the directory keeps a `[` or `*` in it literal.
        let glob = |p: String| {
            if Path::new(&p).is_absolute() {
                p
            } else {
                glob_under(dir, &p)
            }
        };
        let (s, m, o, q) = (self.sources, self.mapping, self.output, self.sqlite);
        let (r, l, x, g) = (self.retention, self.dlq, self.metrics, self.log);
        let clickhouse = self.sinks.clickhouse.map(|c| ClickHouseConfig {
            url: c.url.map(|u| u.trim_end_matches('/').to_owned()).unwrap_or_default(),
            database: c.database.unwrap_or_default(),
            user: name(c.user, DEFAULT_CLICKHOUSE_USER),
            password_file: c.password_file.map(|p| dir.join(p)),
            host_label: c.host_label.unwrap_or_else(host_name),
            batch_max_rows: c.batch_max_rows.unwrap_or(DEFAULT_CLICKHOUSE_BATCH_MAX_ROWS),
            batch_max_bytes: c.batch_max_bytes.unwrap_or(DEFAULT_CLICKHOUSE_BATCH_MAX_BYTES),
            batch_max_delay: c.batch_max_delay.unwrap_or(DEFAULT_CLICKHOUSE_BATCH_MAX_DELAY),
            timeout: c.timeout.unwrap_or(DEFAULT_CLICKHOUSE_TIMEOUT),
            backfill: c.backfill.unwrap_or(SinkBackfill::Auto),
        });
        let max_line_bytes = s.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        let output_dir = path(o.dir, "db/runs");
        // Beside the run DBs, never among them, so no run_id can name it.
        let catalog = o.catalog.map_or_else(
            || output_dir.parent().unwrap_or(&output_dir).join("catalog.sqlite"),
            |v| dir.join(v),
        );
        Config {
            sources: SourcesConfig {
                paths: s.paths.map_or_else(
                    || vec![glob_under(base, "raw/events_*.ndjson")],
                    |v| v.into_iter().map(glob).collect(),
                ),
                read_from: s.read_from.unwrap_or(DEFAULT_READ_FROM),
                rescan_interval: s.rescan_interval.unwrap_or(DEFAULT_RESCAN_INTERVAL),
                close_inactive: s.close_inactive.unwrap_or(DEFAULT_CLOSE_INACTIVE),
                max_line_bytes,
                max_open_files: s.max_open_files.unwrap_or(DEFAULT_MAX_OPEN_FILES),
            },
            mapping: Mapping {
                run_id: name(m.run_id, "run_id"),
                record_type: name(m.record_type, "record_type"),
                event_id: name(m.event_id, "event_id"),
                event_type: name(m.event_type, "event_type"),
                ts: name(m.ts, "ts"),
                status: name(m.status, "status"),
                start_time: name(m.start_time, "start_time"),
                end_time: name(m.end_time, "end_time"),
            },
            output: OutputConfig {
                dir: output_dir,
                state_db: path(o.state_db, "db/shipper-state.sqlite"),
                catalog,
                batch_max_events: o.batch_max_events.unwrap_or(DEFAULT_BATCH_MAX_EVENTS),
                batch_max_bytes: o.batch_max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES),
                batch_max_delay: o.batch_max_delay.unwrap_or(DEFAULT_BATCH_MAX_DELAY),
                max_open_dbs: o.max_open_dbs.unwrap_or(DEFAULT_MAX_OPEN_DBS),
                idle_close_after: o.idle_close_after.unwrap_or(DEFAULT_IDLE_CLOSE_AFTER),
                writer_threads: o.writer_threads.unwrap_or(DEFAULT_WRITER_THREADS),
            },
            sqlite: SqliteConfig {
                synchronous: q.synchronous.unwrap_or(DEFAULT_SYNCHRONOUS),
                busy_timeout: q.busy_timeout.unwrap_or(DEFAULT_BUSY_TIMEOUT),
                wal_autocheckpoint: q.wal_autocheckpoint.unwrap_or(DEFAULT_WAL_AUTOCHECKPOINT),
                checkpoint_interval: q.checkpoint_interval.unwrap_or(DEFAULT_CHECKPOINT_INTERVAL),
                journal_size_limit: q.journal_size_limit.unwrap_or(DEFAULT_JOURNAL_SIZE_LIMIT),
                cache_size: q.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
            },
            retention: RetentionConfig {
                max_age: r.max_age.unwrap_or(DEFAULT_RETENTION_MAX_AGE),
                max_total_size: r.max_total_size.unwrap_or(DEFAULT_RETENTION_MAX_TOTAL_SIZE),
                check_interval: r.check_interval.unwrap_or(DEFAULT_RETENTION_CHECK_INTERVAL),
                delete_sources_after: (r.delete_sources_after)
                    .unwrap_or(DEFAULT_DELETE_SOURCES_AFTER),
            },
            dlq: DlqConfig {
                dir: path(l.dir, "dlq"),
                max_total_size: l.max_total_size.unwrap_or(DEFAULT_DLQ_MAX_TOTAL_SIZE),
                // A default follows the key it depends on: never more than a line may hold.
                max_raw_bytes: l
                    .max_raw_bytes
                    .unwrap_or(DEFAULT_DLQ_MAX_RAW_BYTES.min(max_line_bytes)),
            },
            metrics: MetricsConfig {
                listen: x.listen.unwrap_or(DEFAULT_METRICS_LISTEN),
                unhealthy_after: x.unhealthy_after.unwrap_or(DEFAULT_UNHEALTHY_AFTER),
                slow_commit_threshold: (x.slow_commit_threshold)
                    .unwrap_or(DEFAULT_SLOW_COMMIT_THRESHOLD),
            },
            log: LogConfig {
                level: name(g.level, DEFAULT_LOG_LEVEL),
                format: g.format.unwrap_or(DEFAULT_LOG_FORMAT),
            },
            schema: Schema {
                columns: (self.columns.unwrap_or_default().into_iter())
                    .map(|(name, c)| TypedColumn { name, path: c.path, ty: c.ty })
                    .collect(),
                indexes: (self.indexes.unwrap_or_default().into_iter())
                    .map(|i| Index { columns: i.columns, condition: i.condition })
                    .collect(),
            },
            // Typed by `parse_analytics`, which names the element of an error.
            summary: Vec::new(),
            slo: Vec::new(),
            sinks: SinksConfig { clickhouse },
        }
    }
}

/// Every key set, so the rendered effective config is complete and needs no `base`.
impl From<&Config> for RawConfig {
    fn from(c: &Config) -> RawConfig {
        let path = |p: &Path| Some(p.to_string_lossy().into_owned());
        let (s, m, o, q) = (&c.sources, &c.mapping, &c.output, &c.sqlite);
        let (r, l, x) = (&c.retention, &c.dlq, &c.metrics);
        RawConfig {
            base: None,
            sources: RawSources {
                paths: Some(s.paths.clone()),
                read_from: Some(s.read_from),
                rescan_interval: Some(s.rescan_interval),
                close_inactive: Some(s.close_inactive),
                max_line_bytes: Some(s.max_line_bytes),
                max_open_files: Some(s.max_open_files),
            },
            mapping: RawMapping {
                run_id: Some(m.run_id.clone()),
                record_type: Some(m.record_type.clone()),
                event_id: Some(m.event_id.clone()),
                event_type: Some(m.event_type.clone()),
                ts: Some(m.ts.clone()),
                status: Some(m.status.clone()),
                start_time: Some(m.start_time.clone()),
                end_time: Some(m.end_time.clone()),
            },
            output: RawOutput {
                dir: path(&o.dir),
                state_db: path(&o.state_db),
                catalog: path(&o.catalog),
                batch_max_events: Some(o.batch_max_events),
                batch_max_bytes: Some(o.batch_max_bytes),
                batch_max_delay: Some(o.batch_max_delay),
                max_open_dbs: Some(o.max_open_dbs),
                idle_close_after: Some(o.idle_close_after),
                writer_threads: Some(o.writer_threads),
            },
            sqlite: RawSqlite {
                synchronous: Some(q.synchronous),
                busy_timeout: Some(q.busy_timeout),
                wal_autocheckpoint: Some(q.wal_autocheckpoint),
                checkpoint_interval: Some(q.checkpoint_interval),
                journal_size_limit: Some(q.journal_size_limit),
                cache_size: Some(q.cache_size),
            },
            retention: RawRetention {
                max_age: Some(r.max_age),
                max_total_size: Some(r.max_total_size),
                check_interval: Some(r.check_interval),
                delete_sources_after: Some(r.delete_sources_after),
            },
            dlq: RawDlq {
                dir: path(&l.dir),
                max_total_size: Some(l.max_total_size),
                max_raw_bytes: Some(l.max_raw_bytes),
            },
            metrics: RawMetrics {
                listen: Some(x.listen),
                unhealthy_after: Some(x.unhealthy_after),
                slow_commit_threshold: Some(x.slow_commit_threshold),
            },
            log: RawLog { level: Some(c.log.level.clone()), format: Some(c.log.format) },
            columns: (!c.schema.columns.is_empty()).then(|| {
                let column = |c: &TypedColumn| RawColumn { path: c.path.clone(), ty: c.ty };
                c.schema.columns.iter().map(|c| (c.name.clone(), column(c))).collect()
            }),
            indexes: (!c.schema.indexes.is_empty()).then(|| {
                let index = |i: &Index| RawIndex {
                    columns: i.columns.clone(),
                    condition: i.condition.clone(),
                };
                c.schema.indexes.iter().map(index).collect()
            }),
            summary: (c.summary.iter())
                .map(|m| RawSummary {
                    name: Some(m.name.clone()),
                    agg: Some(m.agg),
                    column: m.column.clone(),
                    filter: m.filter.clone(),
                    of: m.of.clone(),
                })
                .collect(),
            slo: (c.slo.iter())
                .map(|s| RawSlo {
                    name: Some(s.name.clone()),
                    metric: Some(s.metric.clone()),
                    max: match s.bound {
                        Bound::Max(v) => Some(v),
                        Bound::Min(_) => None,
                    },
                    min: match s.bound {
                        Bound::Min(v) => Some(v),
                        Bound::Max(_) => None,
                    },
                })
                .collect(),
            sinks: RawSinks {
                clickhouse: c.sinks.clickhouse.as_ref().map(|ch| RawClickHouse {
                    url: Some(ch.url.clone()),
                    database: Some(ch.database.clone()),
                    user: Some(ch.user.clone()),
                    password_file: ch.password_file.as_deref().and_then(path),
                    host_label: Some(ch.host_label.clone()),
                    batch_max_rows: Some(ch.batch_max_rows),
                    batch_max_bytes: Some(ch.batch_max_bytes),
                    batch_max_delay: Some(ch.batch_max_delay),
                    timeout: Some(ch.timeout),
                    backfill: Some(ch.backfill),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/js/config.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new(ORIGIN), Path::new("/etc/js"))
    }

    #[test]
    fn changed_keys_name_what_a_reload_changes_and_nothing_else() {
        let old = parse("[sources]\npaths = [\"/r/*.ndjson\"]\n").unwrap();
        assert_eq!(old.changed_keys(&old), Some(Vec::new()));
        let new = parse(
            "[sources]\npaths = [\"/r/*.ndjson\"]\nrescan_interval = \"5s\"\n\
             [mapping]\nrun_id = \"job\"\n\
             [metrics]\nlisten = \"127.0.0.1:9108\"\n\
             [[summary]]\nname = \"n\"\nagg = \"count\"\n",
        )
        .unwrap();
        let want = ["mapping.run_id", "metrics.listen", "sources.rescan_interval", "summary"];
        assert_eq!(old.changed_keys(&new).unwrap(), want);
        assert_eq!(new.changed_keys(&old).unwrap(), want, "a key removed is a change too");
    }

    /// `text` must fail with a message containing `want`.
    #[track_caller]
    fn check_err(text: &str, want: &str) {
        match parse(text) {
            Ok(c) => panic!("{text:?} parsed, expected error {want:?}: {c:?}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{text:?}\n  got:  {msg}\n  want: {want}");
                assert!(msg.starts_with(ORIGIN), "error does not name the file: {msg}");
                assert!(!msg.ends_with('.'), "trailing period: {msg}");
            }
        }
    }

    /// `text` must parse to the defaults under `DEFAULT_BASE` changed by `edit`.
    #[track_caller]
    fn check_ok(text: &str, edit: impl FnOnce(&mut Config)) {
        let mut want = Config::for_base(Path::new(DEFAULT_BASE));
        edit(&mut want);
        assert_eq!(parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}")), want);
    }

    #[test]
    fn example_is_the_defaults_plus_metrics() {
        let example = include_str!("../config.example.toml");
        check_ok(example, |c| c.metrics.listen = Some("127.0.0.1:9108".parse().unwrap()));
    }

    #[test]
    fn defaults() {
        let c = Config::for_base(Path::new("/b"));
        c.validate().unwrap();
        assert_eq!(c.sources.paths, ["/b/raw/events_*.ndjson"]);
        assert_eq!(c.output.dir, Path::new("/b/db/runs"));
        assert_eq!(c.output.state_db, Path::new("/b/db/shipper-state.sqlite"));
        assert_eq!(c.output.catalog, Path::new("/b/db/catalog.sqlite"));
        assert_eq!(c.dlq.dir, Path::new("/b/dlq"));
        assert_eq!(c.sqlite.synchronous.as_pragma(), "FULL");
        assert_eq!(
            Config::for_base(Path::new("/d[1]")).sources.paths,
            ["/d[[]1[]]/raw/events_*.ndjson"]
        );
        check_ok("", |_| {});
    }

    #[test]
    fn unknown_keys_are_named() {
        check_err("nope = 1", "config.toml: nope: unknown field `nope`");
        for section in
            ["sources", "mapping", "output", "sqlite", "retention", "dlq", "metrics", "log"]
        {
            check_err(
                &format!("[{section}]\nnope = 1"),
                &format!(": {section}.nope: unknown field"),
            );
        }
        check_err("output.batch_max_event = 1", ": output.batch_max_event: unknown field");
        check_err("[output]\nbatch_max_event = 1", ": output.batch_max_event: unknown field");
    }

    /// The key comes from the deserializer's path, however the table is written: a section, a
    /// dotted key, an inline table; an array element is named by its array's key.
    #[test]
    fn nested_keys_are_named_from_the_deserializer_path() {
        let want = ": output.batch_max_delay: invalid duration \"x\"";
        check_err("[output]\nbatch_max_delay = \"x\"", want);
        check_err("output.batch_max_delay = \"x\"", want);
        check_err("output = { batch_max_delay = \"x\" }", want);
        check_err("[sources]\npaths = [\"/a\", 2]", ": sources.paths: invalid type: integer `2`");
        check_err("[sources.deep]\nx = 1", ": sources.deep: unknown field `deep`");
    }

    #[test]
    fn bad_values_are_named() {
        #[rustfmt::skip]
        let cases = [
            ("[sources]\nrescan_interval = \"abc\"", "/etc/js/config.toml: sources.rescan_interval: invalid duration \"abc\": expected number"),
            ("[sources]\nrescan_interval = 5", "sources.rescan_interval: invalid duration \"5\": time unit needed"),
            ("[sources]\nrescan_interval = \"0s\"", "sources.rescan_interval: must be greater than zero"),
            ("[sources]\nclose_inactive = true", "sources.close_inactive: invalid type: boolean `true`, expected a duration"),
            ("[sources]\nmax_line_bytes = \"12XB\"", "sources.max_line_bytes: invalid size \"12XB\""),
            ("[sources]\nmax_line_bytes = 1.5", "sources.max_line_bytes: invalid type: floating point"),
            ("[sources]\nmax_line_bytes = \"512B\"", "sources.max_line_bytes: must be between 1KiB and 1GiB, got 512B"),
            ("[sources]\nmax_line_bytes = \"2GiB\"", "sources.max_line_bytes: must be between"),
            ("[sources]\nread_from = \"middle\"", "sources.read_from: invalid value \"middle\", expected one of: beginning, end"),
            ("[sources]\npaths = []", "sources.paths: must list at least one glob"),
            ("[sources]\npaths = [\"/x/[\"]", "sources.paths: invalid glob \"/x/[\""),
            ("[sources]\npaths = \"/x\"", "sources.paths: invalid type: string"),
            ("[sources]\npaths = [\"/x\", \"\"]", "sources.paths: path must not be empty"),
            ("base = \"\"", "config.toml: base: path must not be empty"),
            ("[sources]\nmax_open_files = -1", "sources.max_open_files: invalid value: integer `-1`"),
            ("[mapping]\nts = \"\"", "mapping.ts: must not be empty"),
            ("[mapping]\nrun_id = 7", "mapping.run_id: invalid type: integer"),
            ("[output]\nbatch_max_events = 0", "output.batch_max_events: must be at least 1, got 0"),
            ("[output]\nbatch_max_events = \"many\"", "output.batch_max_events: invalid type: string"),
            ("[output]\nmax_open_dbs = 0", "output.max_open_dbs: must be at least 1"),
            ("[output]\nwriter_threads = 65", "output.writer_threads: must be between 1 and 64, got 65"),
            ("[output]\ndir = \"\"", "output.dir: path must not be empty"),
            ("[sqlite]\nsynchronous = \"fulll\"", "sqlite.synchronous: invalid value \"fulll\", expected one of: off, normal, full, extra"),
            ("[sqlite]\nwal_autocheckpoint = -1", "sqlite.wal_autocheckpoint: invalid value"),
            ("[retention]\nmax_age = \"0s\"", "retention.max_age: must be greater than zero (\"off\" disables it)"),
            ("[retention]\nmax_total_size = \"lots\"", "retention.max_total_size: invalid size \"lots\""),
            ("[dlq]\nmax_raw_bytes = 63", "dlq.max_raw_bytes: must be between 64B and 1MiB (sources.max_line_bytes), got 63B"),
            ("[dlq]\nmax_raw_bytes = \"2MiB\"", "dlq.max_raw_bytes: must be between 64B and 1MiB (sources.max_line_bytes), got 2MiB"),
            ("[metrics]\nlisten = \"localhost\"", "metrics.listen: invalid socket address \"localhost\""),
            ("[log]\nformat = \"xml\"", "log.format: invalid value \"xml\", expected one of: text, json"),
            ("[log]\nlevel = \" \"", "log.level: must not be empty"),
            ("output = 3", "config.toml: output: invalid type: integer"),
            ("base = 3", "config.toml: base: invalid type: integer"),
            ("[output\n", "config.toml: line 1, column"),
            ("[sinks.clickhouse]\ndatabase = \"t\"", "sinks.clickhouse.url: is required"),
            ("[sinks.clickhouse]\nurl = \"http://h:8123\"", "sinks.clickhouse.database: is required"),
            ("[sinks.clickhouse]\nurl = \"https://h\"\ndatabase = \"t\"", "sinks.clickhouse.url: must start with http://"),
            ("[sinks.clickhouse]\nurl = \"http://u:p@h\"\ndatabase = \"t\"", "sinks.clickhouse.url: must be http://host:port without path"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"a-b\"", "sinks.clickhouse.database: must be an identifier"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"t\"\nhost_label = \"\"", "sinks.clickhouse.host_label: must not be empty"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"t\"\nbatch_max_rows = 0", "sinks.clickhouse.batch_max_rows: must be between 1 and 1000000, got 0"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"t\"\ntimeout = \"0s\"", "sinks.clickhouse.timeout: must be greater than zero"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"t\"\nbackfill = \"later\"", "sinks.clickhouse.backfill: invalid value \"later\", expected one of: auto, beside, after"),
            ("[sinks.clickhouse]\nurl = \"http://h\"\ndatabase = \"t\"\npassword = \"x\"", "sinks.clickhouse.password: unknown field"),
            ("[sinks.elastic]\nurl = \"http://h\"", "sinks.elastic: unknown field"),
            ("[log]\nlevel = \"info\"\n[log]\n", "config.toml: line 3, column 2: duplicate key"),
        ];
        for (text, want) in cases {
            check_err(text, want);
        }
    }

    const SUMMARY: &str = r#"
[[summary]]
name = "p95_line"
agg = "P95"
column = "line_no"
where = "event_type = 'fetch'"

[[summary]]
name = "ratio_429"
agg = "ratio"
where = "json_extract(data, '$.status') = 429"
of = "event_type = 'fetch'"

[[slo]]
name = "429 ratio"
metric = "ratio_429"
max = 0.02

[[slo]]
name = "enough events"
metric = "events"
min = 100
"#;

    #[test]
    fn summaries_and_slos_parse_in_order_and_round_trip() {
        let c = parse(SUMMARY).unwrap();
        let want = [
            SummaryMetric {
                name: "p95_line".into(),
                agg: Agg::P95,
                column: Some("line_no".into()),
                filter: Some("event_type = 'fetch'".into()),
                of: None,
            },
            SummaryMetric {
                name: "ratio_429".into(),
                agg: Agg::Ratio,
                column: None,
                filter: Some("json_extract(data, '$.status') = 429".into()),
                of: Some("event_type = 'fetch'".into()),
            },
        ];
        assert_eq!(c.summary, want);
        let slos = [
            Slo { name: "429 ratio".into(), metric: "ratio_429".into(), bound: Bound::Max(0.02) },
            Slo { name: "enough events".into(), metric: "events".into(), bound: Bound::Min(100.0) },
        ];
        assert_eq!(c.slo, slos);
        let text = c.to_toml_string();
        assert!(text.contains("[[summary]]") && text.contains("agg = \"p95\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c, "{text}");
    }

    /// A summary's column is an SQL name: any case of a built-in or typed column, as in
    /// `[[indexes]]`.
    #[test]
    fn a_summary_column_ignores_case() {
        let text = "[columns]\nhttp_status = { path = \"$.s\", type = \"integer\" }\n\
                    [[summary]]\nname = \"a\"\nagg = \"max\"\ncolumn = \"HTTP_Status\"\n\
                    [[summary]]\nname = \"b\"\nagg = \"p50\"\ncolumn = \"TS\"\n";
        let c = parse(text).unwrap();
        let columns: Vec<_> = c.summary.iter().map(|m| m.column.as_deref()).collect();
        assert_eq!(columns, [Some("HTTP_Status"), Some("TS")]);
    }

    /// Every error of an element names it: `summary[1].where`, `slo[0].metric`.
    #[test]
    fn summary_and_slo_errors_name_the_element_and_key() {
        let s = |body: &str| {
            format!("[[summary]]\nname = \"ok\"\nagg = \"count\"\n[[summary]]\n{body}")
        };
        #[rustfmt::skip]
        let cases = [
            (s("agg = \"count\""), "summary[1].name: missing"),
            (s("name = \" \"\nagg = \"count\""), "summary[1].name: must not be empty"),
            (s("name = \"ok\"\nagg = \"count\""), "summary[1].name: duplicate summary name \"ok\""),
            (s("name = \"events\"\nagg = \"count\""), "summary[1].name: \"events\" is a built-in metric"),
            (s("name = \"x\""), "summary[1].agg: missing"),
            (s("name = \"x\"\nagg = \"median\""), "summary[1].agg: invalid value \"median\", expected one of: count, sum, avg, min, max, p50, p90, p95, p99, ratio"),
            (s("name = \"x\"\nagg = \"p95\""), "summary[1].column: missing: agg = \"p95\" needs a column"),
            (s("name = \"x\"\nagg = \"count\"\ncolumn = \"ts\""), "summary[1].column: not allowed with agg = \"count\""),
            (s("name = \"x\"\nagg = \"max\"\ncolumn = \"nope\""), "summary[1].column: unknown column \"nope\"; expected one of: event_key, run_id"),
            (s("name = \"x\"\nagg = \"count\"\nof = \"1\""), "summary[1].of: only for agg = \"ratio\", not \"count\""),
            (s("name = \"x\"\nagg = \"count\"\nwhere = \"\""), "summary[1].where: must not be empty"),
            (s("name = \"x\"\nagg = \"count\"\nwhere = 3"), "summary[1].where: invalid type: integer `3`"),
            (s("name = \"x\"\nagg = \"count\"\nwhen = \"1\""), "summary[1].when: unknown field `when`"),
            ("[[slo]]\nname = \"a\"\nmetric = \"nope\"\nmax = 1".into(), "slo[0].metric: unknown metric \"nope\""),
            ("[[slo]]\nname = \"a\"\nmax = 1".into(), "slo[0].metric: missing"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events_by_type\"\nmax = 1".into(), "slo[0].metric: events_by_type is an object"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events\"".into(), "slo[0].max: missing: set exactly one of max and min"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events\"\nmax = 1\nmin = 0".into(), "slo[0].max: set exactly one of max and min, not both"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events\"\nmin = nan".into(), "slo[0].min: must be a finite number"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events\"\nmin = \"5\"".into(), "slo[0].min: invalid type: string"),
            ("[[slo]]\nname = \"a\"\nmetric = \"events\"\nmin = 1\n[[slo]]\nname = \"a\"\nmetric = \"events\"\nmin = 1".into(), "slo[1].name: duplicate slo name \"a\""),
        ];
        for (text, want) in cases {
            check_err(&text, want);
        }
    }

    #[test]
    fn human_forms() {
        check_ok("[sqlite]\nsynchronous = \"NORMAL\"\ncache_size = 4096", |c| {
            c.sqlite.synchronous = Synchronous::Normal;
            c.sqlite.cache_size = 4096;
        });
        check_ok("[retention]\nmax_age = \"30d\"\nmax_total_size = \"10 GiB\"", |c| {
            c.retention.max_age = Some(Duration::from_secs(30 * 86400));
            c.retention.max_total_size = Some(10 * GIB);
        });
        check_ok("[dlq]\nmax_total_size = \"OFF\"\n[metrics]\nlisten = \"[::1]:9\"", |c| {
            c.dlq.max_total_size = None;
            c.metrics.listen = Some("[::1]:9".parse().unwrap());
        });
        check_ok("[sources]\nread_from = \"End\"\nmax_line_bytes = \"1.5MiB\"", |c| {
            c.sources.read_from = ReadFrom::End;
            c.sources.max_line_bytes = 3 * MIB as usize / 2;
        });
    }

    /// Issue 10 #15: a default follows the keys it depends on. Setting only
    /// `max_line_bytes` below 64KiB caps `max_raw_bytes` at it instead of rejecting a key the
    /// user never set; an explicit `max_raw_bytes` above it is still an error.
    #[test]
    fn max_raw_bytes_default_follows_max_line_bytes() {
        check_ok("[sources]\nmax_line_bytes = \"4KiB\"", |c| {
            c.sources.max_line_bytes = 4 * KIB as usize;
            c.dlq.max_raw_bytes = 4 * KIB as usize;
        });
        check_ok("[sources]\nmax_line_bytes = \"4KiB\"\n[dlq]\nmax_raw_bytes = \"1KiB\"", |c| {
            c.sources.max_line_bytes = 4 * KIB as usize;
            c.dlq.max_raw_bytes = KIB as usize;
        });
        check_err(
            "[sources]\nmax_line_bytes = \"4KiB\"\n[dlq]\nmax_raw_bytes = \"8KiB\"",
            "dlq.max_raw_bytes: must be between 64B and 4KiB (sources.max_line_bytes), got 8KiB",
        );
    }

    #[test]
    fn clickhouse_sink_defaults_and_round_trip() {
        let text = "[sinks.clickhouse]\nurl = \"http://127.0.0.1:8123/\"\ndatabase = \"telemetry\"\npassword_file = \"ch-password\"";
        let c = parse(text).unwrap();
        let ch = c.sinks.clickhouse.clone().unwrap();
        assert_eq!(ch.url, "http://127.0.0.1:8123");
        assert_eq!(ch.user, "default");
        assert_eq!(ch.password_file.as_deref(), Some(Path::new("/etc/js/ch-password")));
        assert!(!ch.host_label.is_empty());
        assert_eq!(ch.batch_max_rows, DEFAULT_CLICKHOUSE_BATCH_MAX_ROWS);
        assert_eq!(ch.backfill, SinkBackfill::Auto);
        let after = parse(&format!("{text}\nbackfill = \"after\"")).unwrap();
        assert_eq!(after.sinks.clickhouse.map(|c| c.backfill), Some(SinkBackfill::After));
        assert!(SinkBackfill::After.after() && !SinkBackfill::Beside.after());
        let effective = c.to_toml_string();
        assert!(effective.contains("[sinks.clickhouse]"), "{effective}");
        assert_eq!(parse(&effective).unwrap(), c, "{effective}");
        // No sink: no section in the effective config.
        assert!(!Config::for_base(Path::new("/b")).to_toml_string().contains("sinks"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let text = "base = \"state\"\n[sources]\npaths = [\"in/*.ndjson\", \"/abs/*.ndjson\"]\n[dlq]\ndir = \"../dead\"";
        let c = Config::from_toml_str(text, Path::new("x.toml"), Path::new("/etc/j[s]")).unwrap();
        assert_eq!(c.sources.paths, ["/etc/j[[]s[]]/in/*.ndjson", "/abs/*.ndjson"]);
        assert_eq!(c.output.dir, Path::new("/etc/j[s]/state/db/runs"));
        assert_eq!(c.output.state_db, Path::new("/etc/j[s]/state/db/shipper-state.sqlite"));
        assert_eq!(c.dlq.dir, Path::new("/etc/j[s]/../dead"));

        // `load` resolves against the file's own directory.
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("c.toml");
        std::fs::write(&file, "[output]\ndir = \"runs\"").unwrap();
        assert_eq!(Config::load(&file).unwrap().output.dir, tmp.path().join("runs"));
        let missing = tmp.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err().to_string();
        assert_eq!(err, format!("{}: cannot read config file", missing.display()));
    }

    #[test]
    fn to_toml_string_round_trips() {
        let mut c = Config::for_base(Path::new("/b"));
        let defaults = c.to_toml_string();
        assert!(defaults.contains("batch_max_bytes = \"64MiB\""), "{defaults}");
        assert!(defaults.contains("max_age = \"off\""), "{defaults}");
        assert!(defaults.contains("batch_max_delay = \"100ms\""), "{defaults}");
        assert_eq!(parse(&defaults).unwrap(), c);

        c.sources.paths.push("/with \"quotes\"/*.ndjson".into());
        c.sources.read_from = ReadFrom::End;
        c.sources.max_line_bytes = 1000 * 1000;
        c.mapping.ts = "@timestamp".into();
        c.output.batch_max_delay = Duration::from_millis(1500);
        c.sqlite.synchronous = Synchronous::Extra;
        c.sqlite.journal_size_limit = 0;
        c.retention.max_age = Some(Duration::from_secs(30 * 86400));
        c.retention.max_total_size = Some(5 * (GIB << 10));
        c.dlq.max_total_size = None;
        c.metrics.listen = Some("[::1]:9108".parse().unwrap());
        c.log.format = LogFormat::Json;
        let text = c.to_toml_string();
        assert!(text.contains("max_line_bytes = \"1000000B\""), "{text}");
        assert!(text.contains("max_total_size = \"5TiB\""), "{text}");
        assert_eq!(parse(&text).unwrap(), c, "{text}");
    }

    /// `[columns]` and `[[indexes]]` (the contract's example), and every way they can be
    /// wrong, each error naming the key.
    #[test]
    fn columns_and_indexes() {
        let text = r#"
[columns]
http_status = { path = "$.status", type = "integer" }
ttfp_ms     = { path = "$.metrics.ttfp_ms", type = "REAL" }

[[indexes]]
columns = ["event_type", "http_status"]
where = "http_status >= 400"

[[indexes]]
columns = ["ttfp_ms"]
"#;
        check_ok(text, |c| {
            let column = |name: &str, path: &str, ty| TypedColumn {
                name: name.into(),
                path: path.into(),
                ty,
            };
            c.schema.columns = vec![
                column("http_status", "$.status", ColumnType::Integer),
                column("ttfp_ms", "$.metrics.ttfp_ms", ColumnType::Real),
            ];
            c.schema.indexes = vec![
                Index {
                    columns: vec!["event_type".into(), "http_status".into()],
                    condition: Some("http_status >= 400".into()),
                },
                Index { columns: vec!["ttfp_ms".into()], condition: None },
            ];
        });
        let config = parse(text).unwrap();
        let rendered = config.to_toml_string();
        assert!(
            rendered.contains("[columns.http_status]\npath = \"$.status\"\ntype = \"integer\""),
            "{rendered}"
        );
        assert!(rendered.contains("[[indexes]]\ncolumns = [\"event_type\", \"http_status\"]\nwhere = \"http_status >= 400\""), "{rendered}");
        assert_eq!(parse(&rendered).unwrap(), config);

        let col = "[columns]\nhttp_status = { path = \"$.status\", type = \"integer\" }\n";
        #[rustfmt::skip]
        let cases = [
            ("[columns]\nhttp-status = { path = \"$.status\", type = \"integer\" }", "config.toml: columns.http-status: \"http-status\" is not an SQL identifier"),
            ("[columns]\nts = { path = \"$.ts\", type = \"text\" }", "columns.ts: \"ts\" is a built-in column of events (ts)"),
            ("[columns]\nEvent_Key = { path = \"$.k\", type = \"text\" }", "columns.Event_Key: \"Event_Key\" is a built-in column"),
            ("[columns]\norder = { path = \"$.o\", type = \"text\" }", "columns.order: \"order\" is an SQL keyword"),
            ("[columns]\na = { path = \"$.a\", type = \"text\" }\nA = { path = \"$.b\", type = \"text\" }", "columns.a: same column as columns.A (SQL names ignore case)"),
            ("[columns]\nx = { path = \"$.x\", type = \"int\" }", "columns.x.type: invalid value \"int\", expected one of: integer, real, text"),
            ("[columns]\nx = { path = \"$.x\", type = 1 }", "columns.x.type: invalid value \"1\", expected one of: integer, real, text"),
            ("[columns]\nx = { path = \"x\", type = \"text\" }", "columns.x.path: \"x\" is not a JSON path"),
            ("[columns]\nx = { path = \"$.x[\", type = \"text\" }", "columns.x.path: \"$.x[\" is not a valid JSON path"),
            ("[columns]\nx = { type = \"text\" }", "columns.x: missing field `path`"),
            ("[columns]\nx = { path = \"$.x\" }", "columns.x: missing field `type`"),
            ("[columns]\nx = { path = \"$.x\", type = \"text\", index = true }", "columns.x.index: unknown field `index`"),
            ("[columns]\nx = \"$.x\"", "columns.x: invalid type: string"),
            (&format!("{col}[[indexes]]\ncolumns = []"), "indexes[0].columns: must list at least one column"),
            (&format!("{col}[[indexes]]\nwhere = \"ts > 1\""), "indexes[0].columns: must list at least one column"),
            (&format!("{col}[[indexes]]\ncolumns = [\"ts\"]\n[[indexes]]\ncolumns = [\"http_statuz\"]"), "indexes[1].columns: unknown column \"http_statuz\""),
            (&format!("{col}[[indexes]]\ncolumns = [\"ts\"]\nwhere = \"http_status >=\""), "indexes[0].where: incomplete input"),
            (&format!("{col}[[indexes]]\ncolumns = [\"ts\"]\nwhere = \"http_statuz >= 400\""), "indexes[0].where: no such column: http_statuz"),
            (&format!("{col}[[indexes]]\ncolumns = [\"ts\"]\nwhen = \"x\""), "indexes[0].when: unknown field `when`"),
        ];
        for (text, want) in cases {
            check_err(text, want);
        }
    }

    /// Issue 11: the catalog cannot sit where a run DB could take its name (or retention take
    /// it for a run DB), nor be the state DB.
    #[test]
    fn catalog_is_not_among_the_run_dbs() {
        let inside = "must not be inside output.dir (/etc/js/runs), where run DBs are named";
        check_err("output.dir = \"runs\"\noutput.catalog = \"runs/catalog.sqlite\"", inside);
        check_err("output.dir = \"runs\"\noutput.catalog = \"runs/x/c.sqlite\"", inside);
        check_err("output.dir = \"runs\"\noutput.catalog = \"x/../runs/./c.sqlite\"", inside);
        check_err(
            "output.state_db = \"s.sqlite\"\noutput.catalog = \"./s.sqlite\"",
            "output.catalog: must not be the same file as output.state_db",
        );
        check_ok("output.dir = \"runs\"\noutput.catalog = \"runs-catalog.sqlite\"", |c| {
            c.output.dir = PathBuf::from("/etc/js/runs");
            c.output.catalog = PathBuf::from("/etc/js/runs-catalog.sqlite");
        });

        // Through a symlink, found when the directories exist.
        let tmp = tempfile::tempdir().unwrap();
        let mut c = Config::for_base(tmp.path());
        c.prepare_dirs().unwrap();
        std::os::unix::fs::symlink(&c.output.dir, tmp.path().join("link")).unwrap();
        c.output.catalog = tmp.path().join("link/catalog.sqlite");
        let err = c.prepare_dirs().unwrap_err().to_string();
        assert!(err.starts_with("output.catalog: ") && err.contains("through a symlink"), "{err}");
        // Its directory is created like the others'.
        c.output.catalog = tmp.path().join("cat/alog/catalog.sqlite");
        c.prepare_dirs().unwrap();
        assert!(tmp.path().join("cat/alog").is_dir());
    }

    #[test]
    fn prepare_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Config::for_base(tmp.path());
        c.prepare_dirs().unwrap();
        for dir in [&c.output.dir, &tmp.path().join("db"), &c.dlq.dir] {
            assert!(dir.is_dir(), "{dir:?} not created");
        }
        c.prepare_dirs().unwrap(); // idempotent

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let mut c2 = c.clone();
        c2.dlq.dir = file.clone();
        let err = c2.prepare_dirs().unwrap_err().to_string();
        assert_eq!(err, format!("dlq.dir: {}: not a directory", file.display()));

        c2.dlq.dir = file.join("sub");
        let err = c2.prepare_dirs().unwrap_err().to_string();
        assert_eq!(err, format!("dlq.dir: {}/sub: cannot create directory", file.display()));

        let mut c3 = c.clone();
        c3.output.state_db = c.output.dir.clone();
        let err = c3.prepare_dirs().unwrap_err().to_string();
        assert!(
            err.starts_with("output.state_db: ")
                && err.ends_with("is a directory, expected a database file"),
            "{err}"
        );

        // procfs refuses new files even to root.
        let mut c4 = c.clone();
        c4.output.dir = PathBuf::from("/proc");
        let err = c4.prepare_dirs().unwrap_err().to_string();
        assert_eq!(err, "output.dir: /proc: directory not writable");

        // Root writes anywhere else; /proc/self is owned by the effective uid.
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() != 0) {
            let ro = tmp.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
            c4.output.dir = ro.clone();
            let err = c4.prepare_dirs().unwrap_err().to_string();
            assert_eq!(err, format!("output.dir: {}: directory not writable", ro.display()));
        }
    }

    #[test]
    fn prepare_dirs_refuses_a_world_writable_output_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Config::for_base(tmp.path());
        c.prepare_dirs().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&c.output.dir) & 0o007, 0, "created dirs are not for others");
        std::fs::set_permissions(&c.output.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = c.prepare_dirs().unwrap_err().to_string();
        assert!(err.contains("output.dir") && err.contains("world-writable"), "{err}");
    }
}
