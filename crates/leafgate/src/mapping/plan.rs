//! Read planning: the fields a poll wants from one unit become as few Modbus reads as the
//! protocol and the unit allow.
//!
//! One request per field is what makes serial polling crawl: every request pays the frame
//! overhead, the unit's turnaround and the 3.5-character gap. Fields in the same table that lie
//! close together are read in one request instead, across at most `max_gap` unused registers
//! (or bits), and never beyond what one request may carry (125 registers, 2,000 bits).
//!
//! Some units answer exception 02 (illegal data address) to a read that crosses addresses they
//! do not implement, even when no field lies there. [`split`] plans such a read again without
//! bridging any gap, then field by field; the caller remembers the outcome so the unit is asked
//! the failing way once, not every poll.

use crate::bus::op::Table;

/// The most registers one read (FC 03, 04) may ask for.
pub const MAX_REGISTERS: u16 = 125;
/// The most bits one read (FC 01, 02) may ask for.
pub const MAX_BITS: u16 = 2000;

/// The largest request for `table`.
#[must_use]
pub fn max_count(table: Table) -> u16 {
    if table.is_bits() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    }
}

/// Where one field's registers (or bits) lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub address: u16,
    /// Registers or bits, at least 1.
    pub count: u16,
}

impl Span {
    /// One past the last address, as u32 so a field ending at 65535 does not overflow.
    #[must_use]
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// One read request and the fields it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    /// Indexes into the spans given to [`plan`], in address order. Each field's values start
    /// at `span.address - read.address` in the read's output.
    pub fields: Vec<usize>,
}

/// Plans the reads for `spans` (one unit's fields), bridging gaps of up to `max_gap` unused
/// addresses. Reads come out per table (holding, input, coil, discrete), in address order.
///
/// A field wider than one request may carry gets a read of its own that is too large; config
/// validation refuses such fields before they get here.
#[must_use]
pub fn plan(spans: &[Span], max_gap: u16) -> Vec<Read> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (table_rank(spans[i].table), spans[i].address, spans[i].count));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let span = spans[i];
        if let Some(read) = reads.last_mut()
            && read.table == span.table
        {
            let start = u32::from(read.address);
            let end = start + u32::from(read.count);
            let gap = u32::from(span.address).saturating_sub(end);
            let new_end = end.max(span.end());
            if gap <= u32::from(max_gap) && new_end - start <= u32::from(max_count(span.table)) {
                // Fits: `new_end - start` is at most 2,000 here.
                read.count = u16::try_from(new_end - start).unwrap_or(u16::MAX);
                read.fields.push(i);
                continue;
            }
        }
        reads.push(Read {
            table: span.table,
            address: span.address,
            count: span.count,
            fields: vec![i],
        });
    }
    reads
}

/// Plans `read` again after the unit refused it with exception 02: first without bridging any
/// gap, and if that changes nothing (its fields are contiguous or overlap), one read per field.
/// Returns `None` when `read` serves a single field: there is nothing smaller to try, and the
/// field's own addresses are what the unit refuses.
#[must_use]
pub fn split(read: &Read, spans: &[Span]) -> Option<Vec<Read>> {
    if read.fields.len() <= 1 {
        return None;
    }
    let own: Vec<Span> = read.fields.iter().map(|&i| spans[i]).collect();
    let mut smaller = plan(&own, 0);
    if smaller.len() == 1 {
        smaller = (0..own.len())
            .map(|k| Read {
                table: own[k].table,
                address: own[k].address,
                count: own[k].count,
                fields: vec![k],
            })
            .collect();
    }
    // Back to the caller's indexes.
    for r in &mut smaller {
        for k in &mut r.fields {
            *k = read.fields[*k];
        }
    }
    Some(smaller)
}

fn table_rank(table: Table) -> u8 {
    match table {
        Table::Holding => 0,
        Table::Input => 1,
        Table::Coil => 2,
        Table::Discrete => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(table: Table, address: u16, count: u16) -> Span {
        Span {
            table,
            address,
            count,
        }
    }

    fn shape(reads: &[Read]) -> Vec<(Table, u16, u16, Vec<usize>)> {
        reads
            .iter()
            .map(|r| (r.table, r.address, r.count, r.fields.clone()))
            .collect()
    }

    #[test]
    fn neighbours_merge_and_a_gap_wider_than_allowed_starts_a_new_read() {
        let spans = [
            span(Table::Holding, 0, 2),  // f32 at 0
            span(Table::Holding, 2, 1),  // u16 at 2: contiguous
            span(Table::Holding, 6, 2),  // gap of 3 (3, 4, 5)
            span(Table::Holding, 20, 1), // gap of 12
        ];
        assert_eq!(
            shape(&plan(&spans, 3)),
            [
                (Table::Holding, 0, 8, vec![0, 1, 2]),
                (Table::Holding, 20, 1, vec![3])
            ]
        );
        assert_eq!(
            shape(&plan(&spans, 2)),
            [
                (Table::Holding, 0, 3, vec![0, 1]),
                (Table::Holding, 6, 2, vec![2]),
                (Table::Holding, 20, 1, vec![3])
            ]
        );
    }

    #[test]
    fn tables_never_share_a_read_and_come_out_in_a_fixed_order() {
        let spans = [
            span(Table::Coil, 0, 1),
            span(Table::Input, 1, 1),
            span(Table::Holding, 0, 1),
            span(Table::Input, 0, 1),
        ];
        assert_eq!(
            shape(&plan(&spans, 10)),
            [
                (Table::Holding, 0, 1, vec![2]),
                (Table::Input, 0, 2, vec![3, 1]),
                (Table::Coil, 0, 1, vec![0]),
            ]
        );
    }

    #[test]
    fn a_read_stops_at_125_registers_and_2000_bits() {
        let regs: Vec<Span> = (0..130).map(|a| span(Table::Input, a, 1)).collect();
        let reads = plan(&regs, 0);
        assert_eq!(
            reads
                .iter()
                .map(|r| (r.address, r.count))
                .collect::<Vec<_>>(),
            [(0, 125), (125, 5)]
        );
        let bits = [
            span(Table::Discrete, 0, 1999),
            span(Table::Discrete, 1999, 2),
        ];
        let reads = plan(&bits, 0);
        assert_eq!(
            reads
                .iter()
                .map(|r| (r.address, r.count))
                .collect::<Vec<_>>(),
            [(0, 1999), (1999, 2)]
        );
    }

    #[test]
    fn overlapping_fields_share_their_registers() {
        // A u32 and its low word read as u16, and a bit of register 1.
        let spans = [
            span(Table::Holding, 0, 2),
            span(Table::Holding, 1, 1),
            span(Table::Holding, 1, 1),
        ];
        assert_eq!(
            shape(&plan(&spans, 0)),
            [(Table::Holding, 0, 2, vec![0, 1, 2])]
        );
    }

    #[test]
    fn the_last_address_does_not_overflow() {
        let spans = [
            span(Table::Holding, 65534, 1),
            span(Table::Holding, 65535, 1),
        ];
        assert_eq!(
            shape(&plan(&spans, 0)),
            [(Table::Holding, 65534, 2, vec![0, 1])]
        );
    }

    #[test]
    fn a_refused_read_is_split_at_its_gaps_then_per_field() {
        let spans = [
            span(Table::Holding, 0, 1),
            span(Table::Holding, 1, 1),
            span(Table::Holding, 5, 1),
            span(Table::Input, 0, 1),
        ];
        let reads = plan(&spans, 10);
        assert_eq!(reads.len(), 2);
        let once = split(&reads[0], &spans).unwrap();
        assert_eq!(
            shape(&once),
            [
                (Table::Holding, 0, 2, vec![0, 1]),
                (Table::Holding, 5, 1, vec![2])
            ]
        );
        let twice = split(&once[0], &spans).unwrap();
        assert_eq!(
            shape(&twice),
            [
                (Table::Holding, 0, 1, vec![0]),
                (Table::Holding, 1, 1, vec![1])
            ]
        );
        assert_eq!(split(&twice[0], &spans), None);
        assert_eq!(split(&reads[1], &spans), None);
    }
}
