//! The demo's text: what runs where, the round trips as a table, and how to call the methods
//! yourself. Pure formatting into strings, so `run` alone does the writing.

use std::fmt::Write as _;

use crate::demo::Demo;
use crate::summary::Summary;

/// What runs where.
pub(crate) fn header(demo: &Demo) -> String {
    let site = demo.site();
    let devices: Vec<&str> = demo
        .config()
        .devices
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "leafgate demo: emulated IoT Hub + simulated hardware + leafgate, all on this machine\n"
    );
    for (what, where_) in [
        (
            "IoT Hub (MQTT/TLS)",
            format!("{} (host name localhost)", demo.hub_addr()),
        ),
        (
            "IoT Hub (WebSockets)",
            demo.ws_addr().map_or_else(
                || "off".to_owned(),
                |a| format!("wss://{a}/$iothub/websocket"),
            ),
        ),
        (
            "DPS (MQTT/TLS)",
            demo.dps_addr().map_or_else(
                || "off".to_owned(),
                |a| format!("{a} (id scope {})", demo.id_scope()),
            ),
        ),
        ("service API", format!("http://{}", demo.service_addr())),
        (
            "Modbus TCP PLC",
            format!("{}, unit 1", site.modbus_tcp.addr()),
        ),
        (
            "RS-485 line",
            format!(
                "{}, Modbus RTU units 1 and 2",
                site.rtu_line.path().display()
            ),
        ),
        (
            "power supply",
            format!("{}, text lines", site.psu_line.path().display()),
        ),
        ("config", demo.config_path().display().to_string()),
        (
            "devices online",
            format!("{} ({})", devices.len(), devices.join(", ")),
        ),
    ] {
        let _ = writeln!(text, "  {what:<22}{where_}");
    }
    text.push('\n');
    text
}

/// The round trips as a table: request on the left, response on the right, then a verdict.
pub(crate) fn table(summary: &Summary) -> String {
    struct Row {
        mark: &'static str,
        device: String,
        method: String,
        request: String,
        status: String,
        response: String,
        latency: String,
    }
    let rows: Vec<Row> = summary
        .round_trips
        .iter()
        .map(|rt| Row {
            mark: if rt.passed() { "ok" } else { "FAIL" },
            device: rt.device.clone(),
            method: rt.method.clone(),
            request: rt.request.to_string(),
            status: rt
                .status
                .map_or_else(|| "---".to_owned(), |s| s.to_string()),
            response: rt.response.to_string(),
            latency: format!("{:.1} ms", rt.latency.as_secs_f64() * 1000.0),
        })
        .collect();
    let width =
        |f: fn(&Row) -> usize, title: &str| rows.iter().map(f).max().unwrap_or(0).max(title.len());
    let wd = width(|r| r.device.len(), "device");
    let wm = width(|r| r.method.len(), "method");
    let wr = width(|r| r.request.len(), "payload");
    let wl = width(|r| r.latency.len(), "latency");
    let mut text = String::new();
    let _ = writeln!(
        text,
        "     {:<w$}     response (from the service API)",
        "request (to the service API)",
        w = wd + wm + wr + 4
    );
    let _ = writeln!(
        text,
        "     {:<wd$}  {:<wm$}  {:<wr$}     {:<6}  {:>wl$}  payload",
        "device", "method", "payload", "status", "latency"
    );
    for (row, rt) in rows.iter().zip(&summary.round_trips) {
        let _ = write!(
            text,
            "{:<4} {:<wd$}  {:<wm$}  {:<wr$}  →  {:<6}  {:>wl$}  {}",
            row.mark, row.device, row.method, row.request, row.status, row.latency, row.response
        );
        if let Some(note) = &rt.note {
            let _ = write!(text, "   ({note})");
        }
        text.push('\n');
        if let Some(problem) = &rt.problem {
            let _ = writeln!(text, "     ^ {problem}");
        }
    }
    let passed = summary.round_trips.iter().filter(|rt| rt.passed()).count();
    let mut ms: Vec<f64> = summary
        .round_trips
        .iter()
        .map(|rt| rt.latency.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let _ = write!(
        text,
        "\n{passed} of {} round trips answered as expected",
        summary.round_trips.len()
    );
    if let (Some(min), Some(max)) = (ms.first(), ms.last()) {
        let median = ms.get(ms.len() / 2).copied().unwrap_or(*min);
        let _ = write!(
            text,
            "; latency at the caller: min {min:.1} ms, median {median:.1} ms, max {max:.1} ms"
        );
    }
    text.push('\n');
    if !summary.telemetry.is_empty() {
        let _ = writeln!(
            text,
            "\nTelemetry (device-to-cloud), the first message of each device:"
        );
        for t in &summary.telemetry {
            match &t.body {
                Some(body) => {
                    let group = t.group.as_deref().unwrap_or("-");
                    let _ = writeln!(text, "ok   {:<8}  {group:<7}  {body}", t.device);
                }
                None => {
                    let _ = writeln!(text, "FAIL {:<8}  nothing arrived", t.device);
                }
            }
        }
    }
    if let Some(twin) = &summary.twin {
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        let _ = writeln!(
            text,
            "\nDevice twin and cloud-to-device, on {}:",
            twin.device
        );
        let ack = twin
            .ack
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        let acked = twin.ack.as_ref().is_some_and(|a| a["ac"] == 200);
        let _ = writeln!(
            text,
            "{} desired speedSetpoint = {} (version {}) → acknowledged {ack}",
            mark(acked),
            twin.setpoint,
            twin.version
        );
        let held = |v: Option<f64>| v.map_or_else(|| "unreadable".to_owned(), |v| v.to_string());
        let _ = writeln!(
            text,
            "{} the PLC holds speed {} (getStatus)",
            mark(twin.speed_after_setpoint == Some(twin.setpoint)),
            held(twin.speed_after_setpoint)
        );
        let _ = writeln!(
            text,
            "{} cloud-to-device setSpeed {} → {}; the PLC holds speed {}",
            mark(twin.command_completed),
            twin.command,
            if twin.command_completed {
                "ran, completed"
            } else {
                "not completed"
            },
            held(twin.speed_after_command)
        );
        match &twin.health {
            Some(health) => {
                let _ = writeln!(text, "ok   reported health (leafgate): {health}");
            }
            None => {
                let _ = writeln!(text, "FAIL reported health: none");
            }
        }
    }
    if !summary.reach.is_empty() {
        let _ = writeln!(text, "\nReaching the hub:");
        for r in &summary.reach {
            let mark = if r.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(text, "{mark} {:<8} {}", r.device, r.seen);
        }
    }
    text
}

/// One telemetry message as the demo prints it while it runs.
pub(crate) fn telemetry_line(device: &str, topic: &str, payload: &[u8]) -> String {
    let group = leafgate::hub::d2c::parse(topic)
        .ok()
        .and_then(|(_, props)| {
            props
                .into_iter()
                .find(|(k, _)| k == "group")
                .map(|(_, v)| v)
        })
        .unwrap_or_default();
    format!(
        "telemetry {device} {group}: {}\n",
        String::from_utf8_lossy(payload)
    )
}

/// How to call the demo's methods yourself.
pub(crate) fn invitation(demo: &Demo) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nThe demo keeps running. Call its methods yourself through the emulated service API:\n"
    );
    let _ = writeln!(text, "  service API   http://{}", demo.service_addr());
    let _ = writeln!(text, "  token (1 h)   {}\n", demo.token());
    for line in demo.curl_lines() {
        let _ = writeln!(text, "{line}\n");
    }
    let _ = writeln!(
        text,
        "Telemetry is printed below as the hub receives it; read it back with\n  curl -s 'http://{}/emulator/devices/meter-1/messages' -H 'Authorization: {}'\n",
        demo.service_addr(),
        demo.token()
    );
    let _ = writeln!(
        text,
        "leafgate logs each call it serves (device, method, status, time) when the demo runs with\n  --log-level info\n"
    );
    let _ = writeln!(text, "Press Ctrl-C to stop.");
    text
}
