//! The daemon around the gateway, as `leafgate run` runs it under systemd (`Type=notify`):
//!
//! - `READY=1` once the config is loaded and every bus actor and device session has been started
//!   (not necessarily connected);
//! - `STATUS=` "37/40 devices connected, 2/2 buses up" whenever that changes (checked twice a
//!   second);
//! - `WATCHDOG=1` from this main loop at half of `WatchdogSec=`, so a stuck loop gets the
//!   service restarted;
//! - SIGHUP: `RELOADING=1`, re-read and validate the config; on problems log every one and keep
//!   running on the old config; otherwise restart only what changed (see [`super::reload`]);
//!   then `READY=1`;
//! - SIGTERM/SIGINT: `STOPPING=1`, drain (new requests 503, methods in flight finish within the
//!   drain deadline), disconnect, return.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;

use super::Gateway;
use crate::config::{self, Config};
use crate::systemd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the gateway")]
    Start(#[source] super::Error),
}

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file, re-read on SIGHUP (with its drop-ins).
    pub config_path: PathBuf,
    /// `--log-level`: wins over `[log] level`, also after a reload.
    pub log_level: Option<log::LevelFilter>,
}

/// How often the status line is recomputed (and sent when it changed).
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// The `STATUS=` line.
#[must_use]
pub fn status_line(gateway: &Gateway) -> String {
    format!(
        "{}/{} devices connected, {}/{} buses up",
        gateway.connected(),
        gateway.devices(),
        gateway.buses_up(),
        gateway.buses()
    )
}

/// Runs the gateway for `config` until SIGTERM or SIGINT, then drains and returns.
///
/// # Errors
/// When signal handlers cannot be installed or the gateway cannot start.
pub async fn run(config: Config, options: &Options) -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(Error::Signals)?;
    let mut gateway = Gateway::start(&config).map_err(Error::Start)?;
    let mut status = status_line(&gateway);
    systemd::notify_ready(&status);
    log::info!(
        "leafgate {} running with {}: {} device(s), {} bus(es)",
        env!("CARGO_PKG_VERSION"),
        options.config_path.display(),
        gateway.devices(),
        gateway.buses()
    );
    let watchdog = systemd::watchdog_ping_interval();
    if let Some(every) = watchdog {
        log::info!("systemd watchdog: pinging every {} ms", every.as_millis());
    }
    // Without a watchdog the ping branch is disabled; the period only has to be valid.
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: stopping");
                break;
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping");
                break;
            }
            _ = hup.recv() => {
                reload(&mut gateway, options);
                status = status_line(&gateway);
            }
            _ = ping.tick(), if watchdog.is_some() => systemd::notify_watchdog(),
            _ = tick.tick() => {
                let now = status_line(&gateway);
                if now != status {
                    systemd::notify_status(&now);
                    status = now;
                }
            }
        }
    }
    let drain = gateway.drain_deadline();
    systemd::notify_stopping(&format!(
        "stopping: finishing methods in flight (at most {} s)",
        drain.as_secs()
    ));
    log::info!(
        "stopping: new requests get 503, methods in flight finish (at most {} ms)",
        drain.as_millis()
    );
    // Keep the watchdog fed while draining: a long method may take minutes.
    let shutdown = gateway.shutdown(drain);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ping.tick(), if watchdog.is_some() => systemd::notify_watchdog(),
        }
    }
    Ok(())
}

/// SIGHUP: re-read the config and apply it, or keep the running one and say why.
fn reload(gateway: &mut Gateway, options: &Options) {
    let path = &options.config_path;
    systemd::notify_reloading(&format!("reloading {}", path.display()));
    log::info!("SIGHUP: reloading {}", path.display());
    let outcome = match config::load(path) {
        Ok(config) => match gateway.reload(&config) {
            Ok(plan) => {
                systemd::set_level(options.log_level.unwrap_or(config.log_level));
                log::info!("reloaded {}: {plan}", path.display());
                None
            }
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why.push_str(&format!(": {s}"));
                    source = s.source();
                }
                log::error!("{why}");
                Some("the new [hub] settings cannot be used".to_owned())
            }
        },
        Err(e) => {
            for problem in &e.problems {
                log::error!("{problem}");
            }
            Some(format!("{} config problem(s)", e.problems.len()))
        }
    };
    match outcome {
        None => systemd::notify_ready(&status_line(gateway)),
        Some(why) => {
            log::error!(
                "reload refused ({why}); still running on the previous config; fix {} and reload again",
                path.display()
            );
            systemd::notify_ready(&format!(
                "{}; last reload refused: {why} (see the journal)",
                status_line(gateway)
            ));
        }
    }
}
