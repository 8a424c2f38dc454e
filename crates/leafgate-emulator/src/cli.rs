//! The demo's command line: start an emulator, print how to reach it, run until Ctrl-C.
//!
//! anyhow is used here only, as CLI glue (house style: libraries return typed errors).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;

use super::{DpsConfig, Emulator, EmulatorConfig};
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

/// Starts the emulator from `args`, prints its addresses and connection string, and serves
/// until Ctrl-C.
///
/// # Errors
/// When a key does not decode, the emulator cannot start, or Ctrl-C cannot be awaited.
pub async fn run_cli(args: EmulatorArgs) -> anyhow::Result<()> {
    let service_key = match &args.service_key {
        Some(text) => Key::from_base64(text).context("--service-key")?,
        None => super::random_key(),
    };
    let config = EmulatorConfig {
        host_name: args.host_name.clone(),
        mqtt_addr: args.mqtt_addr,
        ws_addr: args.ws_addr,
        http_addr: args.http_addr,
        https_addr: args.https_addr,
        ca_path: args.ca_out.clone(),
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
    println!("IoT Hub emulator for host {}", args.host_name);
    println!("  mqtt (tls):  {}", emulator.mqtt_addr());
    if let Some(addr) = emulator.ws_addr() {
        println!("  mqtt (wss):  wss://{addr}/$iothub/websocket");
    }
    println!("  service api: http://{}", emulator.http_addr());
    if let Some(addr) = emulator.https_addr() {
        println!("  service api: https://{addr}");
    }
    if let Some(addr) = emulator.dps_addr() {
        println!("  dps (tls):   {addr}, id scope {}", args.dps_id_scope);
    }
    match &args.ca_out {
        Some(path) => println!("  ca:          {}", path.display()),
        None => println!("  ca (pem):\n{}", emulator.ca_pem()),
    }
    for device in &args.devices {
        println!(
            "  device:      HostName={};DeviceId={};SharedAccessKey={}",
            args.host_name,
            device.id,
            base64::engine::general_purpose::STANDARD.encode(device.key.as_bytes())
        );
    }
    println!("  service:     {}", emulator.service_connection_string());
    println!(
        "  telemetry:   GET http://{}/emulator/devices/{{id}}/messages?since=0 (service token)",
        emulator.http_addr()
    );
    println!("press Ctrl-C to stop");
    tokio::signal::ctrl_c()
        .await
        .context("could not wait for Ctrl-C")?;
    emulator.shutdown().await;
    Ok(())
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
