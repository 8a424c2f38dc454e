//! Text from outside (method names, request ids, topics, device replies) bounded for log lines.
//!
//! A hub may send a 60,000-character method name and a device may answer with a screenful of
//! noise; logged as they are, one request makes a 120 KB journal line, and a flood of them
//! fills the journal's rate limit so the lines an operator needs are suppressed. Every such
//! string goes through [`clip`] before it reaches a log line; what it cuts is marked, so a
//! shortened name is never mistaken for the real one.

use std::borrow::Cow;

/// The most characters of one untrusted string that a log line shows. Longer than any method
/// name or request id a real back end uses (IoT Hub method names are at most 128 characters).
pub const MAX_CHARS: usize = 128;

/// `text` as a log line may show it: unchanged when it has at most `max` characters, otherwise
/// its first `max` characters followed by `…[+N bytes]`, N being what was cut.
#[must_use]
pub fn clip_to(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…[+{} bytes]", &text[..cut], text.len() - cut)),
    }
}

/// [`clip_to`] at [`MAX_CHARS`].
#[must_use]
pub fn clip(text: &str) -> Cow<'_, str> {
    clip_to(text, MAX_CHARS)
}

/// [`clip`] for a string the caller owns: returned as it is (no copy) when short enough.
#[must_use]
pub fn clip_owned(text: String) -> String {
    match clip(&text) {
        Cow::Borrowed(_) => None,
        Cow::Owned(clipped) => Some(clipped),
    }
    .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_borrowed_unchanged() {
        assert!(matches!(clip("getStatus"), Cow::Borrowed("getStatus")));
        let exact = "x".repeat(MAX_CHARS);
        assert!(matches!(clip(&exact), Cow::Borrowed(_)));
        assert_eq!(clip_owned(exact.clone()), exact);
        assert_eq!(clip_owned("é".repeat(200)), clip(&"é".repeat(200)));
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_and_marked() {
        let long = "é".repeat(60_000);
        let shown = clip(&long);
        assert_eq!(shown.chars().filter(|c| *c == 'é').count(), MAX_CHARS);
        assert!(
            shown.ends_with(&format!("…[+{} bytes]", (60_000 - MAX_CHARS) * 2)),
            "{shown}"
        );
        assert!(shown.len() < 400);
    }
}
