//! Zero-touch provisioning: the real binary registers its devices with the emulator's Device
//! Provisioning Service (group-derived and individual keys), keeps the assignment across a
//! restart, registers again when its hub refuses it and follows DPS to another hub, and waits
//! out DPS's 429s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::{
    Attestation, DpsConfig, DpsRequest, DpsRequestKind, Emulator, EmulatorConfig, ServiceClient,
};
use serde_json::json;

use crate::firewall::{ProxyRules, Site, TinyProxy, run};

/// The enrollment group's key (32 bytes, base64).
const GROUP_KEY: &str = "Z3JvdXAta2V5LWZvci1sZWFmZ2F0ZS10ZXN0cy0wMDE=";
const WAIT: Duration = Duration::from_secs(30);

fn group_key() -> Key {
    Key::from_base64(GROUP_KEY).unwrap()
}

fn dps(registrations_per_s: Option<u32>) -> EmulatorConfig {
    EmulatorConfig {
        dps: Some(DpsConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            id_scope: "0ne00FACADE".to_owned(),
            retry_after_s: 1,
            registrations_per_s,
        }),
        ..EmulatorConfig::default()
    }
}

/// A DPS-and-hub emulator, a PLC, and the config directory (a firewall [`Site`]).
struct Fleet {
    site: Site,
}

impl std::ops::Deref for Fleet {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.site
    }
}

impl Fleet {
    async fn start(emulator: EmulatorConfig) -> Fleet {
        Fleet {
            site: Site::start(emulator, &[]).await,
        }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("provisioning")
    }

    /// `[hub]` without a host name, `[provisioning]` at the emulator's DPS (`extra` added to
    /// it), and `devices` (id, own keys), each with a `get` method.
    fn config(&self, extra: &str, devices: &[(&str, &str)]) -> PathBuf {
        let mut text = format!(
            "[hub]\nport = {}\nca_file = \"{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nmax_connects_per_s = 1000\n\
             [provisioning]\nid_scope = \"{}\"\nglobal_endpoint = \"localhost\"\nport = {}\ngroup_key = \"{GROUP_KEY}\"\ncache = \"{}\"\nmax_registrations_per_s = 50\ntimeout_s = 20\n{extra}\n\
             [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n",
            self.emu.mqtt_addr().port(),
            self.dir.path().join("ca.pem").display(),
            self.emu.dps_id_scope().unwrap(),
            self.emu.dps_addr().unwrap().port(),
            self.cache().display(),
            self.plc_addr,
        );
        for (id, keys) in devices {
            text.push_str(&format!(
                "[[device]]\nid = \"{id}\"\nbus = \"plc\"\nunit = 1\n{keys}\n[[device.method]]\nname = \"get\"\n[[device.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{{ name = \"v\" }}]\n"
            ));
        }
        let path = self.dir.path().join("leafgate.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn get(&self, device: &str) -> u64 {
        let (status, payload) = self.site.get(device).await;
        assert_eq!(payload, json!({"v": 42}));
        status
    }
}

fn requests_of<'a>(
    requests: &'a [DpsRequest],
    id: &'a str,
    kind: DpsRequestKind,
) -> impl Iterator<Item = &'a DpsRequest> + 'a {
    requests
        .iter()
        .filter(move |r| r.registration_id == id && r.kind == kind)
}

/// A device listed with only its id (and bus, unit, methods) registers through the group,
/// with the key leafgate derives, lands on the hub DPS names and serves a method; a device with
/// its own key registers through its individual enrollment. After a restart both connect from
/// the cache, without asking DPS again.
#[tokio::test]
async fn devices_register_with_dps_and_a_restart_uses_the_cache() {
    let fleet = Fleet::start(dps(None)).await;
    let individual = Key::from_base64("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap();
    fleet
        .emu
        .dps_add_group("plant", group_key(), fleet.emu.hub_link());
    fleet.emu.dps_add_individual(
        "meter-9",
        Attestation::SymmetricKey(individual),
        fleet.emu.hub_link(),
    );
    let config = fleet.config(
        "",
        &[
            ("pump-1", ""),
            (
                "meter-9",
                "shared_access_key = \"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\"",
            ),
        ],
    );
    let mut daemon = run(&config);
    for id in ["pump-1", "meter-9"] {
        fleet
            .emu
            .wait_method_ready(id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", daemon.log()));
        assert_eq!(fleet.get(id).await, 200);
        let line = daemon
            .wait_line(&format!("device {id}: registered with DPS in"), WAIT)
            .await
            .unwrap();
        assert!(line.contains("assigned to hub localhost"), "{line}");
        assert!(fleet.cache().join(format!("{id}.json")).is_file());
    }
    // The hub accepted pump-1 with the key derived from the group key, as DPS derived it.
    let requests = fleet.emu.dps_requests();
    for id in ["pump-1", "meter-9"] {
        assert_eq!(
            requests_of(&requests, id, DpsRequestKind::Register).count(),
            1
        );
        assert!(requests_of(&requests, id, DpsRequestKind::Poll).any(|r| r.status == 200));
    }
    daemon.stop(Duration::from_secs(10)).unwrap();
    let before = fleet.emu.dps_requests().len();
    let accepted = fleet.emu.device_stats("pump-1").connects_accepted;

    let daemon = run(&config);
    fleet
        .emu
        .wait_for("pump-1", WAIT, |s| {
            s.connects_accepted > accepted && s.methods_subscribed
        })
        .await
        .unwrap();
    fleet.emu.wait_method_ready("meter-9", WAIT).await.unwrap();
    assert_eq!(fleet.get("pump-1").await, 200);
    daemon
        .wait_line(
            "device pump-1: assigned to hub localhost (cached from DPS)",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        fleet.emu.dps_requests().len(),
        before,
        "{:?}",
        fleet.emu.dps_requests()
    );
}

/// The operator moves the device to another hub: DPS now assigns it there, and the old hub no
/// longer knows it. leafgate's cached hub refuses it, so it registers again, follows DPS to the
/// new hub and serves methods there.
#[tokio::test]
async fn a_device_refused_by_its_hub_registers_again_and_follows_dps() {
    let fleet = Fleet::start(dps(None)).await;
    // The second hub: another emulator on another loopback address, same port (leafgate's
    // [hub] port is the port of every hub), host name = its address.
    let port = fleet.emu.mqtt_addr().port();
    let second = Emulator::start(EmulatorConfig {
        host_name: "127.0.0.2".to_owned(),
        mqtt_addr: SocketAddr::from(([127, 0, 0, 2], port)),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    std::fs::write(
        fleet.dir.path().join("ca.pem"),
        format!("{}{}", fleet.emu.ca_pem(), second.ca_pem()),
    )
    .unwrap();
    fleet
        .emu
        .dps_add_group("plant", group_key(), fleet.emu.hub_link());
    let config = fleet.config("", &[("pump-1", "")]);
    let daemon = run(&config);
    fleet.emu.wait_method_ready("pump-1", WAIT).await.unwrap();

    assert!(fleet.emu.dps_set_hub("plant", second.hub_link()));
    assert!(fleet.emu.remove_device("pump-1"));
    second
        .wait_method_ready("pump-1", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let client =
        ServiceClient::new(second.http_addr(), &second.service_connection_string()).unwrap();
    let (http, body) = client.invoke("pump-1", "get", json!({}), 10).await.unwrap();
    assert_eq!((http, body["status"].as_u64()), (200, Some(200)), "{body}");
    let log = daemon.log();
    assert!(
        log.contains("device pump-1: hub localhost refused it; it registers with DPS again"),
        "{log}"
    );
    assert!(log.contains("assigned to hub 127.0.0.2"), "{log}");
    let cached = std::fs::read_to_string(fleet.cache().join("pump-1.json")).unwrap();
    assert!(cached.contains("127.0.0.2"), "{cached}");
    let registers = fleet.emu.dps_requests();
    assert_eq!(
        requests_of(&registers, "pump-1", DpsRequestKind::Register).count(),
        2
    );
}

/// DPS answers 429 beyond its rate: leafgate waits the `retry-after` it was given and asks
/// again, and every device is assigned in the end.
#[tokio::test]
async fn dps_throttling_is_waited_out() {
    let fleet = Fleet::start(dps(Some(2))).await;
    fleet
        .emu
        .dps_add_group("plant", group_key(), fleet.emu.hub_link());
    let ids: Vec<String> = (1..=6).map(|n| format!("pump-{n}")).collect();
    let devices: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "")).collect();
    let config = fleet.config("", &devices);
    let daemon = run(&config);
    for id in &ids {
        fleet
            .emu
            .wait_method_ready(id, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", daemon.log()));
    }
    let requests = fleet.emu.dps_requests();
    let throttled: Vec<&DpsRequest> = requests.iter().filter(|r| r.status == 429).collect();
    assert!(!throttled.is_empty(), "no 429: {requests:?}");
    // Each throttled device asked again no sooner than the retry-after (1 s).
    for t in &throttled {
        let next = requests
            .iter()
            .find(|r| {
                r.registration_id == t.registration_id
                    && r.at > t.at
                    && r.kind != DpsRequestKind::Connect
            })
            .unwrap_or_else(|| panic!("{} never asked again: {requests:?}", t.registration_id));
        assert!(
            next.at - t.at >= Duration::from_millis(950),
            "{} asked again after {:?}",
            t.registration_id,
            next.at - t.at
        );
    }
    assert!(daemon.log().contains("DPS is throttling (429)"));
}

/// A wrong group key: DPS refuses the registration, and the journal says what to check.
#[tokio::test]
async fn a_registration_dps_refuses_is_named() {
    let fleet = Fleet::start(dps(None)).await;
    let other = Key::from_base64("b3RoZXItZ3JvdXAta2V5LWZvci1sZWFmZ2F0ZS0wMDE=").unwrap();
    fleet
        .emu
        .dps_add_group("plant", other, fleet.emu.hub_link());
    let config = fleet.config("", &[("pump-1", "")]);
    let daemon = run(&config);
    let line = daemon
        .wait_line("device pump-1: DPS registration failed", WAIT)
        .await
        .unwrap();
    assert!(line.contains("DPS refused the connection"), "{line}");
    assert!(line.contains("check the id scope"), "{line}");
    // Refused at DPS's door: every request it saw from pump-1 is a CONNECT answered 5.
    let requests: Vec<_> = fleet
        .emu
        .dps_requests()
        .into_iter()
        .filter(|r| r.registration_id == "pump-1")
        .collect();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.kind == DpsRequestKind::Connect && r.status == 5),
        "{requests:?}"
    );
}

/// An X.509 individual enrollment: the device's certificate opens DPS's TLS handshake (no
/// password) and then the hub's, where DPS registered its thumbprint; both through the proxy.
#[tokio::test]
async fn a_device_with_a_certificate_registers_through_its_x509_enrollment() {
    use leafgate_emulator::tls::{self, KeyKind};
    use std::os::unix::fs::PermissionsExt as _;
    let fleet = Fleet::start(dps(None)).await;
    let now = std::time::SystemTime::now();
    let (cert, key) = tls::self_signed(
        "cam-3",
        KeyKind::EcdsaP256,
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(365 * 86_400),
    )
    .unwrap();
    fleet.emu.dps_add_individual(
        "cam-3",
        Attestation::X509Thumbprint(tls::thumbprint_sha256(&cert).unwrap()),
        fleet.emu.hub_link(),
    );
    let cert_path = fleet.dir.path().join("cam-3.pem");
    let key_path = fleet.dir.path().join("cam-3.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = fleet.config(
        "",
        &[(
            "cam-3",
            &format!(
                "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
                cert_path.display(),
                key_path.display()
            ),
        )],
    );
    // Through an HTTP proxy, DPS and hub alike.
    let mut proxy = TinyProxy::start(ProxyRules::default()).await;
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[hub]\n",
        &format!("[hub]\n{}\n", proxy.hub_key()),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let daemon = run(&config);
    fleet
        .emu
        .wait_method_ready("cam-3", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(fleet.get("cam-3").await, 200);
    let record = fleet.emu.device_stats("cam-3").last_connect.unwrap();
    assert!(
        record.client_cert && record.password.is_none(),
        "{record:?}"
    );
    let requests = fleet.emu.dps_requests();
    assert!(requests_of(&requests, "cam-3", DpsRequestKind::Poll).any(|r| r.status == 200));
    proxy
        .wait_log(&format!(
            "CONNECT localhost:{}",
            fleet.emu.dps_addr().unwrap().port()
        ))
        .await;
    proxy
        .wait_log(&format!(
            "CONNECT localhost:{}",
            fleet.emu.mqtt_addr().port()
        ))
        .await;
}
