//! The demo's command line: start an emulator, print how to reach it, run until Ctrl-C.
//!
//! anyhow is used here only, as CLI glue (house style: libraries return typed errors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;

use super::{DpsConfig, Emulator, EmulatorConfig, ServiceClient};
use crate::sas::Key;

/// Options of the emulator CLI.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// IoT hub host name devices put in their username and SAS scope.
    #[arg(long, default_value = "localhost")]
    pub host_name: String,
    /// Address of the MQTT-over-TLS device listener.
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub mqtt_addr: SocketAddr,
    /// Also serve MQTT over WebSockets here (`wss://ADDR/$iothub/websocket`, same CA), as the
    /// hub does on 443.
    #[arg(long, value_name = "ADDR")]
    pub ws_addr: Option<SocketAddr>,
    /// Address of the plain-HTTP service API listener (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Also serve the service API over HTTPS here (same CA as MQTT), for the Azure service SDKs.
    #[arg(long, value_name = "ADDR")]
    pub https_addr: Option<SocketAddr>,
    /// Write the generated CA certificate (PEM) here, for devices to trust.
    #[arg(long, value_name = "PATH")]
    pub ca_out: Option<PathBuf>,
    /// Register a device: ID=BASE64KEY. Repeat for more devices.
    #[arg(long = "device", value_name = "ID=KEY", value_parser = parse_device)]
    pub devices: Vec<DeviceArg>,
    /// Service policy key (base64); a random one is generated when omitted.
    #[arg(long, value_name = "BASE64")]
    pub service_key: Option<String>,
    /// Service policy name (the token's skn).
    #[arg(long, default_value = "service")]
    pub service_policy: String,
    /// Device-to-cloud messages kept per device for the read endpoint; older ones are dropped.
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_TELEMETRY_PER_DEVICE)]
    pub telemetry_per_device: usize,
    /// Also run a Device Provisioning Service here (MQTT over TLS, same CA), assigning devices
    /// to this hub.
    #[arg(long, value_name = "ADDR")]
    pub dps_addr: Option<SocketAddr>,
    /// The DPS ID scope devices put in their username.
    #[arg(long, value_name = "SCOPE", default_value = "0ne00000000")]
    pub dps_id_scope: String,
    /// A DPS symmetric-key group enrollment: NAME=BASE64KEY (device keys are derived from it).
    /// Repeat for more groups.
    #[arg(long = "dps-group", value_name = "NAME=KEY", value_parser = parse_device)]
    pub dps_groups: Vec<DeviceArg>,
}

/// One `--device ID=KEY` (or `--dps-group NAME=KEY`).
#[derive(Debug, Clone)]
pub struct DeviceArg {
    pub id: String,
    pub key: Key,
}

/// Splits on the first `=` only: base64 keys end in `=` padding. The error never shows the key.
fn parse_device(text: &str) -> Result<DeviceArg, String> {
    let (id, key) = text
        .split_once('=')
        .ok_or_else(|| "expected ID=KEY".to_owned())?;
    if id.is_empty() {
        return Err("device id is empty".to_owned());
    }
    let key = Key::from_base64(key).map_err(|e| format!("device {id}: {e}"))?;
    Ok(DeviceArg {
        id: id.to_owned(),
        key,
    })
}

/// Starts the emulator from `args`, prints its addresses, a `[hub]` snippet for a leafgate
/// config and a `curl` line, and serves until Ctrl-C.
///
/// # Errors
/// When a key does not decode, the emulator cannot start, or Ctrl-C cannot be awaited.
pub async fn run_cli(args: EmulatorArgs) -> anyhow::Result<()> {
    let service_key = match &args.service_key {
        Some(text) => Key::from_base64(text).context("--service-key")?,
        None => super::random_key(),
    };
    // The snippet's ca_file needs a file: without --ca-out, one of this run's own, removed at
    // the end.
    let (ca_path, ca_is_ours) = match &args.ca_out {
        Some(path) => (path.clone(), false),
        None => (
            std::env::temp_dir().join(format!("leafgate-emulator-{}-ca.pem", std::process::id())),
            true,
        ),
    };
    let config = EmulatorConfig {
        host_name: args.host_name.clone(),
        mqtt_addr: args.mqtt_addr,
        ws_addr: args.ws_addr,
        http_addr: args.http_addr,
        https_addr: args.https_addr,
        ca_path: Some(ca_path.clone()),
        service_policy: (args.service_policy.clone(), service_key),
        telemetry_per_device: args.telemetry_per_device,
        dps: args.dps_addr.map(|addr| DpsConfig {
            addr,
            id_scope: args.dps_id_scope.clone(),
            ..DpsConfig::default()
        }),
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config)
        .await
        .context("could not start the IoT Hub emulator")?;
    for device in &args.devices {
        emulator.add_device(&device.id, device.key.clone());
    }
    for group in &args.dps_groups {
        emulator.dps_add_group(&group.id, group.key.clone(), emulator.hub_link());
    }
    let client = ServiceClient::new(emulator.http_addr(), &emulator.service_connection_string())
        .context("could not make a service token")?;
    print!("{}", banner(&emulator, &args, &ca_path, &client.token()));
    println!("press Ctrl-C to stop");
    let waited = stop_signal().await;
    emulator.shutdown().await;
    if ca_is_ours {
        let _ = std::fs::remove_file(&ca_path);
    }
    waited
}

/// Ctrl-C, or SIGTERM (a service manager, `timeout`, `kill`): either ends the run cleanly.
async fn stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("could not wait for SIGTERM")?;
    tokio::select! {
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("could not wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

/// What `leafgate emulator` prints: where it listens, a `[hub]` section (and a `[[device]]` per
/// registered device) to paste into a leafgate config, and a method call with a live token.
fn banner(emulator: &Emulator, args: &EmulatorArgs, ca_path: &Path, token: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("IoT Hub emulator for host {}", args.host_name));
    line(format!("  mqtt (tls):  {}", emulator.mqtt_addr()));
    if let Some(addr) = emulator.ws_addr() {
        line(format!("  mqtt (wss):  wss://{addr}/$iothub/websocket"));
    }
    line(format!("  service api: http://{}", emulator.http_addr()));
    if let Some(addr) = emulator.https_addr() {
        line(format!("  service api: https://{addr}"));
    }
    if let Some(addr) = emulator.dps_addr() {
        line(format!(
            "  dps (tls):   {addr}, id scope {}",
            args.dps_id_scope
        ));
    }
    line(format!("  ca:          {}", ca_path.display()));
    let key = |k: &Key| base64::engine::general_purpose::STANDARD.encode(k.as_bytes());
    for device in &args.devices {
        line(format!(
            "  device:      HostName={};DeviceId={};SharedAccessKey={}",
            args.host_name,
            device.id,
            key(&device.key)
        ));
    }
    line(format!(
        "  service:     {}",
        emulator.service_connection_string()
    ));
    line(format!(
        "  telemetry:   GET http://{}/emulator/devices/{{id}}/messages?since=0 (service token)",
        emulator.http_addr()
    ));
    line(String::new());
    line(
        "# For a leafgate config (a [hub] to replace yours; each device still needs its".to_owned(),
    );
    line("# bus, unit and methods):".to_owned());
    line("[hub]".to_owned());
    line(format!("hostname = {:?}", args.host_name));
    line(format!("port = {}", emulator.mqtt_addr().port()));
    if let Some(addr) = emulator.ws_addr() {
        line(format!("websocket_port = {}", addr.port()));
    }
    line(format!("ca_file = {:?}", ca_path.display().to_string()));
    for device in &args.devices {
        line(String::new());
        line("[[device]]".to_owned());
        line(format!("id = {:?}", device.id));
        line(format!("shared_access_key = {:?}", key(&device.key)));
    }
    line(String::new());
    let device = args.devices.first().map_or("DEVICE", |d| d.id.as_str());
    line(format!(
        "# Call a method (replace METHOD{}; the token is valid for an hour):",
        if args.devices.is_empty() {
            " and DEVICE"
        } else {
            ""
        }
    ));
    let _ = writeln!(
        out,
        "curl -s -X POST 'http://{}/twins/{device}/methods?api-version=2021-04-12' \\\n  \
         -H 'Authorization: {token}' -H 'Content-Type: application/json' \\\n  \
         -d '{{\"methodName\": \"METHOD\", \"payload\": {{}}, \"responseTimeoutInSeconds\": 30}}'",
        emulator.http_addr()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn parses_repeated_devices_with_padded_keys() {
        let cli = Cli::try_parse_from([
            "emu",
            "--device",
            "pump-1=AAECAw==",
            "--device",
            "pump-2=AQ==",
            "--mqtt-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(cli.args.ws_addr, None);
        let ws = Cli::try_parse_from(["emu", "--ws-addr", "127.0.0.1:8443"]).unwrap();
        assert_eq!(
            ws.args.ws_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 8443)))
        );
        assert_eq!(cli.args.dps_addr, None);
        let dps = Cli::try_parse_from([
            "emu",
            "--dps-addr",
            "127.0.0.1:8884",
            "--dps-group",
            "fleet=AQID",
        ])
        .unwrap();
        assert_eq!(dps.args.dps_groups[0].id, "fleet");
        assert_eq!(dps.args.dps_id_scope, "0ne00000000");
        assert!(Cli::try_parse_from(["emu", "--dps-group", "fleet"]).is_err());
        let ids: Vec<&str> = cli.args.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["pump-1", "pump-2"]);
        assert_eq!(cli.args.devices[0].key.as_bytes(), [0, 1, 2, 3]);
        assert_eq!(cli.args.host_name, "localhost");
        assert_eq!(
            cli.args.telemetry_per_device,
            crate::DEFAULT_TELEMETRY_PER_DEVICE
        );
        for bad in ["pump", "=AQ==", "pump=!!"] {
            assert!(
                Cli::try_parse_from(["emu", "--device", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
