//! MQTT topic filters as the hub judges them: which filters a device may subscribe to, whether a
//! filter is well formed, and whether a topic matches one. Pure functions, shared by the
//! connection tasks ([`super::mqtt`]) and the registry (which routes method requests to the
//! devices whose subscriptions match), so neither has to import the other for them.

/// Whether the hub accepts `filter` from device `id`: a valid MQTT filter under one of the hub's
/// device topic trees (methods, twin responses, desired properties, this device's C2D).
/// Per-method filters (`$iothub/methods/POST/reboot/#`) are allowed and count
/// towards the five, which is why the docs say not to use them.
pub(crate) fn known_filter(filter: &str, device_id: &str) -> bool {
    const HUB_TREES: [&str; 3] = [
        "$iothub/methods/POST/",
        "$iothub/twin/res/",
        "$iothub/twin/PATCH/properties/desired/",
    ];
    valid_filter(filter)
        && (HUB_TREES.iter().any(|tree| filter.starts_with(tree))
            || filter
                .strip_prefix("devices/")
                .and_then(|rest| rest.strip_prefix(device_id))
                .is_some_and(|rest| rest.starts_with("/messages/devicebound/")))
}

/// MQTT 3.1.1 section 4.7: `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, level)| {
            (!level.contains('#') || (*level == "#" && i == last))
                && (!level.contains('+') || *level == "+")
        })
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 section 4.7; `#` also matches the parent level).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_filters_are_under_the_hubs_trees() {
        for filter in [
            "$iothub/methods/POST/#",
            "$iothub/methods/POST/reboot/#",
            "$iothub/methods/POST/+/+",
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "devices/d-1/messages/devicebound/#",
        ] {
            assert!(known_filter(filter, "d-1"), "{filter}");
        }
        for filter in [
            "",
            "#",
            "$iothub/#",
            "$iothub/methods/#",
            "$iothub/methods/POST/a#",
            "$iothub/methods/POST/#/x",
            "$iothub/methods/POST/a+/#",
            "devices/d-2/messages/devicebound/#",
            "devices/d-1/messages/events/#",
        ] {
            assert!(!known_filter(filter, "d-1"), "{filter:?}");
        }
    }

    #[test]
    fn filters_match_method_topics_level_by_level() {
        let topic = "$iothub/methods/POST/reboot/?$rid=7";
        for filter in [
            "$iothub/methods/POST/#",
            "$iothub/methods/POST/reboot/#",
            "$iothub/methods/POST/+/+",
            "$iothub/methods/POST/reboot/?$rid=7",
            "$iothub/methods/POST/reboot/?$rid=7/#",
        ] {
            assert!(filter_matches(filter, topic), "{filter}");
        }
        for filter in [
            "$iothub/methods/POST/other/#",
            "$iothub/methods/POST/+",
            "$iothub/methods/POST/reboot",
            "$iothub/methods/POST/reboot/?$rid=7/x",
        ] {
            assert!(!filter_matches(filter, topic), "{filter}");
        }
        assert!(filter_matches(
            "$iothub/methods/POST/+/#",
            "$iothub/methods/POST/a/b/?$rid=1"
        ));
    }
}
