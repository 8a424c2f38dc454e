//! `leafgate call` and `leafgate status`: the daemon's control socket from a shell, and
//! `call --offline` on the bus itself.

use std::path::Path;
use std::process::ExitCode;

use leafgate::config;
use leafgate::mapping::{Failure, respond};
use leafgate::services::control::{Request, Response, client, offline};
use serde_json::Value;

/// The daemon could not be asked, or `--offline` was refused: nothing ran.
const EXIT_NOT_ASKED: u8 = 2;
/// Asked, but the connection closed without an answer (the daemon stopping): a call may have
/// run.
const EXIT_NO_ANSWER: u8 = 3;

/// The exit code for an error of asking the daemon.
fn not_answered(e: &anyhow::Error) -> ExitCode {
    match e.downcast_ref::<client::Error>() {
        Some(client::Error::NoAnswer { .. } | client::Error::TimedOut { .. }) => {
            ExitCode::from(EXIT_NO_ANSWER)
        }
        _ => ExitCode::from(EXIT_NOT_ASKED),
    }
}

/// What `leafgate call` was asked to do.
pub struct Call<'a> {
    pub device: &'a str,
    pub method: Option<&'a str>,
    pub payload: Option<&'a str>,
    pub group: Option<&'a str>,
    pub offline: bool,
    pub config: &'a Path,
    pub socket: &'a Path,
}

/// Prints the reply as JSON on stdout; exit 0 for status 200, 1 for another status, 2 when
/// nothing ran, 3 when the daemon took the call but gave no answer, 78 for a config with
/// problems (`--offline`).
pub fn call(call: &Call<'_>, block_on: impl FnOnce(Ask) -> anyhow::Result<Outcome>) -> ExitCode {
    let request = match (call.group, call.method) {
        (Some(group), _) => Request::Read {
            device: call.device.to_owned(),
            group: group.to_owned(),
        },
        (None, method) => {
            let payload = match call.payload.map(str::trim) {
                None | Some("") => Value::Null,
                Some(text) => match serde_json::from_str(text) {
                    Ok(v) => v,
                    // The daemon would answer the same for this payload from the hub.
                    Err(e) => {
                        let (status, payload, _) = respond(&Failure::NotJson(e.to_string()));
                        return print(&Response { status, payload });
                    }
                },
            };
            Request::Call {
                device: call.device.to_owned(),
                method: method.unwrap_or_default().to_owned(),
                payload,
            }
        }
    };
    let ask = if call.offline {
        // The bus's own warnings (a line that cannot be opened, a unit that does not answer)
        // go to stderr beside the answer on stdout.
        if let Err(e) = leafgate::systemd::init_logging(log::LevelFilter::Warn) {
            eprintln!("leafgate: cannot start logging: {e}");
        }
        match config::load(call.config) {
            Ok(cfg) => Ask::Offline(Box::new(cfg), request),
            Err(e) => {
                for p in &e.problems {
                    eprintln!("{p}");
                }
                eprintln!(
                    "{}: {} problem(s); nothing run",
                    call.config.display(),
                    e.problems.len()
                );
                return ExitCode::from(crate::EXIT_CONFIG);
            }
        }
    } else {
        Ask::Daemon(call.socket.to_path_buf(), request)
    };
    match block_on(ask) {
        Ok(Outcome::Answered(response)) => print(&response),
        Ok(Outcome::Refused(why)) => {
            eprintln!("leafgate call --offline: {why}");
            ExitCode::from(EXIT_NOT_ASKED)
        }
        Err(e) => {
            eprintln!("leafgate call: {e:#}");
            not_answered(&e)
        }
    }
}

/// Where a request goes.
pub enum Ask {
    Daemon(std::path::PathBuf, Request),
    Offline(Box<config::Config>, Request),
}

pub enum Outcome {
    Answered(Response),
    Refused(offline::Refused),
}

/// Runs `ask`; errors are the daemon's absence or a broken exchange.
pub async fn ask(ask: Ask) -> anyhow::Result<Outcome> {
    match ask {
        Ask::Daemon(socket, request) => {
            let timeout = match request {
                Request::Status => client::STATUS_TIMEOUT,
                _ => client::CALL_TIMEOUT,
            };
            Ok(Outcome::Answered(
                client::ask(&socket, &request, timeout).await?,
            ))
        }
        Ask::Offline(cfg, request) => Ok(match offline::run(&cfg, request).await {
            Ok(response) => Outcome::Answered(response),
            Err(refused) => Outcome::Refused(refused),
        }),
    }
}

fn print(response: &Response) -> ExitCode {
    let text = serde_json::to_string_pretty(response).unwrap_or_default();
    println!("{text}");
    if response.status == 200 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `leafgate status`: the daemon's devices, buses and recent warnings and errors, as text or
/// (`--json`) as the daemon sent them.
pub fn status(
    socket: &Path,
    json: bool,
    block_on: impl FnOnce(Ask) -> anyhow::Result<Outcome>,
) -> ExitCode {
    let response = match block_on(Ask::Daemon(socket.to_path_buf(), Request::Status)) {
        Ok(Outcome::Answered(r)) => r,
        Ok(Outcome::Refused(why)) => {
            eprintln!("leafgate status: {why}");
            return ExitCode::from(EXIT_NOT_ASKED);
        }
        Err(e) => {
            eprintln!("leafgate status: {e:#}");
            return not_answered(&e);
        }
    };
    if json || response.status != 200 {
        return print(&response);
    }
    print!("{}", render(&response.payload));
    ExitCode::SUCCESS
}

/// Text from the field (a device's reply quoted in a warning) can hold escape sequences: shown
/// escaped, never sent to the terminal as they are.
fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// The status document as an operator reads it.
fn render(s: &Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value| printable(v.as_str().unwrap_or("?"));
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "leafgate {} (pid {}), running since {}, config {}",
        text(&s["leafgate"]),
        s["pid"],
        text(&s["started"]),
        text(&s["config"])
    );
    let devices = list(&s["devices"]);
    let connected = devices.iter().filter(|d| d["connected"] == true).count();
    let _ = writeln!(out, "\ndevices: {connected}/{} connected", devices.len());
    for d in &devices {
        let state = if d["connected"] == true {
            "connected"
        } else {
            "disconnected"
        };
        let _ = write!(
            out,
            "  {:<24} bus {:<12} {state:<12} since {}",
            text(&d["id"]),
            text(&d["bus"]),
            text(&d["since"])
        );
        if let Some(e) = d["last_error"].as_object() {
            let at = e.get("at").map(text).unwrap_or_default();
            let message = e.get("message").map(text).unwrap_or_default();
            let _ = write!(out, "\n      last error {at}: {message}");
        }
        out.push('\n');
    }
    let buses = list(&s["buses"]);
    let up = buses.iter().filter(|b| b["up"] == true).count();
    let _ = writeln!(out, "\nbuses: {up}/{} up", buses.len());
    for b in &buses {
        let down: Vec<String> = list(&b["units_down"])
            .iter()
            .map(Value::to_string)
            .collect();
        let _ = writeln!(
            out,
            "  {:<24} {:<11} {:<5} queued {}, polls queued {}, units down: {}",
            text(&b["id"]),
            text(&b["kind"]),
            if b["up"] == true { "up" } else { "down" },
            b["queued"],
            b["polls_queued"],
            if down.is_empty() {
                "none".to_owned()
            } else {
                down.join(", ")
            }
        );
    }
    let recent = list(&s["recent"]);
    if recent.is_empty() {
        let _ = writeln!(out, "\nno warnings or errors logged");
    } else {
        let _ = writeln!(out, "\nlast {} warnings and errors:", recent.len());
        for l in &recent {
            let _ = writeln!(
                out,
                "  {} {:<5} {}",
                text(&l["at"]),
                text(&l["level"]).to_uppercase(),
                text(&l["message"])
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_text_reaches_the_terminal_with_its_control_characters_escaped() {
        assert_eq!(
            super::printable("VOLT\x1b[2J 5.0\r\nok"),
            "VOLT\\u{1b}[2J 5.0\\r\\nok"
        );
        assert_eq!(super::printable("Grüße, 230 V"), "Grüße, 230 V");
    }
}
