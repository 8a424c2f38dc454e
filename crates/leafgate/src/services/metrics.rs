//! `[metrics]`: the Prometheus endpoint. `GET /metrics` answers the registry in the text
//! exposition format; anything else is 404 or 405. Plain HTTP/1.x, one request per connection,
//! so the server stays small: the request head is parsed by `httparse`, bounded in size and
//! time, and at most [`MAX_CONNECTIONS`] scrapes are served at once (more are closed at once), so
//! a hostile or broken client costs a socket for a few seconds, never a method's time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A request head larger than this is refused (400): a scrape's is about 200 bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request head within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// And take the answer within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What `prometheus-client` writes: OpenMetrics text (counters named without `_total` in their
/// `# TYPE` line, `# EOF` at the end). Prometheus parses it as such by this type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Serves `metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, metrics: &'static Metrics, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, mostly: wait a moment rather than spin.
                log::warn!(service = "metrics"; "metrics: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            log::debug!(service = "metrics"; "metrics: {peer}: {MAX_CONNECTIONS} scrapes in progress; closed");
            continue;
        };
        tokio::spawn(async move {
            if let Err(why) = answer(stream, metrics).await {
                log::debug!(service = "metrics"; "metrics: {peer}: {why}");
            }
            drop(slot);
        });
    }
}

/// One request, one answer.
async fn answer(mut stream: TcpStream, metrics: &'static Metrics) -> Result<(), String> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| "no request within 5 s".to_owned())??;
    let (status, body, head_only) = match route(&head) {
        Route::Metrics { head_only } => {
            // Encoding 10,000 devices takes tens of milliseconds of CPU: on a blocking thread,
            // so no method waits behind a scrape on this worker.
            let text = tokio::task::spawn_blocking(move || metrics.encode())
                .await
                .map_err(|e| format!("encoding failed: {e}"))?;
            (200, text, head_only)
        }
        Route::NotFound => (
            404,
            "not found: metrics are at /metrics\n".to_owned(),
            false,
        ),
        Route::NotAllowed => (405, "only GET /metrics\n".to_owned(), false),
        Route::Bad => (400, "bad request\n".to_owned(), false),
    };
    // The head and the body are written one after the other: copied into one buffer, a
    // 13 MB scrape would need twice its size at once.
    let response_head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        if status == 200 {
            CONTENT_TYPE
        } else {
            "text/plain; charset=utf-8"
        },
        body.len(),
    );
    let write = async {
        stream.write_all(response_head.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| "the client did not take the answer within 30 s".to_owned())?
        .map_err(|e| format!("write failed: {e}"))?;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Reads up to the blank line that ends the request head (the body, if any, is ignored).
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("closed before a whole request".to_owned());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            // Answered as a bad request below.
            return Ok(head);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    NotAllowed,
    Bad,
}

fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Route::Bad,
    }
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match (request.method, path) {
        (Some("GET"), "/metrics") => Route::Metrics { head_only: false },
        (Some("HEAD"), "/metrics") => Route::Metrics { head_only: true },
        (Some("GET" | "HEAD"), _) => Route::NotFound,
        _ => Route::NotAllowed,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let r = |text: &str| route(text.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::NotAllowed);
        assert_eq!(r("GET /metrics HTTP/1.1\r\n"), Route::Bad);
        assert_eq!(r("\u{0}\u{1}garbage\r\n\r\n"), Route::Bad);
        let many = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(40));
        assert_eq!(r(&many), Route::Bad);
    }
}
