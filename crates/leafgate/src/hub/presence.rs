//! Whether a device's session is connected, since when, and why its last attempt failed: what
//! `leafgate status` shows for each device. The session writes it; anyone holding the `Arc`
//! reads it. A lock taken a few times per connection, never per message.

use std::sync::Mutex;
use std::time::SystemTime;

/// One device's connection, as its session last saw it.
#[derive(Debug)]
pub struct Presence {
    state: Mutex<State>,
}

/// A copy of a [`Presence`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Connected and subscribed.
    pub connected: bool,
    /// Since when `connected` holds (the session's start, for a device never connected).
    pub since: SystemTime,
    /// The last failed attempt or lost connection, kept after a later success so an operator
    /// sees what happened before.
    pub last_error: Option<(SystemTime, String)>,
}

/// Failure texts are the session's own descriptions; bounded all the same.
const MAX_ERROR_CHARS: usize = 400;

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                connected: false,
                since: SystemTime::now(),
                last_error: None,
            }),
        }
    }

    #[must_use]
    pub fn get(&self) -> State {
        self.lock().clone()
    }

    /// Connected and subscribed.
    pub fn connected(&self) {
        let mut s = self.lock();
        s.connected = true;
        s.since = SystemTime::now();
    }

    /// The connection ended or an attempt failed; `why` when it was not a clean stop or renewal.
    pub fn disconnected(&self, why: Option<&str>) {
        let now = SystemTime::now();
        let mut s = self.lock();
        if s.connected {
            s.connected = false;
            s.since = now;
        }
        if let Some(why) = why {
            let text: String = why.chars().take(MAX_ERROR_CHARS).collect();
            s.last_error = Some((now, text));
        }
    }

    /// A poisoned lock only means a reader panicked mid-copy; the state itself is always whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Presence;

    #[test]
    fn a_failure_is_kept_after_the_next_connect_and_since_moves_only_on_a_change() {
        let p = Presence::new();
        let started = p.get().since;
        p.disconnected(Some("CONNACK 5"));
        let s = p.get();
        assert!(!s.connected);
        assert_eq!(s.since, started, "still the same disconnected stretch");
        assert_eq!(
            s.last_error.as_ref().map(|e| e.1.as_str()),
            Some("CONNACK 5")
        );
        p.connected();
        let s = p.get();
        assert!(s.connected);
        assert!(s.since >= started);
        assert_eq!(s.last_error.map(|e| e.1), Some("CONNACK 5".to_owned()));
        p.disconnected(Some(&"x".repeat(1000)));
        assert_eq!(p.get().last_error.map(|e| e.1.len()), Some(400));
    }
}
