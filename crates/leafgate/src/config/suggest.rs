//! "Did you mean": the nearest of the valid keys or ids to a misspelt one.

/// The candidate closest to `word` by edit distance (letters added, dropped, changed or swapped,
/// ignoring case), if it is close enough to be the one meant: at most a third of its letters
/// apart (one for short names). Ties go to the earlier candidate.
#[must_use]
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, &c.to_lowercase()), c))
        .filter(|&(distance, c)| distance > 0 && distance <= (c.chars().count() / 3).max(1))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::nearest;

    #[test]
    fn a_near_miss_is_suggested_and_a_stranger_is_not() {
        let bus = ["id", "kind", "address", "baud_rate", "parity", "timeout_ms"];
        assert_eq!(nearest("baudrate", bus), Some("baud_rate"));
        assert_eq!(nearest("adress", bus), Some("address"));
        assert_eq!(nearest("baudRate", bus), Some("baud_rate"));
        assert_eq!(nearest("timeout", bus), Some("timeout_ms"));
        assert_eq!(nearest("colour", bus), None);
        assert_eq!(nearest("zz", bus), None);
        assert_eq!(nearest("rs458", ["rs485", "plc"]), Some("rs485"));
        assert_eq!(nearest("meter", ["meter-a", "meter-b"]), Some("meter-a"));
        assert_eq!(nearest("anything", []), None);
    }
}
