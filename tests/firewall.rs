//! Reaching the hub from a locked-down site: the real binary through a real HTTP proxy
//! (tinyproxy, installed by `.ci/run`), over MQTT on TLS and over WebSockets, and through an IoT
//! Edge parent. Each failure mode is read back as the log line an operator would see.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use leafgate::hub::sas::Key;
use leafgate_emulator::tls::{self, KeyKind};
use leafgate_emulator::{Emulator, EmulatorConfig, ServiceClient, X509Auth};
use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_testkit::daemon::Log;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::logscan::{Scanned, run_command};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// Shaped like an unpadded key (43+ base64 characters of mixed case), so the suite's secret scan
/// would catch it in any log line. tinyproxy takes only letters and digits in a password.
const PROXY_PASSWORD: &str = "pRoXyPaSsWoRd0123456789abcdefghijklmnopqrsT";
const WAIT: Duration = Duration::from_secs(20);

/// How a test's tinyproxy is set up.
#[derive(Default, Clone)]
pub struct ProxyRules {
    /// `BasicAuth user password`.
    pub auth: Option<(String, String)>,
    /// `ConnectPort` lines: CONNECT to other ports is refused with 403. None: any port.
    pub connect_ports: Vec<u16>,
}

/// A tinyproxy in the foreground on a loopback port, its log (stdout) collected.
pub struct TinyProxy {
    pub port: u16,
    dir: tempfile::TempDir,
    rules: ProxyRules,
    child: Option<Child>,
    log: watch::Receiver<String>,
}

impl TinyProxy {
    pub async fn start(rules: ProxyRules) -> TinyProxy {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let dir = tempfile::tempdir().unwrap();
        let (_, log) = watch::channel(String::new());
        let mut proxy = TinyProxy {
            port,
            dir,
            rules,
            child: None,
            log,
        };
        proxy.spawn().await;
        proxy
    }

    fn conf(&self) -> PathBuf {
        let mut text = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 600\nMaxClients 200\nLogLevel Info\nAllow 127.0.0.1\n",
            self.port
        );
        if let Some((user, password)) = &self.rules.auth {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        for port in &self.rules.connect_ports {
            text.push_str(&format!("ConnectPort {port}\n"));
        }
        let path = self.dir.path().join("tinyproxy.conf");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts tinyproxy and waits for its "Accepting connections" line.
    async fn spawn(&mut self) {
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(self.conf())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tinyproxy (Debian's tinyproxy-bin; .ci/run installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = watch::channel(String::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|log| {
                    log.push_str(&line);
                    log.push('\n');
                });
            }
        });
        self.child = Some(child);
        self.log = rx;
        self.wait_log("Accepting connections").await;
    }

    /// The `[hub]` key that sends leafgate through this proxy, without a user.
    pub fn hub_key(&self) -> String {
        format!("proxy = \"http://127.0.0.1:{}\"", self.port)
    }

    /// Waits until the proxy's log holds `text`.
    pub async fn wait_log(&mut self, text: &str) -> String {
        let found = tokio::time::timeout(WAIT, self.log.wait_for(|log| log.contains(text)))
            .await
            .map(|r| r.map(|log| log.clone()));
        match found {
            Ok(Ok(log)) => log,
            _ => panic!("tinyproxy logged no {text:?}:\n{}", *self.log.borrow()),
        }
    }

    /// Waits until the proxy's log holds `text` on `n` lines.
    pub async fn wait_count(&mut self, text: &str, n: usize) {
        let count = |log: &str| log.lines().filter(|l| l.contains(text)).count();
        let found = tokio::time::timeout(WAIT, self.log.wait_for(|log| count(log) >= n))
            .await
            .map(|r| r.is_ok());
        if found != Ok(true) {
            panic!(
                "tinyproxy logged {text:?} fewer than {n} times:\n{}",
                *self.log.borrow()
            );
        }
    }

    /// Kills the proxy (the tunnels through it die with it).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// The emulator, a PLC and the config directory of one test.
pub struct Site {
    pub emu: Emulator,
    pub client: ServiceClient,
    pub dir: tempfile::TempDir,
    _plc: TcpServer,
    pub plc_addr: std::net::SocketAddr,
}

impl Site {
    pub async fn start(emulator: EmulatorConfig, devices: &[&str]) -> Site {
        let emu = Emulator::start(emulator).await.unwrap();
        for id in devices {
            emu.add_device(id, Key::from_base64(KEY).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
        let regs = Registers::with_units([1]);
        regs.set_holding(1, 0, &[42]);
        let plc = TcpServer::start(regs).await.unwrap();
        let client = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
        Site {
            emu,
            client,
            dir,
            plc_addr: plc.addr(),
            _plc: plc,
        }
    }

    /// `leafgate.toml`: `[hub]` pointing at the emulator (`hub` adds keys to it), the PLC's bus,
    /// and `devices` (each with a `get` method), each device given `extra` keys.
    pub fn config(&self, hub: &str, devices: &[(&str, &str)]) -> PathBuf {
        let mut text = format!(
            "[hub]\nhostname = \"{}\"\nport = {}\nca_file = \"{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nmax_connects_per_s = 1000\n{hub}\n[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n",
            self.emu.host_name(),
            self.emu.mqtt_addr().port(),
            self.dir.path().join("ca.pem").display(),
            self.plc_addr,
        );
        for (id, extra) in devices {
            text.push_str(&format!(
                "[[device]]\nid = \"{id}\"\nbus = \"plc\"\nunit = 1\n{extra}\n[[device.method]]\nname = \"get\"\n[[device.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{{ name = \"v\" }}]\n"
            ));
        }
        let path = self.dir.path().join("leafgate.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Calls `get` on `device` and returns the method's status and payload.
    pub async fn get(&self, device: &str) -> (u64, Value) {
        let (http, body) = self
            .client
            .invoke(device, "get", json!({}), 10)
            .await
            .unwrap();
        assert_eq!(http, 200, "{body}");
        (body["status"].as_u64().unwrap(), body["payload"].clone())
    }
}

pub fn sas(extra: &str) -> String {
    format!("shared_access_key = \"{KEY}\"\n{extra}")
}

pub fn run(config: &Path) -> Scanned {
    Scanned::spawn(run_command(config), Log::Capture)
}

/// Every hub connection goes through the proxy: the device connects and serves a method, the
/// proxy saw the CONNECT to the hub's port, and the journal says which way it went.
#[tokio::test]
async fn a_method_reaches_its_device_through_an_http_proxy() {
    let site = Site::start(EmulatorConfig::default(), &["pump-1"]).await;
    let mut proxy = TinyProxy::start(ProxyRules::default()).await;
    let config = site.config(&proxy.hub_key(), &[("pump-1", &sas(""))]);
    let daemon = run(&config);
    site.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    assert_eq!(site.get("pump-1").await, (200, json!({"v": 42})));
    proxy
        .wait_log(&format!(
            "CONNECT localhost:{}",
            site.emu.mqtt_addr().port()
        ))
        .await;
    let line = daemon
        .wait_line("device pump-1: connected to", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains(&format!(
            "localhost:{} through proxy 127.0.0.1:{}",
            site.emu.mqtt_addr().port(),
            proxy.port
        )),
        "{line}"
    );
}

/// A proxy that wants a user: without one, and with a wrong password, the journal says what to
/// fix; with the right password (from its file) the device connects. The password is never
/// logged (the suite's secret scan would also catch it: it is shaped like a key).
#[tokio::test]
async fn a_proxy_that_needs_authentication_is_answered_from_the_password_file() {
    let site = Site::start(EmulatorConfig::default(), &["pump-1"]).await;
    let proxy = TinyProxy::start(ProxyRules {
        auth: Some(("gw".to_owned(), PROXY_PASSWORD.to_owned())),
        ..ProxyRules::default()
    })
    .await;

    let anonymous = site.config(&proxy.hub_key(), &[("pump-1", &sas(""))]);
    let mut daemon = run(&anonymous);
    let line = daemon
        .wait_line("demands authentication (407)", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains("name the user in hub.proxy (http://user@host:port)"),
        "{line}"
    );
    daemon.stop(Duration::from_secs(5)).unwrap();

    let wrong = site.write("wrong.pass", "not-the-password\n");
    let wrong_config = site.config(
        &format!(
            "proxy = \"http://gw@127.0.0.1:{}\"\nproxy_password_file = \"{}\"",
            proxy.port,
            wrong.display()
        ),
        &[("pump-1", &sas(""))],
    );
    let mut daemon = run(&wrong_config);
    daemon
        .wait_line(
            "it did not accept the user and password (hub.proxy, hub.proxy_password_file)",
            WAIT,
        )
        .await
        .unwrap();
    daemon.stop(Duration::from_secs(5)).unwrap();

    let right = site.write("proxy.pass", &format!("{PROXY_PASSWORD}\n"));
    let config = site.config(
        &format!(
            "proxy = \"http://gw@127.0.0.1:{}\"\nproxy_password_file = \"{}\"",
            proxy.port,
            right.display()
        ),
        &[("pump-1", &sas(""))],
    );
    let daemon = run(&config);
    site.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    assert_eq!(site.get("pump-1").await.0, 200);
    assert!(!daemon.log().contains(PROXY_PASSWORD));
}

/// A proxy whose policy forbids CONNECT to the hub's port: named with the fix, and tried again
/// with backoff rather than in a tight loop.
#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_is_named_and_retried() {
    let site = Site::start(EmulatorConfig::default(), &["pump-1"]).await;
    let mut proxy = TinyProxy::start(ProxyRules {
        connect_ports: vec![443],
        ..ProxyRules::default()
    })
    .await;
    let config = site.config(&proxy.hub_key(), &[("pump-1", &sas(""))]);
    let daemon = run(&config);
    let port = site.emu.mqtt_addr().port();
    let refused = format!("refused CONNECT localhost:{port} (403 Forbidden)");
    let line = daemon.wait_line(&refused, WAIT).await.unwrap();
    assert!(
        line.contains("the proxy must allow CONNECT to that host and port; retrying in"),
        "{line}"
    );
    // Retried: the proxy sees more CONNECTs. The third comes after the second attempt's line
    // is written, so both lines are in the log now.
    proxy
        .wait_count(&format!("CONNECT localhost:{port}"), 3)
        .await;
    assert_eq!(site.emu.device_stats("pump-1").connects_accepted, 0);
    // With backoff, not in a tight loop: by the daemon's own clock, the second attempt failed
    // no sooner than the delay the first one announced.
    let log = daemon.log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains(&refused)).collect();
    assert!(failures.len() >= 2, "{log}");
    let announced: u64 = failures[0]
        .rsplit_once("retrying in ")
        .and_then(|(_, rest)| rest.split_once(" ms"))
        .map(|(ms, _)| ms)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {:?}", failures[0]));
    let waited = ms_of_day(failures[1]) - ms_of_day(failures[0]);
    assert!(
        waited >= announced,
        "retried after {waited} ms though {announced} ms were announced:\n{}\n{}",
        failures[0],
        failures[1]
    );
}

/// Milliseconds since midnight of a log line's `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamp.
fn ms_of_day(line: &str) -> u64 {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|t| t.split_once('T'))
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    let (hms, ms) = time.split_once('.').unwrap();
    let parts: Vec<u64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    ((parts[0] * 60 + parts[1]) * 60 + parts[2]) * 1000 + ms.parse::<u64>().unwrap()
}

/// The proxy dies under a connected device: the journal names the proxy, the device keeps
/// trying with backoff, and it is back (and serving methods) once the proxy is.
#[tokio::test]
async fn a_proxy_that_goes_away_mid_session_is_reconnected_through_when_back() {
    let site = Site::start(EmulatorConfig::default(), &["pump-1"]).await;
    let mut proxy = TinyProxy::start(ProxyRules::default()).await;
    let config = site.config(&proxy.hub_key(), &[("pump-1", &sas(""))]);
    let daemon = run(&config);
    site.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    proxy.kill().await;
    site.emu
        .wait_for("pump-1", WAIT, |s| !s.online)
        .await
        .unwrap();
    let line = daemon
        .wait_line(
            &format!("cannot reach proxy 127.0.0.1:{}", proxy.port),
            WAIT,
        )
        .await
        .unwrap();
    assert!(line.contains("retrying in"), "{line}");
    proxy.restart().await;
    site.emu
        .wait_for("pump-1", WAIT, |s| {
            s.connects_accepted >= 2 && s.methods_subscribed
        })
        .await
        .unwrap();
    assert_eq!(site.get("pump-1").await.0, 200);
}

/// A device's credentials in a matrix test.
#[derive(Clone, Copy, Debug)]
enum Cred {
    Sas,
    /// Self-signed, registered by thumbprint (ECDSA P-256).
    Thumbprint,
    /// Signed by a CA verified in the hub, CN = the device id (RSA 2048).
    CaSigned,
}

/// Registers `id` in the emulator with `cred` and returns the device's credential keys.
fn register(site: &Site, ca: &tls::TestCa, id: &str, cred: Cred) -> String {
    let (from, to) = validity(-1, 365);
    let (cert, key) = match cred {
        Cred::Sas => {
            site.emu.add_device(id, Key::from_base64(KEY).unwrap());
            return sas("");
        }
        Cred::Thumbprint => {
            let (cert, key) = tls::self_signed(id, KeyKind::EcdsaP256, from, to).unwrap();
            let thumbprint = tls::thumbprint_sha256(&cert).unwrap();
            site.emu.add_device_x509(
                id,
                X509Auth::Thumbprint {
                    primary: thumbprint,
                    secondary: None,
                },
            );
            (cert, key)
        }
        Cred::CaSigned => {
            let key = tls::rsa_key_pem(2048).unwrap();
            let cert = ca.issue_with_key(id, &key, from, to).unwrap();
            site.emu.add_device_x509(id, X509Auth::CaSigned);
            (cert, key)
        }
    };
    certificate_keys(site, id, &cert, &key)
}

/// Writes a device's certificate and key (mode 0600) and returns its config keys.
fn certificate_keys(site: &Site, id: &str, cert: &str, key: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let cert_path = site.write(&format!("{id}.pem"), cert);
    let key_path = site.write(&format!("{id}.key"), key);
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "certificate_file = \"{}\"\nprivate_key_file = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    )
}

/// `(now + from_days, now + to_days)`.
fn validity(from_days: i64, to_days: i64) -> (SystemTime, SystemTime) {
    let at = |days: i64| {
        let span = Duration::from_secs(days.unsigned_abs() * 86_400);
        if days < 0 {
            SystemTime::now() - span
        } else {
            SystemTime::now() + span
        }
    };
    (at(from_days), at(to_days))
}

fn with_websockets() -> EmulatorConfig {
    EmulatorConfig {
        ws_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..EmulatorConfig::default()
    }
}

/// Every transport with every kind of credential, directly and through a proxy: each device
/// connects over what it was told (the hub's record of its CONNECT says so) and serves a
/// method.
#[tokio::test]
async fn every_transport_and_credential_connects_and_serves_a_method() {
    let site = Site::start(with_websockets(), &[]).await;
    let ca = tls::TestCa::generate("Plant devices CA").unwrap();
    site.emu.add_verified_ca(ca.ca_pem()).unwrap();
    let proxy = TinyProxy::start(ProxyRules::default()).await;
    let ws_port = site.emu.ws_addr().unwrap().port();
    for via_proxy in [false, true] {
        let mut devices = Vec::new();
        for transport in ["mqtt", "websocket"] {
            for cred in [Cred::Sas, Cred::Thumbprint, Cred::CaSigned] {
                let id = format!(
                    "{transport}-{cred:?}{}",
                    if via_proxy { "-proxy" } else { "" }
                )
                .to_lowercase();
                let keys = register(&site, &ca, &id, cred);
                devices.push((
                    id,
                    cred,
                    transport,
                    format!("{keys}transport = \"{transport}\"\n"),
                ));
            }
        }
        let proxy_line = if via_proxy {
            format!("{}\n", proxy.hub_key())
        } else {
            String::new()
        };
        let list: Vec<(&str, &str)> = devices
            .iter()
            .map(|(id, _, _, keys)| (id.as_str(), keys.as_str()))
            .collect();
        let config = site.config(&format!("websocket_port = {ws_port}\n{proxy_line}"), &list);
        let daemon = run(&config);
        for (id, cred, transport, _) in &devices {
            site.emu
                .wait_method_ready(id, WAIT)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}\n{}", daemon.log()));
            assert_eq!(site.get(id).await, (200, json!({"v": 42})), "{id}");
            let record = site.emu.device_stats(id).last_connect.unwrap();
            assert_eq!(record.transport.as_str(), *transport, "{id}");
            assert_eq!(record.client_cert, !matches!(cred, Cred::Sas), "{id}");
            // A certificate is the only credential: no password goes with it.
            assert_eq!(record.password.is_some(), matches!(cred, Cred::Sas), "{id}");
            // A request far larger than a WebSocket read buffer (4 KiB) arrives whole and is
            // answered (400: `get` takes no such field), on the same connection.
            let big = json!({ "padding": "x".repeat(100 * 1024) });
            let (http, body) = site.client.invoke(id, "get", big, 10).await.unwrap();
            assert_eq!(
                (http, body["status"].as_u64()),
                (200, Some(400)),
                "{id}: {body}"
            );
            assert_eq!(site.emu.device_stats(id).connects_accepted, 1, "{id}");
        }
        drop(daemon);
    }
}

/// An expired certificate is not even presented: the journal says which file and when it
/// expired, and the hub never sees the device. A certificate the hub does not know (another
/// thumbprint) is refused by the hub, and the journal says what to check. One in its last 30
/// days connects, with a warning.
#[tokio::test]
async fn expired_unknown_and_expiring_certificates_are_named_in_the_journal() {
    let site = Site::start(EmulatorConfig::default(), &[]).await;
    let by_thumbprint = |id: &str, cert: &str| {
        site.emu.add_device_x509(
            id,
            X509Auth::Thumbprint {
                primary: tls::thumbprint_sha256(cert).unwrap(),
                secondary: None,
            },
        );
    };
    let make = |id: &str, (from, to): (SystemTime, SystemTime)| {
        tls::self_signed(id, KeyKind::EcdsaP256, from, to).unwrap()
    };
    let (expired, expired_key) = make("old-1", validity(-400, -2));
    by_thumbprint("old-1", &expired);
    // odd-1 presents a certificate of its own; the hub knows another one.
    let (cert, key) = make("odd-1", validity(-1, 365));
    by_thumbprint("odd-1", &make("odd-1", validity(-1, 365)).0);
    let (soon, soon_key) = make("soon-1", validity(-300, 10));
    by_thumbprint("soon-1", &soon);
    let old = certificate_keys(&site, "old-1", &expired, &expired_key);
    let odd = certificate_keys(&site, "odd-1", &cert, &key);
    let soon = certificate_keys(&site, "soon-1", &soon, &soon_key);
    let config = site.config("", &[("old-1", &old), ("odd-1", &odd), ("soon-1", &soon)]);
    let daemon = run(&config);
    let line = daemon
        .wait_line("device old-1: cannot connect: its certificate", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains("old-1.pem expired at") && line.contains("IoT Hub refuses it"),
        "{line}"
    );
    let line = daemon
        .wait_line("device odd-1: hub connection failed", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains(
            "check that the device's certificate (its thumbprint, or its CA) is registered"
        ),
        "{line}"
    );
    assert_eq!(site.emu.device_stats("old-1").connects_refused, 0);
    // Close to its end: it connects, and the journal says how long it has left.
    let line = daemon
        .wait_line("device soon-1: its certificate", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains("soon-1.pem expires at")
            && (line.contains("(10 days left); renew it")
                || line.contains("(9 days left); renew it")),
        "{line}"
    );
    site.emu.wait_method_ready("soon-1", WAIT).await.unwrap();
    assert!(site.emu.device_stats("odd-1").connects_refused >= 1);
    assert!(
        site.emu
            .device_stats("odd-1")
            .last_connect
            .unwrap()
            .client_cert
    );
    assert!(!daemon.log().contains("PRIVATE KEY"));
}

/// A leaf behind an IoT Edge parent: TCP and the TLS name are the parent's
/// (`gateway_hostname`), the username and the SAS scope stay the hub's. The "parent" here is
/// an emulator whose certificate names only `localhost`, not the hub: a session that checked
/// the hub's name in the TLS handshake, or signed for the parent, would be refused.
#[tokio::test]
async fn a_leaf_reaches_the_hub_through_an_iot_edge_parent() {
    let hub = "myhub.azure-devices.net";
    let site = Site::start(
        EmulatorConfig {
            host_name: hub.to_owned(),
            certificate_names: Some(vec!["localhost".to_owned()]),
            ..EmulatorConfig::default()
        },
        &["leaf-1"],
    )
    .await;
    let config = site.config("gateway_hostname = \"localhost\"", &[("leaf-1", &sas(""))]);
    let daemon = run(&config);
    site.emu
        .wait_method_ready("leaf-1", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(site.get("leaf-1").await, (200, json!({"v": 42})));
    let record = site.emu.device_stats("leaf-1").last_connect.unwrap();
    assert!(
        record
            .username
            .as_deref()
            .is_some_and(|u| u.starts_with("myhub.azure-devices.net/leaf-1/?api-version=")),
        "{record:?}"
    );
    let token = record.password.unwrap().unwrap();
    assert_eq!(token.sr, "myhub.azure-devices.net%2Fdevices%2Fleaf-1");
    let line = daemon
        .wait_line("device leaf-1: connected to", WAIT)
        .await
        .unwrap();
    assert!(
        line.contains(&format!("localhost:{}", site.emu.mqtt_addr().port())),
        "{line}"
    );
}
