//! leafgate against a hub that misbehaves on purpose: a raw MQTT-over-TLS peer written here, not
//! the emulator, so it can do what no polite hub does. It bursts a thousand method requests
//! in one write, never answers SUBSCRIBE, sends requests before SUBACK, and names a method with
//! 60,000 characters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use leafgate::gateway::Gateway;
use leafgate::services::methods::MAX_IN_FLIGHT;
use leafgate_sim::modbus::{Fault, Registers, TcpServer};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Publish, SubAck};
use rumqttc::mqttbytes::v4::{Subscribe, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A TLS listener with a certificate leafgate is told to trust, and nothing else: every packet
/// is the test's to send or withhold.
pub(crate) struct RawHub {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

pub(crate) struct RawConn {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
}

impl RawHub {
    /// Starts the listener and writes a config for one Modbus TCP device, `dev-1`, with the
    /// raw methods on, behind `plc`. `hub_extra` adds `[hub]` keys, `bus_extra` keys of the bus.
    async fn start(plc: &TcpServer, hub_extra: &str, bus_extra: &str) -> RawHub {
        Self::start_with(plc, hub_extra, bus_extra, "").await
    }

    /// As [`RawHub::start`], with `device_extra` appended to the device's section (telemetry
    /// groups). A `[telemetry]` section can end `hub_extra`.
    pub(crate) async fn start_with(
        plc: &TcpServer,
        hub_extra: &str,
        bus_extra: &str,
        device_extra: &str,
    ) -> RawHub {
        let certs = leafgate_emulator::tls::generate("localhost").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &certs.ca_pem).unwrap();
        let config = dir.path().join("leafgate.toml");
        std::fs::write(
            &config,
            crate::gateway::with_store(
                &format!(
                    r#"[hub]
hostname = "localhost"
port = {port}
ca_file = "{ca}"
reconnect_min_ms = 100
reconnect_max_ms = 500
max_connects_per_s = 1000
{hub_extra}

[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "{plc}"
{bus_extra}

[[device]]
id = "dev-1"
shared_access_key = "{KEY}"
bus = "plc"
unit = 1
raw_methods = true
{device_extra}
"#,
                    port = listener.local_addr().unwrap().port(),
                    ca = ca.display(),
                    plc = plc.addr(),
                ),
                dir.path(),
            ),
        )
        .unwrap();
        RawHub {
            listener,
            acceptor: TlsAcceptor::from(Arc::clone(&certs.server_config)),
            _dir: dir,
            config,
        }
    }

    pub(crate) fn gateway(&self) -> Gateway {
        let cfg = leafgate::config::load(&self.config).unwrap_or_else(|e| panic!("{e}"));
        Gateway::start(&cfg).unwrap()
    }

    /// The next connection, after its TLS handshake and CONNECT, answered with CONNACK 0.
    pub(crate) async fn accept(&self) -> RawConn {
        let (tcp, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("leafgate did not connect")
            .unwrap();
        let stream = self.acceptor.accept(tcp).await.unwrap();
        let mut conn = RawConn {
            stream,
            rbuf: BytesMut::new(),
        };
        let connect = conn.next().await;
        assert!(matches!(connect, Packet::Connect(..)), "{connect:?}");
        conn.send(&[Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            false,
        ))])
        .await;
        conn
    }
}

impl RawConn {
    /// The next packet leafgate sends; panics after `WAIT`.
    pub(crate) async fn next(&mut self) -> Packet {
        tokio::time::timeout(WAIT, self.read())
            .await
            .expect("leafgate sent nothing")
            .expect("leafgate closed the connection")
    }

    /// The next packet, or `None` once leafgate closes the connection.
    pub(crate) async fn read(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.rbuf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("leafgate sent a malformed packet: {e}"),
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The SUBSCRIBE that must follow CONNACK.
    pub(crate) async fn subscribe(&mut self) -> Subscribe {
        match self.next().await {
            Packet::Subscribe(s) => s,
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
    }

    pub(crate) async fn suback(&mut self, subscribe: &Subscribe) {
        let codes = vec![SubscribeReasonCode::Success(QoS::AtMostOnce); subscribe.filters.len()];
        self.send(&[Packet::SubAck(SubAck::new(subscribe.pkid, codes))])
            .await;
    }

    /// Encodes every packet into one buffer and writes it with one call.
    pub(crate) async fn send(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for p in packets {
            p.write(&mut buf, 1 << 20).unwrap();
        }
        self.stream.write_all(&buf).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Replies by rid until every rid in `rids` has one; panics on a reply to a rid that
    /// already has one, or after `WAIT`.
    pub(crate) async fn replies(
        &mut self,
        rids: usize,
    ) -> BTreeMap<String, (u16, serde_json::Value)> {
        let mut got = BTreeMap::new();
        let until = Instant::now() + WAIT;
        while got.len() < rids {
            let packet = tokio::time::timeout_at(until, self.read())
                .await
                .unwrap_or_else(|_| panic!("only {} of {rids} replies arrived", got.len()))
                .unwrap_or_else(|| panic!("closed after {} of {rids} replies", got.len()));
            if let Packet::Publish(p) = packet {
                let (status, rid) = leafgate::hub::topics::parse_response(&p.topic)
                    .unwrap_or_else(|| panic!("not a method response: {}", p.topic));
                let body = serde_json::from_slice(&p.payload).unwrap();
                let earlier = got.insert(rid.to_owned(), (status, body));
                assert!(earlier.is_none(), "two replies to rid {rid}");
            }
        }
        got
    }
}

pub(crate) fn request(name: &str, rid: &str, payload: &serde_json::Value) -> Packet {
    Packet::Publish(Publish::new(
        format!("$iothub/methods/POST/{name}/?$rid={rid}"),
        QoS::AtMostOnce,
        serde_json::to_vec(payload).unwrap(),
    ))
}

/// The outside run lost up to 1,543 of 3,000 replies this way: rumqttc's request channel filled
/// while its event loop handed out the buffered requests.
#[tokio::test]
async fn a_thousand_requests_in_one_write_get_one_reply_each_and_every_answered_write_ran() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start(&plc, "", "").await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;

    const N: u16 = 1000;
    let burst: Vec<Packet> = (0..N)
        .map(|i| {
            if i % 2 == 0 {
                let write = serde_json::json!({"table": "holding", "address": i, "values": [1]});
                request("modbus.write", &format!("w{i}"), &write)
            } else {
                let read = serde_json::json!({"table": "holding", "address": 0, "count": 1});
                request("modbus.read", &format!("r{i}"), &read)
            }
        })
        .collect();
    conn.send(&burst).await;
    let replies = conn.replies(usize::from(N)).await;

    // One more request after the burst: its reply comes after any duplicate of the burst's.
    conn.send(&[request(
        "modbus.read",
        "last",
        &serde_json::json!({"table": "holding", "address": 0, "count": 1}),
    )])
    .await;
    let last = conn.replies(1).await;
    assert_eq!(last.keys().collect::<Vec<_>>(), ["last"]);

    let mut statuses = BTreeMap::<u16, usize>::new();
    for (status, _) in replies.values() {
        *statuses.entry(*status).or_default() += 1;
    }
    assert!(
        statuses.keys().all(|s| [200, 503].contains(s)),
        "only 200 and 503 (shed load) are expected: {statuses:?}"
    );
    let written = regs.holding(1, 0, N);
    for i in (0..N).step_by(2) {
        let (status, body) = &replies[&format!("w{i}")];
        let ran = written[usize::from(i)] == 1;
        assert_eq!(
            *status == 200,
            ran,
            "write w{i}: status {status} {body}, executed on the device: {ran}"
        );
    }
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    drop(gateway);
}

/// The outside run's hub sent CONNACK and never SUBACK: leafgate sat deaf for good, and ran a
/// request that arrived meanwhile without ever publishing its reply.
#[tokio::test]
async fn a_hub_that_never_answers_subscribe_is_left_and_a_request_meanwhile_is_answered() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 7, &[42]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start(&plc, "connect_timeout_s = 1", "").await;
    let gateway = hub.gateway();

    let mut deaf = hub.accept().await;
    let _ = deaf.subscribe().await;
    let read = serde_json::json!({"table": "holding", "address": 7, "count": 1});
    deaf.send(&[request("modbus.read", "early", &read)]).await;
    let replies = deaf.replies(1).await;
    assert_eq!(replies["early"], (200, serde_json::json!({"values": [42]})));
    let left_at = Instant::now();
    while let Some(packet) = tokio::time::timeout(WAIT, deaf.read()).await.unwrap() {
        assert!(
            matches!(packet, Packet::PingReq | Packet::Disconnect),
            "unexpected {packet:?}"
        );
    }
    // Left after the SUBACK timeout (connect_timeout_s = 1), not before and not much later.
    assert!(left_at.elapsed() < Duration::from_secs(5));

    let mut next = hub.accept().await;
    let sub = next.subscribe().await;
    next.suback(&sub).await;
    next.send(&[request("modbus.read", "after", &read)]).await;
    assert_eq!(next.replies(1).await["after"].0, 200);
    drop(gateway);
}

/// The session subscribes to what its services need (for a device with direct methods: the
/// methods filter, in one SUBSCRIBE) and hands each publish to the service that claims its
/// topic. A publish on a topic nobody subscribed to, or a method topic without a rid, is
/// logged and dropped: no reply, no crash, and the connection keeps serving.
#[tokio::test]
async fn publishes_no_service_claims_are_dropped_and_the_device_keeps_serving() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 3, &[9]);
    let plc = TcpServer::start(regs).await.unwrap();
    let hub = RawHub::start(&plc, "", "").await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    let filters: Vec<&str> = sub.filters.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(filters, ["$iothub/methods/POST/#"]);
    conn.suback(&sub).await;

    let stray = |topic: &str, qos| {
        let mut p = Publish::new(topic, qos, b"{}".to_vec());
        p.pkid = u16::from(qos == QoS::AtLeastOnce);
        Packet::Publish(p)
    };
    let read = serde_json::json!({"table": "holding", "address": 3, "count": 1});
    conn.send(&[
        stray(
            "devices/dev-1/messages/devicebound/%24.to=x",
            QoS::AtMostOnce,
        ),
        stray("$iothub/twin/res/200/?$rid=1", QoS::AtMostOnce),
        // QoS 1 on a QoS 0 subscription: acknowledged by rumqttc, handed to no service.
        stray("devices/dev-1/messages/devicebound/", QoS::AtLeastOnce),
        stray("$iothub/methods/POST/modbus.read/", QoS::AtMostOnce),
        stray("$iothub/methods/POST//?$rid=empty-name", QoS::AtMostOnce),
        request("modbus.read", "after", &read),
    ])
    .await;
    // `replies` panics on any reply that is not a method response and on a second reply, so
    // one reply to "after" and nothing else means the strays went unanswered.
    let replies = conn.replies(1).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies["after"], (200, serde_json::json!({"values": [9]})));
    conn.send(&[request("modbus.read", "still-up", &read)])
        .await;
    assert_eq!(conn.replies(1).await["still-up"].0, 200);
    drop(gateway);
}

/// A 60,000-character method name made a 120 KB log line. The reply still carries the whole
/// rid; the journal gets a bounded line (the suite's log scanner aborts on any longer line of
/// leafgate's, see logscan.rs).
#[tokio::test]
async fn a_huge_method_name_and_rid_are_answered_and_logged_bounded() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs).await.unwrap();
    let hub = RawHub::start(&plc, "", "").await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;

    // Dots: a long run of letters would look like a key to the log scanner. The topic must
    // stay under MQTT's 65,535 bytes.
    let name = "n.".repeat(30_000);
    let rid = "r.".repeat(2_000);
    let before = crate::logscan::longest_line();
    conn.send(&[request(&name, &rid, &serde_json::json!({}))])
        .await;
    let replies = conn.replies(1).await;
    let (status, body) = &replies[&rid];
    assert_eq!(*status, 501, "{body}");
    assert_eq!(body["error"], "unknown_method");
    let longest = crate::logscan::longest_line();
    assert!(
        longest <= crate::logscan::MAX_LINE,
        "a log line of {longest} bytes (was {before} before the request)"
    );
    drop(gateway);
}

/// Past `MAX_IN_FLIGHT` requests in progress for one device, the next are answered 503 at once
/// and never reach the hardware; the others are all served once the unit answers again.
#[tokio::test]
async fn requests_past_the_in_flight_cap_are_refused_unexecuted_and_the_rest_are_served() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    // A queue deep enough that the bus admits everything: the cap is what refuses.
    let hub = RawHub::start(&plc, "", "queue_capacity = 5000\ntimeout_ms = 2000").await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;

    // The unit hangs on the first request, so every other one stays in progress meanwhile.
    regs.set_fault_times(1, Fault::Silent, 1);
    let extra = 76;
    let n = MAX_IN_FLIGHT + extra;
    let burst: Vec<Packet> = (0..n)
        .map(|i| {
            let write = serde_json::json!({"table": "holding", "address": i, "values": [1]});
            request("modbus.write", &format!("w{i}"), &write)
        })
        .collect();
    conn.send(&burst).await;
    let replies = conn.replies(n).await;

    let refused: Vec<usize> = (0..n)
        .filter(|i| {
            let (status, body) = &replies[&format!("w{i}")];
            *status == 503
                && body["message"]
                    .as_str()
                    .unwrap()
                    .contains("already in progress")
        })
        .collect();
    assert_eq!(refused.len(), extra, "refused: {refused:?}");
    let written = regs.holding(1, 0, u16::try_from(n).unwrap());
    for i in 0..n {
        let (status, body) = &replies[&format!("w{i}")];
        let ran = written[i] == 1;
        assert_eq!(
            *status == 200,
            ran,
            "w{i}: {status} {body}, executed: {ran}"
        );
    }
    let served = replies.values().filter(|(s, _)| *s == 200).count();
    // The first write met the silent unit (504); every other admitted one was served.
    assert_eq!(served, MAX_IN_FLIGHT - 1);
    drop(gateway);
}

/// A service that only publishes what the test hands its session's outlet.
struct Publisher {
    window: u16,
}

impl leafgate::hub::service::Service for Publisher {
    fn name(&self) -> &'static str {
        "test messages"
    }
    fn filters(&self, _device_id: &str) -> Vec<leafgate::hub::service::Filter> {
        Vec::new()
    }
    fn claims(&self, _topic: &str) -> bool {
        false
    }
    fn on_publish(
        &self,
        _topic: &str,
        _payload: bytes::Bytes,
        _ctx: &mut leafgate::hub::service::Context<'_>,
    ) {
    }
    fn window(&self) -> u16 {
        self.window
    }
}

fn message(
    n: u32,
) -> (
    leafgate::hub::service::Outbound,
    tokio::sync::oneshot::Receiver<leafgate::hub::service::Delivery>,
) {
    let (delivery, rx) = tokio::sync::oneshot::channel();
    let message = leafgate::hub::service::Message {
        topic: format!("devices/dev-1/messages/events/%24.mid={n}"),
        body: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        delivery,
    };
    (leafgate::hub::service::Outbound::Message(message), rx)
}

/// QoS 1 messages go out at most `window` at a time, each counted delivered only on its
/// PUBACK; a QoS 0 reply is never held behind them; when the connection drops, those without a
/// PUBACK are reported unconfirmed, and one sent again goes out on the next connection.
#[tokio::test]
async fn qos1_messages_respect_the_window_and_only_a_puback_confirms_them() {
    use leafgate::hub::service::{Delivery, Label, Outbound, Reply};
    use leafgate::hub::session::{Credentials, Session, Shared};

    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs).await.unwrap();
    let hub = RawHub::start(&plc, "", "").await;
    let cfg = leafgate::config::load(&hub.config).unwrap_or_else(|e| panic!("{e}"));
    let shared = Arc::new(Shared {
        tls: leafgate::hub::tls::trust(cfg.hub.ca_file.as_deref()).unwrap(),
        pacer: leafgate::hub::limiter::Pacer::new(cfg.hub.max_connects_per_s),
        registrations: leafgate::hub::limiter::Pacer::new(1),
        hub: cfg.hub.clone(),
        connected: Arc::default(),
        draining: tokio_util::sync::CancellationToken::new(),
    });
    let session = Session::new();
    let outlet = session.outlet();
    let stop = tokio_util::sync::CancellationToken::new();
    let credentials = Credentials {
        device_id: "dev-1".into(),
        auth: cfg.devices[0].auth.clone(),
        transport: cfg.hub.transport,
        provisioned: false,
        model_id: None,
        presence: Default::default(),
    };
    let task = tokio::spawn(session.run(
        credentials,
        vec![Box::new(Publisher { window: 2 })],
        shared,
        stop.clone(),
    ));

    let mut conn = hub.accept().await;
    let mut deliveries = Vec::new();
    for n in 1..=3 {
        let (m, rx) = message(n);
        assert!(outlet.send(m).await.is_ok());
        deliveries.push(rx);
    }
    let reply = Outbound::Reply(Reply {
        topic: "$iothub/methods/res/200/?$rid=marker".to_owned(),
        body: b"{}".to_vec(),
        deadline: Instant::now() + WAIT,
        label: Label {
            kind: "method",
            name: "marker".to_owned(),
            rid: "marker".to_owned(),
            status: 200,
        },
    });
    assert!(outlet.send(reply).await.is_ok());

    // Until the reply, exactly two messages: the third waits for a free slot.
    let mut sent = Vec::new();
    loop {
        match conn.next().await {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => sent.push(p),
            Packet::Publish(p) if p.topic.ends_with("rid=marker") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let topics: Vec<&str> = sent.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "devices/dev-1/messages/events/%24.mid=1",
            "devices/dev-1/messages/events/%24.mid=2"
        ]
    );
    assert_ne!(sent[0].pkid, sent[1].pkid);
    assert!(deliveries.iter_mut().all(|rx| rx.try_recv().is_err()));

    // A PUBACK for the first confirms it and frees the slot the third takes.
    conn.send(&[Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(
        sent[0].pkid,
    ))])
    .await;
    let mut deliveries = deliveries.into_iter();
    assert_eq!(deliveries.next().unwrap().await, Ok(Delivery::Acked));
    match conn.next().await {
        Packet::Publish(p) => {
            assert_eq!(p.topic, "devices/dev-1/messages/events/%24.mid=3");
            assert_eq!(&p.payload[..], b"{\"n\":3}");
        }
        other => panic!("expected the third message, got {other:?}"),
    }

    // The hub drops the connection: the two without a PUBACK are unconfirmed, not lost quietly.
    drop(conn);
    for rx in deliveries {
        assert_eq!(rx.await, Ok(Delivery::Unconfirmed));
    }
    // Sent again, the second goes out on the next connection, whole.
    let mut conn = hub.accept().await;
    let (m, rx) = message(2);
    assert!(outlet.send(m).await.is_ok());
    let again = match conn.next().await {
        Packet::Publish(p) => p,
        other => panic!("expected the resent message, got {other:?}"),
    };
    assert_eq!(again.topic, "devices/dev-1/messages/events/%24.mid=2");
    assert_eq!(again.payload, sent[1].payload);
    conn.send(&[Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(
        again.pkid,
    ))])
    .await;
    assert_eq!(rx.await, Ok(Delivery::Acked));
    stop.cancel();
    task.await.unwrap();
}

/// The hub takes two telemetry messages and never acknowledges them, then drops the
/// connection. On the next connection the same two go out first, in order, with the same
/// message ids and bodies; only after their PUBACKs do new readings follow. Nothing is lost and
/// a duplicate is recognisable by its id.
#[tokio::test]
async fn unacknowledged_telemetry_is_sent_again_in_order_with_the_same_message_ids() {
    let regs = Registers::with_units([1]);
    regs.set_input(1, 0, &[5]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let group = r#"
[[device.telemetry]]
name = "g"
interval_ms = 100
[[device.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "v" }]
"#;
    let hub = RawHub::start_with(&plc, "[telemetry]\nwindow = 2", "", group).await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    // Telemetry may go out before the SUBSCRIBE (it needs none): answer it whenever it comes.
    let mut first = Vec::new();
    while first.len() < 2 {
        match conn.next().await {
            Packet::Publish(p) => {
                assert_eq!(p.qos, QoS::AtLeastOnce);
                first.push(p);
            }
            Packet::Subscribe(sub) => conn.suback(&sub).await,
            _ => {}
        }
    }
    // Readings keep being taken meanwhile: two more polls reach the unit.
    let polled = regs.request_count();
    regs.wait_requests(polled + 2).await;
    drop(conn);

    let mut conn = hub.accept().await;
    let mut again = Vec::new();
    while again.len() < 4 {
        match conn.next().await {
            Packet::Publish(p) => {
                conn.send(&[Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(p.pkid))])
                    .await;
                again.push(p);
            }
            Packet::Subscribe(sub) => conn.suback(&sub).await,
            _ => {}
        }
    }
    let mid = |p: &Publish| {
        leafgate::hub::d2c::parse(&p.topic)
            .unwrap()
            .1
            .into_iter()
            .find(|(k, _)| k == "$.mid")
            .map(|(_, v)| v)
            .unwrap()
    };
    let seq = |p: &Publish| -> u64 { mid(p).rsplit_once('-').unwrap().1.parse().unwrap() };
    for (old, new) in first.iter().zip(&again) {
        assert_eq!(
            mid(old),
            mid(new),
            "resent in another order or with another id"
        );
        assert_eq!(old.payload, new.payload);
    }
    let seqs: Vec<u64> = again.iter().map(seq).collect();
    let start = seqs[0];
    assert_eq!(
        seqs,
        (start..start + 4).collect::<Vec<_>>(),
        "readings missing"
    );
    drop(gateway);
}
