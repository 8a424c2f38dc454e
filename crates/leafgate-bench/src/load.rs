//! The caller: direct methods at a fixed offered rate (open loop) to random devices, through
//! [`Emulator::invoke`] — the service API's own code path without the HTTP hop, so the caller
//! costs as little as possible. Latency runs from just before `invoke` to its answer; how late
//! each call left against its schedule (`issue_lag`) is recorded apart, so a caller that cannot
//! keep up shows as lag, not as gateway latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafgate_emulator::{Emulator, InvokeError, MethodCall};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The method every benchmark device has: a read of 10 holding registers.
pub const METHOD: &str = "read10";

/// What one stretch of offered load produced.
#[derive(Debug, Default)]
pub struct Run {
    pub offered: usize,
    pub latencies: Vec<Duration>,
    pub issue_lag: Vec<Duration>,
    /// Error label → count. Anything but a 200 with the expected fields is an error.
    pub errors: BTreeMap<String, usize>,
    /// First call issued → last answer received.
    pub elapsed: Duration,
}

impl Run {
    pub fn answered(&self) -> usize {
        self.latencies.len()
    }

    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: Run) {
        self.offered += other.offered;
        self.latencies.extend(other.latencies);
        self.issue_lag.extend(other.issue_lag);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.elapsed += other.elapsed;
    }
}

enum Outcome {
    Ok(Duration),
    Err(String),
}

/// Offers `rate` calls per second for `duration` to devices picked uniformly from `targets`,
/// then waits (up to 40 s) for the answers.
pub async fn offer(
    emu: &Arc<Emulator>,
    targets: &Arc<Vec<String>>,
    rate: u32,
    duration: Duration,
) -> Run {
    let total = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut issue_lag = Vec::with_capacity(total);
    let start = Instant::now();
    let mut issued = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while issued < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(total);
        while issued < due {
            let scheduled = start + Duration::from_secs_f64(issued as f64 / f64::from(rate));
            let device = targets[rand::random_range(0..targets.len())].clone();
            let emu = Arc::clone(emu);
            let tx = tx.clone();
            let sent = Instant::now();
            issue_lag.push(sent.saturating_duration_since(scheduled));
            tokio::spawn(async move {
                let call = MethodCall::new(METHOD, json!({})).response_timeout(30);
                let outcome = match emu.invoke(&device, call).await {
                    Ok(result) if result.status == 200 && result.payload.get("r9").is_some() => {
                        Outcome::Ok(sent.elapsed())
                    }
                    Ok(result) => Outcome::Err(device_status(result.status)),
                    Err(e) => Outcome::Err(hub_error(&e)),
                };
                let _ = tx.send(outcome);
            });
            issued += 1;
        }
    }
    drop(tx);
    let mut run = Run {
        offered: total,
        latencies: Vec::with_capacity(total),
        issue_lag,
        ..Run::default()
    };
    let collect = async {
        while let Some(outcome) = rx.recv().await {
            match outcome {
                Outcome::Ok(latency) => run.latencies.push(latency),
                Outcome::Err(label) => *run.errors.entry(label).or_default() += 1,
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(40), collect)
        .await
        .is_err()
    {
        let missing = total - run.latencies.len() - run.error_count();
        *run.errors
            .entry("no answer within 40 s".to_owned())
            .or_default() += missing;
    }
    run.elapsed = start.elapsed();
    run
}

/// How a call the device answered is counted: `device status 200`.
pub fn device_status(status: u16) -> String {
    format!("device status {status}")
}

/// How a call the hub failed is counted: `hub 404 DeviceNotOnline`.
fn hub_error(e: &InvokeError) -> String {
    format!("hub {} {}", e.http_status(), e.error_name())
}

/// Calls `method` once on every device of `targets`, at most `concurrency` calls at a time,
/// and counts the outcomes by [`device_status`] (whatever the status) or by the hub's error.
pub async fn call_each(
    emu: &Arc<Emulator>,
    targets: &[String],
    method: &str,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let mut outcomes = BTreeMap::new();
    let mut count = |joined: Result<String, tokio::task::JoinError>| {
        let label = joined.unwrap_or_else(|e| format!("caller task failed: {e}"));
        *outcomes.entry(label).or_default() += 1;
    };
    let mut calls = JoinSet::new();
    for device in targets {
        if calls.len() >= concurrency.max(1)
            && let Some(joined) = calls.join_next().await
        {
            count(joined);
        }
        let emu = Arc::clone(emu);
        let device = device.clone();
        let call = MethodCall::new(method, json!({})).response_timeout(30);
        calls.spawn(async move {
            match emu.invoke(&device, call).await {
                Ok(result) => device_status(result.status),
                Err(e) => hub_error(&e),
            }
        });
    }
    while let Some(joined) = calls.join_next().await {
        count(joined);
    }
    outcomes
}
