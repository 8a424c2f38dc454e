//! Profiles: one set of methods, telemetry groups and twin mappings shared by many devices.
//! They are compiled once per bus kind and shared, because 10,000 devices on one profile would
//! otherwise hold 10,000 copies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::path::entry;
use crate::config::schema::{BusKind, ProfileConfig};
use crate::mapping::Method;
use crate::mapping::group::Group;
use crate::mapping::method::Problem;

/// A profile's entries of one kind compiled for one bus kind, in config order.
pub(super) type Compiled<T> = Vec<Result<Arc<T>, Vec<Problem>>>;

/// What has been compiled of one kind of entry, per (profile, bus kind).
type Cache<T> = Vec<(String, BusKind, Compiled<T>)>;

/// Profile entries compiled once per (profile, bus kind) and shared by every device that uses
/// them: 10,000 devices on one profile would otherwise hold 10,000 copies (2 KiB each for
/// leafgate-bench's 10-register profile, found with heaptrack; issue 6).
pub(super) struct Profiles<'a> {
    /// Each profile by id, with the file and key path it was defined at.
    pub(super) defs: BTreeMap<&'a str, (&'a PathBuf, &'a String, &'a ProfileConfig)>,
    pub(super) methods: Cache<Method>,
    pub(super) groups: Cache<Group>,
    pub(super) desired: Cache<Method>,
    pub(super) properties: Cache<Method>,
}

/// The cached compilation of `id`'s entries for `kind`, compiling them on first use.
fn cached<'c, T>(
    cache: &'c mut Cache<T>,
    id: &str,
    kind: BusKind,
    compile: impl FnOnce() -> Compiled<T>,
) -> &'c Compiled<T> {
    let i = match cache.iter().position(|(p, k, _)| p == id && *k == kind) {
        Some(i) => i,
        None => {
            cache.push((id.to_owned(), kind, compile()));
            cache.len() - 1
        }
    };
    &cache[i].2
}

impl<'a> Profiles<'a> {
    pub(super) fn new(
        defs: BTreeMap<&'a str, (&'a PathBuf, &'a String, &'a ProfileConfig)>,
    ) -> Self {
        Self {
            defs,
            methods: Vec::new(),
            groups: Vec::new(),
            desired: Vec::new(),
            properties: Vec::new(),
        }
    }

    /// The profile `id` as written, with the file and key path it is defined at.
    pub(super) fn def(&self, id: &str) -> Option<(&'a PathBuf, &'a String, &'a ProfileConfig)> {
        self.defs.get(id).copied()
    }

    /// The file profile `id` is defined in and its methods compiled for `kind`, or `None` when
    /// no such profile exists.
    pub(super) fn methods(
        &mut self,
        id: &str,
        kind: BusKind,
    ) -> Option<(&'a PathBuf, &Compiled<Method>)> {
        let (file, path, profile) = self.def(id)?;
        let compiled = cached(&mut self.methods, id, kind, || {
            (profile.method.iter().enumerate())
                .map(|(i, m)| {
                    Method::compile(
                        m,
                        kind,
                        &format!("{path}.{}", entry("method", Some(&m.name), i)),
                    )
                    .map(Arc::new)
                })
                .collect()
        });
        Some((file, compiled))
    }

    /// Like [`Profiles::methods`], for the profile's telemetry groups.
    pub(super) fn groups(
        &mut self,
        id: &str,
        kind: BusKind,
    ) -> Option<(&'a PathBuf, &Compiled<Group>)> {
        let (file, path, profile) = self.def(id)?;
        let compiled = cached(&mut self.groups, id, kind, || {
            (profile.telemetry.iter().enumerate())
                .map(|(i, g)| {
                    Group::compile(
                        g,
                        kind,
                        &format!("{path}.{}", entry("telemetry", Some(&g.name), i)),
                    )
                    .map(Arc::new)
                })
                .collect()
        });
        Some((file, compiled))
    }

    /// Like [`Profiles::methods`], for the profile's desired properties.
    pub(super) fn desired(
        &mut self,
        id: &str,
        kind: BusKind,
    ) -> Option<(&'a PathBuf, &Compiled<Method>)> {
        let (file, path, profile) = self.def(id)?;
        let compiled = cached(&mut self.desired, id, kind, || {
            (profile.desired.iter().enumerate())
                .map(|(i, m)| {
                    Method::compile(
                        m,
                        kind,
                        &format!("{path}.{}", entry("desired", Some(&m.name), i)),
                    )
                    .map(Arc::new)
                })
                .collect()
        });
        Some((file, compiled))
    }

    /// Like [`Profiles::methods`], for the profile's properties read from the hardware.
    pub(super) fn properties(
        &mut self,
        id: &str,
        kind: BusKind,
    ) -> Option<(&'a PathBuf, &Compiled<Method>)> {
        let (file, path, profile) = self.def(id)?;
        let compiled = cached(&mut self.properties, id, kind, || {
            (profile.property.iter().enumerate())
                .map(|(i, m)| {
                    Method::compile(
                        &m.as_method(),
                        kind,
                        &format!("{path}.{}", entry("property", Some(&m.name), i)),
                    )
                    .map(Arc::new)
                })
                .collect()
        });
        Some((file, compiled))
    }
}
