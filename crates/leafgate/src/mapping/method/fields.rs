//! A read-only Modbus method seen as fields at addresses rather than steps, so telemetry can
//! read them with as few requests as the planner allows (`mapping::plan`) instead of one
//! request per configured step.

use serde_json::{Map, Value};

use super::{Method, Step};
use crate::bus::Output;
use crate::mapping::plan::{Read, Span};
use crate::mapping::value::{self, Layout};

/// The fields of a method whose steps are all Modbus reads.
#[derive(Debug, Clone)]
pub struct ReadFields {
    /// Where each field lies; index `i` is field `i`.
    pub spans: Vec<Span>,
    fields: Vec<(String, Layout)>,
}

impl Method {
    /// This method's fields, if every step is a Modbus read (else `None`: serial exchanges and
    /// writes are not merged).
    #[must_use]
    pub fn read_fields(&self) -> Option<ReadFields> {
        let mut spans = Vec::new();
        let mut fields = Vec::new();
        for step in &self.steps {
            let Step::Read {
                table,
                address,
                fields: placed,
                ..
            } = step
            else {
                return None;
            };
            for f in placed {
                let width = if table.is_bits() { 1 } else { f.layout.width() };
                spans.push(Span {
                    table: *table,
                    address: address.checked_add(f.pos)?,
                    count: width,
                });
                fields.push((f.name.clone(), f.layout.clone()));
            }
        }
        Some(ReadFields { spans, fields })
    }
}

impl ReadFields {
    /// Pairs of fields that read the same registers or bits: a typo in an address, as a rule.
    /// A `bit` field may share its register with a whole-register field (it is a view of one
    /// of its bits), and with other `bit` fields on other bits.
    #[must_use]
    pub fn overlaps(&self) -> Vec<(&str, &str, Span)> {
        use crate::mapping::schema::DataType;
        let mut out = Vec::new();
        for (i, (a, fa)) in self.spans.iter().zip(&self.fields).enumerate() {
            for (b, fb) in self.spans.iter().zip(&self.fields).skip(i + 1) {
                let intersect = a.table == b.table
                    && u32::from(a.address) < b.end()
                    && u32::from(b.address) < a.end();
                if !intersect {
                    continue;
                }
                let clash = match (
                    fa.1.data_type == DataType::Bit,
                    fb.1.data_type == DataType::Bit,
                ) {
                    (true, true) => a.address == b.address && fa.1.bit == fb.1.bit,
                    (true, false) | (false, true) => false,
                    (false, false) => true,
                };
                if clash {
                    let start = a.address.max(b.address);
                    let end = a.end().min(b.end());
                    let count = u16::try_from(end - u32::from(start)).unwrap_or(1);
                    out.push((
                        fa.0.as_str(),
                        fb.0.as_str(),
                        Span {
                            table: a.table,
                            address: start,
                            count,
                        },
                    ));
                }
            }
        }
        out
    }
}

impl ReadFields {
    /// Decodes every field whose read succeeded. `outputs[k]` is the answer to `reads[k]`
    /// (`None` for a read that failed); a field of a failed or short read is left out.
    #[must_use]
    pub fn decode(&self, reads: &[Read], outputs: &[Option<&Output>]) -> Map<String, Value> {
        let mut values = Map::new();
        for (read, output) in reads.iter().zip(outputs) {
            let Some(output) = output else { continue };
            for &i in &read.fields {
                let (Some(span), Some((name, layout))) = (self.spans.get(i), self.fields.get(i))
                else {
                    continue;
                };
                let start = usize::from(span.address - read.address);
                let end = start + usize::from(span.count);
                let value = match output {
                    Output::Registers(regs) => {
                        regs.get(start..end).map(|r| value::decode(layout, r))
                    }
                    Output::Bits(bits) => bits.get(start).map(|b| Value::Bool(*b)),
                    _ => None,
                };
                if let Some(value) = value {
                    values.insert(name.clone(), value);
                }
            }
        }
        values
    }

    /// How many fields there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::method;
    use crate::bus::{BusKind, Output, Table};
    use crate::mapping::plan::plan;

    #[test]
    fn two_read_steps_merge_into_one_read_and_decode_as_the_method_would() {
        let m = method(
            BusKind::ModbusTcp,
            r#"
            [[device]]
            id = "d"
            bus = "b"
            [[device.method]]
            name = "m"
            [[device.method.step]]
            op = "read"
            table = "input"
            address = 0
            fields = [{ name = "v", type = "f32" }]
            [[device.method.step]]
            op = "read"
            table = "input"
            address = 4
            fields = [{ name = "n", type = "u16", scale = 0.5 }]
            "#,
        )
        .unwrap();
        let fields = m.read_fields().unwrap();
        let reads = plan(&fields.spans, 2);
        assert_eq!(reads.len(), 1);
        assert_eq!(
            (reads[0].table, reads[0].address, reads[0].count),
            (Table::Input, 0, 5)
        );
        let out = Output::Registers(vec![0x4366, 0x8000, 0, 0, 7]);
        let values = fields.decode(&reads, &[Some(&out)]);
        assert_eq!(values["v"], 230.5);
        assert_eq!(values["n"], 3.5);
        // Planned without bridging the gap, the second read failing: only `v` decodes.
        let reads = plan(&fields.spans, 0);
        assert_eq!(reads.len(), 2);
        let out = Output::Registers(vec![0x4366, 0x8000]);
        let values = fields.decode(&reads, &[Some(&out), None]);
        assert_eq!(values.len(), 1);
        assert_eq!(values["v"], 230.5);
    }
}
