//! The running demo owns the order things start and stop in: the site and the hub before the
//! config that names their addresses, the gateway last in and first out so no method in flight is
//! cut off. The calls a back-end application would make go through it for the same reason.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use leafgate::config::{self, Config};
use leafgate::gateway::Gateway;
use leafgate::hub::sas::Key;
use leafgate_emulator::{DpsConfig, Emulator, EmulatorConfig, ServiceClient};
use leafgate_sim::Site;

use crate::script::{Call, check, script};
use crate::seed::seed;
use crate::summary::{RoundTrip, Summary};
use crate::temp_dir::TempDir;
use crate::template::{CONFIG_TEMPLATE, Placeholders, render};
use crate::{Error, Options};

/// How long each device may take to come online in the emulator.
/// The emulated DPS's ID scope.
const ID_SCOPE: &str = "0ne0DEMO001";
/// Its enrollment group "demo"'s key: DEMO-ONLY and public (it decodes to "demo-only group
/// key; public key!"). meter-2's key is derived from it.
const GROUP_KEY: &str = "ZGVtby1vbmx5IGdyb3VwIGtleTsgcHVibGljIGtleSE=";

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// `responseTimeoutInSeconds` of every call (each method's own deadline is 2 s).
const RESPONSE_TIMEOUT_S: u64 = 10;
/// How long a device with telemetry may take to send its first message (its groups poll
/// every 2 s, at an offset inside the interval).
const TELEMETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight methods may take to finish when the demo stops.
const DRAIN: Duration = Duration::from_secs(5);

/// A running demo: simulated site, emulated hub, and the gateway between them. End it with
/// [`Demo::shutdown`]: dropping it stops the emulator and the site, but the gateway's tasks run
/// on until the runtime ends (a `Gateway` stops only through its `shutdown`).
pub struct Demo {
    gateway: Option<Gateway>,
    client: ServiceClient,
    emulator: Emulator,
    site: Site,
    config: Config,
    dir: TempDir,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("emulator", &self.emulator)
            .field("site", &self.site)
            .field("dir", &self.dir.0)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Starts the site, the emulator and the gateway, and waits until every device is online
    /// and subscribed to methods.
    ///
    /// # Errors
    /// When a pty cannot be opened, a port cannot be bound, the rendered config does not load,
    /// or a device does not come online within 10 s.
    pub async fn start(options: &Options) -> Result<Demo, Error> {
        let dir = TempDir::create().map_err(Error::TempDir)?;
        let site = Site::start().await.map_err(Error::Site)?;
        seed(&site);
        let ca_file = dir.0.join("ca.pem");
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let emulator = Emulator::start(EmulatorConfig {
            mqtt_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, options.hub_port)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, options.http_port)),
            ws_addr: Some(loopback),
            dps: Some(DpsConfig {
                addr: loopback,
                id_scope: ID_SCOPE.to_owned(),
                retry_after_s: 1,
                registrations_per_s: None,
            }),
            ca_path: Some(ca_file.clone()),
            ..EmulatorConfig::default()
        })
        .await
        .map_err(Error::Emulator)?;
        // The enrollment group the config's [provisioning] derives meter-2's key from.
        if let Ok(group) = Key::from_base64(GROUP_KEY) {
            emulator.dps_add_group("demo", group, emulator.hub_link());
        }
        let text = render(
            CONFIG_TEMPLATE,
            &Placeholders {
                hub_port: emulator.mqtt_addr().port(),
                ca_file: &ca_file,
                plc_address: site.modbus_tcp.addr(),
                rtu_path: site.rtu_line.path(),
                psu_path: site.psu_line.path(),
                store: &dir.0.join("telemetry.db"),
                ws_port: emulator.ws_addr().map_or(0, |a| a.port()),
                dps_port: emulator.dps_addr().map_or(0, |a| a.port()),
                id_scope: ID_SCOPE,
                group_key: GROUP_KEY,
            },
        );
        let path = dir.0.join("leafgate.toml");
        std::fs::write(&path, text).map_err(|source| Error::WriteConfig {
            path: path.clone(),
            source,
        })?;
        let config = config::load(&path).map_err(|source| Error::Config {
            path: path.clone(),
            source,
        })?;
        // Devices with connection strings are registered in the hub by hand, as an operator
        // would; a provisioned one is registered there by DPS when it asks.
        for device in config.devices.iter().filter(|d| !d.provisioned) {
            if let leafgate::hub::auth::Auth::Sas(key) = &device.auth {
                emulator.add_device(&device.id, key.clone());
            }
        }
        let client =
            ServiceClient::new(emulator.http_addr(), &emulator.service_connection_string())
                .map_err(Error::Client)?;
        let gateway = Gateway::start(&config).map_err(Error::Gateway)?;
        for device in &config.devices {
            if let Err(e) = emulator.wait_method_ready(&device.id, READY_TIMEOUT).await {
                gateway.shutdown(DRAIN).await;
                return Err(Error::NotReady(Box::new(e)));
            }
        }
        Ok(Demo {
            gateway: Some(gateway),
            client,
            emulator,
            site,
            config,
            dir,
        })
    }

    /// The emulated hub's MQTT-over-TLS listener.
    #[must_use]
    pub fn hub_addr(&self) -> SocketAddr {
        self.emulator.mqtt_addr()
    }

    /// The emulated hub's MQTT-over-WebSockets listener.
    #[must_use]
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.emulator.ws_addr()
    }

    /// The emulated DPS's MQTT listener.
    #[must_use]
    pub fn dps_addr(&self) -> Option<SocketAddr> {
        self.emulator.dps_addr()
    }

    #[must_use]
    pub fn id_scope(&self) -> &str {
        ID_SCOPE
    }

    /// The emulated hub's service API (plain HTTP).
    #[must_use]
    pub fn service_addr(&self) -> SocketAddr {
        self.emulator.http_addr()
    }

    /// The rendered config the gateway runs with (removed when the demo ends).
    #[must_use]
    pub fn config_path(&self) -> &Path {
        self.config
            .files
            .first()
            .map_or(&self.dir.0, PathBuf::as_path)
    }

    /// The config the gateway runs with, for the text that says what runs where.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The simulated hardware, to look at or steer while the demo runs.
    #[must_use]
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// A service SAS token for the emulated hub, valid for an hour.
    #[must_use]
    pub fn token(&self) -> String {
        self.client.token()
    }

    /// Calls the scripted methods one after another and checks every answer.
    pub async fn round_trips(&self) -> Summary {
        let mut round_trips = Vec::new();
        for call in script() {
            round_trips.push(self.round_trip(&call).await);
        }
        Summary {
            round_trips,
            telemetry: self.telemetry().await,
            twin: Some(self.twin().await),
            reach: self.reach(),
        }
    }

    /// How the devices that do not use plain MQTT to a configured hub got there: over
    /// WebSockets (the emulator's record of the CONNECT), through DPS (its registrations).
    fn reach(&self) -> Vec<crate::summary::Reach> {
        let mut reach = Vec::new();
        for device in &self.config.devices {
            let id = device.id.as_str();
            if device.transport == Some(leafgate::hub::settings::Transport::Websocket) {
                let transport = self
                    .emulator
                    .device_stats(id)
                    .last_connect
                    .map(|c| c.transport.as_str());
                reach.push(crate::summary::Reach {
                    device: id.to_owned(),
                    seen: match transport {
                        Some("websocket") => format!(
                            "connected over MQTT over WebSockets (wss://127.0.0.1:{}/$iothub/websocket)",
                            self.emulator.ws_addr().map_or(0, |a| a.port())
                        ),
                        Some(t) => format!("connected over {t}, not WebSockets"),
                        None => "never connected".to_owned(),
                    },
                    ok: transport == Some("websocket"),
                });
            }
            if device.provisioned {
                let assigned = self.emulator.dps_requests().iter().any(|r| {
                    r.registration_id == id
                        && r.kind == leafgate_emulator::DpsRequestKind::Poll
                        && r.status == 200
                });
                reach.push(crate::summary::Reach {
                    device: id.to_owned(),
                    seen: if assigned {
                        format!("registered with DPS (enrollment group \"demo\", its key derived from the group key) → assigned to hub {}", self.emulator.host_name())
                    } else {
                        "not assigned by DPS".to_owned()
                    },
                    ok: assigned,
                });
            }
        }
        reach
    }

    /// The PLC's speed as `getStatus` reads it.
    async fn speed(&self, device: &str) -> Option<f64> {
        let (http, body) = self
            .client
            .invoke(device, "getStatus", json!({}), RESPONSE_TIMEOUT_S)
            .await
            .ok()?;
        (http == 200).then_some(())?;
        body["payload"]["speed"].as_f64()
    }

    /// A back end's view of the twin and commands: set the desired speed and wait for
    /// leafgate's acknowledgement, send one cloud-to-device command, read the health view.
    async fn twin(&self) -> crate::summary::Twin {
        const DEVICE: &str = "plc-1";
        let mut twin = crate::summary::Twin {
            device: DEVICE.to_owned(),
            setpoint: 900.0,
            command: json!({"speed": 1100}),
            ..crate::summary::Twin::default()
        };
        match self
            .emulator
            .update_desired(DEVICE, json!({"speedSetpoint": twin.setpoint}))
        {
            Ok(version) => {
                twin.version = version;
                let acked = self
                    .emulator
                    .wait_reported(
                        DEVICE,
                        |r| r["speedSetpoint"]["av"] == version,
                        TELEMETRY_TIMEOUT,
                    )
                    .await;
                twin.ack = acked.ok().map(|r| r["speedSetpoint"].clone());
            }
            Err(e) => twin
                .problems
                .push(format!("cannot set the desired speed: {e}")),
        }
        if twin.ack.as_ref().is_none_or(|a| a["ac"] != 200) {
            twin.problems
                .push("the setpoint was not acknowledged with ac 200".to_owned());
        }
        twin.speed_after_setpoint = self.speed(DEVICE).await;
        if twin.speed_after_setpoint != Some(twin.setpoint) {
            twin.problems
                .push("the PLC does not hold the setpoint".to_owned());
        }

        let sent = self.emulator.send_c2d(
            DEVICE,
            leafgate_emulator::C2dSend {
                body: twin.command.to_string().into_bytes(),
                properties: vec![("method".to_owned(), "setSpeed".to_owned())],
                message_id: Some("demo-command-1".to_owned()),
                ..leafgate_emulator::C2dSend::default()
            },
        );
        match sent {
            Ok(mid) => {
                let done = self
                    .emulator
                    .wait_c2d(
                        DEVICE,
                        |records| {
                            records.iter().any(|r| {
                                r.message_id == mid
                                    && r.state == leafgate_emulator::C2dState::Completed
                            })
                        },
                        TELEMETRY_TIMEOUT,
                    )
                    .await;
                twin.command_completed = done.is_ok();
            }
            Err(e) => twin.problems.push(format!("cannot send the command: {e}")),
        }
        twin.speed_after_command = self.speed(DEVICE).await;
        if !twin.command_completed || twin.speed_after_command != Some(1100.0) {
            twin.problems
                .push("the cloud-to-device command did not run".to_owned());
        }
        twin.health = self
            .emulator
            .wait_reported(
                DEVICE,
                |r| r["leafgate"]["methods"]["200"].is_u64(),
                TELEMETRY_TIMEOUT,
            )
            .await
            .ok()
            .map(|r| r["leafgate"].clone());
        if twin.health.is_none() {
            twin.problems
                .push("leafgate's health view was not reported".to_owned());
        }
        twin
    }

    /// Waits for the first device-to-cloud message of every device that has telemetry groups.
    async fn telemetry(&self) -> Vec<crate::summary::Telemetry> {
        let mut seen = Vec::new();
        for device in self
            .config
            .devices
            .iter()
            .filter(|d| !d.telemetry.is_empty())
        {
            let first = self
                .emulator
                .wait_telemetry(&device.id, 1, TELEMETRY_TIMEOUT)
                .await
                .ok()
                .and_then(|log| log.into_iter().next());
            seen.push(crate::summary::Telemetry {
                device: device.id.clone(),
                group: first
                    .as_ref()
                    .and_then(|m| m.property("group").map(str::to_owned)),
                body: first.and_then(|m| serde_json::from_slice(&m.body).ok()),
            });
        }
        seen
    }

    /// Device-to-cloud messages as the hub receives them, for printing while the demo runs.
    #[must_use]
    pub fn telemetry_events(&self) -> tokio::sync::broadcast::Receiver<leafgate_emulator::Event> {
        self.emulator.events()
    }

    async fn round_trip(&self, call: &Call) -> RoundTrip {
        let started = Instant::now();
        let result = self
            .client
            .invoke(
                call.device,
                call.method,
                call.payload.clone(),
                RESPONSE_TIMEOUT_S,
            )
            .await;
        let latency = started.elapsed();
        let (status, response, problem) = match result {
            Ok((200, body)) => {
                let status = body["status"].as_u64().and_then(|s| u16::try_from(s).ok());
                let payload = body["payload"].clone();
                match status {
                    Some(status) => {
                        let problem = check(call, status, &payload);
                        (Some(status), payload, problem)
                    }
                    None => (None, body, Some("no status in the answer".to_owned())),
                }
            }
            Ok((http, body)) => {
                let problem = format!("service API answered HTTP {http}");
                (None, body, Some(problem))
            }
            Err(e) => {
                let text = error_chain(&e);
                (None, Value::String(text.clone()), Some(text))
            }
        };
        RoundTrip {
            device: call.device.to_owned(),
            method: call.method.to_owned(),
            request: call.payload.clone(),
            status,
            response,
            latency,
            note: call.note.map(str::to_owned),
            problem,
        }
    }

    /// Ready-to-paste `curl` lines calling the demo's methods through the service API.
    #[must_use]
    pub fn curl_lines(&self) -> Vec<String> {
        let token = self.token();
        [
            ("plc-1", "getStatus", json!({})),
            ("plc-1", "setSpeed", json!({"speed": 900})),
            ("meter-1", "getReadings", json!({})),
            ("meter-2", "getReadings", json!({})),
            ("psu-1", "setVoltage", json!({"volts": 12.0})),
            ("psu-1", "measure", json!({})),
        ]
        .into_iter()
        .map(|(device, method, payload)| {
            let body = json!({
                "methodName": method,
                "payload": payload,
                "responseTimeoutInSeconds": RESPONSE_TIMEOUT_S,
            });
            format!(
                "curl -s -X POST 'http://{}/twins/{device}/methods?api-version=2021-04-12' \
                 -H 'Authorization: {token}' -H 'Content-Type: application/json' -d '{body}'",
                self.service_addr()
            )
        })
        .collect()
    }

    /// Stops the gateway (methods in flight finish), then the emulator and the simulated site,
    /// and removes the rendered config.
    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(DRAIN).await;
        }
        let Demo {
            emulator,
            site,
            dir,
            ..
        } = self;
        emulator.shutdown().await;
        drop(site);
        drop(dir);
    }
}

/// An error and its causes on one line (`what: cause: cause`), for a failed call in the table.
fn error_chain(error: &dyn std::error::Error) -> String {
    leafgate::chain::chain(error)
}
