//! The agent's counters, in one place: plain atomics updated per batch or per read call (never
//! per line on a hot path that can avoid it), read by the progress bar, the summary line and
//! the `/metrics` endpoint.
//!
//! Names match the contract's `jsonl_shipper_*` metrics and are all spelled in this module
//! ([`Exposition`] turns the atomics into Prometheus text at scrape time, collector style, so
//! the hot path never touches the exporter); no metric has a per-path or per-run label, so the
//! series count stays bounded. The health signal (`/healthz`, the systemd watchdog) and the
//! commit-time histogram live here too, as atomics the writers update without locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::parse::DeadReason;

/// The `sink` label of the ClickHouse sink's series (and its name in the state DB and
/// `status`: `clickhouse::SINK`). Here, not there: metrics must not depend on the sink.
pub(crate) const CLICKHOUSE_SINK: &str = "clickhouse";

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicU64);

impl Gauge {
    pub(crate) fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// For gauges several threads contribute to (e.g. open DBs across writers).
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A monotonic moment, or none: when something that may be overdue started. Lock-free, so the
/// reader and the state thread publish theirs for free and the scrape reads the age.
#[derive(Debug)]
pub(crate) struct Since(AtomicU64);

/// The zero of every [`Since`] (milliseconds after it, plus one; 0 = none).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Default for Since {
    fn default() -> Self {
        LazyLock::force(&EPOCH);
        Since(AtomicU64::new(0))
    }
}

impl Since {
    pub(crate) fn set_since(&self, t: Option<Instant>) {
        let ms = t.map_or(0, |t| t.saturating_duration_since(*EPOCH).as_millis() as u64 + 1);
        self.0.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn touch(&self) {
        self.set_since(Some(Instant::now()));
    }

    /// How long ago the moment was; None if unset.
    pub(crate) fn age(&self) -> Option<Duration> {
        let ms = self.0.load(Ordering::Relaxed).checked_sub(1)?;
        Some(EPOCH.elapsed().saturating_sub(Duration::from_millis(ms)))
    }
}

/// Everything the pipeline counts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// `jsonl_shipper_lines_read_total`
    pub lines_read: Counter,
    /// `jsonl_shipper_bytes_read_total`
    pub bytes_read: Counter,
    /// Empty or whitespace-only lines (skipped, not dead-lettered).
    pub blank_lines: Counter,
    /// `jsonl_shipper_events_written_total`: events and run records committed to run DBs.
    pub events_written: Counter,
    /// Records whose row was already stored as is (a replay or a re-read of shipped data).
    pub events_unchanged: Counter,
    /// Distinct runs written (backfill only; the daemon does not keep the set).
    pub runs_touched: Counter,
    /// Dead letters produced by the readers (before they are durable).
    pub dead_letters_routed: Counter,
    /// `jsonl_shipper_dlq_lines_total{reason}`: durable dead letters, by reason.
    pub dlq_lines: [Counter; DeadReason::ALL.len()],
    /// `jsonl_shipper_write_retries_total`
    pub write_retries: Counter,
    /// Run-DB transactions committed.
    pub commits: Counter,
    /// `jsonl_shipper_truncations_total`: files found shorter than their read position
    /// (copytruncate, truncation).
    pub truncations: Counter,
    /// `jsonl_shipper_rotations_total`: rotated-away or deleted files read to their end and
    /// closed.
    pub rotations: Counter,
    /// `jsonl_shipper_wal_checkpoints_total`
    pub wal_checkpoints: Counter,
    /// `jsonl_shipper_wal_checkpoints_blocked_total`: WAL checkpoints that readers kept from
    /// completing (the WAL keeps growing while this rises).
    pub checkpoints_blocked: Counter,
    /// `jsonl_shipper_retention_deleted_total`: run DBs, DLQ and source files deleted.
    pub retention_deleted: Counter,
    /// `jsonl_shipper_open_run_dbs`
    pub open_run_dbs: Gauge,
    /// `jsonl_shipper_files_watched`
    pub files_watched: Gauge,
    /// `jsonl_shipper_dlq_pending_letters`: dead letters the state thread holds, not yet durable
    /// in the DLQ (at its bound, `state::Limits`, the readers are held back).
    pub dlq_pending: Gauge,
    /// `jsonl_shipper_lag_bytes`: bytes of watched files not read yet (as of the last rescan).
    pub lag_bytes: Gauge,
    /// `jsonl_shipper_deleted_unread_bytes_total`: bytes of deleted files let go unread after
    /// the pipeline was held up for `close_inactive` (so their disk space is freed).
    pub deleted_unread_bytes: Counter,
    /// Since when the reader has seen bytes it has not read yet (the oldest such file).
    pub oldest_unread: Since,
    /// When the oldest span read but not yet checkpointed was sealed (state thread).
    pub oldest_pending: Since,
    /// The daemon's reader loop's last turn: the watchdog's proof that it is not stuck.
    pub reader_heartbeat: Since,
    /// `jsonl_shipper_sink_lag_bytes{sink="clickhouse"}`: bytes of source files the sink has
    /// not shipped (as of its last pass).
    pub sink_lag_bytes: Gauge,
    /// `jsonl_shipper_sink_rows_total{sink="clickhouse"}`: rows the server acknowledged.
    pub sink_rows: Counter,
    /// `jsonl_shipper_sink_errors_total{sink="clickhouse"}`: failed requests (each retried).
    pub sink_errors: Counter,
    /// `jsonl_shipper_batch_commit_seconds`: one observation per successful run-DB commit.
    pub commit_seconds: Histogram,
    /// Of those commits' time, how long they waited for their run DB's write lock (`BEGIN
    /// IMMEDIATE`, held by another connection), in µs: tells a lock from a slow disk.
    pub lock_wait_micros: Counter,
    /// `jsonl_shipper_last_commit_timestamp_seconds`, in ms (0 = none yet).
    pub last_commit_unix_ms: Gauge,
    /// Run-DB writes in progress (the health signal), see [`Counters::write_started`].
    writes: InFlight,
    /// `jsonl_shipper_summaries_dropped_total`: terminal runs' summaries a writer could not
    /// ask for (the summary thread's inbox was full); `summary RUN_ID` computes them.
    pub summaries_dropped: Counter,
    /// `jsonl_shipper_summary_value{metric}`, `jsonl_shipper_slo_ok{slo}`: the most recently
    /// ended run's (set by the summary thread).
    pub slis: Slis,
}

/// The SLIs of the most recently ended run: its numeric summary metrics and its SLO verdicts.
/// Behind a mutex: set once per summary, read once per scrape.
#[derive(Debug, Default)]
pub(crate) struct Slis(std::sync::Mutex<Option<SliSnapshot>>);

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SliSnapshot {
    pub run_id: String,
    pub path: std::path::PathBuf,
    /// When the run ended (seconds since the epoch): a later summary of an earlier run does
    /// not replace these.
    pub ended: f64,
    pub values: Vec<(String, f64)>,
    pub slos: Vec<(String, bool)>,
}

impl Slis {
    pub(crate) fn get(&self) -> Option<SliSnapshot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Shows nothing if the run shown is the one at `path` (its DB was deleted).
    pub(crate) fn forget(&self, path: &std::path::Path) {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| c.path == path) {
            *current = None;
        }
    }

    /// Takes `snapshot` if its run ended no earlier than the one shown (or is that run).
    pub(crate) fn offer(&self, snapshot: SliSnapshot) -> bool {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let newer = current
            .as_ref()
            .is_none_or(|c| c.run_id == snapshot.run_id || snapshot.ended >= c.ended);
        if newer {
            *current = Some(snapshot);
        }
        newer
    }
}

impl Counters {
    pub(crate) fn dlq(&self, reason: DeadReason) -> &Counter {
        &self.dlq_lines[reason as usize]
    }

    pub(crate) fn dlq_total(&self) -> u64 {
        self.dlq_lines.iter().map(Counter::get).sum()
    }

    /// Marks a run-DB write (all its retries included) as in progress until the guard drops:
    /// a writer that holds data it cannot commit shows up here, however it is stuck (retry
    /// loop on a locked DB, full disk, or a hung fsync).
    pub(crate) fn write_started(&self) -> WriteGuard<'_> {
        self.writes.start()
    }

    /// Called by the daemon's reader loop on every turn.
    pub(crate) fn reader_alive(&self) {
        self.reader_heartbeat.touch();
    }

    /// `jsonl_shipper_oldest_unshipped_age_seconds`: how long the oldest byte the agent has
    /// seen but not yet made durable has waited (zero when caught up).
    pub(crate) fn oldest_unshipped_age(&self) -> Duration {
        let unread = self.oldest_unread.age().unwrap_or_default();
        unread.max(self.oldest_pending.age().unwrap_or_default())
    }

    /// Records a successful run-DB commit that took `took`.
    pub(crate) fn commit_succeeded(&self, took: Duration, lock_wait: Duration) {
        self.commits.add(1);
        self.commit_seconds.observe(took);
        self.lock_wait_micros.add(lock_wait.as_micros().min(u128::from(u64::MAX)) as u64);
        self.last_commit_unix_ms.set(unix_ms(SystemTime::now()));
    }

    /// `Ok` while the writers make progress or have nothing to do; otherwise a one-line reason.
    /// Unhealthy = some write has been pending, uncommitted, for longer than `unhealthy_after`.
    pub(crate) fn health(&self, unhealthy_after: Duration) -> Result<(), String> {
        // The daemon's reader loop turns at least every rescan interval, even when held up.
        if let Some(stuck) = self.reader_heartbeat.age().filter(|age| *age > unhealthy_after) {
            return Err(format!(
                "the reader loop has not turned for {}s (stuck reading a source file or \
                 registering one with the state DB? see the log)",
                stuck.as_secs()
            ));
        }
        let Some(pending) = self.writes.oldest_age() else { return Ok(()) };
        if pending <= unhealthy_after {
            return Ok(());
        }
        let last = match self.last_commit_unix_ms.get() {
            0 => "none since start".to_string(),
            ms => {
                let ago = unix_ms(SystemTime::now()).saturating_sub(ms) / 1000;
                format!("{ago}s ago")
            }
        };
        Err(format!(
            "writer has had data pending for {}s without a successful commit (last commit: {last}; \
             run DB locked or disk full? see the log)",
            pending.as_secs()
        ))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Upper bounds (seconds) of the commit-time histogram: 1 ms (page cache, `synchronous =
/// normal`) to 30 s (a saturated disk), dense around the usual fsync costs.
pub(crate) const COMMIT_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A fixed-bucket histogram of durations: one atomic per bucket, no lock, so writers can
/// observe every commit for free.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = COMMIT_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`Histogram`] at one moment; subtract two to get a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HistogramSnapshot {
    pub counts: [u64; COMMIT_BUCKETS.len() + 1],
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What happened between `earlier` and `self`.
    pub(crate) fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: std::array::from_fn(|i| self.counts[i].saturating_sub(earlier.counts[i])),
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// The `q` quantile in seconds, interpolated linearly inside its bucket the way
    /// Prometheus' `histogram_quantile` does (observations past the last bound count as the
    /// last bound). None without observations.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = COMMIT_BUCKETS.get(i) else {
                    return Some(COMMIT_BUCKETS[COMMIT_BUCKETS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { COMMIT_BUCKETS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        Some(COMMIT_BUCKETS[COMMIT_BUCKETS.len() - 1])
    }
}

/// Start times of the writes in progress: one slot per writer thread (`output.writer_threads`
/// is at most 64), 0 = free, else milliseconds since [`InFlight::epoch`] + 1. Monotonic, so a
/// clock step cannot fake or hide a stall.
#[derive(Debug)]
struct InFlight {
    epoch: Instant,
    slots: [AtomicU64; 64],
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight { epoch: Instant::now(), slots: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

impl InFlight {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn start(&self) -> WriteGuard<'_> {
        let now = self.now();
        let slot = self
            .slots
            .iter()
            .find(|s| s.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed).is_ok());
        WriteGuard { slot }
    }

    /// How long the oldest write in progress has been pending.
    fn oldest_age(&self) -> Option<Duration> {
        let oldest =
            self.slots.iter().map(|s| s.load(Ordering::Acquire)).filter(|&t| t > 0).min()?;
        Some(Duration::from_millis(self.now().saturating_sub(oldest)))
    }
}

/// A write in progress; dropping it (commit done, or the writer unwinding) frees its slot.
#[must_use = "the write counts as pending only while the guard lives"]
pub(crate) struct WriteGuard<'a> {
    slot: Option<&'a AtomicU64>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.store(0, Ordering::Release);
        }
    }
}

/// The Prometheus view of [`Counters`]: read at scrape time, never updated itself.
#[derive(Debug)]
pub(crate) struct Exposition(pub std::sync::Arc<Counters>);

impl Exposition {
    /// A registry whose only collector is this one, for the exporter to encode on each scrape.
    pub(crate) fn registry(counters: std::sync::Arc<Counters>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(counters)));
        registry
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        // The text encoder appends `_total` to counters and the unit to names with one.
        let counters: [(&str, &str, &Counter); 12] = [
            ("jsonl_shipper_lines_read", "Lines read from source files.", &c.lines_read),
            ("jsonl_shipper_bytes_read", "Bytes read from source files.", &c.bytes_read),
            (
                "jsonl_shipper_events_written",
                "Records (events and run records) committed to run databases.",
                &c.events_written,
            ),
            ("jsonl_shipper_blank_lines", "Empty lines skipped.", &c.blank_lines),
            (
                "jsonl_shipper_write_retries",
                "Run-DB writes retried after a database-level failure (locked, full, I/O).",
                &c.write_retries,
            ),
            (
                "jsonl_shipper_wal_checkpoints",
                "WAL checkpoints of run databases.",
                &c.wal_checkpoints,
            ),
            (
                "jsonl_shipper_wal_checkpoints_blocked",
                "WAL checkpoints that could not complete because a reader held the WAL.",
                &c.checkpoints_blocked,
            ),
            (
                "jsonl_shipper_retention_deleted",
                "Run databases deleted by retention.",
                &c.retention_deleted,
            ),
            (
                "jsonl_shipper_truncations",
                "Tailed files that were truncated and read again from the start.",
                &c.truncations,
            ),
            (
                "jsonl_shipper_rotations",
                "Rotated-away or deleted files finished and closed.",
                &c.rotations,
            ),
            (
                "jsonl_shipper_deleted_unread_bytes",
                "Bytes of deleted source files closed before they were read, because the \
                 pipeline was held up for sources.close_inactive (their space is freed).",
                &c.deleted_unread_bytes,
            ),
            (
                "jsonl_shipper_summaries_dropped",
                "Summaries of ended runs not computed because the summary thread's queue was \
                 full (`jsonl-shipper summary RUN_ID` computes one).",
                &c.summaries_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            let metric = ConstCounter::new(counter.get());
            metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }

        let mut family = enc.encode_descriptor(
            "jsonl_shipper_dlq_lines",
            "Lines durably written to the dead-letter queue, by reason.",
            None,
            MetricType::Counter,
        )?;
        for reason in DeadReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(c.dlq(reason).get()).encode(family.encode_family(&labels)?)?;
        }

        // The sinks' series, labelled by sink (one: "clickhouse"; 0 while it is off).
        let sink = [("sink", CLICKHOUSE_SINK)];
        let sink_counters: [(&str, &str, &Counter); 2] = [
            ("jsonl_shipper_sink_rows", "Rows a remote sink acknowledged.", &c.sink_rows),
            (
                "jsonl_shipper_sink_errors",
                "Failed requests to a remote sink (each retried with backoff).",
                &c.sink_errors,
            ),
        ];
        for (name, help, counter) in sink_counters {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(counter.get()).encode(family.encode_family(&sink)?)?;
        }
        let mut family = enc.encode_descriptor(
            "jsonl_shipper_sink_lag_bytes",
            "Bytes of source files a remote sink has not shipped (as of its last pass).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(c.sink_lag_bytes.get()).encode(family.encode_family(&sink)?)?;

        let gauges: [(&str, &str, &Gauge); 4] = [
            ("jsonl_shipper_files_watched", "Files being tailed.", &c.files_watched),
            (
                "jsonl_shipper_lag_bytes",
                "Bytes of watched files not read yet (as of the last rescan).",
                &c.lag_bytes,
            ),
            ("jsonl_shipper_open_run_dbs", "Run databases open for writing.", &c.open_run_dbs),
            (
                "jsonl_shipper_dlq_pending_letters",
                "Dead letters not yet durable in the DLQ (the readers wait at a bound).",
                &c.dlq_pending,
            ),
        ];
        for (name, help, gauge) in gauges {
            let metric = ConstGauge::new(gauge.get());
            metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let seconds: [(&str, &str, f64); 2] = [
            (
                "jsonl_shipper_oldest_unshipped_age",
                "Age of the oldest byte seen in a source file but not yet durable (0 = caught up).",
                c.oldest_unshipped_age().as_secs_f64(),
            ),
            (
                "jsonl_shipper_last_commit_timestamp",
                "Unix time of the last successful run-DB commit (0 = none since start).",
                c.last_commit_unix_ms.get() as f64 / 1000.0,
            ),
        ];
        for (name, help, value) in seconds {
            let metric = ConstGauge::new(value);
            metric.encode(enc.encode_descriptor(
                name,
                help,
                Some(&Unit::Seconds),
                metric.metric_type(),
            )?)?;
        }

        // Families with a label per configured name (bounded by the config), no run_id.
        if let Some(slis) = c.slis.get() {
            let mut family = enc.encode_descriptor(
                "jsonl_shipper_summary_value",
                "Numeric summary metrics of the most recently ended run.",
                None,
                MetricType::Gauge,
            )?;
            for (metric, value) in &slis.values {
                let labels = [("metric", metric.as_str())];
                ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
            }
            let mut family = enc.encode_descriptor(
                "jsonl_shipper_slo_ok",
                "1 if the SLO holds for the most recently ended run, else 0.",
                None,
                MetricType::Gauge,
            )?;
            for (slo, ok) in &slis.slos {
                let labels = [("slo", slo.as_str())];
                ConstGauge::new(i64::from(*ok)).encode(family.encode_family(&labels)?)?;
            }
        }

        let snap = c.commit_seconds.snapshot();
        let buckets: Vec<(f64, u64)> =
            COMMIT_BUCKETS.iter().copied().chain([f64::INFINITY]).zip(snap.counts).collect();
        let mut histogram = enc.encode_descriptor(
            "jsonl_shipper_batch_commit",
            "Duration of one run-DB transaction (write and commit), per successful commit.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            snap.sum_micros as f64 / 1e6,
            snap.count(),
            &buckets,
            None,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(c: Counters) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &Exposition::registry(c.into()))
            .unwrap();
        out
    }

    #[test]
    fn exposition_has_the_contract_names() {
        let c = Counters::default();
        c.lines_read.add(3);
        c.dlq(DeadReason::InvalidJson).add(2);
        c.commit_succeeded(Duration::from_millis(3), Duration::ZERO);
        let text = render(c);
        for line in [
            "jsonl_shipper_lines_read_total 3",
            "jsonl_shipper_bytes_read_total 0",
            "jsonl_shipper_events_written_total 0",
            "jsonl_shipper_dlq_lines_total{reason=\"invalid_json\"} 2",
            "jsonl_shipper_dlq_lines_total{reason=\"write_failed\"} 0",
            "jsonl_shipper_batch_commit_seconds_count 1",
            "jsonl_shipper_batch_commit_seconds_bucket{le=\"0.0025\"} 0",
            "jsonl_shipper_batch_commit_seconds_bucket{le=\"0.005\"} 1",
            "jsonl_shipper_batch_commit_seconds_bucket{le=\"+Inf\"} 1",
            "jsonl_shipper_files_watched 0",
            "jsonl_shipper_lag_bytes 0",
            "jsonl_shipper_open_run_dbs 0",
            "jsonl_shipper_dlq_pending_letters 0",
            "jsonl_shipper_wal_checkpoints_total 0",
            "jsonl_shipper_retention_deleted_total 0",
            "jsonl_shipper_write_retries_total 0",
            "jsonl_shipper_truncations_total 0",
            "jsonl_shipper_rotations_total 0",
            "jsonl_shipper_sink_rows_total{sink=\"clickhouse\"} 0",
            "jsonl_shipper_sink_lag_bytes{sink=\"clickhouse\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(text.contains("jsonl_shipper_last_commit_timestamp_seconds 1"), "{text}");
    }

    #[test]
    fn slis_show_the_latest_ended_run() {
        let c = Counters::default();
        assert!(!render(Counters::default()).contains("jsonl_shipper_summary_value"));
        let snap = |run: &str, ended: f64, value: f64| SliSnapshot {
            run_id: run.into(),
            path: format!("/o/{run}.sqlite").into(),
            ended,
            values: vec![("events".into(), value), ("p95 ms".into(), 1.5)],
            slos: vec![("fast".into(), true), ("few 429".into(), false)],
        };
        assert!(c.slis.offer(snap("b", 200.0, 7.0)));
        assert!(!c.slis.offer(snap("a", 100.0, 9.0)), "an earlier run does not replace it");
        assert!(c.slis.offer(snap("b", 200.0, 8.0)), "the same run is recomputed");
        let text = render(c);
        for line in [
            "jsonl_shipper_summary_value{metric=\"events\"} 8.0",
            "jsonl_shipper_summary_value{metric=\"p95 ms\"} 1.5",
            "jsonl_shipper_slo_ok{slo=\"fast\"} 1",
            "jsonl_shipper_slo_ok{slo=\"few 429\"} 0",
            "jsonl_shipper_summaries_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile(0.95), None);
        for _ in 0..90 {
            h.observe(Duration::from_micros(500));
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.observe(Duration::from_secs(2));
        }
        let all = h.snapshot();
        // 95th of 100: the middle of the (1 s, 2.5 s] bucket.
        assert_eq!(all.quantile(0.95), Some(1.75));
        assert_eq!(all.quantile(0.5), Some(0.001 * 50.0 / 90.0));
        assert_eq!(all.since(&before).count(), 10);
        assert_eq!(all.since(&before).quantile(0.95), Some(1.0 + 1.5 * 0.95));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.snapshot().since(&all).quantile(0.95), Some(30.0));
    }

    #[test]
    fn health_turns_bad_only_while_a_write_is_pending_too_long() {
        let c = Counters::default();
        assert_eq!(c.health(Duration::ZERO), Ok(()));
        let guard = c.write_started();
        assert_eq!(c.health(Duration::from_secs(60)), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        let reason = c.health(Duration::from_millis(1)).unwrap_err();
        assert!(reason.contains("without a successful commit"), "{reason}");
        assert!(!reason.contains('\n'));
        drop(guard);
        assert_eq!(c.health(Duration::ZERO), Ok(()));
        // Every slot taken: further writes are simply not tracked, never a panic.
        let guards: Vec<_> = (0..70).map(|_| c.write_started()).collect();
        assert_eq!(guards.iter().filter(|g| g.slot.is_some()).count(), 64);
    }

    #[test]
    fn a_reader_loop_that_stops_turning_is_unhealthy_and_ages_are_the_oldest_of_both_shares() {
        let c = Counters::default();
        assert_eq!(c.health(Duration::ZERO), Ok(()), "no reader loop (backfill): no verdict");
        c.reader_alive();
        assert_eq!(c.health(Duration::from_secs(60)), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        let reason = c.health(Duration::from_millis(1)).unwrap_err();
        assert!(reason.contains("reader loop has not turned"), "{reason}");

        assert_eq!(c.oldest_unshipped_age(), Duration::ZERO);
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        c.oldest_pending.touch();
        c.oldest_unread.set_since(Some(earlier));
        let age = c.oldest_unshipped_age();
        assert!(age >= Duration::from_millis(5) && age < Duration::from_secs(60), "{age:?}");
        c.oldest_unread.set_since(None);
        assert!(c.oldest_unshipped_age() < age);
        c.oldest_pending.set_since(None);
        assert_eq!(c.oldest_unshipped_age(), Duration::ZERO);
    }
}
