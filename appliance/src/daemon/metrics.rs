//! `GET /metrics`: what the appliance is doing, in Prometheus' text format. Everything is read at scrape time
//! from the counters the parts keep anyway (the pseudo-disks', the portal's, the chunk cache's, the cloud
//! client's), so serving metrics costs nothing between scrapes. The library's figures need every disk index,
//! so they are computed at most once per `LIBRARY_STATS_EVERY`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use blockdev::pseudo_disk::{CounterSnapshot, LatencySnapshot, LATENCY_BOUNDS_US};
use dedup::cache::CacheStats;
use dedup::stats::LibraryStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::mounts::Manager;

const LIBRARY_STATS_EVERY: Duration = Duration::from_secs(300);

pub struct Metrics {
    manager: Arc<Manager>,
    library: Mutex<Option<(Instant, LibraryStats)>>,
}

pub fn routes(manager: Arc<Manager>) -> OpenApiRouter {
    let metrics = Arc::new(Metrics { manager, library: Mutex::new(None) });
    OpenApiRouter::new().routes(routes!(scrape)).with_state(metrics)
}

/// The appliance's metrics, for Prometheus to scrape.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    responses((
        status = 200,
        description = "The metrics in the OpenMetrics text format",
        body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    ))
)]
async fn scrape(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let snapshot = Snapshot {
        disks: m.manager.disk_counters().await,
        sessions: m.manager.portal().session_count() as u64,
        commands: m.manager.portal().stats.commands(),
        sense_keys: m.manager.portal().stats.sense_keys(),
        cache: m.manager.chunk_cache().map(|c| c.stats()),
        library: m.library_stats().await,
        cloud_calls: crate::cloud::sdk::cloud_calls(),
        jobs_running: m.manager.jobs().running_count() as u64,
    };
    let mut registry = Registry::with_prefix("livemount");
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    let body = match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => text,
        Err(e) => format!("# encoding the metrics failed: {e}\n"),
    };
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

impl Metrics {
    /// The library's figures, at most `LIBRARY_STATS_EVERY` old; none when the library cannot be read (the
    /// scrape still answers with everything else).
    async fn library_stats(self: &Arc<Self>) -> Option<LibraryStats> {
        if let Some((at, stats)) = &*self.library.lock().unwrap() {
            if at.elapsed() < LIBRARY_STATS_EVERY {
                return Some(stats.clone());
            }
        }
        let me = self.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            let lib = me.manager.library().ok()?;
            dedup::stats::library_stats(&lib).map_err(|e| tracing::warn!("metrics: library figures: {e}")).ok()
        })
        .await
        .ok()
        .flatten()?;
        *self.library.lock().unwrap() = Some((Instant::now(), fresh.clone()));
        Some(fresh)
    }
}

/// Everything a scrape shows, read before encoding.
#[derive(Debug)]
struct Snapshot {
    disks: Vec<(String, usize, CounterSnapshot)>,
    sessions: u64,
    commands: Vec<(u8, String, u64)>,
    sense_keys: Vec<(&'static str, u64)>,
    cache: Option<CacheStats>,
    library: Option<LibraryStats>,
    cloud_calls: Vec<(String, String, u64, u64)>,
    jobs_running: u64,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A per-disk metric: its name, help, and how to read it from a disk's counters.
type DiskMetric = (&'static str, &'static str, fn(&CounterSnapshot) -> u64);

/// One metric family: its name, help and type, and a value per label set.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        if labels.is_empty() {
            // A metric without labels is written bare (`name value`), not with an empty `{}`.
            return value.encode(family);
        }
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_disks(&mut e)?;
        self.encode_iscsi(&mut e)?;
        self.encode_cache_and_library(&mut e)?;
        family(
            &mut e,
            "cloud_calls",
            "AWS calls made (after the SDK's retries), by service and action",
            MetricType::Counter,
            self.cloud_calls
                .iter()
                .map(|(s, a, n, _)| (vec![("service", s.as_str()), ("action", a.as_str())], counter(*n))),
        )?;
        family(
            &mut e,
            "cloud_call_errors",
            "AWS calls that failed (after the SDK's retries), by service and action",
            MetricType::Counter,
            self.cloud_calls
                .iter()
                .map(|(s, a, _, n)| (vec![("service", s.as_str()), ("action", a.as_str())], counter(*n))),
        )?;
        family(
            &mut e,
            "jobs_running",
            "Account workflows running now",
            MetricType::Gauge,
            [(vec![], gauge(self.jobs_running))],
        )
    }
}

impl Snapshot {
    fn encode_disks(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let disk_numbers: Vec<String> = self.disks.iter().map(|(_, n, _)| n.to_string()).collect();
        let labelled = || {
            self.disks
                .iter()
                .zip(&disk_numbers)
                .map(|((id, _, c), n)| (vec![("mount", id.as_str()), ("disk", n.as_str())], c))
        };
        let counters: [DiskMetric; 6] = [
            ("disk_read_bytes", "Bytes read from the pseudo-disk", |c| c.bytes_read),
            ("disk_written_bytes", "Bytes written to the pseudo-disk (its private store)", |c| c.bytes_written),
            ("disk_recalled_bytes", "Bytes recalled from the backup", |c| c.bytes_recalled),
            ("disk_recalls", "Chunks recalled from the backup", |c| c.chunks_recalled),
            ("disk_flushes", "Flushes (SYNCHRONIZE CACHE, fsync) of the pseudo-disk", |c| c.flushes),
            ("disk_private_read_bytes", "Bytes read from the private store", |c| c.read_bytes_private),
        ];
        for (name, help, value) in counters {
            family(e, name, help, MetricType::Counter, labelled().map(|(l, c)| (l, counter(value(c)))))?;
        }
        let gauges: [DiskMetric; 3] = [
            ("disk_recall_queue_depth", "Chunks being recalled now", |c| c.recalls_in_progress),
            ("disk_recalled_chunks", "Chunks held by the recall store (or known zero)", |c| c.recalled_chunks),
            ("disk_private_blocks", "4 KiB blocks held by the private store", |c| c.private_blocks),
        ];
        for (name, help, value) in gauges {
            family(e, name, help, MetricType::Gauge, labelled().map(|(l, c)| (l, gauge(value(c)))))?;
        }
        for (name, help, hist) in [
            (
                "disk_read_seconds",
                "Time from a read's call to its answer",
                (|c| &c.read_latency) as fn(&CounterSnapshot) -> &LatencySnapshot,
            ),
            ("disk_write_seconds", "Time from a write's call to its answer", |c| &c.write_latency),
        ] {
            let mut f = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, c) in labelled() {
                let h = hist(c);
                let bounds = LATENCY_BOUNDS_US.iter().map(|&us| us as f64 / 1e6).chain([f64::MAX]);
                let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied()).collect();
                let count = h.counts.iter().sum();
                f.encode_family(&labels)?.encode_histogram::<Labels>(h.sum.as_secs_f64(), count, &buckets, None)?;
            }
        }
        Ok(())
    }

    fn encode_iscsi(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            e,
            "iscsi_sessions",
            "iSCSI sessions logged in now",
            MetricType::Gauge,
            [(vec![], gauge(self.sessions))],
        )?;
        let opcodes: Vec<String> = self.commands.iter().map(|(op, _, _)| format!("0x{op:02x}")).collect();
        family(
            e,
            "iscsi_commands",
            "SCSI commands answered, by operation code",
            MetricType::Counter,
            self.commands
                .iter()
                .zip(&opcodes)
                .map(|((_, name, n), op)| (vec![("opcode", op.as_str()), ("command", name.as_str())], counter(*n))),
        )?;
        family(
            e,
            "iscsi_check_conditions",
            "SCSI commands answered with CHECK CONDITION, by sense key",
            MetricType::Counter,
            self.sense_keys.iter().map(|(key, n)| (vec![("sense_key", *key)], counter(*n))),
        )
    }

    fn encode_cache_and_library(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(c) = &self.cache {
            family(
                e,
                "chunk_cache_hits",
                "Chunk reads answered by the chunk cache",
                MetricType::Counter,
                [(vec![], counter(c.hits))],
            )?;
            family(
                e,
                "chunk_cache_fetches",
                "Chunks fetched from the store into the cache",
                MetricType::Counter,
                [(vec![], counter(c.fetches))],
            )?;
            family(
                e,
                "chunk_cache_evictions",
                "Chunks evicted from the cache",
                MetricType::Counter,
                [(vec![], counter(c.evictions))],
            )?;
            family(
                e,
                "chunk_cache_bytes",
                "Bytes the chunk cache holds",
                MetricType::Gauge,
                [(vec![], gauge(c.bytes))],
            )?;
            family(
                e,
                "chunk_cache_capacity_bytes",
                "The chunk cache's bound",
                MetricType::Gauge,
                [(vec![], gauge(c.capacity))],
            )?;
        }
        if let Some(l) = &self.library {
            family(
                e,
                "library_backups",
                "Backups in the library",
                MetricType::Gauge,
                [(vec![], gauge(l.backups as u64))],
            )?;
            family(
                e,
                "library_chunks",
                "Distinct chunks stored",
                MetricType::Gauge,
                [(vec![], gauge(l.stored_chunks))],
            )?;
            family(
                e,
                "library_stored_bytes",
                "Bytes of the stored chunks",
                MetricType::Gauge,
                [(vec![], gauge(l.stored_bytes))],
            )?;
            family(
                e,
                "library_data_bytes",
                "Bytes of data the backups hold (before dedup and compression)",
                MetricType::Gauge,
                [(vec![], gauge(l.data_bytes))],
            )?;
            let f = e.encode_descriptor(
                "library_reduction_ratio",
                "Data bytes over stored bytes (dedup and compression)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(l.reduction_ratio).encode(f)?;
        }
        Ok(())
    }
}
