//! TEMPORARY stub of the configuration types (the real module replaces it).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
}
#[derive(Debug, Clone, PartialEq)]
pub struct SourcesConfig { pub paths: Vec<String>, pub read_from: ReadFrom, pub rescan_interval: Duration, pub close_inactive: Duration, pub max_line_bytes: usize, pub max_open_files: usize }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom { Beginning, End }
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping { pub run_id: String, pub record_type: String, pub event_id: String, pub event_type: String, pub ts: String, pub status: String, pub start_time: String, pub end_time: String }
#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig { pub dir: PathBuf, pub state_db: PathBuf, pub batch_max_events: usize, pub batch_max_bytes: usize, pub batch_max_delay: Duration, pub max_open_dbs: usize, pub idle_close_after: Duration, pub writer_threads: usize }
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteConfig { pub synchronous: Synchronous, pub busy_timeout: Duration, pub wal_autocheckpoint: u32, pub checkpoint_interval: Duration, pub journal_size_limit: usize, pub cache_size: usize }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous { Off, Normal, Full, Extra }
impl Synchronous { pub fn as_pragma(&self) -> &'static str { match self { Synchronous::Off => "OFF", Synchronous::Normal => "NORMAL", Synchronous::Full => "FULL", Synchronous::Extra => "EXTRA" } } }
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig { pub max_age: Option<Duration>, pub max_total_size: Option<u64>, pub check_interval: Duration, pub delete_sources_after: Option<Duration> }
#[derive(Debug, Clone, PartialEq)]
pub struct DlqConfig { pub dir: PathBuf, pub max_total_size: Option<u64>, pub max_raw_bytes: usize }
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig { pub listen: Option<SocketAddr>, pub unhealthy_after: Duration, pub slow_commit_threshold: Duration }
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig { pub level: String, pub format: LogFormat }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat { Text, Json }
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    pub fn for_base(base: &Path) -> Config {
        let s = |x: &str| x.to_string();
        Config {
            sources: SourcesConfig { paths: vec![base.join("raw/events_*.ndjson").display().to_string()], read_from: ReadFrom::Beginning, rescan_interval: Duration::from_secs(1), close_inactive: Duration::from_secs(300), max_line_bytes: 1 << 20, max_open_files: 1024 },
            mapping: Mapping { run_id: s("run_id"), record_type: s("record_type"), event_id: s("event_id"), event_type: s("event_type"), ts: s("ts"), status: s("status"), start_time: s("start_time"), end_time: s("end_time") },
            output: OutputConfig { dir: base.join("db/runs"), state_db: base.join("db/shipper-state.sqlite"), batch_max_events: 20000, batch_max_bytes: 16 << 20, batch_max_delay: Duration::from_millis(100), max_open_dbs: 256, idle_close_after: Duration::from_secs(60), writer_threads: 2 },
            sqlite: SqliteConfig { synchronous: Synchronous::Full, busy_timeout: Duration::from_secs(5), wal_autocheckpoint: 1000, checkpoint_interval: Duration::from_secs(30), journal_size_limit: 64 << 20, cache_size: 2 << 20 },
            retention: RetentionConfig { max_age: None, max_total_size: None, check_interval: Duration::from_secs(60), delete_sources_after: None },
            dlq: DlqConfig { dir: base.join("dlq"), max_total_size: Some(1 << 30), max_raw_bytes: 64 << 10 },
            metrics: MetricsConfig { listen: None, unhealthy_after: Duration::from_secs(120), slow_commit_threshold: Duration::from_secs(1) },
            log: LogConfig { level: s("info"), format: LogFormat::Text },
        }
    }
    pub fn load(_path: &Path) -> Result<Config, ConfigError> { Err(ConfigError("stub".into())) }
    pub fn prepare_dirs(&self) -> Result<(), ConfigError> {
        for d in [&self.output.dir, &self.dlq.dir] { std::fs::create_dir_all(d).map_err(|e| ConfigError(e.to_string()))?; }
        if let Some(p) = self.output.state_db.parent() { std::fs::create_dir_all(p).map_err(|e| ConfigError(e.to_string()))?; }
        Ok(())
    }
    pub fn to_toml_string(&self) -> String { format!("{self:#?}") }
}
