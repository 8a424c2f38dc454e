//! A warning for text sent to a device written as a TOML literal string: in `'READ?\r\n'`
//! nothing is an escape, so the device gets a backslash and an `r`, not a carriage return.
//!
//! Only the keys whose text is sent or matched on a serial line as written are checked (a
//! step's `request`, a bus's `line_ending` and `terminator`): an `expect` is a regular
//! expression, where `'\r\n'` does mean CR LF, and literal strings are the usual way to write
//! one.

use super::path::{Seg, name};

/// The keys whose value is sent as written.
const SENT: [&str; 3] = ["request", "line_ending", "terminator"];

/// A literal-string value of a sent key that holds what reads like an escape: its key path and
/// the warning.
pub(crate) fn warnings(text: &str, doc: &toml::de::DeTable<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    walk_table(text, doc, doc, &mut path, &mut out);
    out
}

fn walk_table(
    text: &str,
    doc: &toml::de::DeTable<'_>,
    table: &toml::de::DeTable<'_>,
    path: &mut Vec<Seg>,
    out: &mut Vec<(String, String)>,
) {
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        walk(text, doc, value, path, out);
        path.pop();
    }
}

fn walk(
    text: &str,
    doc: &toml::de::DeTable<'_>,
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    path: &mut Vec<Seg>,
    out: &mut Vec<(String, String)>,
) {
    match value.get_ref() {
        toml::de::DeValue::Table(t) => walk_table(text, doc, t, path, out),
        toml::de::DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                walk(text, doc, item, path, out);
                path.pop();
            }
        }
        toml::de::DeValue::String(s) => {
            let sent = matches!(path.last(), Some(Seg::Key(k)) if SENT.contains(&k.as_str()));
            let literal = text
                .get(value.span())
                .is_some_and(|raw| raw.starts_with('\''));
            let escapes = escapes(s);
            if sent && literal && !escapes.is_empty() {
                let listed: Vec<String> = escapes.iter().map(|e| format!("`{e}`")).collect();
                let message = if escapes.len() == 1 {
                    format!(
                        "{} in a single-quoted (literal) string is sent as written, as two characters; write the value in double quotes (\"...\") to send the character it stands for",
                        listed[0]
                    )
                } else {
                    format!(
                        "{} in a single-quoted (literal) string are sent as written, as two characters each; write the value in double quotes (\"...\") to send the characters they stand for",
                        listed.join(", ")
                    )
                };
                out.push((name(doc, path), message));
            }
        }
        _ => {}
    }
}

/// The backslash sequences in `s` that TOML's basic strings (and most protocols' manuals)
/// treat as escapes, each once, in order: `\r`, `\n`, `\x1B`...
fn escapes(s: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        let Some(&next) = chars.peek() else { break };
        if "bfnrte0xuU\\\"".contains(next) {
            chars.next();
            let seq = format!("\\{next}");
            if !found.contains(&seq) {
                found.push(seq);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(text: &str) -> Vec<String> {
        let doc = toml::de::DeTable::parse(text).unwrap().into_inner();
        warnings(text, &doc)
            .into_iter()
            .map(|(path, message)| format!("{path}: {message}"))
            .collect()
    }

    #[test]
    fn a_literal_string_with_an_escape_in_a_sent_key_is_a_warning() {
        let step = |request: &str| {
            format!(
                "[[device]]\nid = \"psu\"\n[[device.method]]\nname = \"volts\"\n[[device.method.step]]\nop = \"send\"\nrequest = {request}\nexpect = '^OK\\r\\n$'\n"
            )
        };
        assert_eq!(
            warned(&step(r"'READ?\r\n'")),
            [
                "device \"psu\".method \"volts\".step[0].request: `\\r`, `\\n` in a single-quoted (literal) string are sent as written, as two characters each; write the value in double quotes (\"...\") to send the characters they stand for"
            ]
        );
        assert_eq!(warned(&step("'''READ?\\n'''")).len(), 1);
        // A basic string's escapes are the characters; a literal string without one is fine.
        assert!(warned(&step(r#""READ?\r\n""#)).is_empty());
        assert!(warned(&step("'READ?'")).is_empty());
        assert!(warned(&step(r"'C:\data'")).is_empty());
        let bus = "[[bus]]\nid = \"s\"\nterminator = '\\r'\n";
        assert_eq!(
            warned(bus),
            [
                "bus \"s\".terminator: `\\r` in a single-quoted (literal) string is sent as written, as two characters; write the value in double quotes (\"...\") to send the character it stands for"
            ]
        );
    }

    #[test]
    fn escapes_are_listed_once_in_order() {
        assert_eq!(escapes(r"A\r\nB\r\x1B\d"), [r"\r", r"\n", r"\x"]);
        assert!(escapes(r"\d+\s").is_empty());
        assert!(escapes("ends with \\").is_empty());
    }
}
