//! Prometheus metrics, opt-in (`[metrics] listen`): what the bus, the sessions and the services
//! count, kept in one `prometheus-client` registry that `services::metrics` serves.
//!
//! The registry is process-wide and made once, at start, only when metrics are configured:
//! without `[metrics]` every `get()` is `None` and nothing is counted, so the 10,000-device
//! budgets are untouched. Imports nothing of leafgate's, so every layer may record into it.
//!
//! Cardinality stays bounded by the config: labels are device ids, bus ids and the configured
//! method names (an unknown name a hub sends is counted as `method="(unknown)"`), and the
//! latency histograms are one per device and per bus, not per method.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label a method name the device does not have is counted under.
pub const UNKNOWN_METHOD: &str = "(unknown)";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub device: String,
    pub method: String,
    pub status: u16,
}

/// A device and the status an operation ended with (the method contract's).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub device: String,
    pub status: u16,
}

/// A device and what became of a cloud-to-device message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub device: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BusLabels {
    pub bus: String,
}

type Seconds = Family<DeviceLabels, Histogram, fn() -> Histogram>;
type BusSeconds = Family<BusLabels, Histogram, fn() -> Histogram>;

/// Every metric leafgate keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The size of the last scrape, to size the next one's buffer.
    encoded_bytes: AtomicUsize,
    pub device_connected: Family<DeviceLabels, Gauge>,
    pub device_reconnects: Family<DeviceLabels, Counter>,
    pub methods: Family<MethodLabels, Counter>,
    pub method_seconds: Seconds,
    pub bus_up: Family<BusLabels, Gauge>,
    pub bus_queue_depth: Family<BusLabels, Gauge>,
    pub bus_queue_seconds: BusSeconds,
    pub bus_wire_seconds: BusSeconds,
    pub bus_busy_seconds: Family<BusLabels, Counter<f64, AtomicU64>>,
    pub bus_transactions: Family<BusLabels, Counter>,
    pub bus_timeouts: Family<BusLabels, Counter>,
    pub bus_retries: Family<BusLabels, Counter>,
    pub bus_units_down: Family<BusLabels, Gauge>,
    pub telemetry_sent: Family<DeviceLabels, Counter>,
    pub telemetry_acknowledged: Family<DeviceLabels, Counter>,
    pub telemetry_dropped: Family<DeviceLabels, Counter>,
    pub telemetry_buffered: Family<DeviceLabels, Gauge>,
    pub twin_reads: Family<DeviceLabels, Counter>,
    pub twin_reported: Family<DeviceLabels, Counter>,
    pub twin_desired: Family<StatusLabels, Counter>,
    pub c2d_messages: Family<OutcomeLabels, Counter>,
}

/// 1 ms to about 16 s: a method on a fast TCP device takes milliseconds, one on a slow RS-485
/// line with retries seconds, and no deadline exceeds 300 s.
fn latency() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, when `[metrics]` is configured (after [`enable`]).
#[must_use]
pub fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Counts one cloud-to-device message of `device`: `run`, `duplicate` or `rejected`.
pub fn c2d(device: &str, outcome: &str) {
    if let Some(m) = get() {
        m.c2d_messages
            .get_or_create(&OutcomeLabels {
                device: device.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Counts one event of `device` in `family` (`|m| &m.twin_reads`).
pub fn count(device: &str, family: impl FnOnce(&Metrics) -> &Family<DeviceLabels, Counter>) {
    if let Some(m) = get() {
        family(m).get_or_create(&m.device(device)).inc();
    }
}

/// Makes the registry (once; later calls return the same one).
pub fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            device_connected: Family::default(),
            device_reconnects: Family::default(),
            methods: Family::default(),
            method_seconds: Family::new_with_constructor(latency),
            bus_up: Family::default(),
            bus_queue_depth: Family::default(),
            bus_queue_seconds: Family::new_with_constructor(latency),
            bus_wire_seconds: Family::new_with_constructor(latency),
            bus_busy_seconds: Family::default(),
            bus_transactions: Family::default(),
            bus_timeouts: Family::default(),
            bus_retries: Family::default(),
            bus_units_down: Family::default(),
            telemetry_sent: Family::default(),
            telemetry_acknowledged: Family::default(),
            telemetry_dropped: Family::default(),
            telemetry_buffered: Family::default(),
            twin_reads: Family::default(),
            twin_reported: Family::default(),
            twin_desired: Family::default(),
            c2d_messages: Family::default(),
            registry: Registry::default(),
            encoded_bytes: AtomicUsize::new(0),
        };
        let r = &mut m.registry;
        r.register(
            "leafgate_device_connected",
            "1 while the device's hub connection is up and subscribed",
            m.device_connected.clone(),
        );
        r.register(
            "leafgate_device_reconnects",
            "Hub connections the device made after its first",
            m.device_reconnects.clone(),
        );
        r.register(
            "leafgate_methods",
            "Direct methods answered, by device, method and status",
            m.methods.clone(),
        );
        r.register(
            "leafgate_method_seconds",
            "Direct methods: from the request's arrival to its answer, inside leafgate",
            m.method_seconds.clone(),
        );
        r.register(
            "leafgate_bus_up",
            "1 while the bus's link is open",
            m.bus_up.clone(),
        );
        r.register(
            "leafgate_bus_queue_depth",
            "Method and desired-property jobs waiting for the bus",
            m.bus_queue_depth.clone(),
        );
        r.register(
            "leafgate_bus_queue_seconds",
            "Jobs on the method lane: time waiting in the bus's queue",
            m.bus_queue_seconds.clone(),
        );
        r.register(
            "leafgate_bus_wire_seconds",
            "Jobs on the method lane: time on the line, every transaction of the job",
            m.bus_wire_seconds.clone(),
        );
        r.register(
            "leafgate_bus_busy_seconds",
            "Time the line spent in transactions (its utilisation is the rate)",
            m.bus_busy_seconds.clone(),
        );
        r.register(
            "leafgate_bus_transactions",
            "Requests sent on the bus, retries included",
            m.bus_transactions.clone(),
        );
        r.register(
            "leafgate_bus_timeouts",
            "Requests that got no answer within the bus timeout or the deadline",
            m.bus_timeouts.clone(),
        );
        r.register(
            "leafgate_bus_retries",
            "Requests sent again after an unusable reply or a failed link",
            m.bus_retries.clone(),
        );
        r.register(
            "leafgate_bus_units_down",
            "Units the circuit breaker holds down",
            m.bus_units_down.clone(),
        );
        r.register(
            "leafgate_telemetry_sent",
            "Telemetry messages published, resends included",
            m.telemetry_sent.clone(),
        );
        r.register(
            "leafgate_telemetry_acknowledged",
            "Telemetry messages the hub acknowledged (they left the store)",
            m.telemetry_acknowledged.clone(),
        );
        r.register(
            "leafgate_telemetry_dropped",
            "Readings dropped for room (backlog or store full, or older than its limit)",
            m.telemetry_dropped.clone(),
        );
        r.register(
            "leafgate_telemetry_buffered",
            "Readings waiting for the hub's acknowledgement, in memory and in the store",
            m.telemetry_buffered.clone(),
        );
        r.register(
            "leafgate_twin_reads",
            "Twin documents read from the hub (after every connect, and when asked to)",
            m.twin_reads.clone(),
        );
        r.register(
            "leafgate_twin_reported",
            "Reported-property updates the hub accepted",
            m.twin_reported.clone(),
        );
        r.register(
            "leafgate_twin_desired",
            "Desired-property values applied to the hardware (200) or not (another status)",
            m.twin_desired.clone(),
        );
        r.register(
            "leafgate_c2d_messages",
            "Cloud-to-device messages: run, duplicate (delivered again, not run twice) or rejected (not run)",
            m.c2d_messages.clone(),
        );
        r.register_collector(Box::new(Process));
        m
    }

    /// The OpenMetrics text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        // Sized from the last scrape (plus room to grow): grown by doubling, a 13 MB scrape
        // would pass through buffers of 8 and 16 MiB.
        let last = self.encoded_bytes.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 16);
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        self.encoded_bytes.store(out.len(), Ordering::Relaxed);
        out
    }

    pub fn device(&self, device: &str) -> DeviceLabels {
        DeviceLabels {
            device: device.to_owned(),
        }
    }

    pub fn bus(&self, bus: &str) -> BusLabels {
        BusLabels {
            bus: bus.to_owned(),
        }
    }
}

/// The process: RSS, CPU time, open file descriptors (sockets, serial lines, the store), read
/// from `/proc/self` at each scrape, under Prometheus's standard `process_` names.
#[derive(Debug)]
struct Process;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
            .unwrap_or(0);
        let gauge = ConstGauge::new(rss_kib.saturating_mul(1024));
        let m = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident set size",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(m)?;
        let cpu = ConstCounter::new(cpu_seconds());
        let m = encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(m)?;
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let gauge = ConstGauge::new(i64::try_from(fds).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors: hub connections, bus links, the store",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(m)?;
        Ok(())
    }
}

/// utime + stime from `/proc/self/stat`, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u32::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    #[expect(
        clippy::cast_precision_loss,
        reason = "CPU ticks fit an f64's mantissa"
    )]
    let ticks = cpu_ticks(&stat) as f64;
    ticks / f64::from(hz)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line.
fn cpu_ticks(stat: &str) -> u64 {
    // The fields after the command name, which is in parentheses and may hold spaces and ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state).
    ticks(11).saturating_add(ticks(12))
}

/// A label-safe method name: the configured name, or [`UNKNOWN_METHOD`].
#[must_use]
pub fn method_label(name: &str, known: bool) -> String {
    if known {
        name.to_owned()
    } else {
        UNKNOWN_METHOD.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_what_was_counted_and_the_process() {
        let m = Metrics::new();
        m.methods
            .get_or_create(&MethodLabels {
                device: "pump-7".to_owned(),
                method: "setSpeed".to_owned(),
                status: 200,
            })
            .inc();
        m.method_seconds
            .get_or_create(&m.device("pump-7"))
            .observe(0.02);
        let text = m.encode();
        assert!(
            text.contains(
                "leafgate_methods_total{device=\"pump-7\",method=\"setSpeed\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("leafgate_method_seconds_bucket{le=\"0.025\",device=\"pump-7\"} 1"),
            "{text}"
        );
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(rss.is_some_and(|r| r > 1024 * 1024), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let stat =
            "4242 (leaf gate) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 9 0 77 1000 300";
        assert_eq!(cpu_ticks(stat), 200);
        assert_eq!(cpu_ticks("garbage"), 0);
    }
}
