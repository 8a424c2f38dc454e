//! How a problem names the entry it is about: an entry of `[[bus]]`, `[[device]]` or
//! `[[profile]]` by its id (`device "meter-a".bus`), a method, telemetry group, desired property
//! or property by its name (`device "meter-a".method "getReadings".timeout_ms`), and anything
//! else, or an entry whose id is itself the problem, by its index (`step[0]`, `device[2].id`).
//! Parse problems and validation problems name entries the same way.

/// The key an array of tables names its entries by, if any: `id` for the top-level sections,
/// `name` for the ones inside a device or profile.
#[must_use]
pub fn label_key(section: &str, top_level: bool) -> Option<&'static str> {
    match section {
        "bus" | "device" | "profile" if top_level => Some("id"),
        "method" | "telemetry" | "desired" | "property" if !top_level => Some("name"),
        _ => None,
    }
}

/// One entry of the array of tables `section`: `section "label"` when the label can name it,
/// else `section[index]`.
#[must_use]
pub fn entry(section: &str, label: Option<&str>, index: usize) -> String {
    match label.filter(|l| nameable(l)) {
        Some(label) => format!("{section} {label:?}"),
        None => format!("{section}[{index}]"),
    }
}

/// A label worth printing: an id or name as a user would type it, not an empty or runaway one.
fn nameable(label: &str) -> bool {
    !label.is_empty() && label.len() <= 128 && !label.chars().any(char::is_control)
}

/// One step of a key path into a parsed file: a key, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// The parsed file's value at `path`, as far as it exists.
pub(crate) fn value_at<'d, 'i>(
    doc: &'d toml::de::DeTable<'i>,
    path: &[Seg],
) -> Option<&'d toml::Spanned<toml::de::DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(key) = first else {
        return None;
    };
    let mut node = doc.get(key.as_str())?;
    for seg in rest {
        node = match (seg, node.get_ref()) {
            (Seg::Key(key), toml::de::DeValue::Table(t)) => t.get(key.as_str())?,
            (Seg::Index(i), toml::de::DeValue::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// `path` as a problem names it, labels read from the parsed file: `device "meter-a".bus`.
pub(crate) fn name(doc: &toml::de::DeTable<'_>, path: &[Seg]) -> String {
    let mut out = String::new();
    for (n, seg) in path.iter().enumerate() {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(i) => {
                let section = match n.checked_sub(1).map(|k| &path[k]) {
                    Some(Seg::Key(key)) => key.as_str(),
                    _ => "",
                };
                let top_level = n == 1;
                let label = label_key(section, top_level).and_then(|key| {
                    let entry = value_at(doc, &path[..=n])?;
                    let toml::de::DeValue::Table(t) = entry.get_ref() else {
                        return None;
                    };
                    let label = t.get(key)?.get_ref().as_str()?;
                    // An id the validation refuses names nothing: its problem names the index.
                    (!top_level || check_id(label).is_ok()).then_some(label)
                });
                out.truncate(out.len() - section.len());
                out.push_str(&entry(section, label, *i));
            }
        }
    }
    out
}

/// IoT Hub device ids: up to 128 of `a-z A-Z 0-9 - . % _ * ? ! ( ) , : = @ $ '`. We use the same
/// rule for bus and profile ids.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".to_owned());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.%_*?!(),:=@$'".contains(*c)))
    {
        return Err(format!(
            "{id:?} contains {c:?}; IoT Hub ids allow letters, digits and -.%_*?!(),:=@$'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_paths_are_named_like_validation_names_them() {
        let text = "[[bus]]\nid = \"rs485\"\n[[device]]\nid = \"bad id\"\n[[device]]\nid = \"meter-a\"\n[[device.method]]\nname = \"get\"\n[[device.method.step]]\nop = \"read\"\n";
        let doc = toml::de::DeTable::parse(text).unwrap().into_inner();
        let key = |k: &str| Seg::Key(k.to_owned());
        let path = [
            key("device"),
            Seg::Index(1),
            key("method"),
            Seg::Index(0),
            key("step"),
            Seg::Index(0),
            key("op"),
        ];
        assert_eq!(
            name(&doc, &path),
            "device \"meter-a\".method \"get\".step[0].op"
        );
        assert_eq!(
            name(&doc, &[key("device"), Seg::Index(0), key("bus")]),
            "device[0].bus"
        );
        assert_eq!(
            name(&doc, &[key("bus"), Seg::Index(0), key("baudrate")]),
            "bus \"rs485\".baudrate"
        );
        assert_eq!(name(&doc, &[key("bus"), Seg::Index(5)]), "bus[5]");
        assert_eq!(name(&doc, &[key("hub"), key("port")]), "hub.port");
    }

    #[test]
    fn entries_are_named_by_their_label_and_by_index_without_one() {
        assert_eq!(entry("device", Some("meter-a"), 1), "device \"meter-a\"");
        assert_eq!(entry("device", Some(""), 1), "device[1]");
        assert_eq!(entry("step", None, 0), "step[0]");
        assert_eq!(entry("method", Some("a\nb"), 3), "method[3]");
        assert_eq!(label_key("device", true), Some("id"));
        assert_eq!(label_key("method", false), Some("name"));
        assert_eq!(label_key("step", false), None);
        assert_eq!(label_key("device", false), None);
    }
}
