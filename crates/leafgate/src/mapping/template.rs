//! Serial request templates: `"VOLT {volts:.3}\r\n"` with payload fields substituted.
//!
//! Placeholders: `{name}`, `{name:.N}` (N decimals), `{name:0W}` (zero-padded to width W),
//! `{name:0W.N}`; `{{` and `}}` are literal braces. Parsed once at config load.

use std::fmt::Write as _;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Field(Placeholder),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    pub width: Option<usize>,
    pub precision: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// On an unclosed `{`, a lone `}`, an empty name or a bad format spec.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err("lone `}` (write `}}` for a literal brace)".to_owned()),
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => inner.push(ch),
                            None => return Err("unclosed `{`".to_owned()),
                        }
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Field(parse_placeholder(&inner)?));
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Text(literal));
        }
        Ok(Template { segments })
    }

    /// Names of the fields the template uses, in order of first use.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field(p) => Some(p.name.as_str()),
            Segment::Text(_) => None,
        })
    }

    /// Renders the template; `lookup` gives each field's (already validated) value.
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a Value>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Field(p) => {
                    if let Some(v) = lookup(&p.name) {
                        format_value(&mut out, p, v);
                    }
                }
            }
        }
        out
    }
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let (name, spec) = inner.split_once(':').unwrap_or((inner, ""));
    let name = name.trim();
    if name.is_empty() {
        return Err("placeholder `{}` has no field name".to_owned());
    }
    let (width, precision) = match spec.split_once('.') {
        Some((w, p)) => (w, Some(p)),
        None => (spec, None),
    };
    let bad = || format!("placeholder `{{{inner}}}`: format must be like :.3, :05 or :08.2");
    let width = if width.is_empty() {
        None
    } else {
        let digits = width.strip_prefix('0').ok_or_else(bad)?;
        Some(digits.parse::<usize>().map_err(|_| bad())?.min(64))
    };
    let precision = match precision {
        Some(p) => Some(p.parse::<usize>().map_err(|_| bad())?.min(17)),
        None => None,
    };
    Ok(Placeholder {
        name: name.to_owned(),
        width,
        precision,
    })
}

fn format_value(out: &mut String, p: &Placeholder, value: &Value) {
    let width = p.width.unwrap_or(0);
    // Writing to a String cannot fail.
    let _ = match (value, p.precision) {
        (Value::Number(n), Some(prec)) => {
            let f = n.as_f64().unwrap_or(0.0);
            write!(out, "{f:0width$.prec$}")
        }
        (Value::Number(n), None) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => write!(out, "{i:0width$}"),
            (None, Some(u)) => write!(out, "{u:0width$}"),
            _ => write!(out, "{:0width$}", n.as_f64().unwrap_or(0.0)),
        },
        (Value::Bool(b), _) => write!(out, "{}", u8::from(*b)),
        (Value::String(s), _) => write!(out, "{s}"),
        (other, _) => write!(out, "{other}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_placeholders_with_formats() {
        let t = Template::parse("VOLT {volts:.3}\r\nCH{ch:02} {{x}} {on} {label}").unwrap();
        assert_eq!(
            t.field_names().collect::<Vec<_>>(),
            ["volts", "ch", "on", "label"]
        );
        let vals = json!({"volts": 12.5, "ch": 3, "on": true, "label": "A1"});
        let s = t.render(|n| vals.get(n));
        assert_eq!(s, "VOLT 12.500\r\nCH03 {x} 1 A1");
        let t = Template::parse("{v:08.2}").unwrap();
        let v = json!(-3.14659);
        assert_eq!(t.render(|_| Some(&v)), "-0003.15");
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in ["{", "}", "{}", "{x:3}", "{x:.a}", "a{b"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
