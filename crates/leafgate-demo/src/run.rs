//! `leafgate demo` from start to stop: the demo, its table on the given writer, and then either
//! a return (`once`) or serving until Ctrl-C or SIGTERM. The only part that waits on signals.

use std::io::{self, Write};

use crate::demo::Demo;
use crate::report::{header, invitation, table, telemetry_line};
use crate::summary::Summary;
use crate::{Error, Options};

/// The whole demo: starts it, writes what runs where, does the round trips and writes the
/// table; with `once` stops and returns, otherwise writes how to call methods yourself and
/// serves until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the demo cannot start ([`Demo::start`]), `out` cannot be written, or the signals cannot
/// be awaited. Wrong answers are not errors: see [`Summary::all_passed`].
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Summary, Error> {
    let demo = Demo::start(options).await?;
    let result = present(&demo, options, out).await;
    demo.shutdown().await;
    result
}

async fn present(demo: &Demo, options: &Options, out: &mut impl Write) -> Result<Summary, Error> {
    write_out(out, &header(demo))?;
    let summary = demo.round_trips().await;
    write_out(out, &table(&summary))?;
    if options.once {
        return Ok(summary);
    }
    write_out(out, &invitation(demo))?;
    let mut events = demo.telemetry_events();
    let stop = wait_for_stop();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            result = &mut stop => {
                result.map_err(Error::Signal)?;
                break;
            }
            event = events.recv() => match event {
                Ok(leafgate_emulator::Event::Telemetry { device, topic, payload }) => {
                    write_out(out, &telemetry_line(&device, &topic, &payload))?;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    stop.as_mut().await.map_err(Error::Signal)?;
                    break;
                }
            },
        }
    }
    write_out(out, "\nstopping: finishing methods in flight\n")?;
    Ok(summary)
}

fn write_out(out: &mut impl Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
