//! Time in the two clocks the emulator works with: SAS tokens expire in Unix seconds, tokio's
//! timers run on a monotonic `Instant`. The conversions live in one place so the device endpoint
//! and the service API agree on when a token runs out, and so does the one way UTC times are
//! written in JSON.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a token expiring at `se` (Unix seconds) runs out, as a tokio instant.
pub(crate) fn expiry_instant(se: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(se);
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // Keep far-future tokens from overflowing Instant arithmetic.
    Instant::now() + left.min(Duration::from_secs(10 * 365 * 24 * 3600))
}

/// Sleeps until `at`, or forever without one.
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `2020-05-15T20:43:10.3899553Z`: UTC, seven fractional digits, as the hub writes
/// `timestampUtc` and DPS its `createdDateTimeUtc`.
pub(crate) fn timestamp_utc(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = leafgate::systemd::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_nanos() / 100
    )
}
