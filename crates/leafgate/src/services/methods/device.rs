//! One leaf device as direct methods see it: its methods, its bus, and the handling of one
//! method request from payload to status and reply body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::histogram::Histogram;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bus::{self, Op};
use crate::chain::chain;
use crate::config::schema::BusKind;
use crate::logtext;
use crate::mapping::{Failure, Method, raw, respond};
use crate::metrics::{self, MethodLabels};

pub struct Device {
    pub id: Arc<str>,
    pub unit: u8,
    pub bus_kind: BusKind,
    pub bus: bus::Handle,
    pub methods: BTreeMap<String, Arc<Method>>,
    /// The raw methods' deadline, when they are on.
    pub raw_methods: Option<Duration>,
    pub max_payload_bytes: usize,
    /// Counts of the device's requests by status, for its twin's reported health; `None` when
    /// nothing reports them.
    pub stats: Option<watch::Sender<MethodStats>>,
    /// Its series of `leafgate_method_seconds`, when metrics are on (looked up once, not per
    /// request).
    pub latency: Option<Histogram>,
}

/// What the device twin reports about a device's methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodStats {
    pub by_status: BTreeMap<u16, u64>,
    pub last_error: Option<LastError>,
}

/// The device's most recent failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub status: u16,
    pub method: String,
    pub at: SystemTime,
}

/// What to publish for one request, and the time after which publishing is pointless.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub deadline: Instant,
}

/// A method's answer must leave before its deadline; the bus stops this much earlier so the
/// reply still has time to be encoded and published.
fn margin(timeout: Duration) -> Duration {
    (timeout / 10).min(Duration::from_millis(100))
}

enum Plan {
    Configured(Arc<Method>),
    Raw(raw::Raw),
}

impl Device {
    /// Every method name this device answers, sorted (for 501 replies and logs).
    #[must_use]
    pub fn method_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.keys().cloned().collect();
        if self.raw_methods.is_some() {
            names.extend(raw::names(self.bus_kind).iter().map(|s| (*s).to_owned()));
        }
        names.sort();
        names
    }

    /// Handles one request received at `received`. Always returns a response; never panics on
    /// what the network sent.
    pub async fn call(&self, name: &str, rid: &str, payload: &[u8], received: Instant) -> Response {
        // An unknown name is answered at once; the raw deadline only bounds the raw methods.
        let timeout = self
            .methods
            .get(name)
            .map(|m| m.timeout)
            .or(self.raw_methods)
            .unwrap_or(raw::TIMEOUT);
        let deadline = received + timeout;
        let result = self.run(name, rid, payload, received, timeout).await;
        let elapsed = received.elapsed();
        // Name, rid and the failure's text (which may quote the device's reply) come from
        // outside: bounded in the journal, whole in the reply.
        let (name, rid) = (&*logtext::clip(name), &*logtext::clip(rid));
        let (status, body) = match result {
            Ok(body) => {
                log::info!(device_id = &*self.id, method = name, rid = rid, bus = self.bus.id(), status = 200, duration_ms = elapsed.as_millis();
                    "method {name} on {}: 200 in {} ms", self.id, elapsed.as_millis());
                (200, body)
            }
            Err(failure) => {
                let (status, body, level) = respond(&failure);
                // The failure's chain (with sources) goes to the journal; the caller sees `body`.
                let why = chain(&failure);
                let why = logtext::clip_to(&why, 4 * logtext::MAX_CHARS);
                log::log!(level, device_id = &*self.id, method = name, rid = rid, bus = self.bus.id(), status = status, duration_ms = elapsed.as_millis();
                    "method {name} on {}: {status} in {} ms: {why}", self.id, elapsed.as_millis());
                (status, body)
            }
        };
        self.count(status, name);
        if let Some(m) = metrics::get() {
            // 501: a name the device does not have, whatever the hub sent, is one label.
            m.methods
                .get_or_create(&MethodLabels {
                    device: self.id.to_string(),
                    method: metrics::method_label(name, status != 501),
                    status,
                })
                .inc();
        }
        if let Some(latency) = &self.latency {
            latency.observe(elapsed.as_secs_f64());
        }
        Response {
            status,
            body,
            deadline,
        }
    }

    /// Counts one request's status for the device's reported health.
    fn count(&self, status: u16, method: &str) {
        if let Some(stats) = &self.stats {
            stats.send_modify(|stats| {
                *stats.by_status.entry(status).or_default() += 1;
                if status != 200 {
                    stats.last_error = Some(LastError {
                        status,
                        method: method.to_owned(),
                        at: SystemTime::now(),
                    });
                }
            });
        }
    }

    /// Runs a mapped `method` (a desired property's writes, a property's reads) with `payload`,
    /// through the bus's method lane like a direct method, within the method's timeout.
    /// `what` names it in the bus's log lines.
    ///
    /// # Errors
    /// The failure, as a direct method would meet it: an invalid payload before any bus
    /// transaction, or what the bus or the reply decoding reported.
    pub async fn apply(
        &self,
        method: &Method,
        what: &str,
        payload: &Value,
    ) -> Result<Value, Failure> {
        let received = Instant::now();
        let ops = method.prepare(self.unit, payload)?;
        let outputs = self
            .execute(ops, what, "", received, method.timeout)
            .await?;
        Ok(method.reply(&outputs)?)
    }

    async fn run(
        &self,
        name: &str,
        rid: &str,
        payload: &[u8],
        received: Instant,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        if payload.len() > self.max_payload_bytes {
            return Err(Failure::TooLarge {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        let plan = match self.methods.get(name) {
            Some(m) => Plan::Configured(m.clone()),
            None => match (
                self.raw_methods.is_some(),
                raw::names(self.bus_kind).contains(&name),
            ) {
                (true, true) => Plan::Raw(raw::Raw::Read), // replaced below with the real kind
                _ => {
                    return Err(Failure::UnknownMethod {
                        methods: self.method_names(),
                    });
                }
            },
        };
        let payload: Value = if payload.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(payload).map_err(|e| Failure::NotJson(e.to_string()))?
        };
        let (plan, ops): (Plan, Vec<Op>) = match plan {
            Plan::Configured(m) => {
                let ops = m.prepare(self.unit, &payload)?;
                (Plan::Configured(m), ops)
            }
            Plan::Raw(_) => match raw::prepare(name, self.bus_kind, self.unit, &payload) {
                Some(Ok((kind, op))) => (Plan::Raw(kind), vec![op]),
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(Failure::UnknownMethod {
                        methods: self.method_names(),
                    });
                }
            },
        };
        let outputs = self.execute(ops, name, rid, received, timeout).await?;
        match plan {
            Plan::Configured(m) => Ok(m.reply(&outputs)?),
            Plan::Raw(kind) => match outputs.first() {
                Some(out) => Ok(raw::reply(kind, out)),
                None => Err(Failure::Internal(
                    "raw method produced no output".to_owned(),
                )),
            },
        }
    }

    /// Runs a mapped read (a property read from the hardware) in the bus's poll lane, behind
    /// every method, within the read's timeout.
    ///
    /// # Errors
    /// What the bus or the reply decoding reported; a read not started before the timeout
    /// comes back as expired.
    pub async fn read(&self, method: &Method, what: &str) -> Result<Value, Failure> {
        let ops = method.prepare(self.unit, &Value::Null)?;
        let deadline = Instant::now() + method.timeout;
        let label = bus::Label {
            device: self.id.clone(),
            method: logtext::clip(what).into(),
            rid: "".into(),
        };
        let bus_failure = |error| Failure::Bus {
            bus: self.bus.id().to_owned(),
            error,
            timeout_ms: u64::try_from(method.timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let outputs = self
            .bus
            .poll(ops, deadline, label)
            .await
            .map_err(bus_failure)?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(bus_failure)?;
        Ok(method.reply(&outputs)?)
    }

    /// Submits `ops` to the bus and waits for them, within `timeout` from `received`.
    async fn execute(
        &self,
        ops: Vec<Op>,
        name: &str,
        rid: &str,
        received: Instant,
        timeout: Duration,
    ) -> Result<Vec<bus::Output>, Failure> {
        let deadline = received + timeout;
        let bus_deadline = deadline - margin(timeout);
        let label = bus::Label {
            device: self.id.clone(),
            method: logtext::clip(name).into(),
            rid: logtext::clip(rid).into(),
        };
        let bus_failure = |error| Failure::Bus {
            bus: self.bus.id().to_owned(),
            error,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        // The bus honours the deadline itself; this outer bound is a safety net so a bug there
        // can never make us miss ours.
        tokio::time::timeout_at(
            deadline - margin(timeout) / 2,
            self.bus.submit(ops, bus_deadline, label),
        )
        .await
        .map_err(|_| {
            bus_failure(bus::Error::Timeout(bus::Timeout {
                unit: None,
                limit: bus::Limit::Deadline {
                    ms: bus::Timeout::ms(timeout),
                },
            }))
        })?
        .map_err(bus_failure)
    }
}
