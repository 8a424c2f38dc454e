//! Reading one file against the closed schema without stopping at its first problem.
//!
//! serde stops at the first unknown key or wrong value. To report every one in one pass, the
//! file is deserialised again and again: each time it fails, the problem is recorded and the
//! key it names is taken out of the parsed tree, until what is left deserialises. An unknown key
//! changes nothing by its absence, and an optional key with a wrong value falls back to its
//! default, so the rest is then validated as written. A key an entry cannot do without (a
//! `[[bus]]` `kind` that is no kind) takes its whole `[[bus]]`, `[[device]]` or `[[profile]]`
//! entry out ("withdrawn"): its own problem is reported, and what refers to it is not checked.
//! A wrong value anywhere else that cannot be left out (a `[provisioning]` without a valid
//! `id_scope`, `hub = 5`) takes its section out and leaves the file unvalidated: its other
//! problems are still all reported.

use std::collections::{BTreeMap, BTreeSet};

use config::{Value, ValueKind};

use super::path::{Seg, name, value_at};
use super::schema::FileConfig;
use super::suggest::nearest;

/// No real file has this many problems; a bound in case a repair ever failed to make progress.
const MAX_ROUNDS: usize = 1000;

/// A problem found while reading: where in the file it is (for file order), key path, message.
pub(crate) struct Found {
    pub position: usize,
    pub path: String,
    pub message: String,
}

/// What a lenient read gives: the config (`None` when a problem left nothing usable), the
/// problems in file order, and the entries taken out as `(section, id)`.
pub(crate) struct Lenient {
    pub config: Option<FileConfig>,
    pub problems: Vec<Found>,
    /// The keys a "did you mean" names: their absence is already explained.
    pub meant: BTreeSet<String>,
    pub withdrawn: BTreeSet<(String, String)>,
}

/// Reads the config crate's tree of one file (`root`) whose parse is `doc`; `describe` turns a
/// deserialisation error into its message.
pub(crate) fn read(
    doc: &toml::de::DeTable<'_>,
    root: Value,
    describe: impl Fn(&config::ConfigError) -> String,
) -> Lenient {
    let mut repair = Repair {
        doc,
        root,
        shifts: BTreeMap::new(),
        found: Vec::new(),
        meant: BTreeSet::new(),
        withdrawn: BTreeSet::new(),
        incomplete: false,
    };
    let config = repair.run(&describe);
    let mut problems = repair.found;
    problems.sort_by_key(|f| f.position);
    Lenient {
        config,
        problems,
        meant: repair.meant,
        withdrawn: repair.withdrawn,
    }
}

struct Repair<'d, 'i> {
    /// The file as parsed: labels and positions are read from it, by original indices.
    doc: &'d toml::de::DeTable<'i>,
    /// The config crate's tree, which keys and entries are taken out of.
    root: Value,
    /// For each array an entry was taken out of (by its original path), the original index of
    /// every entry left.
    shifts: BTreeMap<Vec<Seg>, Vec<usize>>,
    found: Vec<Found>,
    meant: BTreeSet<String>,
    withdrawn: BTreeSet<(String, String)>,
    /// A section was taken out that the rest cannot be validated without.
    incomplete: bool,
}

impl Repair<'_, '_> {
    fn run(&mut self, describe: &dyn Fn(&config::ConfigError) -> String) -> Option<FileConfig> {
        // The keys taken out for a wrong value (by original path): serde then misses those that
        // are required.
        let mut taken: BTreeSet<(Vec<Seg>, String)> = BTreeSet::new();
        for _ in 0..MAX_ROUNDS {
            let error = match serde_path_to_error::deserialize::<_, FileConfig>(self.root.clone()) {
                Ok(config) => return (!self.incomplete).then_some(config),
                Err(e) => e,
            };
            let mut path: Vec<Seg> = Vec::new();
            for seg in error.path() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => path.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => path.push(Seg::Index(*index)),
                    _ => break,
                }
            }
            let message = describe(error.inner());
            let quoted = backticked(&message);
            if let Some(field) = message.strip_prefix("unknown field `").and(quoted.first()) {
                if path.last() != Some(&Seg::Key((*field).to_owned())) {
                    path.push(Seg::Key((*field).to_owned()));
                }
                let message = match nearest(field, quoted[1..].iter().copied()) {
                    Some(near) => {
                        let mut meant = self.original(&path);
                        meant.pop();
                        meant.push(Seg::Key(near.to_owned()));
                        self.meant.insert(name(self.doc, &meant));
                        format!("unknown field `{field}`; did you mean `{near}`?")
                    }
                    None => message.clone(),
                };
                self.report(&path, message);
                if !self.take_out(&path) {
                    return None;
                }
            } else if let Some(field) = message.strip_prefix("missing field `").and(quoted.first())
            {
                if !taken.contains(&(self.original(&path), (*field).to_owned())) {
                    self.report(&path, message.clone());
                }
                if !self.withdraw(&path) {
                    return None;
                }
            } else {
                self.report(&path, message);
                // A whole section of the wrong kind (`hub = 5`) is not left out unnoticed.
                if path.len() < 2 {
                    self.incomplete = true;
                }
                if let Some((Seg::Key(key), parent)) = path.split_last() {
                    taken.insert((self.original(parent), key.clone()));
                }
                if !self.take_out(&path) {
                    return None;
                }
            }
        }
        None
    }

    /// `path` (indices into the tree as it is now) with the indices the file has.
    fn original(&self, path: &[Seg]) -> Vec<Seg> {
        let mut out = Vec::with_capacity(path.len());
        for seg in path {
            let seg = match seg {
                Seg::Index(i) => Seg::Index(
                    self.shifts
                        .get(&out)
                        .and_then(|left: &Vec<usize>| left.get(*i).copied())
                        .unwrap_or(*i),
                ),
                key @ Seg::Key(_) => key.clone(),
            };
            out.push(seg);
        }
        out
    }

    fn report(&mut self, path: &[Seg], message: String) {
        let original = self.original(path);
        // Where the deepest part of the path that the file has begins.
        let position = (1..=original.len())
            .rev()
            .find_map(|n| value_at(self.doc, &original[..n]))
            .map_or(usize::MAX, |v| v.span().start);
        self.found.push(Found {
            position,
            path: name(self.doc, &original),
            message,
        });
    }

    /// Takes the key or entry at `path` out of the tree.
    fn take_out(&mut self, path: &[Seg]) -> bool {
        let Some((last, parent)) = path.split_last() else {
            return false;
        };
        let original_parent = self.original(parent);
        let Some(node) = node_mut(&mut self.root, parent) else {
            return false;
        };
        match (last, &mut node.kind) {
            (Seg::Key(key), ValueKind::Table(table)) => table.remove(key).is_some(),
            (Seg::Index(i), ValueKind::Array(array)) if *i < array.len() => {
                let len = array.len();
                array.remove(*i);
                self.shifts
                    .entry(original_parent)
                    .or_insert_with(|| (0..len).collect())
                    .remove(*i);
                true
            }
            _ => false,
        }
    }

    /// Takes out the `[[bus]]`, `[[device]]` or `[[profile]]` entry `path` is in; or, outside
    /// those, its whole section, leaving the file unvalidated.
    fn withdraw(&mut self, path: &[Seg]) -> bool {
        let section = match path {
            [Seg::Key(section), Seg::Index(_), ..]
                if matches!(section.as_str(), "bus" | "device" | "profile") =>
            {
                section
            }
            [] => return false,
            _ => {
                self.incomplete = true;
                return self.take_out(&path[..1]);
            }
        };
        let entry = &path[..2];
        let id = node_mut(&mut self.root, entry).and_then(|v| match &v.kind {
            ValueKind::Table(t) => match t.get("id").map(|id| &id.kind) {
                Some(ValueKind::String(id)) => Some(id.clone()),
                _ => None,
            },
            _ => None,
        });
        if let Some(id) = id {
            self.withdrawn.insert((section.clone(), id));
        }
        self.take_out(entry)
    }
}

fn node_mut<'v>(root: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut node = root;
    for seg in path {
        node = match (seg, &mut node.kind) {
            (Seg::Key(key), ValueKind::Table(t)) => t.get_mut(key)?,
            (Seg::Index(i), ValueKind::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The `quoted` words of serde's messages: ``unknown field `x`, expected one of `a`, `b` ``.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::backticked;

    #[test]
    fn serdes_quoted_words_are_found() {
        assert_eq!(
            backticked("unknown field `baudrate`, expected one of `id`, `kind`"),
            ["baudrate", "id", "kind"]
        );
        assert_eq!(backticked("unknown field `x`, there are no fields"), ["x"]);
        assert!(backticked("invalid type").is_empty());
    }
}
