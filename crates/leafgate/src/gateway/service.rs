//! The daemon around the gateway, as `leafgate run` runs it under systemd (`Type=notify`):
//!
//! - `READY=1` once the config is loaded and every bus actor and device session has been started
//!   (not necessarily connected);
//! - `STATUS=` "37/40 devices connected, 2/2 buses up" whenever that changes (checked twice a
//!   second);
//! - `WATCHDOG=1` from this main loop at half of `WatchdogSec=`, so a stuck loop gets the
//!   service restarted;
//! - SIGHUP: `RELOADING=1`, re-read and validate the config on a thread of its own (so a file
//!   that cannot be read promptly never stops this loop: signals, `STATUS=` and the watchdog go
//!   on), within [`RELOAD_TIME_LIMIT`]; on problems log every one and keep running on the old
//!   config; otherwise restart only what changed (see [`super::reload`]); then `READY=1`. A
//!   SIGHUP during a reload runs one more reload after it (the files may have changed since it
//!   read them);
//! - SIGTERM/SIGINT: `STOPPING=1`, drain (new requests 503, methods in flight finish within the
//!   drain deadline), disconnect, return.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Gateway, HubIdentity, Prepared};
use crate::config::{self, Config};
use crate::services::{control, metrics};
use crate::systemd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the gateway")]
    Start(#[source] super::Error),
    #[error("cannot serve metrics on {addr} ([metrics] listen)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
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

/// How long a reload may take to read and check the config and the files it names. It takes
/// milliseconds; FIFOs and terminals are refused at once, so only a file on a stalled
/// filesystem (a hung NFS mount) gets near this. Past it the reload is refused and its thread
/// left to finish or hang on its own: its result is never applied.
pub const RELOAD_TIME_LIMIT: Duration = Duration::from_secs(30);

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
    // Stops the metrics and control listeners when this returns.
    let listeners_stop = CancellationToken::new();
    let _listeners_guard = listeners_stop.clone().drop_guard();
    // Before the gateway: buses and sessions look their series up as they start.
    if let Some(addr) = config.metrics {
        let registry = crate::metrics::enable();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Metrics { addr, source })?;
        // The bound address: port 0 in the config gets one from the kernel.
        let at = listener.local_addr().unwrap_or(addr);
        log::info!(service = "metrics"; "metrics: serving Prometheus metrics at http://{at}/metrics");
        tokio::spawn(metrics::serve(listener, registry, listeners_stop.clone()));
    }
    let mut gateway = Gateway::start(&config).map_err(Error::Start)?;
    let control = match config.control.as_deref() {
        Some(socket) => serve_control(socket, &gateway, options, &listeners_stop).await,
        None => None,
    };
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
    let mut reloading: Option<Reload> = None;
    // A SIGHUP arrived while `reloading` ran: reload again once it is done.
    let mut again = false;
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
                if reloading.is_some() {
                    if !again {
                        log::info!(
                            "SIGHUP during a reload: reading {} again once this reload is done",
                            options.config_path.display()
                        );
                    }
                    again = true;
                } else {
                    reloading = Reload::start(&gateway, options);
                }
            }
            outcome = Reload::finished(&mut reloading), if reloading.is_some() => {
                reloading = None;
                finish_reload(&mut gateway, options, &config, outcome);
                status = status_line(&gateway);
                if std::mem::take(&mut again) {
                    reloading = Reload::start(&gateway, options);
                }
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
    if reloading.is_some() {
        log::warn!(
            "stopping during a reload: the config it was reading is not applied (its thread is left to end with the process)"
        );
    }
    let drain = gateway.drain_deadline();
    gateway.stop_taking_requests();
    if let Some(control) = &control {
        control.stopping.cancel();
    }
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
    if let Some(control) = control {
        control.close();
    }
    Ok(())
}

/// The control socket, while it is served.
struct Control {
    placed: control::server::Placed,
    /// Cancelled when the daemon starts draining: calls get 503 from then on.
    stopping: CancellationToken,
}

impl Control {
    /// Removes the socket file, so the next `leafgate call` hears "not running" at once.
    fn close(self) {
        self.placed.remove();
    }
}

/// Serves the control socket until `stop`; without it (a path that cannot be bound) the daemon
/// runs on, saying why `leafgate call` and `leafgate status` will not reach it.
async fn serve_control(
    socket: &std::path::Path,
    gateway: &Gateway,
    options: &Options,
    stop: &CancellationToken,
) -> Option<Control> {
    match control::server::bind(socket).await {
        Ok((listener, placed)) => {
            log::info!(service = "control"; "control: leafgate call and leafgate status are served on {}", socket.display());
            let stopping = CancellationToken::new();
            tokio::spawn(control::server::serve(
                listener,
                gateway.registry(),
                options.config_path.clone(),
                stopping.clone(),
                stop.clone(),
            ));
            Some(Control { placed, stopping })
        }
        Err(e) => {
            // The default's directory exists under the packaged unit only: a run by hand
            // without it is normal, not worth a warning.
            let level = if matches!(e, control::server::BindError::NoDirectory { .. })
                && socket == std::path::Path::new(control::client::DEFAULT_SOCKET)
            {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(level, service = "control"; "control: {}; leafgate call and leafgate status cannot reach this daemon", crate::chain::chain(&e));
            None
        }
    }
}

/// What a reload's thread found.
enum Outcome {
    Ready(Box<Prepared>),
    Problems(config::Error),
    /// `[hub]` changed and its TLS settings cannot be built.
    Hub(super::Error),
    /// Still reading after [`RELOAD_TIME_LIMIT`].
    TimedOut,
    /// The thread ended without an answer (it panicked).
    Lost,
}

/// A reload reading the config on a thread of its own, so the main loop never waits on a file.
struct Reload {
    outcome: oneshot::Receiver<Outcome>,
    deadline: Instant,
}

impl Reload {
    /// SIGHUP: tells systemd and starts reading; `None` (after saying why) when no thread can be
    /// started.
    fn start(gateway: &Gateway, options: &Options) -> Option<Reload> {
        let path = options.config_path.clone();
        systemd::notify_reloading(&format!("reloading {}", path.display()));
        log::info!("SIGHUP: reloading {}", path.display());
        let hub: HubIdentity = gateway.hub_identity();
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("leafgate-reload".to_owned())
            .spawn(move || {
                let outcome = match config::load(&path) {
                    Ok(config) => match Gateway::prepare(config, &hub) {
                        Ok(prepared) => Outcome::Ready(Box::new(prepared)),
                        Err(e) => Outcome::Hub(e),
                    },
                    Err(e) => Outcome::Problems(e),
                };
                // The main loop is gone when it gave up on this reload or is stopping: nothing
                // is applied then.
                let _ = tx.send(outcome);
            });
        match spawned {
            Ok(_) => Some(Reload {
                outcome: rx,
                deadline: Instant::now() + RELOAD_TIME_LIMIT,
            }),
            Err(e) => {
                refused(
                    gateway,
                    options,
                    &format!("cannot start a thread to read the config: {e}"),
                );
                None
            }
        }
    }

    /// The reload's outcome, at the latest at its deadline. Cancel-safe: the main loop's
    /// `select!` polls it anew each round. Pending forever when no reload runs.
    async fn finished(reload: &mut Option<Reload>) -> Outcome {
        let Some(reload) = reload else {
            return std::future::pending().await;
        };
        match tokio::time::timeout_at(reload.deadline, &mut reload.outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Lost,
            Err(_) => Outcome::TimedOut,
        }
    }
}

/// Applies what a reload found, or keeps the running config and says why; then `READY=1`.
fn finish_reload(gateway: &mut Gateway, options: &Options, running: &Config, outcome: Outcome) {
    let path = &options.config_path;
    let why = match outcome {
        Outcome::Ready(prepared) => {
            if prepared.metrics() != running.metrics {
                log::warn!(service = "metrics"; "reload: [metrics] changed; it takes effect at the next restart");
            }
            if prepared.control() != running.control.as_deref() {
                log::warn!(service = "control"; "reload: [control] changed; it takes effect at the next restart");
            }
            let level = prepared.log_level();
            let plan = gateway.apply(*prepared);
            systemd::set_level(options.log_level.unwrap_or(level));
            log::info!("reloaded {}: {plan}", path.display());
            systemd::notify_ready(&status_line(gateway));
            return;
        }
        Outcome::Problems(e) => {
            for problem in &e.problems {
                log::error!("{problem}");
            }
            format!("{} config problem(s)", e.problems.len())
        }
        Outcome::Hub(e) => {
            log::error!("{}", crate::chain::chain(&e));
            "the new [hub] settings cannot be used".to_owned()
        }
        Outcome::TimedOut => {
            log::error!(
                "reading {} and the files it names took longer than {} s; is one of them on a stalled network filesystem?",
                path.display(),
                RELOAD_TIME_LIMIT.as_secs()
            );
            format!(
                "reading the config took longer than {} s",
                RELOAD_TIME_LIMIT.as_secs()
            )
        }
        Outcome::Lost => "the reload failed unexpectedly".to_owned(),
    };
    refused(gateway, options, &why);
}

/// A reload that changed nothing: says so in the journal and in `STATUS=`, with `READY=1`.
fn refused(gateway: &Gateway, options: &Options, why: &str) {
    log::error!(
        "reload refused ({why}); still running on the previous config; fix {} and reload again",
        options.config_path.display()
    );
    systemd::notify_ready(&format!(
        "{}; last reload refused: {why} (see the journal)",
        status_line(gateway)
    ));
}
