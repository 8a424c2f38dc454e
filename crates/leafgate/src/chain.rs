//! An error and its causes on one line, `what: cause: cause`.
//!
//! Errors here say what failed and leave the cause to `source()`, so that no text is repeated
//! when they nest; whoever shows an error to a person (the journal, a 503's message, the demo's
//! table) prints the whole chain with this one function.

use std::error::Error;

/// `error`'s `Display`, then `: {source}` for each source in its chain.
#[must_use]
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the line")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_follows_once() {
        let error = Outer(std::io::Error::other("no such device"));
        assert_eq!(chain(&error), "cannot open the line: no such device");
        assert_eq!(chain(&std::io::Error::other("plain")), "plain");
    }
}
