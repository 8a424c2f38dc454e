//! Plausible values on the simulated hardware, so the demo's replies look like a real site's
//! rather than zeros.

use leafgate_sim::{Site, instrument};

/// Plausible values on the simulated hardware, so replies look like a real site's.
pub(crate) fn seed(site: &Site) {
    let plc = &site.tcp_registers;
    let [speed_hi, speed_lo] = f32_words(850.0);
    let [hours_hi, hours_lo] = u32_words(12_873);
    // speed 850 rpm, 42.3 °C, running, 12873 h.
    plc.set_holding(1, 0, &[speed_hi, speed_lo, 423, 1, hours_hi, hours_lo]);
    let meter = |unit: u8, volts: f32, amps: f32, centi_kwh: u32, centi_hz: u16| {
        let regs = &site.rtu_registers;
        let [v_hi, v_lo] = f32_words(volts);
        let [a_hi, a_lo] = f32_words(amps);
        let [e_hi, e_lo] = u32_words(centi_kwh);
        regs.set_input(unit, 0, &[v_hi, v_lo, a_hi, a_lo]);
        regs.set_input(unit, 10, &[e_hi, e_lo, centi_hz]);
    };
    meter(1, 230.4, 12.47, 1_234_567, 5001);
    meter(2, 231.8, 3.05, 48_213, 4998);
    site.psu.set_state(instrument::State {
        millivolts: 12_000,
        milliamps: 1_500,
        output: false,
    });
}

fn f32_words(value: f32) -> [u16; 2] {
    u32_words(value.to_bits())
}

fn u32_words(value: u32) -> [u16; 2] {
    let [a, b, c, d] = value.to_be_bytes();
    [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_seeded_high_word_first() {
        assert_eq!(f32_words(850.0), [0x4454, 0x8000]);
        assert_eq!(u32_words(1_234_567), [0x0012, 0xD687]);
    }
}
