//! Profiles: one set of methods shared by many devices. They are compiled once per bus kind and
//! shared, because 10,000 devices on one profile would otherwise hold 10,000 copies.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::schema::{BusKind, ProfileConfig};
use crate::mapping::Method;
use crate::mapping::group::Group;

/// A profile's methods compiled for one bus kind.
pub(super) type Compiled = Vec<Result<Arc<Method>, Vec<crate::mapping::method::Problem>>>;
/// A profile's telemetry groups compiled for one bus kind.
pub(super) type CompiledGroups = Vec<Result<Arc<Group>, Vec<crate::mapping::method::Problem>>>;

/// Profile methods compiled once per (profile, bus kind) and shared by every device that uses
/// them: 10,000 devices on one profile would otherwise hold 10,000 copies (2 KiB each for
/// leafgate-bench's 10-register profile, found with heaptrack; issue 6).
pub(super) struct Profiles<'a> {
    /// Each profile by id, with the file and key path it was defined at.
    pub(super) defs: BTreeMap<&'a str, (&'a PathBuf, &'a String, &'a ProfileConfig)>,
    pub(super) compiled: Vec<(String, BusKind, Compiled)>,
    pub(super) groups: Vec<(String, BusKind, CompiledGroups)>,
}

impl<'a> Profiles<'a> {
    /// The file profile `id` is defined in and its methods compiled for `kind`, or `None` when
    /// no such profile exists.
    pub(super) fn methods(&mut self, id: &str, kind: BusKind) -> Option<(&'a PathBuf, &Compiled)> {
        let (file, path, profile) = self.defs.get(id).copied()?;
        let i = match self
            .compiled
            .iter()
            .position(|(p, k, _)| p == id && *k == kind)
        {
            Some(i) => i,
            None => {
                let compiled = (profile.method.iter().enumerate())
                    .map(|(i, m)| {
                        Method::compile(m, kind, &format!("{path}.method[{i}]")).map(Arc::new)
                    })
                    .collect();
                self.compiled.push((id.to_owned(), kind, compiled));
                self.compiled.len() - 1
            }
        };
        Some((file, &self.compiled[i].2))
    }

    /// Like [`Profiles::methods`], for the profile's telemetry groups.
    pub(super) fn groups(
        &mut self,
        id: &str,
        kind: BusKind,
    ) -> Option<(&'a PathBuf, &CompiledGroups)> {
        let (file, path, profile) = self.defs.get(id).copied()?;
        let i = match self
            .groups
            .iter()
            .position(|(p, k, _)| p == id && *k == kind)
        {
            Some(i) => i,
            None => {
                let compiled = (profile.telemetry.iter().enumerate())
                    .map(|(i, g)| {
                        Group::compile(g, kind, &format!("{path}.telemetry[{i}]")).map(Arc::new)
                    })
                    .collect();
                self.groups.push((id.to_owned(), kind, compiled));
                self.groups.len() - 1
            }
        };
        Some((file, &self.groups[i].2))
    }
}
