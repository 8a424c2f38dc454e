//! The data of one simulated unit: four address spaces of 65536 entries each, stored sparsely
//! (an address never written reads as 0 / off), optionally restricted to mapped ranges.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::Table;

/// One address space (coils, discrete inputs, holding or input registers).
#[derive(Debug, Clone)]
pub(crate) struct Space<T> {
    values: BTreeMap<u16, T>,
    /// `None`: every address exists. `Some`: only these do; others answer exception 02.
    mapped: Option<Vec<RangeInclusive<u16>>>,
}

impl<T> Default for Space<T> {
    fn default() -> Self {
        Self {
            values: BTreeMap::new(),
            mapped: None,
        }
    }
}

impl<T: Copy + Default + PartialEq> Space<T> {
    /// `count` values from `address`, stopping at the end of the address space.
    pub(crate) fn read(&self, address: u16, count: u16) -> Vec<T> {
        addresses(address, count)
            .map(|a| self.values.get(&a).copied().unwrap_or_default())
            .collect()
    }

    /// Stores `values` from `address`, dropping whatever would run past the end of the space.
    pub(crate) fn write(&mut self, address: u16, values: &[T]) {
        for (a, value) in
            addresses(address, u16::try_from(values.len()).unwrap_or(u16::MAX)).zip(values)
        {
            if *value == T::default() {
                self.values.remove(&a);
            } else {
                self.values.insert(a, *value);
            }
        }
    }

    /// Whether all of `address .. address + count` exists: inside the space and mapped.
    pub(crate) fn covers(&self, address: u16, count: u16) -> bool {
        if u32::from(address) + u32::from(count) > 0x1_0000 {
            return false;
        }
        match &self.mapped {
            None => true,
            Some(ranges) => {
                addresses(address, count).all(|a| ranges.iter().any(|r| r.contains(&a)))
            }
        }
    }

    pub(crate) fn set_mapped(&mut self, ranges: Option<Vec<RangeInclusive<u16>>>) {
        self.mapped = ranges;
    }
}

/// The addresses `address .. address + count` that exist (at most up to 0xFFFF).
fn addresses(address: u16, count: u16) -> impl Iterator<Item = u16> {
    let end = (u32::from(address) + u32::from(count)).min(0x1_0000);
    (u32::from(address)..end).filter_map(|a| u16::try_from(a).ok())
}

/// Everything one unit stores.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnitData {
    pub(crate) coils: Space<bool>,
    pub(crate) discrete_inputs: Space<bool>,
    pub(crate) holding_registers: Space<u16>,
    pub(crate) input_registers: Space<u16>,
}

impl UnitData {
    pub(crate) fn bits(&self, table: Table) -> Option<&Space<bool>> {
        match table {
            Table::Coils => Some(&self.coils),
            Table::DiscreteInputs => Some(&self.discrete_inputs),
            Table::HoldingRegisters | Table::InputRegisters => None,
        }
    }

    pub(crate) fn words(&self, table: Table) -> Option<&Space<u16>> {
        match table {
            Table::HoldingRegisters => Some(&self.holding_registers),
            Table::InputRegisters => Some(&self.input_registers),
            Table::Coils | Table::DiscreteInputs => None,
        }
    }

    pub(crate) fn covers(&self, table: Table, address: u16, count: u16) -> bool {
        match table {
            Table::Coils => self.coils.covers(address, count),
            Table::DiscreteInputs => self.discrete_inputs.covers(address, count),
            Table::HoldingRegisters => self.holding_registers.covers(address, count),
            Table::InputRegisters => self.input_registers.covers(address, count),
        }
    }

    pub(crate) fn set_mapped(&mut self, table: Table, ranges: Option<Vec<RangeInclusive<u16>>>) {
        match table {
            Table::Coils => self.coils.set_mapped(ranges),
            Table::DiscreteInputs => self.discrete_inputs.set_mapped(ranges),
            Table::HoldingRegisters => self.holding_registers.set_mapped(ranges),
            Table::InputRegisters => self.input_registers.set_mapped(ranges),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_addresses_read_as_zero_and_writes_stop_at_the_end_of_the_space() {
        let mut space = Space::<u16>::default();
        space.write(0xFFFE, &[1, 2, 3]);
        assert_eq!(space.read(0xFFFD, 5), vec![0, 1, 2]);
        space.write(0xFFFE, &[0]);
        assert_eq!(space.values.len(), 1);
    }

    #[test]
    fn covers_checks_the_end_of_the_space_and_the_mapped_ranges() {
        let mut space = Space::<bool>::default();
        assert!(space.covers(0xFFFF, 1));
        assert!(!space.covers(0xFFFF, 2));
        space.set_mapped(Some(vec![10..=19, 20..=29, 40..=40]));
        assert!(space.covers(10, 20));
        assert!(!space.covers(9, 2));
        assert!(!space.covers(29, 2));
        assert!(space.covers(40, 1));
    }
}
