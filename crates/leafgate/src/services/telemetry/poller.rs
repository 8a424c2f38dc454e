//! Polls one telemetry group of one device on its interval and turns each reading into a
//! device-to-cloud message in the device's backlog.
//!
//! Polls go through the bus's poll lane, behind every method. The first poll of a group waits
//! a spread offset within its interval (derived from the device and group names), so fifty
//! meters on one line do not all fire in the same instant after a start. A poll that cannot
//! run within its interval is skipped, not queued: the next tick comes on time, and skips are
//! counted and logged at a bounded rate; so are ticks lost because a poll took longer than the
//! interval (overruns).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::backlog::Backlog;
use crate::bus::{self, Error, Op, Output};
use crate::chain::chain;
use crate::hub::d2c;
use crate::logtext;
use crate::mapping::group::{Group, MAX_MESSAGE_BYTES, TIMESTAMP_KEY};
use crate::mapping::method::ReadFields;
use crate::mapping::plan::{self, Read};
use crate::metrics;

/// At most one "poll failed/skipped" line per group this often; the others are counted.
const LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Poller {
    pub device_id: Arc<str>,
    pub unit: u8,
    pub group: Arc<Group>,
    pub bus: bus::Handle,
    pub backlog: Arc<Backlog>,
    /// Distinguishes this run's message ids from an earlier run's.
    pub run_id: Arc<str>,
}

/// Where in its interval a group's polls fall: spread by device and group, stable across
/// restarts.
fn offset(device: &str, group: &str, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (device, group).hash(&mut h);
    let ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(h.finish() % ms)
}

/// The message for one reading: `{"ts": "...", field: value, ...}` and its topic, with the
/// system properties IoT Hub routes JSON bodies by and the group's application properties.
#[must_use]
pub fn encode(
    device_id: &str,
    group: &Group,
    message_id: &str,
    taken: SystemTime,
    values: &Map<String, Value>,
) -> (String, Bytes) {
    let ts = crate::utc::utc(taken);
    (
        encode_topic(device_id, group, message_id, &ts),
        encode_body(&ts, values),
    )
}

fn encode_body(ts: &str, values: &Map<String, Value>) -> Bytes {
    let mut body = Map::with_capacity(values.len() + 1);
    body.insert(TIMESTAMP_KEY.to_owned(), Value::String(ts.to_owned()));
    for (k, v) in values {
        body.insert(k.clone(), v.clone());
    }
    let body = serde_json::to_vec(&Value::Object(body)).unwrap_or_else(|_| b"{}".to_vec());
    Bytes::from(body)
}

fn encode_topic(device_id: &str, group: &Group, message_id: &str, ts: &str) -> String {
    let system = [
        (d2c::MESSAGE_ID, message_id),
        (d2c::CONTENT_TYPE, "application/json"),
        (d2c::CONTENT_ENCODING, "utf-8"),
        (d2c::CREATION_TIME, ts),
    ];
    let app = group
        .properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    d2c::topic(device_id, system.into_iter().chain(app))
}

impl Poller {
    pub async fn run(self, stop: CancellationToken) {
        let id = &*self.device_id;
        let group = &*self.group;
        let name = &*group.name;
        let start = Instant::now() + offset(id, name, group.interval);
        let mut ticks = tokio::time::interval_at(start, group.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let label = bus::Label {
            device: self.device_id.clone(),
            method: format!("telemetry {name}").into(),
            rid: "".into(),
        };
        let mut reads = match &group.fields {
            Some(fields) => Reads::Merged {
                planned: plan::plan(&fields.spans, group.max_gap),
                fields,
            },
            None => match group.reads.prepare(self.unit, &Value::Null) {
                Ok(ops) => Reads::Steps(ops),
                Err(e) => {
                    // Validation compiles every group against an empty payload: not expected.
                    log::error!(device_id = id; "device {id}: telemetry group {name} cannot be polled: {e}");
                    return;
                }
            },
        };
        let mut last_sent: Option<(Map<String, Value>, Instant)> = None;
        // A message's topic is the same length but for its id: room for the body under the
        // hub's limit (a serial reply can make a reading of any size up to 4 KiB per step).
        let topic_bytes = encode_topic(
            id,
            group,
            &format!("{}-{}", self.run_id, u64::MAX),
            &crate::utc::utc(SystemTime::now()),
        )
        .len();
        let mut failures = Failures::default();
        let mut too_big = Failures::default();
        let mut overruns = Overruns::default();
        let mut last_tick: Option<Instant> = None;
        loop {
            let tick = tokio::select! {
                () = stop.cancelled() => return,
                t = ticks.tick() => t,
            };
            if let Some(previous) = last_tick.replace(tick) {
                overruns.note(id, name, missed(previous, tick, group.interval));
            }
            let deadline = tick + group.interval;
            let taken = SystemTime::now();
            let result = self
                .bus
                .poll(reads.ops(self.unit), deadline, label.clone())
                .await;
            let values = match reads.reading(group, result, id, name) {
                Ok(values) => values,
                Err(why) => {
                    failures.note(id, name, &why);
                    continue;
                }
            };
            failures.recovered(id, name);
            let due = match (&group.on_change, &last_sent) {
                (Some(on_change), Some((last, at))) => {
                    group.changed(last, &values) || at.elapsed() >= on_change.max_silence
                }
                _ => true,
            };
            if !due {
                continue;
            }
            let ts = crate::utc::utc(taken);
            let body = encode_body(&ts, &values);
            if topic_bytes + body.len() > MAX_MESSAGE_BYTES {
                // IoT Hub would close the connection on it, again at every resend.
                too_big.note(id, name, &format!("a reading of {} bytes is over IoT Hub's message limit of {MAX_MESSAGE_BYTES} bytes; it is not sent", topic_bytes + body.len()));
                continue;
            }
            too_big.recovered(id, name);
            let dropped = self.backlog.push(|seq| {
                let mid = format!("{}-{seq}", self.run_id);
                (encode_topic(id, group, &mid, &ts), body)
            });
            if dropped > 0 {
                if let Some(m) = metrics::get() {
                    m.telemetry_dropped
                        .get_or_create(&m.device(id))
                        .inc_by(dropped);
                }
                log::warn!(device_id = id; "device {id}: telemetry backlog full; dropped the oldest reading");
            }
            // Only report-on-change compares with the last reading; keeping it otherwise would
            // cost every device its whole last reading in memory.
            if group.on_change.is_some() {
                last_sent = Some((values, Instant::now()));
            }
        }
    }
}

/// What a group's polls send to the bus.
enum Reads<'g> {
    /// Modbus reads merged by the planner; a read the unit refuses with exception 02 is split
    /// and the split is kept for the polls after.
    Merged {
        fields: &'g ReadFields,
        planned: Vec<Read>,
    },
    /// The configured steps as they are (serial exchanges).
    Steps(Vec<Op>),
}

impl Reads<'_> {
    fn ops(&self, unit: u8) -> Vec<Op> {
        match self {
            Reads::Merged { planned, .. } => planned
                .iter()
                .map(|r| Op::Read {
                    unit,
                    table: r.table,
                    address: r.address,
                    count: r.count,
                })
                .collect(),
            Reads::Steps(ops) => ops.clone(),
        }
    }

    /// The reading, or why there is none. A merged read refused with "illegal data address"
    /// is planned again in smaller reads (once, logged) for the next polls.
    fn reading(
        &mut self,
        group: &Group,
        result: Result<Vec<Result<Output, Error>>, Error>,
        id: &str,
        name: &str,
    ) -> Result<Map<String, Value>, String> {
        let results = match result {
            Ok(results) => results,
            Err(Error::Expired) => {
                return Err("skipped: the bus could not poll it within its interval".to_owned());
            }
            Err(e) => return Err(chain(&e)),
        };
        match self {
            Reads::Steps(_) => {
                let outputs: Vec<Output> = results
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| chain(&e))?;
                match group.reads.reply(&outputs) {
                    Ok(Value::Object(values)) => Ok(values),
                    Ok(other) => Ok(Map::from_iter([("value".to_owned(), other)])),
                    Err(e) => Err(e.to_string()),
                }
            }
            Reads::Merged { fields, planned } => {
                let mut first_error = None;
                let mut replanned: Vec<Read> = Vec::with_capacity(planned.len());
                for (read, result) in planned.iter().zip(&results) {
                    match result {
                        Err(Error::Exception { code: 2 }) => match plan::split(read, &fields.spans)
                        {
                            Some(parts) => {
                                log::warn!(device_id = id, group = name; "device {id}: telemetry group {name}: the unit refused the merged read of {} {}..={} (illegal data address); reading it as {} smaller reads from now on",
                                    read.table.name(), read.address, u32::from(read.address) + u32::from(read.count) - 1, parts.len());
                                replanned.extend(parts);
                                first_error.get_or_insert_with(|| {
                                    "a merged read was refused; planned again".to_owned()
                                });
                                continue;
                            }
                            None => {
                                first_error
                                    .get_or_insert_with(|| chain(&Error::Exception { code: 2 }));
                            }
                        },
                        Err(e) => {
                            first_error.get_or_insert_with(|| chain(e));
                        }
                        Ok(_) => {}
                    }
                    replanned.push(read.clone());
                }
                let outputs: Vec<Option<&Output>> =
                    results.iter().map(|r| r.as_ref().ok()).collect();
                let values = fields.decode(planned, &outputs);
                *planned = replanned;
                match first_error {
                    Some(why) => Err(why),
                    None => Ok(values),
                }
            }
        }
    }
}

/// Failed and skipped polls of one group: the first is logged, then one line a minute with the
/// count, and one when polls succeed again.
#[derive(Default)]
struct Failures {
    since_log: u64,
    last_log: Option<Instant>,
    failing: bool,
}

impl Failures {
    fn note(&mut self, id: &str, group: &str, why: &str) {
        self.failing = true;
        self.since_log += 1;
        if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            let why = logtext::clip_to(why, 4 * logtext::MAX_CHARS);
            log::warn!(device_id = id, group = group; "device {id}: telemetry group {group}: {} poll(s) without a reading: {why}", self.since_log);
            self.since_log = 0;
            self.last_log = Some(Instant::now());
        }
    }

    fn recovered(&mut self, id: &str, group: &str) {
        if std::mem::take(&mut self.failing) {
            log::info!(device_id = id, group = group; "device {id}: telemetry group {group} reads again");
            self.since_log = 0;
            self.last_log = None;
        }
    }
}

/// Ticks that passed unpolled between two polls started at `previous` and `now`: the poll
/// at `previous` (or the wait for the bus) took longer than the interval.
fn missed(previous: Instant, now: Instant, interval: Duration) -> u64 {
    let between = now.saturating_duration_since(previous).as_nanos();
    let interval = interval.as_nanos().max(1);
    u64::try_from((between / interval).saturating_sub(1)).unwrap_or(u64::MAX)
}

/// Overruns of one group: polls that did not start because the one before took longer than
/// the interval. Counted; the first is logged, then at most one line a minute with the count.
#[derive(Default)]
struct Overruns {
    total: u64,
    since_log: u64,
    last_log: Option<Instant>,
}

impl Overruns {
    fn note(&mut self, id: &str, group: &str, missed: u64) {
        if missed == 0 {
            return;
        }
        self.total += missed;
        self.since_log += missed;
        if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            log::warn!(device_id = id, group = group; "device {id}: telemetry group {group}: {} poll(s) skipped because the one before took longer than interval_ms ({} since the start); make interval_ms longer or the group smaller", self.since_log, self.total);
            self.since_log = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_lost_to_a_long_poll_are_counted_as_overruns() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(100);
        assert_eq!(missed(t0, t0 + interval, interval), 0);
        assert_eq!(missed(t0, t0 + Duration::from_millis(199), interval), 0);
        assert_eq!(missed(t0, t0 + Duration::from_millis(300), interval), 2);
        let mut o = Overruns::default();
        o.note("d", "g", 0);
        assert_eq!((o.total, o.last_log.is_none()), (0, true));
        o.note("d", "g", 2);
        assert_eq!(
            (o.total, o.since_log),
            (2, 0),
            "the first is logged at once"
        );
        o.note("d", "g", 3);
        assert_eq!(
            (o.total, o.since_log),
            (5, 3),
            "later ones wait for the next minute"
        );
    }

    fn group() -> Group {
        let cfg: crate::mapping::schema::GroupConfig = crate::mapping::testing::from_toml(
            r#"
                name = "power"
                interval_ms = 1000
                properties = { source = "meter" }
                [[step]]
                op = "read"
                table = "input"
                address = 0
                fields = [{ name = "voltage", type = "f32" }]
                "#,
        );
        Group::compile(&cfg, crate::bus::BusKind::ModbusTcp, "g").unwrap()
    }

    #[test]
    fn a_reading_becomes_a_topic_with_its_properties_and_a_body_with_its_timestamp() {
        let values = serde_json::json!({"voltage": 230.5});
        let Value::Object(values) = values else {
            unreachable!()
        };
        let taken = std::time::UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
        let (topic, body) = encode("meter-1", &group(), "abc-7", taken, &values);
        let (device, props) = d2c::parse(&topic).unwrap();
        assert_eq!(device, "meter-1");
        let ts = "2025-12-06T05:46:40.123Z";
        assert_eq!(
            props,
            [
                ("$.mid", "abc-7"),
                ("$.ct", "application/json"),
                ("$.ce", "utf-8"),
                ("$.ctime", ts),
                ("group", "power"),
                ("source", "meter"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, serde_json::json!({"ts": ts, "voltage": 230.5}));
    }

    #[test]
    fn start_offsets_fall_inside_the_interval_and_are_spread() {
        let interval = Duration::from_millis(10_000);
        let offsets: std::collections::BTreeSet<Duration> = (0..50)
            .map(|i| offset(&format!("meter-{i}"), "power", interval))
            .collect();
        assert!(offsets.iter().all(|o| *o < interval));
        assert!(offsets.len() > 45, "offsets collide: {offsets:?}");
        assert_eq!(
            offset("meter-1", "power", interval),
            offset("meter-1", "power", interval),
            "stable across calls"
        );
    }
}
